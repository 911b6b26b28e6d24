//! Events, topics and cursors: the only place they are built or parsed (PROTOCOL §3, §4).
//!
//! An [`Event`] is one captured change, read from the log. Its wire form differs per topic only in
//! the `topic` field, so it is serialized once per topic when it is read, and every subscriber of
//! that topic shares the same bytes.

use std::fmt;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

/// A place in the log: commit `seq` (in commit order), event `pos` within that commit.
/// Ordered by seq, then pos. `pos = i32::MAX` means "after every event of commit `seq`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub seq: i64,
    pub pos: i32,
}

impl Position {
    /// Just after every event of commit `seq`.
    pub fn end_of(seq: i64) -> Self {
        Position { seq, pos: i32::MAX }
    }
}

/// The log's identity: cursors carry it, so a cursor from another database is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch(Arc<str>);

impl Epoch {
    pub fn new(s: &str) -> Self {
        Epoch(s.into())
    }

    /// The opaque cursor string for `at` in this log: `<epoch>-<seq>-<pos>`.
    pub fn cursor(&self, at: Position) -> String {
        format!("{}-{}-{}", self.0, at.seq, at.pos)
    }

    /// Reads a client's cursor. Garbage is `Err`; a well-formed cursor of another log is
    /// `Ok(Foreign)`, which the transports answer with `refresh_needed`.
    pub fn parse_cursor(&self, s: &str) -> Result<CursorCheck, CursorError> {
        let mut parts = s.rsplitn(3, '-');
        let (pos, seq, epoch) = match (parts.next(), parts.next(), parts.next()) {
            (Some(p), Some(s), Some(e)) => (p, s, e),
            _ => return Err(CursorError),
        };
        let at = Position {
            seq: seq.parse().map_err(|_| CursorError)?,
            pos: pos.parse().map_err(|_| CursorError)?,
        };
        if at.seq < 0 || at.pos < 0 || epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CursorError);
        }
        Ok(if *epoch == *self.0 {
            CursorCheck::Ours(at)
        } else {
            CursorCheck::Foreign
        })
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorCheck {
    Ours(Position),
    Foreign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed cursor")]
pub struct CursorError;

/// A topic name split into its table part and optional row key: `studies`, `studies:42`,
/// `audit.entries:7`. Only syntax is checked here; whether the table is tracked is the registry's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic<'a> {
    pub table: &'a str,
    pub key: Option<&'a str>,
}

/// Longest topic accepted; longer ones are a client error, never a lookup.
pub const MAX_TOPIC_LEN: usize = 256;

impl<'a> Topic<'a> {
    pub fn parse(s: &'a str) -> Result<Self, TopicError> {
        if s.is_empty() || s.len() > MAX_TOPIC_LEN {
            return Err(TopicError);
        }
        let (table, key) = match s.split_once(':') {
            Some((t, k)) => (t, Some(k)),
            None => (s, None),
        };
        let ident_ok = !table.is_empty()
            && !table.starts_with('.')
            && !table.ends_with('.')
            && table
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '$');
        let key_ok = key.is_none_or(|k| !k.is_empty() && !k.chars().any(char::is_control));
        if ident_ok && key_ok {
            Ok(Topic { table, key })
        } else {
            Err(TopicError)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed topic")]
pub struct TopicError;

/// One change as read from the log (`listener::log`).
#[derive(Debug, Clone)]
pub struct LogRow {
    pub seq: i64,
    pub pos: i32,
    pub kind: String,
    pub tbl: String,
    pub op: String,
    pub row_id: String,
    pub topics: Vec<String>,
    pub data: String,
    pub committed_at: DateTime<Utc>,
}

/// One change, ready to send: its wire JSON for each of its topics.
#[derive(Debug)]
pub struct Event {
    pub at: Position,
    /// `study_created` etc.: SSE's `event:` line.
    pub kind: String,
    pub topics: Vec<String>,
    /// `frames[i]` is the event's JSON with `"topic": topics[i]`: text known to be UTF-8 once,
    /// here, so no transport validates it again per subscriber.
    pub frames: Vec<Utf8Bytes>,
    pub committed_at: DateTime<Utc>,
}

impl Event {
    /// The event of a log row, with its frame for each of its topics. A frame is
    /// `{"type","topic","cursor","table","op","id","data","committed_at"}`; only `topic` differs
    /// between them, so the rest is written once. `id` and `data` are copied in as the database
    /// wrote them (its JSON types accept only valid JSON), not parsed again.
    pub fn from_row(row: LogRow, epoch: &Epoch) -> Self {
        let at = Position {
            seq: row.seq,
            pos: row.pos,
        };
        let committed_at = row.committed_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut head = String::with_capacity(16 + row.kind.len());
        head.push_str(r#"{"type":"#);
        push_json_str(&mut head, &row.kind);
        head.push_str(r#","topic":"#);
        let mut tail = String::with_capacity(96 + row.tbl.len() + row.row_id.len() + row.data.len());
        tail.push_str(r#","cursor":"#);
        push_json_str(&mut tail, &epoch.cursor(at));
        tail.push_str(r#","table":"#);
        push_json_str(&mut tail, &row.tbl);
        tail.push_str(r#","op":"#);
        push_json_str(&mut tail, &row.op);
        tail.push_str(r#","id":"#);
        tail.push_str(&row.row_id);
        tail.push_str(r#","data":"#);
        tail.push_str(&row.data);
        tail.push_str(r#","committed_at":"#);
        push_json_str(&mut tail, &committed_at);
        tail.push('}');
        let frames = row
            .topics
            .iter()
            .map(|topic| {
                let mut frame = String::with_capacity(head.len() + topic.len() + 2 + tail.len());
                frame.push_str(&head);
                push_json_str(&mut frame, topic);
                frame.push_str(&tail);
                Utf8Bytes::from(frame)
            })
            .collect();
        Event {
            at,
            kind: row.kind,
            topics: row.topics,
            frames,
            committed_at: row.committed_at,
        }
    }

    /// `row` as published on its `i`-th topic alone: what a backlog read for one stream needs (the
    /// other topics' frames would be serialized for nothing).
    pub fn from_row_on(mut row: LogRow, i: usize, epoch: &Epoch) -> Self {
        row.topics.swap(0, i);
        row.topics.truncate(1);
        Self::from_row(row, epoch)
    }

    /// Index of `topic` in this event's topics, if it is published there.
    pub fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }
}

/// Appends `s` as a JSON string, quoted and escaped as `serde_json` does it.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut done = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Every byte escaped is ASCII, so `i` is a char boundary.
        out.push_str(&s[done..i]);
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escaped);
        }
        done = i + 1;
    }
    out.push_str(&s[done..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order_by_seq_then_pos() {
        let e = Epoch::new("ab12");
        let at = Position { seq: 41, pos: 3 };
        assert_eq!(e.parse_cursor(&e.cursor(at)), Ok(CursorCheck::Ours(at)));
        assert!(Position { seq: 41, pos: 9 } < Position { seq: 42, pos: 1 });
        assert!(Position { seq: 42, pos: 1 } < Position::end_of(42));
    }

    #[test]
    fn garbage_cursors_are_errors_and_other_logs_are_foreign() {
        let e = Epoch::new("ab12");
        for bad in [
            "",
            "x",
            "ab12-1",
            "ab12-x-1",
            "ab12--1-1",
            "-1-1",
            "a b-1-1",
            "ab12-1-99999999999",
        ] {
            assert_eq!(e.parse_cursor(bad), Err(CursorError), "{bad:?}");
        }
        assert_eq!(e.parse_cursor("ff00-1-1"), Ok(CursorCheck::Foreign));
    }

    #[test]
    fn topics_split_into_table_and_key() {
        assert_eq!(
            Topic::parse("studies"),
            Ok(Topic {
                table: "studies",
                key: None
            })
        );
        assert_eq!(
            Topic::parse("studies:42"),
            Ok(Topic {
                table: "studies",
                key: Some("42")
            })
        );
        assert_eq!(
            Topic::parse("audit.log:a,b"),
            Ok(Topic {
                table: "audit.log",
                key: Some("a,b")
            })
        );
        for bad in ["", ":1", "studies:", "st udies", "a;drop", ".x", &"x".repeat(300)] {
            assert_eq!(Topic::parse(bad), Err(TopicError), "{bad:?}");
        }
    }

    #[test]
    fn an_event_is_serialized_once_per_topic_with_only_the_topic_differing() {
        let row = LogRow {
            seq: 7,
            pos: 2,
            kind: "message_created".into(),
            tbl: "messages".into(),
            op: "insert".into(),
            row_id: "5".into(),
            topics: vec!["messages".into(), "messages:5".into(), "studies:1".into()],
            data: r#"{"id": 5, "body": "hi"}"#.into(),
            committed_at: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
        };
        let ev = Event::from_row(row, &Epoch::new("e1"));
        assert_eq!(ev.frames.len(), 3);
        assert_eq!(
            ev.frames[0].as_str(),
            r#"{"type":"message_created","topic":"messages","cursor":"e1-7-2","table":"messages","op":"insert","id":5,"data":{"id": 5, "body": "hi"},"committed_at":"2023-11-14T22:13:20.123456Z"}"#
        );
        let v: serde_json::Value = serde_json::from_str(ev.frames[2].as_str()).unwrap();
        assert_eq!(v["topic"], "studies:1");
        assert_eq!(v["cursor"], "e1-7-2");
        assert_eq!(v["data"]["body"], "hi");
        assert_eq!(v["id"], 5);
        assert_eq!(v["committed_at"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(ev.topic_index("studies:1"), Some(2));
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_string_as_a_cursor_is_an_answer_never_a_panic(s in "\\PC{0,64}|[a-f0-9]{1,12}-[0-9-]{0,25}-[0-9]{0,12}") {
            let epoch = Epoch::new("ab12cd");
            if let Ok(CursorCheck::Ours(at)) = epoch.parse_cursor(&s) {
                prop_assert!(at.seq >= 0 && at.pos >= 0);
                prop_assert_eq!(epoch.parse_cursor(&epoch.cursor(at)), Ok(CursorCheck::Ours(at)));
            }
        }

        #[test]
        fn strings_in_frames_are_escaped_as_serde_json_escapes_them(s in "\\PC{0,40}|[\\x00-\\x7f]{0,40}") {
            let mut out = String::new();
            push_json_str(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn every_position_round_trips_through_its_cursor(seq in 0i64.., pos in 0i32..) {
            let epoch = Epoch::new("e0");
            let at = Position { seq, pos };
            prop_assert_eq!(epoch.parse_cursor(&epoch.cursor(at)), Ok(CursorCheck::Ours(at)));
        }

        #[test]
        fn any_string_as_a_topic_is_an_answer_never_a_panic(s in "\\PC{0,300}|[a-z_.]{1,20}(:[^\\x00]{0,20})?") {
            if let Ok(t) = Topic::parse(&s) {
                prop_assert!(!t.table.is_empty() && s.len() <= MAX_TOPIC_LEN);
                prop_assert!(t.key.is_none_or(|k| !k.is_empty()));
            }
        }
    }
}
