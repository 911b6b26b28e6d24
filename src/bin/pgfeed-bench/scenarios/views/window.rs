//! One subscriber's copy of its view window, kept the way PROTOCOL §9 tells a client to keep it:
//! a `view` frame replaces the rows, a `view_delta`'s ops are applied in order. Every op is
//! checked against what the copy holds, so a lost, doubled or misnumbered frame shows up as an
//! op that does not fit, long before the final comparison with PostgreSQL.

use std::borrow::Cow;

use serde::Deserialize;

/// The fields of a server frame the bench reads; the rest of each frame is skipped unparsed. Its
/// text borrows from the frame's (1,000 subscribers parse over 100,000 frames a second on the
/// box that runs the server: allocating each string was a good part of the bench's own CPU).
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub cursor: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub rows: Option<Vec<Row<'a>>>,
    #[serde(default, borrow)]
    pub ops: Option<Vec<Op<'a>>>,
    #[serde(default)]
    pub count: Option<i64>,
}

/// A `studies` row, as far as the comparison needs it: `version` goes up with every UPDATE
/// (PROTOCOL §2), so equal (id, version) lists mean equal windows.
#[derive(Debug, Clone, Deserialize)]
pub struct Row<'a> {
    pub id: i64,
    pub version: i64,
    #[serde(borrow)]
    pub updated_at: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct Op<'a> {
    #[serde(borrow)]
    pub op: Cow<'a, str>,
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    #[serde(default)]
    pub from: Option<usize>,
    #[serde(default)]
    pub to: Option<usize>,
    #[serde(default, borrow)]
    pub row: Option<Row<'a>>,
    #[serde(default, borrow)]
    pub why: Option<Cow<'a, str>>,
}

impl Op<'_> {
    /// The row this op carries when it was written by the op's own commit: an update, or an enter
    /// that is not a `fill` (a fill moves up a row some earlier commit wrote).
    pub fn written_row(&self) -> Option<&Row<'_>> {
        match (&*self.op, self.why.as_deref()) {
            ("update", _) => self.row.as_ref(),
            ("enter", Some("fill")) => None,
            ("enter", _) => self.row.as_ref(),
            _ => None,
        }
    }
}

/// The rows a subscriber holds, as (id, version), in window order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub rows: Vec<(i64, i64)>,
    pub count: Option<i64>,
}

impl Window {
    pub fn replace(&mut self, rows: &[Row<'_>], count: Option<i64>) {
        self.rows = rows.iter().map(|r| (r.id, r.version)).collect();
        if count.is_some() {
            self.count = count;
        }
    }

    /// Applies a delta's ops in order. On an op that does not fit (its `from` does not hold its
    /// key, an index out of range, an unknown op, a window over `limit`), it is applied by key
    /// where that is possible, and the first misfit is returned with the number of them.
    pub fn apply(&mut self, ops: &[Op<'_>], count: Option<i64>, limit: usize) -> (usize, Option<String>) {
        let mut misfits = 0;
        let mut first = None;
        let mut misfit = |why: String| {
            misfits += 1;
            first.get_or_insert(why);
        };
        for op in ops {
            let Ok(id) = op.key.parse::<i64>() else {
                misfit(format!("key {:?} is not a studies id", op.key));
                continue;
            };
            match &*op.op {
                "exit" | "update" => {
                    let at = match op.from {
                        Some(from) if self.rows.get(from).is_some_and(|r| r.0 == id) => Some(from),
                        _ => {
                            misfit(format!(
                                "{} of {id} from {:?}, which holds {:?}",
                                op.op,
                                op.from,
                                op.from.and_then(|f| self.rows.get(f))
                            ));
                            self.rows.iter().position(|r| r.0 == id)
                        }
                    };
                    if let Some(at) = at {
                        self.rows.remove(at);
                    }
                    if op.op == "update" {
                        self.enter(op, id, &mut misfit);
                    }
                }
                "enter" => {
                    if self.rows.iter().any(|r| r.0 == id) {
                        misfit(format!("enter of {id}, which the window already holds"));
                        self.rows.retain(|r| r.0 != id);
                    }
                    self.enter(op, id, &mut misfit);
                }
                other => misfit(format!("unknown op {other:?}")),
            }
        }
        if self.rows.len() > limit {
            misfit(format!(
                "{} rows after the delta, over the limit {limit}",
                self.rows.len()
            ));
        }
        if count.is_some() {
            self.count = count;
        }
        (misfits, first)
    }

    fn enter(&mut self, op: &Op<'_>, id: i64, misfit: &mut impl FnMut(String)) {
        let Some(row) = &op.row else {
            misfit(format!("{} of {id} without a row", op.op));
            return;
        };
        if row.id != id {
            misfit(format!("{} of key {id} carries row {}", op.op, row.id));
        }
        let to = match op.to {
            Some(to) if to <= self.rows.len() => to,
            to => {
                misfit(format!(
                    "{} of {id} to {to:?} in a window of {}",
                    op.op,
                    self.rows.len()
                ));
                self.rows.len()
            }
        };
        self.rows.insert(to, (id, row.version));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str) -> Frame<'_> {
        serde_json::from_str(json).unwrap()
    }

    fn window(ids: &[i64]) -> Window {
        Window {
            rows: ids.iter().map(|&id| (id, 1)).collect(),
            count: None,
        }
    }

    #[test]
    fn a_delta_applies_in_order_with_from_before_and_to_after_each_op() {
        let mut w = window(&[1, 2, 3]);
        let f = frame(
            r#"{"type":"view_delta","view":"v","cursor":"c","count":7,"ops":[
            {"op":"exit","key":"3","from":2,"why":"unmatch"},
            {"op":"enter","key":"9","to":0,"row":{"id":9,"version":4,"updated_at":"2026-01-01T00:00:00+00:00"},"why":"match"},
            {"op":"update","key":"2","from":2,"to":1,"row":{"id":2,"version":5,"updated_at":"2026-01-01T00:00:00+00:00"}}]}"#,
        );
        let (misfits, first) = w.apply(f.ops.as_deref().unwrap(), f.count, 3);
        assert_eq!((misfits, first), (0, None));
        assert_eq!(w.rows, vec![(9, 4), (2, 5), (1, 1)]);
        assert_eq!(w.count, Some(7));
    }

    #[test]
    fn an_op_that_does_not_fit_is_counted_and_applied_by_key() {
        let mut w = window(&[1, 2]);
        let f = frame(r#"{"type":"view_delta","ops":[{"op":"exit","key":"2","from":0,"why":"delete"}]}"#);
        let (misfits, first) = w.apply(f.ops.as_deref().unwrap(), None, 50);
        assert_eq!(misfits, 1);
        assert!(first.unwrap().contains("exit of 2 from Some(0)"));
        assert_eq!(w.rows, vec![(1, 1)]);
    }

    #[test]
    fn only_rows_written_by_the_deltas_commit_give_a_latency() {
        let f = frame(
            r#"{"type":"view_delta","ops":[
            {"op":"enter","key":"4","to":0,"row":{"id":4,"version":1,"updated_at":"x"},"why":"fill"},
            {"op":"enter","key":"5","to":0,"row":{"id":5,"version":2,"updated_at":"x"},"why":"match"},
            {"op":"exit","key":"6","from":3,"why":"overflow"}]}"#,
        );
        let written: Vec<i64> = f
            .ops
            .unwrap()
            .iter()
            .filter_map(|o| o.written_row())
            .map(|r| r.id)
            .collect();
        assert_eq!(written, vec![5]);
    }
}
