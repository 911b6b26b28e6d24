//! One window (README "Live views"): the first rows of a view's definition, kept current change
//! by change, and the frames that tell its subscribers. No I/O: the engine (`super`) feeds it
//! changes and reads, and sends what it returns.
//!
//! The window holds the rows it shows (`limit`) and up to as many below them (the buffer), in the
//! definition's order: the first matches after the keyset start, all of them when `complete`.
//! A change removes its row by key and inserts it again where it now sorts, if it matches and
//! sorts within what is loaded (beyond the last loaded row lies what is unknown). When the rows
//! left fall under `limit` while more may exist, the window asks to be read again
//! ([`Finish::Reload`]); most exits are refilled from the buffer without a read.
//!
//! What subscribers have is kept apart (`shown`); at the end of a commit the window compares it
//! with its first `limit` rows and writes the operations between them: at most `limit` exits and
//! `limit` enters or moves, however many rows the commit changed (PROTOCOL §9).

use std::fmt::Write as _;
use std::sync::Arc;

use super::def::{Def, Parsed};
use super::{FastMap, FastSet};
use crate::event::{Epoch, Position};

/// One loaded row: its values (shared by every window of its table), key, and JSON.
#[derive(Debug, Clone)]
struct Entry {
    row: Arc<Parsed>,
    json: Arc<str>,
}

/// One row as a subscriber has it.
#[derive(Debug, Clone)]
struct Shown {
    key: Arc<str>,
    hash: u64,
    json: Arc<str>,
}

/// Row keys (with a value each) by their hash computed once per row ([`Parsed::hash`]): every
/// change meets every window of its table that it may touch, and each probes its sets of keys.
#[derive(Debug, Clone)]
struct Keyed<V>(hashbrown::HashTable<(u64, Arc<str>, V)>);

type KeySet = Keyed<()>;

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Keyed(hashbrown::HashTable::new())
    }
}

impl<V> Keyed<V> {
    fn get(&self, hash: u64, key: &str) -> Option<&V> {
        self.0.find(hash, |e| &*e.1 == key).map(|e| &e.2)
    }

    fn contains(&self, hash: u64, key: &str) -> bool {
        self.get(hash, key).is_some()
    }

    fn remove(&mut self, hash: u64, key: &str) -> Option<V> {
        let entry = self.0.find_entry(hash, |e| &*e.1 == key).ok()?;
        Some(entry.remove().0 .2)
    }

    /// The value of `key`, inserted by `new` when there is none.
    fn get_or_insert(&mut self, hash: u64, key: &Arc<str>, new: impl FnOnce() -> V) -> &mut V {
        match self.0.entry(hash, |e| *e.1 == **key, |e| e.0) {
            hashbrown::hash_table::Entry::Occupied(o) => &mut o.into_mut().2,
            hashbrown::hash_table::Entry::Vacant(v) => &mut v.insert((hash, key.clone(), new())).into_mut().2,
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl KeySet {
    fn insert(&mut self, hash: u64, key: &Arc<str>) {
        self.get_or_insert(hash, key, || ());
    }

    fn of<'a>(keys: impl Iterator<Item = (u64, &'a Arc<str>)>) -> KeySet {
        let mut set = KeySet::default();
        for (hash, key) in keys {
            set.insert(hash, key);
        }
        set
    }
}

/// What a commit did to one row, for the `why` of its enter or exit.
#[derive(Debug, Clone, Copy)]
struct Touch {
    /// The commit created it (its first change in the commit was an insert).
    inserted: bool,
    /// Its last change in the commit deleted it.
    deleted: bool,
    /// After its last change it matched the filter and was past the start.
    member: bool,
}

/// A window's `count` (PROTOCOL §9), kept by its changes between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    /// The definition asks for none.
    Off,
    /// Being read (a count over many rows is slow, and the rows go out without waiting for it):
    /// the net change of the matching rows since the position the count is read at.
    Reading(i64),
    Known(i64),
}

impl Count {
    fn add(&mut self, d: i64) {
        match self {
            Count::Off => {}
            Count::Reading(n) | Count::Known(n) => *n += d,
        }
    }

    fn known(self) -> Option<i64> {
        match self {
            Count::Known(n) => Some(n),
            _ => None,
        }
    }
}

/// What a read of a window tells of its count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Nothing: the count the window keeps from changes stands, and goes on from the last change
    /// it counted (the read's rows may hold changes it has not counted yet).
    Kept,
    /// The count at the read's position.
    At(i64),
    /// The count at the read's position comes later ([`Window::counted`]).
    Coming,
}

#[derive(Debug)]
pub struct Window {
    pub def: Arc<Def>,
    rows: Vec<Entry>,
    /// Keys of `rows`.
    keys: KeySet,
    /// `rows` holds every matching row past the start.
    complete: bool,
    count: Count,
    /// The log position the count reflects: changes after it are counted as they come.
    counted_at: Position,
    /// The log position the rows reflect: changes at or before it are already in them.
    pub at: Position,
    shown: Vec<Shown>,
    /// Keys of `shown`.
    shown_keys: KeySet,
    shown_count: Option<i64>,
    shown_next: Option<String>,
    /// The row `shown_next` was made from: a change of it is a change of `next`, found without
    /// writing the token at every commit.
    shown_boundary: Option<Arc<str>>,
    /// The position of what subscribers have.
    pub shown_at: Position,
    touched: Keyed<Touch>,
    /// The rows were read again since subscribers were last told: compare them, even if no change
    /// was applied (a read after the views fell behind the feed holds changes never applied).
    reread: bool,
}

/// What a window wants after a commit.
#[derive(Debug)]
pub enum Finish {
    /// Nothing changed for its subscribers.
    Quiet,
    /// This frame (a `view_delta`) tells them.
    Delta(Frame),
    /// Too few rows are left and more may exist: read the window again.
    Reload,
}

/// A frame for every subscriber of a window, serialized once: all of it but `type` and the
/// subscriber's own `view` name, which each transport writes in front (`Frame::text`).
#[derive(Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub at: Position,
    pub cursor: String,
    /// `"topic":…,"cursor":…,…}`: the frame after its `"view":NAME,`.
    pub tail: String,
    /// A `view` whose count is still being read: a delta with the count follows.
    pub count_coming: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    View,
    Delta,
}

impl FrameKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::View => "view",
            FrameKind::Delta => "view_delta",
        }
    }
}

impl Frame {
    /// The whole frame for the subscriber that named its view `name`.
    pub fn text(&self, name: &str) -> String {
        let mut out = String::with_capacity(40 + name.len() + self.tail.len());
        out.push_str(r#"{"type":""#);
        out.push_str(self.kind.as_str());
        out.push_str(r#"","view":"#);
        out.push_str(&serde_json::to_string(name).expect("a string"));
        out.push(',');
        out.push_str(&self.tail);
        out
    }
}

impl Window {
    /// A window of `def` from a read at `at`: `rows` as JSON in order, up to `2 × limit`.
    pub fn new(def: Arc<Def>, at: Position, rows: Vec<String>, counted: Counted) -> Window {
        let mut w = Window {
            def,
            rows: Vec::new(),
            keys: KeySet::default(),
            complete: false,
            count: Count::Off,
            counted_at: at,
            at,
            shown: Vec::new(),
            shown_keys: KeySet::default(),
            shown_count: None,
            shown_next: None,
            shown_boundary: None,
            shown_at: at,
            touched: Keyed::default(),
            reread: false,
        };
        w.reload(at, rows, counted);
        w
    }

    /// Rows the window loads at most: what it shows and as many again below.
    pub fn cap(&self) -> usize {
        2 * self.def.limit
    }

    /// Replaces the rows by a read at `at`; what subscribers have, and what the current commit
    /// touched, stay (the next frame goes from what they have to this).
    pub fn reload(&mut self, at: Position, rows: Vec<String>, counted: Counted) {
        let table = &self.def.table;
        self.complete = rows.len() < self.cap();
        self.rows = rows
            .into_iter()
            .filter_map(|json| {
                let row = table.parse(&json)?;
                Some(Entry {
                    row: Arc::new(row),
                    json: json.into(),
                })
            })
            .collect();
        self.keys = KeySet::of(self.rows.iter().map(|e| (e.row.hash, &e.row.key)));
        if self.def.count {
            let count = match counted {
                // The count kept from changes stands.
                Counted::Kept if self.count != Count::Off => None,
                Counted::Kept | Counted::Coming => Some(Count::Reading(0)),
                Counted::At(n) => Some(Count::Known(n)),
            };
            if let Some(count) = count {
                self.count = count;
                self.counted_at = at;
            }
        }
        self.at = at;
        self.reread = true;
    }

    /// The count read at the position of the read that said [`Counted::Coming`] is `n`.
    pub fn counted(&mut self, n: i64) {
        if let Count::Reading(since) = self.count {
            self.count = Count::Known(n + since);
        }
    }

    /// Applies one change at `at` (in log order): the row before (none for an insert) and after
    /// (none for a delete), both of this window's table.
    pub fn apply(&mut self, at: Position, before: Option<&Arc<Parsed>>, after: Option<(&Arc<Parsed>, &Arc<str>)>) {
        // A read's rows may be ahead of its count ([`Counted::Kept`]), or of the changes the
        // engine has passed on (a read's position may be past them).
        let for_count = at > self.counted_at;
        if at <= self.at && !for_count {
            return;
        }
        let def = &self.def;
        let matched = before.is_some_and(|b| def.matches(&b.vals));
        let matches = after.is_some_and(|(a, _)| def.matches(&a.vals));
        if for_count {
            self.count.add(matches as i64 - matched as i64);
            self.counted_at = at;
        }
        if at <= self.at {
            return;
        }
        self.at = at;
        let (key, hash) = match (before, after) {
            (_, Some((a, _))) => (&a.key, a.hash),
            (Some(b), None) => (&b.key, b.hash),
            (None, None) => return,
        };
        if self.keys.remove(hash, key).is_some() {
            if let Some(i) = self.rows.iter().position(|e| e.row.key == *key) {
                self.rows.remove(i);
            }
        }
        let mut loaded = false;
        let member = match after {
            Some((a, json)) if matches && def.past_start(&a.vals) => {
                // Beyond the last loaded row is what the window does not know: most changes of a
                // big table sort there, found with one comparison instead of a search.
                let beyond = !self.complete
                    && self
                        .rows
                        .last()
                        .is_none_or(|e| def.cmp(&e.row.vals, &a.vals) == std::cmp::Ordering::Less);
                if !beyond {
                    let i = self
                        .rows
                        .partition_point(|e| def.cmp(&e.row.vals, &a.vals) == std::cmp::Ordering::Less);
                    self.rows.insert(
                        i,
                        Entry {
                            row: a.clone(),
                            json: json.clone(),
                        },
                    );
                    self.keys.insert(hash, key);
                    loaded = true;
                }
                true
            }
            _ => false,
        };
        if self.rows.len() > self.cap() {
            for gone in self.rows.drain(self.cap()..) {
                self.keys.remove(gone.row.hash, &gone.row.key);
                if !self.shown_keys.contains(gone.row.hash, &gone.row.key) {
                    self.touched.remove(gone.row.hash, &gone.row.key);
                }
            }
            self.complete = false;
        }
        // Only a row subscribers have, or one the window holds, can be in the next delta: what a
        // commit did to any other is forgotten, so a statement over 100,000 rows leaves each
        // window at most 3 × limit of them to remember, not all 100,000.
        let held = loaded && self.keys.contains(hash, key);
        if !held && !self.shown_keys.contains(hash, key) {
            if !self.touched.is_empty() {
                self.touched.remove(hash, key);
            }
            return;
        }
        let inserted = before.is_none();
        let touch = self.touched.get_or_insert(hash, key, || Touch {
            inserted,
            deleted: false,
            member,
        });
        touch.deleted = after.is_none();
        touch.member = member;
    }

    /// Whether the window has changes its subscribers do not have yet.
    pub fn dirty(&self) -> bool {
        self.reread
            || !self.touched.is_empty()
            || self.count.known() != self.shown_count
            || self.boundary().map(|e| &e.json) != self.shown_boundary.as_ref()
    }

    /// Ends a commit at `at` (the end of its seq): the frame that brings subscribers from what
    /// they have to the window, if anything changed for them, or a reload when too few rows are
    /// left.
    pub fn finish(&mut self, at: Position, epoch: &Epoch) -> Finish {
        self.at = self.at.max(at);
        if self.rows.len() < self.def.limit && !self.complete {
            return Finish::Reload;
        }
        if !self.dirty() {
            return Finish::Quiet;
        }
        match self.delta(epoch) {
            Some(frame) => Finish::Delta(frame),
            None => Finish::Quiet,
        }
    }

    /// The `view` frame of what subscribers have now: for a new subscriber of a window whose
    /// others are up to date.
    pub fn view_frame(&self, epoch: &Epoch) -> Frame {
        let cursor = epoch.cursor(self.shown_at);
        let mut tail = self.head(&cursor);
        tail.push_str(r#","rows":["#);
        for (i, s) in self.shown.iter().enumerate() {
            if i > 0 {
                tail.push(',');
            }
            tail.push_str(&s.json);
        }
        tail.push(']');
        // A count still being read is null; the delta that follows its read carries it.
        match self.shown_count {
            Some(count) => {
                let _ = write!(tail, r#","count":{count}"#);
            }
            None if self.def.count => tail.push_str(r#","count":null"#),
            None => {}
        }
        tail.push_str(r#","next":"#);
        push_opt_str(&mut tail, self.shown_next.as_deref());
        tail.push('}');
        Frame {
            kind: FrameKind::View,
            at: self.shown_at,
            cursor,
            tail,
            count_coming: self.def.count && self.shown_count.is_none(),
        }
    }

    /// Makes the window's rows what subscribers have, as of `self.at`, and returns their `view`.
    pub fn show(&mut self, epoch: &Epoch) -> Frame {
        self.shown = self
            .visible()
            .map(|e| Shown {
                key: e.row.key.clone(),
                hash: e.row.hash,
                json: e.json.clone(),
            })
            .collect();
        self.shown_keys = KeySet::of(self.shown.iter().map(|s| (s.hash, &s.key)));
        self.shown_count = self.count.known();
        self.shown_next = self.next();
        self.shown_boundary = self.boundary().map(|e| e.json.clone());
        self.shown_at = self.at;
        self.touched.clear();
        self.reread = false;
        self.view_frame(epoch)
    }

    fn visible(&self) -> impl Iterator<Item = &Entry> {
        self.rows.iter().take(self.def.limit)
    }

    /// The row the next page starts after: the last row shown, when a page may follow.
    fn boundary(&self) -> Option<&Entry> {
        let more = self.rows.len() > self.def.limit || !self.complete;
        match self.rows.get(self.def.limit.saturating_sub(1)) {
            Some(last) if more && self.rows.len() >= self.def.limit => Some(last),
            _ => None,
        }
    }

    /// The `next` token: the keys of [`Self::boundary`].
    fn next(&self) -> Option<String> {
        self.boundary().map(|last| self.def.token(&last.json))
    }

    fn head(&self, cursor: &str) -> String {
        let mut tail = String::with_capacity(256);
        tail.push_str(r#""topic":"#);
        push_opt_str(&mut tail, Some(&self.def.table.topic));
        tail.push_str(r#","cursor":"#);
        push_opt_str(&mut tail, Some(cursor));
        tail
    }

    /// The operations from `shown` to the window's first rows, applied in order: exits from the
    /// bottom up (so each `from` is still the row's index), then each target slot in turn, filled
    /// by the row already there, by a row moved up from below, or by an entering row.
    fn delta(&mut self, epoch: &Epoch) -> Option<Frame> {
        let target: Vec<Shown> = self
            .visible()
            .map(|e| Shown {
                key: e.row.key.clone(),
                hash: e.row.hash,
                json: e.json.clone(),
            })
            .collect();
        let wanted: FastSet<&str> = target.iter().map(|s| &*s.key).collect();
        let had: FastMap<&str, &Shown> = self.shown.iter().map(|s| (&*s.key, s)).collect();
        let mut ops = String::new();
        let mut n = 0;
        let mut sep = |ops: &mut String| {
            if n > 0 {
                ops.push(',');
            }
            n += 1;
        };
        let mut cur: Vec<Arc<str>> = Vec::with_capacity(self.shown.len());
        for (i, s) in self.shown.iter().enumerate().rev() {
            if wanted.contains(&*s.key) {
                continue;
            }
            let why = match self.touched.get(s.hash, &s.key) {
                Some(t) if t.deleted => "delete",
                Some(t) if !t.member => "unmatch",
                Some(_) => "overflow",
                None if self.keys.contains(s.hash, &s.key) => "overflow",
                None => "unmatch",
            };
            sep(&mut ops);
            op_exit(&mut ops, &s.key, i, why);
        }
        cur.extend(
            self.shown
                .iter()
                .filter(|s| wanted.contains(&*s.key))
                .map(|s| s.key.clone()),
        );
        for (i, t) in target.iter().enumerate() {
            let changed = had.get(&*t.key).is_none_or(|s| s.json != t.json);
            if cur.get(i).is_some_and(|k| *k == t.key) {
                if changed {
                    sep(&mut ops);
                    op_update(&mut ops, &t.key, i, i, &t.json);
                }
            } else if let Some(j) = cur.iter().skip(i).position(|k| *k == t.key).map(|j| j + i) {
                let k = cur.remove(j);
                cur.insert(i, k);
                sep(&mut ops);
                op_update(&mut ops, &t.key, j, i, &t.json);
            } else {
                let why = match self.touched.get(t.hash, &t.key) {
                    Some(touch) if touch.inserted => "insert",
                    Some(_) => "match",
                    None => "fill",
                };
                cur.insert(i, t.key.clone());
                sep(&mut ops);
                op_enter(&mut ops, &t.key, i, &t.json, why);
            }
        }
        let boundary = self.boundary().map(|e| e.json.clone());
        let next_changed = boundary != self.shown_boundary;
        let next = if next_changed { self.next() } else { None };
        let count_changed = self.count.known() != self.shown_count;
        self.touched.clear();
        self.reread = false;
        if n == 0 && !count_changed && !next_changed {
            return None;
        }
        self.shown = target;
        self.shown_keys = KeySet::of(self.shown.iter().map(|s| (s.hash, &s.key)));
        self.shown_count = self.count.known();
        self.shown_at = self.at;
        let cursor = epoch.cursor(self.at);
        let mut tail = self.head(&cursor);
        tail.push_str(r#","ops":["#);
        tail.push_str(&ops);
        tail.push(']');
        if let Some(count) = self.count.known() {
            let _ = write!(tail, r#","count":{count}"#);
        }
        if next_changed {
            tail.push_str(r#","next":"#);
            push_opt_str(&mut tail, next.as_deref());
            self.shown_next = next;
            self.shown_boundary = boundary;
        }
        tail.push('}');
        Some(Frame {
            kind: FrameKind::Delta,
            at: self.at,
            cursor,
            tail,
            count_coming: false,
        })
    }

    /// Rows and keys held (for the server-wide budget).
    pub fn held(&self) -> usize {
        self.rows.len()
    }
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => out.push_str(&serde_json::to_string(s).expect("a string")),
        None => out.push_str("null"),
    }
}

fn op_exit(out: &mut String, key: &str, from: usize, why: &str) {
    out.push_str(r#"{"op":"exit","key":"#);
    push_opt_str(out, Some(key));
    let _ = write!(out, r#","from":{from},"why":"{why}"}}"#);
}

fn op_enter(out: &mut String, key: &str, to: usize, row: &str, why: &str) {
    out.push_str(r#"{"op":"enter","key":"#);
    push_opt_str(out, Some(key));
    let _ = write!(out, r#","to":{to},"row":{row},"why":"{why}"}}"#);
}

fn op_update(out: &mut String, key: &str, from: usize, to: usize, row: &str) {
    out.push_str(r#"{"op":"update","key":"#);
    push_opt_str(out, Some(key));
    let _ = write!(out, r#","from":{from},"to":{to},"row":{row}}}"#);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::views::Column;
    use crate::feed::views::def::Table;

    fn window(limit: usize, ids: &[i64]) -> Window {
        let cols = vec![Column {
            name: "id".into(),
            pg_type: "bigint".into(),
            not_null: true,
        }];
        let table = Arc::new(Table::new("t", "t", cols, &["id".to_owned()]).unwrap());
        let def = Arc::new(Def::by_key(table, limit));
        let rows = ids.iter().map(|i| format!(r#"{{"id":{i}}}"#)).collect();
        Window::new(def, Position::end_of(1), rows, Counted::Kept)
    }

    fn counting_window(ids: &[i64], counted: Counted) -> Window {
        let cols = vec![Column {
            name: "id".into(),
            pg_type: "bigint".into(),
            not_null: true,
        }];
        let table = Arc::new(Table::new("t", "t", cols, &["id".to_owned()]).unwrap());
        let mut def = Def::by_key(table, 2);
        def.count = true;
        let rows = ids.iter().map(|i| format!(r#"{{"id":{i}}}"#)).collect();
        Window::new(Arc::new(def), Position::end_of(1), rows, counted)
    }

    fn insert(w: &mut Window, id: i64, at: Position) {
        let json: Arc<str> = format!(r#"{{"id":{id}}}"#).into();
        let row = Arc::new(w.def.table.parse(&json).unwrap());
        w.apply(at, None, Some((&row, &json)));
    }

    #[test]
    fn a_count_that_follows_adds_the_changes_after_its_position() {
        let epoch = Epoch::new("e");
        let mut w = counting_window(&[1, 2, 3], Counted::Coming);
        assert!(w.show(&epoch).tail.contains(r#""count":null"#));
        insert(&mut w, 9, Position { seq: 2, pos: 1 });
        assert!(
            matches!(w.finish(Position::end_of(2), &epoch), Finish::Quiet),
            "no count yet"
        );
        // Read at seq 1: 3 rows; one insert since.
        w.counted(3);
        let Finish::Delta(frame) = w.finish(Position::end_of(2), &epoch) else {
            panic!("the count must be told")
        };
        assert!(frame.tail.contains(r#""ops":[],"count":4"#), "{}", frame.tail);
    }

    #[test]
    fn a_read_that_keeps_the_count_still_counts_the_changes_its_rows_are_ahead_of() {
        let epoch = Epoch::new("e");
        let mut w = counting_window(&[1, 2, 3], Counted::At(3));
        w.show(&epoch);
        // A read at seq 5 (its rows hold seq 4's insert of 8), before the engine passed seq 4 on.
        w.reload(
            Position::end_of(5),
            ["1", "2", "3", "8"]
                .iter()
                .map(|i| format!(r#"{{"id":{i}}}"#))
                .collect(),
            Counted::Kept,
        );
        insert(&mut w, 8, Position { seq: 4, pos: 1 });
        assert_eq!(w.held(), 4, "the rows hold it once");
        let Finish::Delta(frame) = w.finish(Position::end_of(5), &epoch) else {
            panic!("the count changed")
        };
        assert!(frame.tail.contains(r#""count":4"#), "{}", frame.tail);
        // And a change the count already has is not counted twice.
        insert(&mut w, 8, Position { seq: 4, pos: 1 });
        assert!(matches!(w.finish(Position::end_of(5), &epoch), Finish::Quiet));
    }

    #[test]
    fn rows_read_again_reach_subscribers_even_when_no_change_was_applied() {
        let epoch = Epoch::new("e");
        let mut w = window(2, &[1, 2]);
        w.show(&epoch);
        // The views fell behind the feed: the changes were never applied, the window read again.
        w.reload(
            Position::end_of(5),
            vec![r#"{"id":2}"#.into(), r#"{"id":3}"#.into()],
            Counted::Kept,
        );
        let Finish::Delta(frame) = w.finish(Position::end_of(5), &epoch) else {
            panic!("a read that changed the rows must be told")
        };
        assert!(
            frame.tail.contains(r#"{"op":"exit","key":"1","from":0"#),
            "{}",
            frame.tail
        );
        assert!(
            frame.tail.contains(r#"{"op":"enter","key":"3","to":1"#),
            "{}",
            frame.tail
        );
        assert!(matches!(w.finish(Position::end_of(6), &epoch), Finish::Quiet));
    }

    #[test]
    fn a_commit_over_many_rows_leaves_a_window_only_the_rows_it_shows_or_holds_to_remember() {
        let epoch = Epoch::new("e");
        let mut w = window(2, &[1, 2, 3, 4]);
        w.show(&epoch);
        let table = w.def.table.clone();
        for id in 100..10_100 {
            let json: Arc<str> = format!(r#"{{"id":{id}}}"#).into();
            let row = Arc::new(table.parse(&json).unwrap());
            w.apply(Position { seq: 7, pos: id - 99 }, None, Some((&row, &json)));
        }
        assert!(w.touched.len() <= 3 * w.def.limit, "{} remembered", w.touched.len());
        assert!(matches!(w.finish(Position::end_of(7), &epoch), Finish::Quiet));
    }
}
