//! The feed as transports see it: topics checked against the tracked tables, cursors, snapshots,
//! and [`Subscriptions`], which join a resume or a snapshot to the live stream without gap or
//! overlap. Transports (WebSocket, SSE, long-poll) only frame what this module hands them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sqlx::PgPool;

use crate::db::{snapshot, tracked::Tracked};
use crate::event::{CursorCheck, Event, Position, Topic};
use crate::hub::{Backlog, Delivery, Hub, Outbox};
use crate::listener::log::{self, Page, Standing};

/// Why a subscription could not be made. Every variant but `Db` is the client's doing.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The cursor can no longer (or never could) be served from this log: take a snapshot.
    /// Carries the `reason` of `refresh_needed`.
    #[error("cursor cannot be resumed: {0}")]
    Refresh(&'static str),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The log held something that is not an event (never expected: the log is jsonb).
    #[error("unreadable event in the log: {0}")]
    Corrupt(String),
    /// The client's connection failed while we were sending; nothing more to do for it.
    #[error("connection closed")]
    Gone,
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// From now on.
    Live,
    /// With every event after this position.
    After(Position),
    /// With a snapshot, then every event after it.
    Snapshot,
}

#[derive(Debug, Clone)]
pub struct Feed {
    pub pool: PgPool,
    pub hub: Arc<Hub>,
    tracked: Arc<RwLock<HashMap<String, Arc<Tracked>>>>,
}

impl Feed {
    pub async fn new(pool: PgPool, hub: Arc<Hub>) -> Result<Self, sqlx::Error> {
        let feed = Feed {
            pool,
            hub,
            tracked: Default::default(),
        };
        feed.reload_tracked().await?;
        Ok(feed)
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
                self.reload_tracked().await?;
                self.lookup(parsed.table)
                    .ok_or_else(|| FeedError::UnknownTopic(topic.to_owned()))?
            }
        };
        match parsed.key {
            Some(key) if !table.key_is_plausible(key) => Err(FeedError::UnknownTopic(topic.to_owned())),
            _ => Ok(table),
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

    /// The topic's current state and the position it reflects. `topic` must have passed `check_topic`.
    pub async fn snapshot(&self, topic: &str, table: &Tracked) -> Result<(Position, String), FeedError> {
        let key = Topic::parse(topic).ok().and_then(|t| t.key);
        let of = match key {
            None => snapshot::Of::Table(table),
            Some(id) if table.topic == "studies" => snapshot::Of::Room(id.parse().unwrap_or(-1)),
            Some(key) => snapshot::Of::Row(table, key),
        };
        Ok(snapshot::take(&self.pool, of).await?)
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
}

impl Subscriptions {
    pub fn new(feed: Feed, outbox: Outbox) -> Self {
        Subscriptions {
            feed,
            outbox,
            sent: HashMap::new(),
        }
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

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Subscribes to a checked `topic` from `start`, handing `emit` the `subscribed` answer, the
    /// snapshot if asked, and the backlog, in order. Afterwards, live deliveries pass [`Self::accept`].
    ///
    /// A long backlog is paged from the log *before* registering with the hub, so the live queue
    /// does not fill while the client catches up; only the last short stretch overlaps, and the
    /// overlap is dropped by position.
    pub async fn add(
        &mut self,
        topic: &str,
        table: &Tracked,
        start: Start,
        emit: &mut impl Emit,
    ) -> Result<(), FeedError> {
        self.remove(topic);
        let hub = self.feed.hub.clone();
        let mut at = match start {
            Start::Live => {
                // "Now" is the database's now: a commit made before this subscribe is not sent,
                // even if the listener has not relayed it yet. Registering first, then reading
                // the head, means everything after the head arrives through the queue.
                let (last, _) = hub.subscribe(topic, &self.outbox, None);
                let now = match log::head(&self.feed.pool).await {
                    Ok(head) => head.max(last),
                    Err(e) => {
                        hub.unsubscribe(topic, &self.outbox);
                        return Err(e.into());
                    }
                };
                self.sent.insert(topic.to_owned(), now);
                return emit.emit(Item::Subscribed(now)).await;
            }
            Start::After(at) => {
                emit.emit(Item::Subscribed(at)).await?;
                at
            }
            Start::Snapshot => {
                let (at, data) = self.feed.snapshot(topic, table).await?;
                emit.emit(Item::Subscribed(at)).await?;
                emit.emit(Item::Snapshot(at, data)).await?;
                at
            }
        };
        while !hub.covers(at) {
            if self.catch_up(topic, &mut at, emit).await? {
                break;
            }
        }
        let (_, backlog) = hub.subscribe(topic, &self.outbox, Some(at));
        let rest = async {
            match backlog {
                Backlog::None => {}
                Backlog::Ring(found) => {
                    let after = at;
                    for d in found.into_iter().filter(|d| d.at() > after) {
                        at = d.at();
                        emit.emit(Item::Event(d)).await?;
                    }
                    emit.flush().await?;
                }
                Backlog::Log => while !self.catch_up(topic, &mut at, emit).await? {},
            }
            Ok(())
        }
        .await;
        match rest {
            Ok(()) => {
                self.sent.insert(topic.to_owned(), at);
                Ok(())
            }
            Err(e) => {
                hub.unsubscribe(topic, &self.outbox);
                Err(e)
            }
        }
    }

    /// Emits one page of the topic's log after `at`, moving `at`; true when the page was the last.
    async fn catch_up(&self, topic: &str, at: &mut Position, emit: &mut impl Emit) -> Result<bool, FeedError> {
        let rows = match log::read_after(&self.feed.pool, *at, Some(topic), log::PAGE).await? {
            Page::Expired => return Err(FeedError::Refresh("cursor_expired")),
            Page::Rows(rows) => rows,
        };
        let last_page = (rows.len() as i64) < log::PAGE;
        let epoch = self.feed.hub.epoch().clone();
        for row in rows {
            let event = Event::from_row(row, &epoch).map_err(|e| FeedError::Corrupt(e.to_string()))?;
            let Some(i) = event.topic_index(topic) else { continue };
            *at = event.at;
            emit.emit(Item::Event(Delivery::new(Arc::new(event), i))).await?;
        }
        emit.flush().await?;
        Ok(last_page)
    }

    pub fn remove(&mut self, topic: &str) -> bool {
        self.feed.hub.unsubscribe(topic, &self.outbox);
        self.sent.remove(topic).is_some()
    }

    /// Whether a live delivery is new for its subscription (and records it as sent).
    pub fn accept(&mut self, d: &Delivery) -> bool {
        match self.sent.get_mut(d.topic()) {
            Some(sent) if d.at() > *sent => {
                *sent = d.at();
                true
            }
            _ => false,
        }
    }

    /// Moves a subscription's position forward (after a refreshed snapshot).
    pub fn advance(&mut self, topic: &str, at: Position) {
        if let Some(sent) = self.sent.get_mut(topic) {
            *sent = (*sent).max(at);
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for topic in self.sent.keys() {
            self.feed.hub.unsubscribe(topic, &self.outbox);
        }
    }
}
