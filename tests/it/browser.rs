//! web/client.js in a real browser: Debian's headless Chromium driven by playwright-core
//! (tests/browser/client-test.mjs for topics, view-test.mjs for views). Needs `node`, `chromium` (apt) and `npm ci --prefix
//! tests/browser`; a missing piece fails the test with the command that installs it.

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::support::browser::node_driver;
use std::sync::Arc;
use std::time::Duration;

use crate::support::db::TestDb;
use crate::support::{TestApp, PATIENCE};

/// The page, through the node driver: one JSON line per command and answer.
struct Browser {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    /// Opens the server's origin in Chromium and connects client.js to `topics`; returns the
    /// page and the status it reached first (`connected`, or `fallback:sse` etc.).
    async fn open(app: &TestApp, mode: &str, topics: &[&str]) -> (Browser, String) {
        Browser::launch("client-test.mjs", app, mode, topics).await
    }

    /// Opens the server's origin in Chromium and one view (`feed.view(definition)`) on a feed
    /// without topics; returns the page and the status it reached first.
    async fn open_view(app: &TestApp, mode: &str, definition: &Value) -> (Browser, String) {
        Browser::launch("view-test.mjs", app, mode, &[&definition.to_string()]).await
    }

    async fn launch(script: &str, app: &TestApp, mode: &str, args: &[&str]) -> (Browser, String) {
        let mut child = node_driver(script)
            .arg(app.url(""))
            .arg(mode)
            .args(args)
            .spawn()
            .expect("node is missing: apt-get install -y nodejs npm");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut browser = Browser {
            _child: child,
            stdin,
            lines,
        };
        let ready = browser.answer().await;
        let status = ready["ready"]
            .as_str()
            .unwrap_or_else(|| panic!("the page did not connect: {ready}"))
            .to_owned();
        (browser, status)
    }

    async fn command(&mut self, cmd: Value) -> Value {
        let line = cmd.to_string() + "\n";
        self.stdin.write_all(line.as_bytes()).await.expect("driver stdin");
        self.answer().await
    }

    /// The view's state once its rows are `ids` and its count `count` (or when that never comes).
    async fn view_rows(&mut self, ids: &[i64], count: i64) -> Value {
        self.command(json!({"cmd": "await", "ids": ids, "count": count})).await
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(PATIENCE * 2, self.lines.next_line())
            .await
            .expect("no answer from the browser driver in time")
            .expect("reading the driver")
            .expect("the browser driver exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("driver said {line:?}: {e}"))
    }

    /// What the page received once it has `n` events (and a moment more, to see extras).
    async fn received(&mut self, n: usize) -> Value {
        let cmd = json!({"cmd": "await", "count": n}).to_string() + "\n";
        self.stdin.write_all(cmd.as_bytes()).await.expect("driver stdin");
        self.answer().await
    }
}

fn ids(v: &Value) -> Vec<i64> {
    v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i.as_i64().expect("id"))
        .collect()
}

fn insert_messages(app: &TestApp, ids: std::ops::RangeInclusive<i64>) {
    for id in ids {
        app.psql(&format!(
            "insert into messages (id, study_id, author, body) overriding system value values ({id}, 1, 'a', 'm{id}')"
        ));
    }
}

/// Events arrive; the server is stopped (rows written meanwhile) and started again on the same
/// port; the page's list has every row once, in order.
async fn survives_a_restart(mode: &str) -> (String, Value) {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 's', 'S')");
    let (mut page, first) = Browser::open(&app, mode, &["messages", "studies:1"]).await;

    insert_messages(&app, 1..=3);
    assert_eq!(ids(&page.received(3).await), [1, 2, 3]);

    let (db, addr) = (app.db.clone(), app.addr);
    app.stop().await;
    db.psql("insert into messages (id, study_id, author, body) overriding system value values (4, 1, 'a', 'down')");
    let app = TestApp::spawn_at(db, addr).await;
    insert_messages(&app, 5..=6);

    let got = page.received(6).await;
    assert_eq!(ids(&got), [1, 2, 3, 4, 5, 6], "no gap, no duplicate: {got}");
    (first, got)
}

#[tokio::test]
async fn the_browser_client_resumes_across_a_server_restart_without_gap_or_duplicate() {
    let (first, got) = survives_a_restart("ws").await;
    assert_eq!(first, "connected", "WebSocket first");
    let statuses: Vec<_> = got["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        statuses.iter().any(|s| *s == "offline" || *s == "connecting"),
        "the restart was noticed: {statuses:?}"
    );
}

#[tokio::test]
async fn with_websockets_blocked_the_browser_client_falls_back_to_sse_and_still_gets_everything() {
    let (first, _) = survives_a_restart("no-ws").await;
    assert_eq!(first, "fallback:sse");
}

#[tokio::test]
async fn without_websockets_or_sse_the_browser_client_long_polls() {
    let (first, _) = survives_a_restart("no-ws-no-sse").await;
    assert_eq!(first, "fallback:poll");
}

#[tokio::test]
async fn client_js_is_served_as_javascript_from_the_binary() {
    let app = TestApp::spawn().await;
    let resp = reqwest::get(app.url("/client.js")).await.expect("GET /client.js");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("export function connect("),
        "an ES module exporting connect"
    );
}

/// psql off the runtime's thread. The server runs on this test's runtime, and a commit may wait
/// for it (a view's read holds commits back for a moment): a blocking psql here could wait for a
/// server it keeps from running.
async fn psql(db: &Arc<TestDb>, sql: &str) -> String {
    let (db, sql) = (db.clone(), sql.to_owned());
    tokio::task::spawn_blocking(move || db.psql(&sql)).await.expect("psql")
}

/// The ids `SELECT … WHERE <filter> ORDER BY <order>, id` gives, `offset` rows on, at most 3:
/// what PROTOCOL §9 promises a view's rows are (OFFSET only in this oracle, with no writer
/// running meanwhile).
async fn window(db: &Arc<TestDb>, offset: usize) -> (Vec<i64>, i64) {
    let ids = psql(db, &format!(
        "select coalesce(string_agg(id::text, ',' order by n), '') from (select id, row_number() over (order by label collate \"C\" desc, id) n \
         from studies where status = 'active' order by label collate \"C\" desc, id offset {offset} limit 3) w"
    ))
    .await;
    let ids = ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("id"))
        .collect();
    let count = psql(db, "select count(*) from studies where status = 'active'")
        .await
        .parse()
        .expect("count");
    (ids, count)
}

async fn assert_window(page: &mut Browser, app: &TestApp, offset: usize, what: &str) -> Value {
    let (want, count) = window(&app.db, offset).await;
    let got = page.view_rows(&want, count).await;
    assert_eq!(ids(&got), want, "{what}: the view's rows are the SELECT's: {got}");
    assert_eq!(got["count"], count, "{what}: the live total: {got}");
    got
}

/// A view of active studies by label, descending, 3 a page, through `mode`: a row entering the
/// window from psql, one leaving the filter (the next fills in), an update in place, a server
/// restart with writes while it was down, then the next page; after each, the page's rows and
/// count are exactly what PostgreSQL's own SELECT says. `count_wait`: the server's
/// `--view-count-wait` (zero: every count follows its rows in a delta of its own).
async fn view_survives_writes_and_a_restart(mode: &str, count_wait: Duration) -> (String, Value) {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.view_count_wait = count_wait).await;
    psql(
        &app.db,
        "insert into studies (id, label, title, status) overriding system value \
         select i, 's' || lpad(i::text, 2, '0'), 'Study ' || i, case when i % 3 = 0 then 'draft' else 'active' end \
         from generate_series(1, 12) i",
    )
    .await;
    let definition = json!({"topic": "studies", "filter": {"status": "eq.active"}, "order": "label.desc", "limit": 3, "count": true});
    let (mut page, first) = Browser::open_view(&app, mode, &definition).await;
    assert_window(&mut page, &app, 0, "the first window").await;

    psql(
        &app.db,
        "insert into studies (id, label, title, status) overriding system value values (20, 's20', 'New', 'active')",
    )
    .await;
    assert_window(&mut page, &app, 0, "a psql INSERT enters at the top").await;
    psql(&app.db, "update studies set status = 'closed' where id = 20").await;
    assert_window(&mut page, &app, 0, "a row leaving the filter, the next filling in").await;
    psql(&app.db, "update studies set title = 'Renamed' where id = 11").await;
    let got = assert_window(&mut page, &app, 0, "an update in place").await;
    assert!(
        got["changes"].as_array().unwrap().iter().any(|c| c["type"] == "delta"),
        "live changes came as deltas: {got}"
    );

    let (db, addr) = (app.db.clone(), app.addr);
    app.stop().await;
    psql(&db, "insert into studies (id, label, title, status) overriding system value values (21, 's21', 'While down', 'active')").await;
    psql(&db, "update studies set status = 'draft' where id = 11").await;
    let app = TestApp::spawn_at_with(db, addr, |c| c.view_count_wait = count_wait).await;
    assert_window(&mut page, &app, 0, "resumed after a restart").await;
    psql(
        &app.db,
        "insert into studies (id, label, title, status) overriding system value values (22, 's22', 'After', 'active')",
    )
    .await;
    assert_window(&mut page, &app, 0, "live after the restart").await;

    page.command(json!({"cmd": "next"})).await;
    let got = assert_window(&mut page, &app, 3, "the next page (after = next)").await;
    psql(&app.db, "update studies set status = 'draft' where id = 8").await;
    assert_window(&mut page, &app, 3, "a row leaving the second page").await;
    (first, got)
}

#[tokio::test]
async fn the_browser_view_api_keeps_its_rows_exact_across_writes_a_restart_and_pages() {
    // Every count follows its rows here: client.js takes it from the delta at their cursor.
    let (first, got) = view_survives_writes_and_a_restart("ws", Duration::ZERO).await;
    assert_eq!(first, "connected", "WebSocket first");
    let statuses = got["statuses"].as_array().unwrap();
    assert!(
        statuses.iter().any(|s| s == "offline" || s == "connecting"),
        "the restart was noticed: {statuses:?}"
    );
}

#[tokio::test]
async fn with_websockets_blocked_the_browser_view_api_runs_over_sse() {
    let (first, _) = view_survives_writes_and_a_restart("no-ws", Duration::from_millis(20)).await;
    assert_eq!(first, "fallback:sse");
}

#[tokio::test]
async fn without_websockets_or_sse_the_browser_view_api_long_polls() {
    let (first, _) = view_survives_writes_and_a_restart("no-ws-no-sse", Duration::from_millis(20)).await;
    assert_eq!(first, "fallback:poll");
}

#[tokio::test]
async fn client_d_ts_is_served_beside_client_js() {
    let app = TestApp::spawn().await;
    let resp = reqwest::get(app.url("/client.d.ts")).await.expect("GET /client.d.ts");
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("export function connect(") && body.contains("interface View<"),
        "the types of connect and views"
    );
}
