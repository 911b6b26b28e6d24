//! The one subscribe path every transport uses: a set of topics from a start (now, a cursor, or a
//! snapshot), its backlog joined to the live stream with no gap and no overlap, each event once
//! and in commit order (README, "Subscribing: WebSocket `/ws`", and "Without a WebSocket" for why
//! a stream over several topics has one cursor).

use std::collections::HashMap;
use std::sync::Arc;

use super::{Feed, FeedError, Start};
use crate::auth::Access;
use crate::db::log;
use crate::event::{Event, Position};
use crate::hub::{Backlog, Delivery, Outbox};

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

/// The client's connection failed while an [`Emit`] was sending: not the feed's error but the
/// end of the client, so a writer can say nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection closed")]
pub struct Gone;

/// Why a subscribe stopped: the feed refused or failed it (the client is told why), or the
/// client's connection went while it was being sent (nothing more to do for it).
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error(transparent)]
    Gone(#[from] Gone),
}

impl From<sqlx::Error> for Stopped {
    fn from(e: sqlx::Error) -> Self {
        Stopped::Feed(e.into())
    }
}

/// Where [`Subscriptions::add`] sends what precedes the live stream: the transport's writer.
pub trait Emit: Send {
    /// Sends one item to the client; `Err(Gone)` when the connection failed. A writer may hold
    /// backlog events until [`Emit::flush`].
    fn emit(&mut self, item: Item) -> impl std::future::Future<Output = Result<(), Gone>> + Send;

    /// Sends whatever `emit` held back. Called after each page of backlog, so a resume writes
    /// many events per socket write instead of one.
    fn flush(&mut self) -> impl std::future::Future<Output = Result<(), Gone>> + Send {
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
    /// Set by [`Subscriptions::add`] for a set of several topics: the position of the last event
    /// sent on the whole connection, which then sends each event once and in commit order across
    /// its topics, as its one cursor promises.
    once: Option<Position>,
    /// Who the client is: a member's subscriptions to rows see them leave and enter its studies
    /// ([`super::access`]). Admin unless [`Subscriptions::with_access`] says otherwise.
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

    /// These subscriptions are `access`'s: every delivery passes [`super::access::admit`].
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Whether the client may be sent `d`, and how (rights follow the row: [`super::access`]).
    fn admit(&self, d: &mut Delivery) -> bool {
        super::access::admit(&self.access, d)
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
    pub async fn add(&mut self, topics: &[String], start: Start<'_>, emit: &mut impl Emit) -> Result<(), Stopped> {
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
                        return Err(e.into());
                    }
                };
                self.start(topics, now);
                return Ok(emit.emit(Item::Subscribed(now)).await?);
            }
            Start::After(at) => {
                emit.emit(Item::Subscribed(at)).await?;
                at
            }
            Start::Snapshot(table) => {
                // A snapshot is one topic's state at one position; several topics have no
                // common one to resume from.
                let [topic] = topics else {
                    return Err(FeedError::BadRequest("a merged stream cannot start with a snapshot".into()).into());
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
    async fn backlog(&mut self, topics: &[String], from: Position, emit: &mut impl Emit) -> Result<(), Stopped> {
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
        Ok(emit.flush().await?)
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
    ) -> Result<(), Stopped> {
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
    /// row's exit, or be dropped ([`super::access`]).
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
async fn send(events: Vec<Delivery>, emit: &mut impl Emit) -> Result<(), Gone> {
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
