//! Reading the events a client received: their rows, and their order.

use pgfeed::event::{CursorCheck, Epoch, Position};
use serde_json::Value;

/// The id of each event's row, in arrival order.
pub fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().expect("numeric id")).collect()
}

/// The `label` of each event's row (studies), in order.
pub fn labels(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["data"]["label"].as_str().expect("a label"))
        .collect()
}

/// The position inside an (opaque) cursor, to check ordering in tests.
pub fn position(cursor: &Value) -> Position {
    let s = cursor.as_str().expect("cursor is a string");
    let epoch = s.split('-').next().expect("epoch");
    match Epoch::new(epoch).parse_cursor(s) {
        Ok(CursorCheck::Ours(at)) => at,
        other => panic!("unreadable cursor {s}: {other:?}"),
    }
}

/// Cursors strictly increase, and the rows of each writer `w{w}` (bodies `0`, `1`, … `rows - 1`,
/// in the order it committed them) arrive in that order.
pub fn assert_in_log_order_and_each_writer_in_its_own(events: &[Value], writers: usize, rows: usize) {
    let positions: Vec<Position> = events.iter().map(|e| position(&e["cursor"])).collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "cursors strictly increase");
    for w in 0..writers {
        let seq: Vec<i64> = events
            .iter()
            .filter(|e| e["data"]["author"] == format!("w{w}"))
            .map(|e| e["data"]["body"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            seq,
            (0..rows as i64).collect::<Vec<_>>(),
            "writer {w}'s rows in its own order"
        );
    }
}
