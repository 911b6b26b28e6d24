//! The feed as transports see it: topics checked against the tracked tables, cursors, snapshots,
//! and [`Subscriptions`], which join a resume or a snapshot to the live stream without gap or
//! overlap. Transports (WebSocket, SSE, long-poll) only frame what this module hands them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::auth::Access;
use crate::db::log::{self, Page, Standing};
use crate::db::{snapshot, tracked::Tracked};
use crate::event::{CursorCheck, Event, Position, Topic};
use crate::hub::{Backlog, Delivery, Hub, Outbox};

/// Why a subscription could not be made. Every variant but `Db` is the client's doing.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The cursor can no longer (or never could) be served from this log: take a snapshot.
    /// Carries the `reason` of `refresh_needed`.
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("cursor cannot be resumed: {0}")]
    Refresh(&'static str),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The database stayed busy beyond our patience: a snapshot could not start.
    #[error("{0}")]
    Busy(&'static str),
    /// A server-side mistake (never expected), such as a snapshot handed to SSE.
    #[error("internal error: {0}")]
    Internal(String),
    /// The client's connection failed while we were sending; nothing more to do for it.
    #[error("connection closed")]
    Gone,
    /// What was asked for is larger than one answer may be (a snapshot over the limit).
    #[error("{0}")]
    TooLarge(String),
}

impl FeedError {
    /// What a client is told when the feed's database fails: the same words on every transport
    /// and in REST, and nothing of the cause, which is logged instead.
    pub const UNAVAILABLE: &'static str = "the database is unavailable or failed; try again later";
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// From now on.
    Live,
    /// With every event after this position.
    After(Position),
    /// With a snapshot of the one topic (of this table), then every event after it.
    Snapshot(&'a Tracked),
}

/// The default of `--max-snapshot`: the largest snapshot one frame may carry.
pub const MAX_SNAPSHOT: usize = 16 << 20;

/// The least time between two reloads of the tracked tables on a miss. A topic of an unknown
/// table costs no database work of its own: misses wait for the next reload (at most this long)
/// and share it, so a flood of unknown names costs the database one small query per interval,
/// server-wide, and a table tracked a moment ago is still found.
const RELOAD_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Feed {
    pub pool: PgPool,
    pub hub: Arc<Hub>,
    tracked: Arc<RwLock<HashMap<String, Arc<Tracked>>>>,
    /// When the last reload on a miss started; held while one runs, so misses share it.
    reloaded: Arc<tokio::sync::Mutex<Option<Instant>>>,
    /// The largest snapshot sent, in bytes of JSON (`--max-snapshot`).
    max_snapshot: usize,
    /// Commits one log read of a resume walks at most (`log::RESUME_SCAN`).
    resume_scan: i64,
}

impl Feed {
    pub async fn new(pool: PgPool, hub: Arc<Hub>) -> Result<Self, sqlx::Error> {
        let feed = Feed {
            pool,
            hub,
            tracked: Default::default(),
            reloaded: Default::default(),
            max_snapshot: MAX_SNAPSHOT,
            resume_scan: log::RESUME_SCAN,
        };
        feed.reload_tracked().await?;
        Ok(feed)
    }

    /// Sets the largest snapshot (bytes of JSON) and the commits one resume read may walk.
    pub fn with_limits(mut self, max_snapshot: usize, resume_scan: i64) -> Self {
        self.max_snapshot = max_snapshot;
        self.resume_scan = resume_scan.max(1);
        self
    }

    pub fn max_snapshot(&self) -> usize {
        self.max_snapshot
    }

    async fn reload_tracked(&self) -> Result<(), sqlx::Error> {
        let all = crate::db::tracked::load(&self.pool).await?;
        let map = all.into_iter().map(|t| (t.topic.clone(), Arc::new(t))).collect();
        *self.tracked.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(())
    }

    fn lookup(&self, table: &str) -> Option<Arc<Tracked>> {
        self.tracked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            .cloned()
    }

    /// Checks a topic (PROTOCOL §3): its table must be tracked, its key plausible for that table.
    /// A table tracked since the last look (`pgfeed.track` by anyone) is found by reloading.
    pub async fn check_topic(&self, topic: &str) -> Result<Arc<Tracked>, FeedError> {
        let parsed = Topic::parse(topic).map_err(|_| FeedError::BadRequest(format!("malformed topic {topic:?}")))?;
        let table = match self.lookup(parsed.table) {
            Some(t) => t,
            None => {
                self.reload_after(Instant::now()).await?;
                self.lookup(parsed.table)
                    .ok_or_else(|| FeedError::UnknownTopic(topic.to_owned()))?
            }
        };
        match parsed.key {
            Some(key) if !table.key_is_plausible(key) => Err(FeedError::UnknownTopic(topic.to_owned())),
            _ => Ok(table),
        }
    }

    /// Makes sure the tracked tables were reloaded after `asked` (a miss's time), so a table
    /// tracked before the miss is found; at most one reload per [`RELOAD_EVERY`], shared by every
    /// miss that waited for it.
    async fn reload_after(&self, asked: Instant) -> Result<(), sqlx::Error> {
        let mut last = self.reloaded.lock().await;
        if last.is_some_and(|at| at >= asked) {
            return Ok(());
        }
        if let Some(at) = *last {
            tokio::time::sleep_until((at + RELOAD_EVERY).into()).await;
        }
        *last = Some(Instant::now());
        self.reload_tracked().await
    }

    /// Whether `access` may subscribe to `topic` (PROTOCOL §8): an admin to anything; a member
    /// to its studies' rooms (`studies:<id>`) and to rows that belong to them (`messages:<id>`,
    /// `files:<id>`, judged by the row's study, so guessing ids reveals nothing).
    pub async fn authorize(&self, access: &Access, topic: &str, table: &Tracked) -> Result<(), FeedError> {
        if access.is_admin() {
            return Ok(());
        }
        let forbidden = || FeedError::Forbidden(format!("this token may not subscribe to {topic:?}"));
        let key = Topic::parse(topic)
            .ok()
            .and_then(|t| t.key)
            .and_then(|k| k.parse::<i64>().ok());
        let study = match (table.topic.as_str(), key) {
            ("studies", Some(id)) => Some(id),
            (table @ ("messages" | "files"), Some(id)) => crate::db::rows::study_of(&self.pool, table, id).await?,
            _ => None,
        };
        match study {
            Some(id) if access.may_study(id) => Ok(()),
            _ => Err(forbidden()),
        }
    }

    /// Reads a client's cursor: garbage is a bad request; another log's cursor, one that
    /// retention has passed, or one from the future needs a snapshot.
    pub async fn parse_cursor(&self, cursor: &str) -> Result<Position, FeedError> {
        match self.hub.epoch().parse_cursor(cursor) {
            Err(_) => Err(FeedError::BadRequest(format!("malformed cursor {cursor:?}"))),
            Ok(CursorCheck::Foreign) => Err(FeedError::Refresh("cursor_unknown")),
            Ok(CursorCheck::Ours(at)) => match log::standing(&self.pool, at).await? {
                Standing::Kept => Ok(at),
                Standing::Expired => Err(FeedError::Refresh("cursor_expired")),
                Standing::Unknown => Err(FeedError::Refresh("cursor_unknown")),
            },
        }
    }

    pub fn cursor(&self, at: Position) -> String {
        self.hub.epoch().cursor(at)
    }

    /// The current position: just after the newest final commit, as the database sees it now
    /// (never before what the hub relayed). Where a live subscription starts.
    pub async fn head(&self) -> Result<Position, FeedError> {
        let last = self.hub.last();
        Ok(log::final_head(&self.pool, last.seq).await?.max(last))
    }

    /// Up to `limit` events after `after` on any of the checked `topics`, in commit order, each
    /// event once (see [`first_delivery`]); the position to read after next time; and whether
    /// more may follow at once. When the page is not full that position is the last commit the
    /// read walked, so a client whose topics are quiet still moves forward (and its cursor does
    /// not age out of retention). One read walks at most `resume_scan` commits: when the log
    /// goes on beyond them, more may follow though the page is not full.
    pub async fn changes(
        &self,
        topics: &[String],
        after: Position,
        limit: i64,
    ) -> Result<(Vec<Delivery>, Position, bool), FeedError> {
        let known = self.hub.last().seq;
        let read = log::read_after_any(&self.pool, after, topics, limit, known, self.resume_scan).await?;
        let (scanned, upto) = (read.scanned, read.upto);
        let rows = match read.page {
            Page::Expired => return Err(FeedError::Refresh("cursor_expired")),
            Page::Rows(rows) => rows,
        };
        let full = rows.len() as i64 >= limit;
        let epoch = self.hub.epoch();
        let mut next = after;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            next = Position {
                seq: row.seq,
                pos: row.pos,
            };
            // Only the frame this stream sends: see `first_delivery`.
            let Some(i) = row.topics.iter().position(|t| topics.contains(t)) else {
                continue;
            };
            let event = Event::from_row_on(row, i, epoch);
            out.push(Delivery::new(Arc::new(event), 0));
        }
        if !full {
            next = next.max(Position::end_of(scanned));
        }
        Ok((out, next, full || scanned < upto))
    }

    /// The topic's current state and the position it reflects. `topic` must have passed `check_topic`.
    pub async fn snapshot(&self, topic: &str, table: &Tracked) -> Result<(Position, String), FeedError> {
        let key = Topic::parse(topic).ok().and_then(|t| t.key);
        let of = match key {
            None => snapshot::Of::Table(table),
            Some(id) if table.topic == "studies" => snapshot::Of::Room(id.parse().unwrap_or(-1)),
            Some(key) => snapshot::Of::Row(table, key),
        };
        let (at, data) = snapshot::take(&self.pool, of, self.max_snapshot).await.map_err(|e| {
            if log::is_lock_timeout(&e) {
                FeedError::Busy("a commit has been in flight for 10 s, so the snapshot could not start; try again")
            } else {
                FeedError::from(e)
            }
        })?;
        let data = data.ok_or_else(|| {
            FeedError::TooLarge(format!(
                "the snapshot of {topic:?} is over {} bytes: read the rows page by page through the REST \
                 API (?limit=&after=), then subscribe with since",
                self.max_snapshot
            ))
        })?;
        Ok((at, data))
    }
}

/// What [`Subscriptions::add`] sends before a subscription's live events.
#[derive(Debug)]
pub enum Item {
    /// The subscription is made; its cursor is this position.
    Subscribed(Position),
    /// A snapshot of the topic: position and JSON.
    Snapshot(Position, String),
    /// One event of the backlog.
    Event(Delivery),
}

/// Where [`Subscriptions::add`] sends what precedes the live stream: the transport's writer.
pub trait Emit: Send {
    /// Sends one item to the client; `Err(FeedError::Gone)` when the connection failed. A writer
    /// may hold backlog events until [`Emit::flush`].
    fn emit(&mut self, item: Item) -> impl std::future::Future<Output = Result<(), FeedError>> + Send;

    /// Sends whatever `emit` held back. Called after each page of backlog, so a resume writes
    /// many events per socket write instead of one.
    fn flush(&mut self) -> impl std::future::Future<Output = Result<(), FeedError>> + Send {
        async { Ok(()) }
    }
}

/// One connection's subscriptions, all fed through one [`Outbox`]. For each topic it keeps the
/// position of the last thing sent: the resume backlog and the live queue may overlap, and what
/// is at or before that position is dropped, so every event is sent once, in order.
#[derive(Debug)]
pub struct Subscriptions {
    feed: Feed,
    outbox: Outbox,
    sent: HashMap<String, Position>,
    /// Set by [`Subscriptions::add`] for a set of several topics: the position of the last event sent on the whole
    /// connection, which then sends each event once and in commit order across its topics.
    once: Option<Position>,
    /// Who the client is: a member's subscriptions to rows see them leave and enter its studies
    /// ([`crate::rights`]). Admin unless [`Subscriptions::with_access`] says otherwise.
    access: Access,
}

impl Subscriptions {
    pub fn new(feed: Feed, outbox: Outbox) -> Self {
        Subscriptions {
            feed,
            outbox,
            sent: HashMap::new(),
            once: None,
            access: Access::Admin,
        }
    }

    /// These subscriptions are `access`'s: every delivery passes [`crate::rights::admit`].
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Whether the client may be sent `d`, and how (rights follow the row: [`crate::rights`]).
    fn admit(&self, d: &mut Delivery) -> bool {
        crate::rights::admit(&self.access, d)
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.sent.contains_key(topic)
    }

    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Subscribes to a set of checked topics from `start`, handing `emit` the `subscribed`
    /// answer, the snapshot if asked, and the backlog, in commit order, each event once.
    /// Afterwards, live deliveries pass [`Self::accept`]. Every transport subscribes here: a
    /// WebSocket subscribe is the set of its one topic, with its own cursor; SSE and long-poll
    /// ask for a set of several topics, which share one cursor (see [`Self::start`]).
    ///
    /// Why several topics are one set rather than one subscribe each: that would send topic A's
    /// whole backlog, then B's, so positions would go back and forth, and a single resume cursor
    /// (SSE's `Last-Event-ID`) would skip or repeat events. Read together, every position sent is
    /// past the previous one, and "everything up to the last id" is true for every topic.
    ///
    /// A long backlog is paged from the log *before* registering with the hub, so the live queue
    /// does not fill while the client catches up; only the last short stretch overlaps, and the
    /// overlap is dropped by position.
    pub async fn add(&mut self, topics: &[String], start: Start<'_>, emit: &mut impl Emit) -> Result<(), FeedError> {
        for topic in topics {
            self.remove(topic);
        }
        let hub = self.feed.hub.clone();
        let from = match start {
            Start::Live => {
                // "Now" is the database's now: a commit made before this subscribe is not sent,
                // even if the listener has not relayed it yet. Registering first, then reading
                // the head, means everything after the head arrives through the queue.
                for topic in topics {
                    hub.subscribe(topic, &self.outbox, None);
                }
                let now = match self.feed.head().await {
                    Ok(now) => now,
                    Err(e) => {
                        topics.iter().for_each(|t| hub.unsubscribe(t, &self.outbox));
                        return Err(e);
                    }
                };
                self.start(topics, now);
                return emit.emit(Item::Subscribed(now)).await;
            }
            Start::After(at) => {
                emit.emit(Item::Subscribed(at)).await?;
                at
            }
            Start::Snapshot(table) => {
                // A snapshot is one topic's state at one position; several topics have no
                // common one to resume from.
                let [topic] = topics else {
                    return Err(FeedError::BadRequest(
                        "a merged stream cannot start with a snapshot".into(),
                    ));
                };
                let (at, data) = self.feed.snapshot(topic, table).await?;
                emit.emit(Item::Subscribed(at)).await?;
                emit.emit(Item::Snapshot(at, data)).await?;
                at
            }
        };
        self.start(topics, from);
        let outcome = self.backlog(topics, from, emit).await;
        if outcome.is_err() {
            for topic in topics {
                self.remove(topic);
            }
        }
        outcome
    }

    /// Records `topics` as sent up to `at`. A set of several topics also shares one position
    /// (`once`), so an event on two of them goes out once; a set of one keeps its own, so a
    /// WebSocket's subscriptions stay independent of each other.
    fn start(&mut self, topics: &[String], at: Position) {
        for topic in topics {
            self.sent.insert(topic.clone(), at);
        }
        self.once = (topics.len() > 1).then_some(at);
    }

    /// Emits everything after `from` on `topics` up to where the hub's queue takes over, and
    /// registers with the hub. While the hub's ring does not reach back to the read position the
    /// log is paged unregistered; then registering returns the ring's part (or says the log must
    /// be read once more), and what the queue repeats is dropped by position in [`Self::accept`].
    async fn backlog(&mut self, topics: &[String], from: Position, emit: &mut impl Emit) -> Result<(), FeedError> {
        let hub = self.feed.hub.clone();
        // How far the log has been read; what was sent is tracked by `accept`.
        let mut read = from;
        if !hub.covers(read) {
            self.catch_up(topics, &mut read, emit, |at| !hub.covers(at)).await?;
        }
        let mut ring = Vec::new();
        let mut from_log = false;
        for topic in topics {
            match hub.subscribe(topic, &self.outbox, Some(read)).1 {
                Backlog::Ring(found) => ring.extend(found.into_iter().map(|d| d.event)),
                Backlog::Log => from_log = true,
                Backlog::None => {}
            }
        }
        if from_log {
            return self.catch_up(topics, &mut read, emit, |_| true).await;
        }
        ring.sort_by_key(|e| e.at);
        ring.dedup_by_key(|e| e.at);
        for mut d in ring.into_iter().filter_map(|e| first_delivery(e, topics)) {
            if self.accept(&mut d) {
                emit.emit(Item::Event(d)).await?;
            }
        }
        emit.flush().await
    }

    /// Emits the log after `read` on `topics` page by page ([`Feed::changes`]), moving `read`, up
    /// to the last page or until `more(read)` says stop after a full one. While a page is sent
    /// the next is read, so the database and the socket work at the same time.
    async fn catch_up(
        &mut self,
        topics: &[String],
        read: &mut Position,
        emit: &mut impl Emit,
        more: impl Fn(Position) -> bool,
    ) -> Result<(), FeedError> {
        let (mut page, mut end, mut go_on) = self.feed.changes(topics, *read, log::PAGE).await?;
        loop {
            let fresh: Vec<Delivery> = page
                .into_iter()
                .filter_map(|mut d| self.accept(&mut d).then_some(d))
                .collect();
            if !(go_on && more(end)) {
                send(fresh, emit).await?;
                *read = end;
                return Ok(());
            }
            let (next, sent) = tokio::join!(self.feed.changes(topics, end, log::PAGE), send(fresh, emit));
            sent?;
            *read = end;
            (page, end, go_on) = next?;
        }
    }

    pub fn remove(&mut self, topic: &str) -> bool {
        self.feed.hub.unsubscribe(topic, &self.outbox);
        self.sent.remove(topic).is_some()
    }

    /// Whether a live delivery is new for its subscription (and records it as sent), and may be
    /// sent to this client: a member's delivery of a row that left its studies may become the
    /// row's exit, or be dropped ([`crate::rights`]).
    pub fn accept(&mut self, d: &mut Delivery) -> bool {
        let fresh = match self.sent.get_mut(d.topic()) {
            Some(sent) if d.at() > *sent => {
                *sent = d.at();
                true
            }
            _ => false,
        };
        (match &mut self.once {
            // A merged stream: the event may already have gone out under another of its topics.
            Some(last) if fresh => {
                let new = d.at() > *last;
                *last = (*last).max(d.at());
                new
            }
            _ => fresh,
        }) && self.admit(d)
    }

    /// Moves a subscription's position forward (after a refreshed snapshot).
    pub fn advance(&mut self, topic: &str, at: Position) {
        if let Some(sent) = self.sent.get_mut(topic) {
            *sent = (*sent).max(at);
        }
    }
}

/// Emits a page of backlog, then flushes it: one socket write for the page where the transport
/// buffers.
async fn send(events: Vec<Delivery>, emit: &mut impl Emit) -> Result<(), FeedError> {
    for d in events {
        emit.emit(Item::Event(d)).await?;
    }
    emit.flush().await
}

/// `event` as delivered on a stream of several topics that sends each event once: on the first
/// of the event's own topics (table, row, then room, as the capture trigger lists them) that the
/// stream subscribes to. The hub queues an event's deliveries in that same order, so live
/// and backlog agree. `None` when the event is on none of them.
pub fn first_delivery(event: Arc<Event>, topics: &[String]) -> Option<Delivery> {
    let i = event.topics.iter().position(|t| topics.contains(t))?;
    Some(Delivery::new(event, i))
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for topic in self.sent.keys() {
            self.feed.hub.unsubscribe(topic, &self.outbox);
        }
    }
}
