//! Events, topics and cursors: the only place they are built or parsed (README "Subscribing:
//! WebSocket `/ws`").
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

/// The log's identity and generation: cursors carry both, so a cursor from another database is
/// recognised, and one from before a failover is judged against where the logs diverged.
///
/// A generation starts when the log's database changed under it (a standby promoted, see
/// `listener::leader`). Generation 1 writes today's `<epoch>-<seq>-<pos>`, so cursors from before
/// generations existed stay valid; later ones write `<epoch>g<gen>-<seq>-<pos>` (an epoch is hex,
/// and the epoch is known when parsing, so the two never mix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    id: Arc<str>,
    gen: i32,
}

impl Epoch {
    /// Generation 1 of the log `s`.
    pub fn new(s: &str) -> Self {
        Epoch { id: s.into(), gen: 1 }
    }

    /// The same log in generation `gen` (at least 1).
    pub fn with_gen(&self, gen: i32) -> Self {
        Epoch {
            id: self.id.clone(),
            gen: gen.max(1),
        }
    }

    pub fn gen(&self) -> i32 {
        self.gen
    }

    /// The opaque cursor string for `at` in this log: `<epoch>-<seq>-<pos>` in generation 1,
    /// `<epoch>g<gen>-<seq>-<pos>` after.
    pub fn cursor(&self, at: Position) -> String {
        if self.gen == 1 {
            format!("{}-{}-{}", self.id, at.seq, at.pos)
        } else {
            format!("{}g{}-{}-{}", self.id, self.gen, at.seq, at.pos)
        }
    }

    /// Reads a client's cursor. Garbage is `Err`; a well-formed cursor of another log is
    /// `Ok(Foreign)`, which the transports answer with `refresh_needed`; one of this log in
    /// another generation is `Ok(Other)`, judged against the generations (`feed`).
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
        let gen = if *epoch == *self.id {
            1
        } else {
            // Only the canonical form: digits, no leading zero, 2 or more.
            match epoch.strip_prefix(&*self.id).and_then(|rest| rest.strip_prefix('g')) {
                Some(g) if !g.starts_with('0') && g.bytes().all(|b| b.is_ascii_digit()) => match g.parse::<i32>() {
                    Ok(gen) if gen >= 2 => gen,
                    _ => return Ok(CursorCheck::Foreign),
                },
                _ => return Ok(CursorCheck::Foreign),
            }
        };
        Ok(if gen == self.gen {
            CursorCheck::Ours(at)
        } else {
            CursorCheck::Other { gen, at }
        })
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorCheck {
    /// This log, this generation.
    Ours(Position),
    /// This log, another generation (before a failover, or after one this server has not seen yet).
    Other {
        gen: i32,
        at: Position,
    },
    Foreign,
}

/// Whether a cursor of generation `gen` at `seq` still names the same event in generation
/// `current`, given `good`, the smallest `last_good_seq` of the generations after `gen` up to
/// `current` (`None` when there is none to judge by). Every commit up to that seq is the same in
/// every one of them; past it, the log may hold another commit under the same seq.
pub fn same_in_generation(gen: i32, seq: i64, current: i32, good: Option<i64>) -> bool {
    gen == current || (gen < current && good.is_some_and(|good| seq <= good))
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

/// One change as read from the log (`db::log`).
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
    /// For an update that moved the row to another parent: the row as it was, so that subscribers
    /// of the parent it left learn it is gone (README "Security: auth and limits", rights follow
    /// the row).
    pub old: Option<String>,
    /// With `old`: the parent topic the row left (`studies:1`), also among `topics`.
    pub moved_from: Option<String>,
    /// For any other update: the row as it was, for live views (README "Live views").
    pub before: Option<String>,
}

/// One change, ready to send: its wire JSON for each of its topics.
#[derive(Debug)]
pub struct Event {
    pub at: Position,
    /// `study_created` etc.: SSE's `event:` line, except where a move is an exit or entry ([`Event::kind_on`]).
    pub kind: String,
    pub topics: Vec<String>,
    /// `frames[i]` is the event's JSON with `"topic": topics[i]`: text known to be UTF-8 once,
    /// here, so no transport validates it again per subscriber.
    pub frames: Vec<Utf8Bytes>,
    pub committed_at: DateTime<Utc>,
    /// The parent topic the row is in after this change (`studies:42` for a message), if its
    /// table has parents: what decides who may see the change ([`crate::feed::access`]).
    pub room: Option<String>,
    /// Set when the change moved the row to another parent (see `old`).
    pub moved: Option<Box<Move>>,
    /// The row before and after the change, for live views (`crate::feed::views`); empty on events
    /// built for one stream's backlog ([`Event::from_row_on`]), which views never see.
    pub change: Change,
}

/// A change as rows: the row as it was (none for an insert) and as it is (none for a delete), as
/// the JSON text the capture trigger rendered.
#[derive(Debug, Default)]
pub struct Change {
    pub before: Option<Box<str>>,
    pub after: Option<Box<str>>,
}

impl Change {
    fn of(row: &mut LogRow, old: Option<&str>) -> Change {
        let data = std::mem::take(&mut row.data).into_boxed_str();
        match row.op.as_str() {
            "insert" => Change {
                before: None,
                after: Some(data),
            },
            "delete" => Change {
                before: Some(data),
                after: None,
            },
            _ => Change {
                before: row
                    .before
                    .take()
                    .map(String::into_boxed_str)
                    .or_else(|| old.map(Into::into)),
                after: Some(data),
            },
        }
    }
}

/// An update that moved its row from one parent to another (a message to another study). Rights
/// follow the row: on the parent topic it left, the event is an exit (`…_deleted` with the row as
/// it was, `op` `delete`); on the one it entered, an entry (`…_created` with the row as it is, `op`
/// `insert`); on the table's and the row's own topics, the update it is.
#[derive(Debug)]
pub struct Move {
    /// The parent topic the row left, if it had one.
    pub from: Option<String>,
    pub exit_kind: String,
    pub entry_kind: String,
    /// The exit and the entry as frames on the row's own topic (`messages:10`), when the event
    /// carries that topic: what a member's subscription to the row gets when the row leaves or
    /// enters its studies.
    pub row_exit: Option<Utf8Bytes>,
    pub row_entry: Option<Utf8Bytes>,
}

/// How a topic sees an event: as published, or as a move's exit or entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    AsPublished,
    Exit,
    Entry,
}

impl Event {
    /// The event of a log row, with its frame for each of its topics. A frame is
    /// `{"type","topic","cursor","table","op","id","data","committed_at"}`; only `topic` differs
    /// between them, so the rest is written once. `id` and `data` are copied in as the database
    /// wrote them (its JSON types accept only valid JSON), not parsed again.
    pub fn from_row(row: LogRow, epoch: &Epoch) -> Self {
        Self::build(row, None, epoch)
    }

    /// `row` as published on its `i`-th topic alone: what a backlog read for one stream needs (the
    /// other topics' frames would be serialized for nothing).
    pub fn from_row_on(row: LogRow, i: usize, epoch: &Epoch) -> Self {
        Self::build(row, Some(i), epoch)
    }

    /// The event of `row`, with frames for all its topics or for the `only` one.
    fn build(mut row: LogRow, only: Option<usize>, epoch: &Epoch) -> Self {
        let at = Position {
            seq: row.seq,
            pos: row.pos,
        };
        // The capture trigger lists the table's topic, the row's, the parent it is in, then the
        // parent it left (a move only).
        let room = row
            .topics
            .get(2)
            .filter(|t| Some(t.as_str()) != row.moved_from.as_deref())
            .cloned();
        let carries_row_topic = match only {
            None => row.topics.len() > 1,
            Some(i) => i == 1,
        };
        if let Some(i) = only {
            row.topics.swap(0, i);
            row.topics.truncate(1);
        }
        let for_views = only.is_none();
        if let Some(old) = row.old.take() {
            return Self::moved(row, old, room, carries_row_topic, for_views, epoch);
        }
        let cursor = epoch.cursor(at);
        let committed_at = row.committed_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let parts = FrameParts::new(&row, &row.kind, &row.op, &row.data, &cursor, &committed_at);
        let frames = row.topics.iter().map(|topic| parts.on(topic)).collect();
        let change = if for_views {
            Change::of(&mut row, None)
        } else {
            Change::default()
        };
        Event {
            at,
            kind: row.kind,
            topics: row.topics,
            frames,
            committed_at: row.committed_at,
            room,
            moved: None,
            change,
        }
    }

    /// The event of a move: each topic sees it as an update, an exit or an entry. The row's own topic is the first of `row.topics` when `only` kept it, else the second.
    fn moved(
        mut row: LogRow,
        old: String,
        room: Option<String>,
        carries_row_topic: bool,
        for_views: bool,
        epoch: &Epoch,
    ) -> Self {
        let at = Position {
            seq: row.seq,
            pos: row.pos,
        };
        let prefix = row.kind.strip_suffix("_updated").unwrap_or(&row.kind);
        let exit_kind = format!("{prefix}_deleted");
        let entry_kind = format!("{prefix}_created");
        let cursor = epoch.cursor(at);
        let committed_at = row.committed_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let update = FrameParts::new(&row, &row.kind, &row.op, &row.data, &cursor, &committed_at);
        let exit = FrameParts::new(&row, &exit_kind, "delete", &old, &cursor, &committed_at);
        let entry = FrameParts::new(&row, &entry_kind, "insert", &row.data, &cursor, &committed_at);
        let frames = row
            .topics
            .iter()
            .map(|topic| {
                if Some(topic) == row.moved_from.as_ref() {
                    exit.on(topic)
                } else if Some(topic) == room.as_ref() {
                    entry.on(topic)
                } else {
                    update.on(topic)
                }
            })
            .collect();
        let row_topic = if carries_row_topic {
            row.topics.get(if row.topics.len() == 1 { 0 } else { 1 })
        } else {
            None
        };
        let row_exit = row_topic.map(|t| exit.on(t));
        let row_entry = row_topic.map(|t| entry.on(t));
        let change = if for_views {
            Change::of(&mut row, Some(&old))
        } else {
            Change::default()
        };
        Event {
            at,
            kind: row.kind,
            topics: row.topics,
            frames,
            committed_at: row.committed_at,
            room,
            moved: Some(Box::new(Move {
                from: row.moved_from,
                exit_kind,
                entry_kind,
                row_exit,
                row_entry,
            })),
            change,
        }
    }

    /// The `type` of the event as seen on its `i`-th topic in `view`: SSE's `event:` line.
    pub fn kind_on(&self, i: usize, view: View) -> &str {
        let Some(m) = &self.moved else { return &self.kind };
        match view {
            View::Exit => &m.exit_kind,
            View::Entry => &m.entry_kind,
            View::AsPublished => match self.topics.get(i) {
                Some(t) if Some(t) == m.from.as_ref() => &m.exit_kind,
                Some(t) if Some(t) == self.room.as_ref() => &m.entry_kind,
                _ => &self.kind,
            },
        }
    }

    /// Index of `topic` in this event's topics, if it is published there.
    pub fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t == topic)
    }
}

/// One event's frame without its topic: `{"type":…,"topic":` and `,"cursor":…}`, written once per
/// event and spliced around each topic, so fan-out to N topics serializes the event once.
struct FrameParts {
    head: String,
    tail: String,
}

impl FrameParts {
    fn new(row: &LogRow, kind: &str, op: &str, data: &str, cursor: &str, committed_at: &str) -> Self {
        let mut head = String::with_capacity(16 + kind.len());
        head.push_str(r#"{"type":"#);
        push_json_str(&mut head, kind);
        head.push_str(r#","topic":"#);
        let mut tail = String::with_capacity(96 + row.tbl.len() + row.row_id.len() + data.len());
        tail.push_str(r#","cursor":"#);
        push_json_str(&mut tail, cursor);
        tail.push_str(r#","table":"#);
        push_json_str(&mut tail, &row.tbl);
        tail.push_str(r#","op":"#);
        push_json_str(&mut tail, op);
        tail.push_str(r#","id":"#);
        tail.push_str(&row.row_id);
        tail.push_str(r#","data":"#);
        tail.push_str(data);
        tail.push_str(r#","committed_at":"#);
        push_json_str(&mut tail, committed_at);
        tail.push('}');
        FrameParts { head, tail }
    }

    /// The frame as published on `topic`.
    fn on(&self, topic: &str) -> Utf8Bytes {
        let mut frame = String::with_capacity(self.head.len() + topic.len() + 2 + self.tail.len());
        frame.push_str(&self.head);
        push_json_str(&mut frame, topic);
        frame.push_str(&self.tail);
        Utf8Bytes::from(frame)
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
    fn generation_1_keeps_the_old_cursor_form_and_later_ones_name_themselves() {
        let g1 = Epoch::new("ab12");
        let g3 = g1.with_gen(3);
        let at = Position { seq: 41, pos: 3 };
        assert_eq!(g1.cursor(at), "ab12-41-3");
        assert_eq!(g3.cursor(at), "ab12g3-41-3");
        assert_eq!(g3.parse_cursor("ab12g3-41-3"), Ok(CursorCheck::Ours(at)));
        assert_eq!(g3.parse_cursor("ab12-41-3"), Ok(CursorCheck::Other { gen: 1, at }));
        assert_eq!(g1.parse_cursor("ab12g3-41-3"), Ok(CursorCheck::Other { gen: 3, at }));
        // Not canonical, or no generation at all: another log's.
        for other in [
            "ab12g03-41-3",
            "ab12g1-41-3",
            "ab12g0-41-3",
            "ab12g-41-3",
            "ab12gx-41-3",
            "ab12g99999999999-1-1",
        ] {
            assert_eq!(g3.parse_cursor(other), Ok(CursorCheck::Foreign), "{other}");
        }
    }

    #[test]
    fn an_older_generation_s_cursor_is_the_same_only_up_to_the_last_good_seq() {
        // Same generation: always (the log's own rules apply).
        assert!(same_in_generation(2, 1_000, 2, None));
        // Older: up to the smallest last good seq of every later generation, inclusive.
        assert!(same_in_generation(1, 50, 3, Some(50)));
        assert!(!same_in_generation(1, 51, 3, Some(50)));
        assert!(!same_in_generation(1, 1, 2, None), "no bound known: never assume");
        // Newer than the server's generation: not judged here.
        assert!(!same_in_generation(3, 1, 2, Some(100)));
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
            old: None,
            moved_from: None,
            before: None,
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

    fn move_of_message_5_from_study_1_to_2() -> LogRow {
        LogRow {
            seq: 8,
            pos: 1,
            kind: "message_updated".into(),
            tbl: "messages".into(),
            op: "update".into(),
            row_id: "5".into(),
            topics: vec![
                "messages".into(),
                "messages:5".into(),
                "studies:2".into(),
                "studies:1".into(),
            ],
            data: r#"{"id": 5, "study_id": 2}"#.into(),
            committed_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            old: Some(r#"{"id": 5, "study_id": 1}"#.into()),
            before: None,
            moved_from: Some("studies:1".into()),
        }
    }

    #[test]
    fn a_move_is_an_exit_on_the_old_room_an_entry_on_the_new_and_an_update_elsewhere() {
        let epoch = Epoch::new("e1");
        let ev = Event::from_row(move_of_message_5_from_study_1_to_2(), &epoch);
        let frames: Vec<serde_json::Value> = ev
            .frames
            .iter()
            .map(|f| serde_json::from_str(f.as_str()).unwrap())
            .collect();
        let seen: Vec<_> = frames
            .iter()
            .map(|f| {
                (
                    f["topic"].as_str().unwrap(),
                    f["type"].as_str().unwrap(),
                    f["op"].as_str().unwrap(),
                    f["data"]["study_id"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("messages", "message_updated", "update", 2),
                ("messages:5", "message_updated", "update", 2),
                ("studies:2", "message_created", "insert", 2),
                ("studies:1", "message_deleted", "delete", 1),
            ]
        );
        assert_eq!(ev.room.as_deref(), Some("studies:2"));
        assert_eq!(ev.kind_on(3, View::AsPublished), "message_deleted");
        let m = ev.moved.as_ref().unwrap();
        let exit: serde_json::Value = serde_json::from_str(m.row_exit.as_ref().unwrap().as_str()).unwrap();
        assert_eq!(
            (
                exit["topic"].as_str(),
                exit["type"].as_str(),
                exit["data"]["study_id"].as_i64()
            ),
            (Some("messages:5"), Some("message_deleted"), Some(1))
        );
        // A backlog read of one topic builds the same frame for it (and the row's variants only
        // when that topic is the row's).
        for i in 0..4 {
            let one = Event::from_row_on(move_of_message_5_from_study_1_to_2(), i, &epoch);
            assert_eq!(one.frames.len(), 1);
            assert_eq!(one.frames[0], ev.frames[i], "topic {i}");
            assert_eq!(one.room, ev.room);
            assert_eq!(one.moved.as_ref().unwrap().row_exit.is_some(), i == 1);
        }
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
        fn a_move_read_for_one_topic_is_the_frame_the_listener_built_for_it(
            kind in "[a-z_]{0,12}", topic in "\\PC{0,12}", from in proptest::option::of("\\PC{0,12}"),
            to in proptest::option::of("\\PC{0,12}"), body in "\\PC{0,12}",
        ) {
            let mut topics = vec![topic.clone(), format!("{topic}:1")];
            topics.extend(to.clone());
            topics.extend(from.clone());
            let row = || LogRow {
                seq: 3,
                pos: 1,
                kind: format!("{kind}_updated"),
                tbl: topic.clone(),
                op: "update".into(),
                row_id: "1".into(),
                topics: topics.clone(),
                data: serde_json::json!({"body": body}).to_string(),
                committed_at: DateTime::from_timestamp(0, 0).unwrap(),
                old: Some(serde_json::json!({"body": "before"}).to_string()),
                moved_from: from.clone(),
                before: None,
            };
            let epoch = Epoch::new("e");
            let all = Event::from_row(row(), &epoch);
            for (i, frame) in all.frames.iter().enumerate() {
                let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
                prop_assert_eq!(v["type"].as_str(), Some(all.kind_on(i, View::AsPublished)));
                let one = Event::from_row_on(row(), i, &epoch);
                prop_assert_eq!(&one.frames[0], frame);
            }
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
