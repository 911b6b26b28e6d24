//! Live views (PROTOCOL §9, README "Live views"): filtered, sorted, paged windows onto a table,
//! kept exact change by change.
//!
//! One [`Window`] per distinct definition, shared by every subscriber that asks for it. The
//! engine task takes every event the hub publishes ([`Hub::tap`]), in log order, hands each
//! change to the windows of its table that it can affect (an index of their equality filters
//! narrows them), and at the end of each commit sends each changed window's one `view_delta` to
//! its subscribers' queues. The rows before and after a change come from the log (the capture
//! trigger records the row as it was), so a row that stops matching is announced whoever wrote
//! it.
//!
//! A window is read from PostgreSQL when it is made, and again when changes left it too few rows
//! (its buffer below the page ran dry), at a position consistent with the log
//! (`db::snapshot::begin`). While a read runs the window's changes wait in a buffer; those after
//! the read's position are applied to what it returned, so nothing is missed or applied twice.
//! The read is the only database work, once per window, never per subscriber.

pub mod def;
#[cfg(test)]
mod tests;
pub mod value;
mod window;

pub use def::Request;
pub use window::{Counted, Frame, FrameKind};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Feed, FeedError};
use crate::auth::Access;
use crate::db;
use crate::event::{Event, Position};
use crate::hub::Relayed;
use def::{Def, Parsed, Table};
use value::{ColType, Op};
use window::{Finish, Window};

/// Rows all windows together may hold (each holds up to twice its limit): what bounds the
/// views' memory whatever clients ask for. A subscribe that would pass it is refused.
pub const MAX_HELD_ROWS: usize = 1_000_000;
/// Changes a window being read may have waiting; past it they are dropped and the window is read
/// once more when the read ends.
const MAX_WAITING: usize = 100_000;
/// Relayed items the engine applies per hold of its lock.
const BATCH: usize = 256;
/// Commits of at least this many changes are logged (at debug) with how long views took.
const BIG_COMMIT: usize = 10_000;
/// Pause between tries of a window's read that failed (the database is down).
const RETRY: Duration = Duration::from_secs(1);
/// A window's first read is tried this often before its subscribers are told it failed.
const FIRST_TRIES: u32 = 3;
/// How long a re-read that keeps its count waits for the engine to reach the read's position
/// (see [`Views::caught_up`]); past it, the read is installed anyway.
const CATCH_UP: Duration = Duration::from_secs(2);

/// What a connection's views queue receives: a frame for one of its subscriptions, or word that
/// the subscription failed and is gone.
#[derive(Debug, Clone)]
pub enum ViewItem {
    Frame(u64, Arc<Frame>),
    Failed(u64, &'static str),
}

/// Where one connection's view frames go: its views queue, and the signal that closes it as a
/// slow consumer when that queue is full (it then resumes every view with its cursor).
#[derive(Debug, Clone)]
pub struct ViewSink {
    pub tx: mpsc::Sender<ViewItem>,
    pub overflow: CancellationToken,
}

#[derive(Debug)]
struct Sub {
    id: u64,
    sink: ViewSink,
    /// It has no rows yet: it gets the window's `view`, not deltas.
    needs_view: bool,
}

#[derive(Debug)]
struct Slot {
    def: Arc<Def>,
    /// None until the first read ends.
    window: Option<Window>,
    /// While a read runs: the changes that arrived meanwhile.
    waiting: Option<Vec<Arc<Event>>>,
    /// Changes were dropped while the read ran: read again.
    stale: bool,
    /// The next read counts too: the first, and any after changes were lost (the count the
    /// window keeps from changes is wrong then). Other reads keep the count.
    recount: bool,
    /// The read whose count is awaited (0: none); a count of any other read is dropped.
    count_read: u64,
    subs: Vec<Sub>,
}

/// Maps and sets on the engine's hot path (every change × every window it may touch): foldhash,
/// several times faster than std's SipHash on short keys. Its seeds are random per map, and what
/// a client or writer can fill these with is bounded (a window's key sets hold at most 3 × limit
/// keys; windows are bounded by [`MAX_HELD_ROWS`]), so even crafted collisions cost a bounded scan.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// A window, by a number: a change of a table touches many windows, and a definition's text
/// (its key in `by_def`) is long to hash and compare for each.
type WinId = u64;

/// A table's windows, by the equality filter that narrows them, or none.
#[derive(Debug)]
struct TableViews {
    table: Arc<Table>,
    by_value: FastMap<(usize, String), Vec<WinId>>,
    /// The columns `by_value` is keyed on.
    pinned: Vec<usize>,
    others: Vec<WinId>,
}

impl TableViews {
    fn index_changed(&mut self) {
        self.pinned = self.by_value.keys().map(|(c, _)| *c).collect();
        self.pinned.sort_unstable();
        self.pinned.dedup();
    }
}

#[derive(Debug, Default)]
struct State {
    windows: FastMap<WinId, Slot>,
    /// Each definition's window (`Def::id`).
    by_def: HashMap<Arc<str>, WinId>,
    next_id: WinId,
    tables: HashMap<String, TableViews>,
    /// The seq whose changes are being applied.
    current: Option<i64>,
    /// When its first change came, and how many came (for the debug log of big commits).
    current_since: Option<std::time::Instant>,
    current_changes: usize,
    /// Windows the current commit changed.
    dirty: FastSet<WinId>,
    /// Just after the last whole commit applied.
    relayed: Position,
    /// Rows the windows may hold together (twice each limit).
    held: usize,
    /// Each subscription's window.
    subs: HashMap<u64, WinId>,
}

/// The live views of one server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Views {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    feed: Feed,
    state: Mutex<State>,
    tables: Mutex<HashMap<String, Arc<Table>>>,
    count_wait: Duration,
    /// The engine's `State::relayed`, for reads waiting to be installed.
    relayed: watch::Sender<Position>,
}

impl Views {
    /// The views over `feed`, with the engine task that applies the hub's events until `stop`.
    /// A window's first frame waits up to `count_wait` for its count: a count reads every
    /// matching row, which on a big table takes far longer than the window's rows, so past that
    /// the rows go out with `"count":null` and the count follows in a delta.
    pub fn start(feed: Feed, count_wait: Duration, stop: CancellationToken) -> Views {
        let rx = feed.hub.tap();
        let relayed = feed.hub.last();
        let views = Views {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    relayed,
                    ..State::default()
                }),
                feed,
                tables: Mutex::default(),
                count_wait,
                relayed: watch::Sender::new(relayed),
            }),
        };
        let engine = views.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = engine.run(rx) => {}
            }
        });
        views
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(&self, mut rx: mpsc::Receiver<Relayed>) {
        while let Some(item) = rx.recv().await {
            let mut reloads = Vec::new();
            let lost = self.shared.feed.hub.tap_lost();
            let relayed = {
                let mut state = self.lock();
                let epoch = self.shared.feed.hub.epoch();
                match item {
                    Relayed::Event(ev) => state.on_event(ev, &epoch, &mut reloads),
                    Relayed::Upto(at) => state.on_upto(at, &epoch, &mut reloads),
                    Relayed::Reset => state.reset(&mut reloads),
                }
                // What else is waiting, under the same lock; a bounded batch, so a subscribe
                // never waits long for the lock behind a statement of 100,000 rows.
                for _ in 0..BATCH {
                    let Ok(item) = rx.try_recv() else { break };
                    match item {
                        Relayed::Event(ev) => state.on_event(ev, &epoch, &mut reloads),
                        Relayed::Upto(at) => state.on_upto(at, &epoch, &mut reloads),
                        Relayed::Reset => state.reset(&mut reloads),
                    }
                }
                if lost {
                    tracing::warn!("live views fell behind the feed; reading every window again");
                    state.reset(&mut reloads);
                }
                state.relayed
            };
            self.shared.relayed.send_if_modified(|p| {
                let moved = *p != relayed;
                *p = relayed;
                moved
            });
            for id in reloads {
                self.spawn_read(id);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Reads window `id` (in its own task, so a slow read holds up no other window), then
    /// applies what waited meanwhile and tells its subscribers. A count that is not read within
    /// `count_wait` (see [`Views::start`]) follows in a delta of its own.
    fn spawn_read(&self, id: WinId) {
        let views = self.clone();
        tokio::spawn(async move {
            let mut tries = 0;
            loop {
                let (def, recount) = match views.lock().windows.get(&id) {
                    Some(slot) => (slot.def.clone(), slot.def.count && slot.recount),
                    None => return,
                };
                let sql = def.sql(2 * def.limit);
                match views.read(id, &sql, recount).await {
                    Ok(()) => return,
                    Err(e) => {
                        tries += 1;
                        tracing::warn!(error = %e, tries, "reading a live view failed");
                        if tries >= FIRST_TRIES && views.lock().fail_first_read(id) {
                            return;
                        }
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        });
    }

    /// One read of window `id`: its rows installed, and its count when `recount`.
    async fn read(&self, id: WinId, sql: &db::views::WindowSql, recount: bool) -> Result<(), sqlx::Error> {
        let (reading, rows) = db::views::read(
            &self.shared.feed.pool,
            self.shared.feed.standby(crate::metrics::ReadFor::View),
            sql,
        )
        .await?;
        let at = reading.at;
        if !recount {
            reading.end().await?;
            if sql.count.is_some() {
                self.caught_up(at).await;
            }
            self.install(id, at, rows, Counted::Kept);
            return Ok(());
        }
        let wait = self.shared.count_wait;
        let mut count = std::pin::pin!(reading.count(sql));
        // (A wait of zero never waits, not even for a count that is quick.)
        let early = match wait.is_zero() {
            true => None,
            false => tokio::time::timeout(wait, &mut count).await.ok(),
        };
        if let Some(n) = early {
            self.install(id, at, rows, Counted::At(n?));
            return Ok(());
        }
        // The rows go out now; the count follows.
        let token = self.install(id, at, rows, Counted::Coming);
        match count.await {
            Ok(n) => self.counted(id, token, n),
            Err(e) => {
                tracing::warn!(error = %e, "counting a live view failed; it is read again");
                self.recount(id, token);
            }
        }
        Ok(())
    }

    /// Waits until the engine has applied every commit up to `at` (at most [`CATCH_UP`]). A
    /// re-read that keeps its window's count (the count goes on from the changes the engine
    /// applied) may see commits the engine has not reached yet: installed at once, its frame would
    /// carry the read's cursor with a count that misses those commits, and a second frame at the
    /// same cursor would correct it when they come. Installed once the engine is there, its one
    /// frame is exact: those commits' changes waited with the others and count as they apply.
    async fn caught_up(&self, at: Position) {
        let mut relayed = self.shared.relayed.subscribe();
        if tokio::time::timeout(CATCH_UP, relayed.wait_for(|p| *p >= at))
            .await
            .is_err()
        {
            tracing::debug!(?at, "a live view's read is installed before the engine reached it");
        }
    }

    /// Installs a read (see [`State::install`]) and starts the reads it asks for; returns the
    /// read's token for a count that is [`Counted::Coming`].
    fn install(&self, id: WinId, at: Position, rows: Vec<String>, counted: Counted) -> u64 {
        let mut reloads = Vec::new();
        let epoch = self.shared.feed.hub.epoch().clone();
        let token = self.lock().install(id, at, rows, counted, &epoch, &mut reloads);
        for id in reloads {
            self.spawn_read(id);
        }
        token
    }

    /// The count of read `token` of window `id` is `n`: its subscribers get it.
    fn counted(&self, id: WinId, token: u64, n: i64) {
        let epoch = self.shared.feed.hub.epoch().clone();
        let mut reloads = Vec::new();
        self.lock().counted(id, token, n, &epoch, &mut reloads);
        for id in reloads {
            self.spawn_read(id);
        }
    }

    /// The count of read `token` of window `id` failed: the window is read again, with its count.
    fn recount(&self, id: WinId, token: u64) {
        let read = {
            let mut state = self.lock();
            match state.windows.get_mut(&id) {
                Some(slot) if slot.count_read == token => {
                    slot.count_read = 0;
                    slot.recount = true;
                    // Unless a read runs already: it will be followed by one with the count.
                    match slot.waiting {
                        Some(_) => {
                            slot.stale = true;
                            false
                        }
                        None => {
                            slot.waiting = Some(Vec::new());
                            true
                        }
                    }
                }
                _ => false,
            }
        };
        if read {
            self.spawn_read(id);
        }
    }

    /// The table `topic` as views see it (checked with the feed first).
    async fn table(&self, topic: &str) -> Result<Arc<Table>, FeedError> {
        let tracked = self.shared.feed.check_topic(topic).await?;
        if topic.contains(':') {
            return Err(FeedError::BadRequest(format!(
                "a view's topic is a table ({:?}), not a row",
                tracked.topic
            )));
        }
        if let Some(t) = self.shared.tables.lock().unwrap_or_else(|e| e.into_inner()).get(topic) {
            return Ok(t.clone());
        }
        let (columns, pk) = db::views::columns(&self.shared.feed.pool, topic)
            .await?
            .ok_or_else(|| FeedError::UnknownTopic(topic.to_owned()))?;
        let table = Arc::new(Table::new(topic, &tracked.relation, columns, &pk)?);
        self.shared
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned(), table.clone());
        Ok(table)
    }

    /// Subscribes `sink` to the window of `req`: its `view` frame comes through the sink (at once
    /// when the window exists, after its first read otherwise), then its deltas. `since`, a cursor
    /// of an earlier frame of this view, is checked for form only: a resumed view is sent whole.
    /// Returns the subscription's id, for [`Views::unsubscribe`].
    pub async fn subscribe(
        &self,
        req: &Request,
        since: Option<&str>,
        access: &Access,
        sink: ViewSink,
    ) -> Result<u64, FeedError> {
        if let Some(since) = since {
            // Only its form: another log's cursor, or an old one, is no error, as the view comes
            // whole anyway.
            if self.shared.feed.hub.epoch().parse_cursor(since).is_err() {
                return Err(FeedError::BadRequest(format!("malformed cursor {since:?}")));
            }
        }
        may_be_confined(access, req)?;
        let table = self.table(&req.topic).await?;
        let def = Def::parse(req, table, &self.shared.feed.pool).await?;
        confine(access, &def)?;
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let sub = Sub {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            sink,
            needs_view: true,
        };
        let id = sub.id;
        let epoch = self.shared.feed.hub.epoch();
        let read = self.lock().add(def, sub, &epoch)?;
        if let Some(window) = read {
            self.spawn_read(window);
        }
        Ok(id)
    }

    /// Ends subscription `sub`; a window left without subscribers is dropped.
    pub fn unsubscribe(&self, sub: u64) {
        self.lock().remove(sub);
    }

    /// Windows, their subscriptions, and the rows they hold.
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.lock();
        let subs = state.windows.values().map(|s| s.subs.len()).sum();
        let rows = state
            .windows
            .values()
            .filter_map(|s| s.window.as_ref())
            .map(Window::held)
            .sum();
        (state.windows.len(), subs, rows)
    }
}

/// The column by which a member's view of `topic` must be confined to the member's studies
/// (PROTOCOL §9): `studies` by `id`, `messages` and `files` by `study_id`; `None` for an admin.
fn confining_column(access: &Access, topic: &str) -> Result<Option<&'static str>, FeedError> {
    match (access, topic) {
        (Access::Admin, _) => Ok(None),
        (Access::Member(_), "studies") => Ok(Some("id")),
        (Access::Member(_), "messages" | "files") => Ok(Some("study_id")),
        (Access::Member(_), other) => Err(FeedError::Forbidden(format!("a member may not view {other:?}"))),
    }
}

fn unconfined(topic: &str, column: &str) -> FeedError {
    FeedError::Forbidden(format!(
        "a member's view of {topic:?} must filter {column} with eq or in on the member's studies"
    ))
}

/// A member's request that cannot be confined, refused before anything is read for it: its
/// filter must hold `eq` or `in` on the confining column.
fn may_be_confined(access: &Access, req: &Request) -> Result<(), FeedError> {
    let Some(column) = confining_column(access, &req.topic)? else {
        return Ok(());
    };
    match req.filter.get(column) {
        Some(spec) if spec.starts_with("eq.") || spec.starts_with("in.") => Ok(()),
        _ => Err(unconfined(&req.topic, column)),
    }
}

/// A member may open a view only when its filter confines it to the member's studies: `eq` or
/// `in` on the confining column ([`confining_column`]) with every value one of its studies.
fn confine(access: &Access, def: &Def) -> Result<(), FeedError> {
    let Access::Member(studies) = access else { return Ok(()) };
    let Some(column) = confining_column(access, &def.table.topic)? else {
        return Ok(());
    };
    let lits = def.filter.iter().find_map(|(c, op)| match op {
        _ if def.table.cols[*c].name != column => None,
        Op::Eq(l) => Some(vec![l]),
        Op::In(ls) => Some(ls.iter().collect()),
        _ => None,
    });
    let confined = lits.is_some_and(|lits| {
        lits.iter()
            .all(|l| l.json.parse::<i64>().is_ok_and(|id| studies.contains(&id)))
    });
    if confined {
        Ok(())
    } else {
        Err(unconfined(&def.table.topic, column))
    }
}

/// Whether the JSON text of an equality literal names the value as the row's JSON would: true for
/// types PostgreSQL renders one way per value (not numeric `1.5`/`1.50`, nor floats' `-0`).
fn indexable(ty: ColType) -> bool {
    !matches!(ty, ColType::Numeric | ColType::Real | ColType::Double)
}

/// The values a window's equality filter pins, if it has one that can index it.
fn pins(def: &Def) -> Option<(usize, Vec<String>)> {
    def.filter.iter().find_map(|(c, op)| {
        let ty = def.table.cols[*c].ty?;
        if !indexable(ty) {
            return None;
        }
        match op {
            Op::Eq(l) => Some((*c, vec![l.json.clone()])),
            Op::In(ls) => Some((*c, ls.iter().map(|l| l.json.clone()).collect())),
            _ => None,
        }
    })
}

impl State {
    /// Adds `sub` to the window of `def`, making the window if it is new; returns the window to
    /// read when it is.
    fn add(&mut self, def: Def, mut sub: Sub, epoch: &crate::event::Epoch) -> Result<Option<WinId>, FeedError> {
        if let Some(slot) = self.by_def.get(def.id.as_str()).and_then(|id| self.windows.get_mut(id)) {
            self.subs.insert(sub.id, self.by_def[def.id.as_str()]);
            if let (Some(w), None) = (&slot.window, &slot.waiting) {
                let frame = Arc::new(w.view_frame(epoch));
                if send(&sub, ViewItem::Frame(sub.id, frame)) {
                    sub.needs_view = false;
                    slot.subs.push(sub);
                }
            } else {
                slot.subs.push(sub);
            }
            return Ok(None);
        }
        let cap = 2 * def.limit;
        if self.held + cap > MAX_HELD_ROWS {
            return Err(FeedError::Full(format!(
                "the server holds as many live view rows as it may ({MAX_HELD_ROWS}); try a smaller limit or later"
            )));
        }
        self.held += cap;
        self.next_id += 1;
        let id = self.next_id;
        self.by_def.insert(def.id.as_str().into(), id);
        let def = Arc::new(def);
        let table = self
            .tables
            .entry(def.table.topic.clone())
            .or_insert_with(|| TableViews {
                table: def.table.clone(),
                by_value: FastMap::default(),
                pinned: Vec::new(),
                others: Vec::new(),
            });
        // A table whose columns were read again (a new definition) replaces the old shape.
        table.table = def.table.clone();
        match pins(&def) {
            Some((col, values)) => {
                for v in values {
                    table.by_value.entry((col, v)).or_default().push(id);
                }
                table.index_changed();
            }
            None => table.others.push(id),
        }
        self.subs.insert(sub.id, id);
        self.windows.insert(
            id,
            Slot {
                def,
                window: None,
                waiting: Some(Vec::new()),
                stale: false,
                recount: true,
                count_read: 0,
                subs: vec![sub],
            },
        );
        Ok(Some(id))
    }

    fn remove(&mut self, sub: u64) {
        let Some(id) = self.subs.remove(&sub) else { return };
        let Some(slot) = self.windows.get_mut(&id) else { return };
        slot.subs.retain(|x| x.id != sub);
        if slot.subs.is_empty() {
            self.drop_window(id);
        }
    }

    fn drop_window(&mut self, id: WinId) {
        let Some(slot) = self.windows.remove(&id) else { return };
        self.by_def.remove(slot.def.id.as_str());
        self.held -= 2 * slot.def.limit;
        for sub in &slot.subs {
            self.subs.remove(&sub.id);
        }
        self.dirty.remove(&id);
        if let Some(t) = self.tables.get_mut(&slot.def.table.topic) {
            t.others.retain(|x| *x != id);
            t.by_value.retain(|_, ids| {
                ids.retain(|x| *x != id);
                !ids.is_empty()
            });
            t.index_changed();
            if t.others.is_empty() && t.by_value.is_empty() {
                self.tables.remove(&slot.def.table.topic);
            }
        }
    }

    fn on_event(&mut self, ev: Arc<Event>, epoch: &crate::event::Epoch, reloads: &mut Vec<WinId>) {
        if self.current.is_some_and(|s| s != ev.at.seq) {
            self.finish_commit(epoch, reloads);
        }
        if self.current.is_none() {
            self.current_since = Some(std::time::Instant::now());
            self.current_changes = 0;
        }
        self.current = Some(ev.at.seq);
        self.current_changes += 1;
        let Some(views) = ev.topics.first().and_then(|t| self.tables.get(t)) else {
            return;
        };
        let change = Change::read(&views.table, &views.pinned, &ev);
        // The windows an equality filter pins to the row's values before and after (once each,
        // though an `in` may pin one window to both), and every other window of the table.
        let mut pinned: Vec<WinId> = Vec::new();
        for (col, raw) in change.pinned_values() {
            if let Some(ids) = views.by_value.get(&(col, raw)) {
                pinned.extend(ids);
            }
        }
        pinned.sort_unstable();
        pinned.dedup();
        for &id in views.others.iter().chain(&pinned) {
            let Some(slot) = self.windows.get_mut(&id) else {
                continue;
            };
            if let Some(waiting) = &mut slot.waiting {
                if waiting.len() < MAX_WAITING {
                    waiting.push(ev.clone());
                } else {
                    waiting.clear();
                    slot.stale = true;
                    slot.recount = true;
                }
                continue;
            }
            if let Some(w) = &mut slot.window {
                change.apply(w, ev.at);
                self.dirty.insert(id);
            }
        }
    }

    fn on_upto(&mut self, at: Position, epoch: &crate::event::Epoch, reloads: &mut Vec<WinId>) {
        if self.current.is_some_and(|s| s <= at.seq) {
            self.finish_commit(epoch, reloads);
        }
        self.relayed = self.relayed.max(at);
    }

    /// Ends the current commit: each window it changed sends its one delta, or asks for a read.
    fn finish_commit(&mut self, epoch: &crate::event::Epoch, reloads: &mut Vec<WinId>) {
        let Some(seq) = self.current.take() else { return };
        let at = Position::end_of(seq);
        self.relayed = self.relayed.max(at);
        let dirty: Vec<WinId> = self.dirty.drain().collect();
        if self.current_changes >= BIG_COMMIT {
            tracing::debug!(
                seq,
                changes = self.current_changes,
                windows = dirty.len(),
                applied_ms = self.current_since.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3),
                "live views applied a big commit"
            );
        }
        for id in dirty {
            let Some(slot) = self.windows.get_mut(&id) else {
                continue;
            };
            if slot.waiting.is_some() {
                continue;
            }
            let Some(w) = &mut slot.window else { continue };
            match w.finish(at, epoch) {
                Finish::Quiet => slot.emit(None, epoch),
                Finish::Delta(frame) => slot.emit(Some(frame), epoch),
                Finish::Reload => {
                    slot.waiting = Some(Vec::new());
                    reloads.push(id);
                }
            }
            if slot.subs.is_empty() {
                self.drop_window(id);
            }
        }
    }

    /// The feed started over, or the views fell behind it: every window is read again.
    fn reset(&mut self, reloads: &mut Vec<WinId>) {
        self.current = None;
        self.dirty.clear();
        for (id, slot) in &mut self.windows {
            // Changes were lost: the count kept from them is no more.
            slot.recount = true;
            match &mut slot.waiting {
                // Already being read: read once more, as this read may predate the reset.
                Some(w) => {
                    w.clear();
                    slot.stale = true;
                }
                None => {
                    slot.waiting = Some(Vec::new());
                    reloads.push(*id);
                }
            }
        }
    }

    /// A read of window `id` at `at` ended: the changes that waited are applied to it (those at
    /// or before its position are in its rows already, and change only a count it kept), and its
    /// subscribers get their frames. Returns the read's token (for a count that is
    /// [`Counted::Coming`]).
    fn install(
        &mut self,
        id: WinId,
        at: Position,
        rows: Vec<String>,
        counted: Counted,
        epoch: &crate::event::Epoch,
        reloads: &mut Vec<WinId>,
    ) -> u64 {
        static NEXT_READ: AtomicU64 = AtomicU64::new(1);
        let token = NEXT_READ.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.windows.get_mut(&id) else {
            return token;
        };
        if std::mem::take(&mut slot.stale) {
            slot.waiting = Some(Vec::new());
            reloads.push(id);
            return token;
        }
        match counted {
            Counted::Kept => {}
            Counted::At(_) => {
                slot.recount = false;
                slot.count_read = 0;
            }
            Counted::Coming => {
                slot.recount = false;
                slot.count_read = token;
            }
        }
        let waiting = slot.waiting.take().unwrap_or_default();
        let first = slot.window.is_none();
        let w = match &mut slot.window {
            Some(w) => {
                w.reload(at, rows, counted);
                w
            }
            None => slot.window.insert(Window::new(slot.def.clone(), at, rows, counted)),
        };
        let mut mid_commit = false;
        for ev in waiting {
            // Those at or before the read's position change only a count kept from changes.
            Change::read(&slot.def.table, &[], &ev).apply(w, ev.at);
            mid_commit |= ev.at > at && Some(ev.at.seq) == self.current;
        }
        if mid_commit {
            // The rest of the commit is still to come: its end sends the frames.
            self.dirty.insert(id);
            return token;
        }
        w.at = w.at.max(self.relayed);
        let frame = if first {
            w.show(epoch);
            None
        } else {
            match w.finish(w.at, epoch) {
                Finish::Delta(frame) => Some(frame),
                Finish::Quiet => None,
                Finish::Reload => {
                    slot.waiting = Some(Vec::new());
                    reloads.push(id);
                    return token;
                }
            }
        };
        slot.emit(frame, epoch);
        if slot.subs.is_empty() {
            self.drop_window(id);
        }
        token
    }

    /// The count of read `token` of window `id` is `n` (as of that read's position): the window
    /// adds what changed since, and unless the current commit or a read will tell its subscribers,
    /// a delta does now.
    fn counted(&mut self, id: WinId, token: u64, n: i64, epoch: &crate::event::Epoch, reloads: &mut Vec<WinId>) {
        let Some(slot) = self.windows.get_mut(&id) else { return };
        if slot.count_read != token {
            return;
        }
        slot.count_read = 0;
        let Some(w) = &mut slot.window else { return };
        w.counted(n);
        if slot.waiting.is_some() || self.dirty.contains(&id) {
            return;
        }
        w.at = w.at.max(self.relayed);
        match w.finish(w.at, epoch) {
            Finish::Delta(frame) => slot.emit(Some(frame), epoch),
            Finish::Quiet => {}
            Finish::Reload => {
                slot.waiting = Some(Vec::new());
                reloads.push(id);
            }
        }
    }

    /// A window's first read failed for good: its subscribers are told, and it is dropped.
    /// False when the window has been read before (its reads go on until the database is back).
    fn fail_first_read(&mut self, id: WinId) -> bool {
        let Some(slot) = self.windows.get(&id) else { return true };
        if slot.window.is_some() {
            return false;
        }
        for sub in &slot.subs {
            send(sub, ViewItem::Failed(sub.id, FeedError::UNAVAILABLE));
        }
        self.drop_window(id);
        true
    }
}

impl Slot {
    /// Sends `delta` to the subscribers that have the window's rows, and the `view` to those that
    /// have none yet; drops subscribers whose queue is full or gone.
    fn emit(&mut self, delta: Option<Frame>, epoch: &crate::event::Epoch) {
        let Some(w) = &self.window else { return };
        let delta = delta.map(Arc::new);
        let mut view = None;
        self.subs.retain_mut(|sub| {
            let frame = if sub.needs_view {
                view.get_or_insert_with(|| Arc::new(w.view_frame(epoch))).clone()
            } else {
                match &delta {
                    Some(d) => d.clone(),
                    None => return true,
                }
            };
            sub.needs_view = false;
            send(sub, ViewItem::Frame(sub.id, frame))
        });
    }
}

/// Queues `item` for a subscriber without waiting; false (and its connection closed as a slow
/// consumer) when its queue is full, false when the connection is gone.
fn send(sub: &Sub, item: ViewItem) -> bool {
    match sub.sink.tx.try_send(item) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            sub.sink.overflow.cancel();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// One event's rows, read once for all the windows of its table.
struct Change {
    before: Option<Side>,
    after: Option<Side>,
}

/// One side of a change: the row as views compare it, its JSON, and the JSON text of the columns
/// the equality index pins (it knows values as PostgreSQL renders them).
struct Side {
    row: Arc<Parsed>,
    json: Arc<str>,
    raw: HashMap<usize, String>,
}

impl Change {
    /// Reads both rows of `ev`, keeping the JSON text of the columns the table's equality index
    /// pins (`pinned`), and of no other.
    fn read(table: &Table, pinned: &[usize], ev: &Event) -> Change {
        let side = |json: &str| -> Option<Side> {
            let map: HashMap<String, &RawValue> = serde_json::from_str(json).ok()?;
            let row = Arc::new(table.parse_map(&map)?);
            let raw = pinned
                .iter()
                .filter_map(|&i| map.get(&table.cols[i].name).map(|r| (i, r.get().to_owned())))
                .collect();
            Some(Side {
                row,
                json: json.into(),
                raw,
            })
        };
        Change {
            before: ev.change.before.as_deref().and_then(side),
            after: ev.change.after.as_deref().and_then(side),
        }
    }

    /// The (column, JSON value) pairs of the row before and after, for the equality index.
    fn pinned_values(&self) -> impl Iterator<Item = (usize, String)> + '_ {
        self.before
            .iter()
            .chain(&self.after)
            .flat_map(|side| side.raw.iter().map(|(c, v)| (*c, v.clone())))
    }

    fn apply(&self, w: &mut Window, at: Position) {
        w.apply(
            at,
            self.before.as_ref().map(|s| &s.row),
            self.after.as_ref().map(|s| (&s.row, &s.json)),
        );
    }
}
