//! A live view as a client keeps it (apply `view`, then each `view_delta` in order, checking
//! every index the server names), and the oracle: PostgreSQL's own SELECT of the same window.

use serde_json::{json, Value};

use super::{TestApp, WsClient};

/// One view's rows as the client has them, with its cursor and count.
#[derive(Debug, Default, Clone)]
pub struct ViewRows {
    pub rows: Vec<(String, Value)>,
    pub cursor: String,
    pub count: Option<i64>,
    pub next: Option<String>,
    pub deltas: usize,
    /// The last `view` came with `"count":null`: the delta that brings the count may share the
    /// cursor of the frame before it (README "Live views"), and it alone.
    count_pending: bool,
}

impl ViewRows {
    /// Applies a `view` or `view_delta` frame, asserting that every `from` names the row with
    /// that key and every index is in range.
    pub fn apply(&mut self, frame: &Value) {
        match frame["type"].as_str() {
            Some("view") => {
                self.rows = frame["rows"]
                    .as_array()
                    .expect("rows")
                    .iter()
                    .map(|r| (key_of(r), r.clone()))
                    .collect();
                self.next = frame["next"].as_str().map(str::to_owned);
                self.count_pending = frame.get("count").is_some_and(Value::is_null);
            }
            Some("view_delta") => {
                self.deltas += 1;
                // One delta per commit (PROTOCOL §9): never two at one cursor, but for the count
                // that follows its rows.
                let count_came = self.count_pending && frame["ops"] == json!([]) && frame["count"].is_i64();
                assert!(
                    frame["cursor"].as_str() != Some(self.cursor.as_str()) || count_came,
                    "a second delta at cursor {}: {frame}",
                    self.cursor
                );
                if frame["count"].is_i64() {
                    self.count_pending = false;
                }
                for op in frame["ops"].as_array().expect("ops") {
                    let key = op["key"].as_str().expect("key").to_owned();
                    match op["op"].as_str() {
                        Some("exit") => {
                            let from = op["from"].as_u64().expect("from") as usize;
                            assert_eq!(self.rows.get(from).map(|r| &r.0), Some(&key), "exit {op} in {frame}");
                            self.rows.remove(from);
                        }
                        Some("enter") => {
                            let to = op["to"].as_u64().expect("to") as usize;
                            assert!(to <= self.rows.len(), "enter {op} past the end");
                            assert!(
                                !self.rows.iter().any(|r| r.0 == key),
                                "enter of a row already there: {op}"
                            );
                            self.rows.insert(to, (key, op["row"].clone()));
                        }
                        Some("update") => {
                            let from = op["from"].as_u64().expect("from") as usize;
                            let to = op["to"].as_u64().expect("to") as usize;
                            assert_eq!(self.rows.get(from).map(|r| &r.0), Some(&key), "update {op} in {frame}");
                            self.rows.remove(from);
                            assert!(to <= self.rows.len(), "update {op} past the end");
                            self.rows.insert(to, (key, op["row"].clone()));
                        }
                        other => panic!("unknown op {other:?} in {frame}"),
                    }
                }
                if let Some(next) = frame.get("next") {
                    self.next = next.as_str().map(str::to_owned);
                }
            }
            other => panic!("not a view frame: {other:?}: {frame}"),
        }
        self.cursor = frame["cursor"].as_str().expect("cursor").to_owned();
        if let Some(c) = frame.get("count") {
            self.count = c.as_i64();
        }
    }

    pub fn ids(&self) -> Vec<i64> {
        self.rows.iter().map(|r| r.0.parse().expect("an integer key")).collect()
    }
}

fn key_of(row: &Value) -> String {
    match &row["id"] {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

impl WsClient {
    /// Opens view `name` with the definition's fields (`topic`, `filter`, …) and returns its first
    /// `view` frame.
    pub async fn open_view(&mut self, name: &str, def: Value) -> Value {
        let mut frame = json!({"action": "subscribe", "view": name});
        for (k, v) in def.as_object().expect("a definition object") {
            frame[k] = v.clone();
        }
        let asks_count = frame["count"] == true;
        self.send(frame).await;
        let mut first = self.next_json().await;
        assert_eq!(first["type"], "view", "answer to opening {name}: {first}");
        assert_eq!(first["view"], name);
        if asks_count && first["count"].is_null() {
            // The count was slower than the server's wait: the next frame, a delta of no
            // operations at the same position, carries it.
            let count = self.next_json().await;
            assert_eq!(count["type"], "view_delta", "{count}");
            assert_eq!(count["view"], name);
            assert_eq!(count["ops"], json!([]), "{count}");
            assert_eq!(count["cursor"], first["cursor"], "{count}");
            first["count"] = count["count"].clone();
        }
        first
    }

    /// Opens view `name` and returns its `view` frame as sent (its count may follow).
    pub async fn open_view_raw(&mut self, name: &str, def: Value) -> Value {
        let mut frame = json!({"action": "subscribe", "view": name});
        for (k, v) in def.as_object().expect("a definition object") {
            frame[k] = v.clone();
        }
        self.send(frame).await;
        self.next_json().await
    }
}

impl TestApp {
    /// PostgreSQL's own answer for a window: `select` of `table`'s rows (as JSON in UTC) `where`,
    /// `order by` (the key last), `limit`.
    pub fn oracle(&self, table: &str, filter: &str, order: &str, limit: usize) -> Vec<Value> {
        let sql = format!(
            "set timezone = 'UTC'; select coalesce(jsonb_agg(j order by n), '[]') from \
             (select to_jsonb(r) as j, row_number() over (order by {order}) as n from {table} r where {filter} order by {order} limit {limit}) q"
        );
        let out = self.psql(&sql);
        serde_json::from_str(out.lines().last().unwrap_or("[]")).expect("oracle JSON")
    }

    pub fn count(&self, table: &str, filter: &str) -> i64 {
        self.psql(&format!("select count(*) from {table} r where {filter}"))
            .parse()
            .expect("a count")
    }
}

/// Asserts that a client's rows are the oracle's, row for row.
pub fn assert_rows(got: &ViewRows, want: &[Value], what: &str) {
    let got_rows: Vec<&Value> = got.rows.iter().map(|r| &r.1).collect();
    let want_rows: Vec<&Value> = want.iter().collect();
    assert_eq!(
        got_rows, want_rows,
        "{what}: the client's rows differ from PostgreSQL's SELECT"
    );
}
