//! The hub: fans relayed events out to subscribers, and remembers the recent ones.
//!
//! The listener [`publish`](Hub::publish)es events in log order. Each subscription is an
//! [`Outbox`] (one bounded queue per connection) registered under a topic; publishing puts a
//! [`Delivery`] (a shared pointer to the event's pre-serialized frame) into every subscriber's
//! queue without waiting. A queue that is full marks its connection as overflowed: the transport
//! closes it (WebSocket 4008) and the client resumes from its cursor, losing nothing. A slow
//! client therefore never slows the listener or anyone else, and memory stays bounded.
//!
//! The hub knows no sockets and no SQL.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::{Epoch, Event, Position, View};

/// Deliveries one connection may have waiting. A connection that falls further behind is closed
/// with 4008 and resumes from its cursor: it loses nothing, it re-reads the log. 4096 slots of a
/// pointer each cost nothing until used, and cover a burst of several thousand rows in one commit.
pub const CONNECTION_QUEUE: usize = 4096;

/// Recent events kept for resume without a database read. A cursor older than the ring is served
/// from the log instead: slower, never different.
pub const RING: usize = 10_000;

/// One event for one subscription: the event and which of its topics it was delivered on.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Arc<Event>,
    /// An index into the event's topics; u32, not usize, so that a delivery with its view stays
    /// 16 bytes: every connection's queue allocates a block of them up front (README
    /// "Performance", the `idle` scenario).
    topic: u32,
    /// As published, or (a member's subscription to a row that changed study) as an exit or
    /// entry: see [`crate::feed::access`].
    view: View,
}

impl Delivery {
    /// `event` as published on its `topic`-th topic.
    pub fn new(event: Arc<Event>, topic: usize) -> Self {
        Delivery {
            event,
            // An event has a handful of topics (its table, its row, its rooms).
            topic: topic as u32,
            view: View::AsPublished,
        }
    }

    /// Delivers a move on the row's own topic as its exit (`exit`) or entry instead; false when
    /// the event is no move or does not carry the row's topic.
    pub fn view_as(&mut self, view: View) -> bool {
        let Some(m) = &self.event.moved else {
            return view == View::AsPublished;
        };
        let there = match view {
            View::AsPublished => true,
            View::Exit => m.row_exit.is_some(),
            View::Entry => m.row_entry.is_some(),
        };
        if there {
            self.view = view;
        }
        there
    }

    /// The event's `type` as this delivery shows it (SSE's `event:` line).
    pub fn kind(&self) -> &str {
        self.event.kind_on(self.topic as usize, self.view)
    }

    pub fn at(&self) -> Position {
        self.event.at
    }

    pub fn topic(&self) -> &str {
        &self.event.topics[self.topic as usize]
    }

    /// The event's JSON for this topic, shared with every other subscriber of the topic.
    pub fn frame(&self) -> &Utf8Bytes {
        let moved = self.event.moved.as_ref();
        match self.view {
            View::Exit => moved.and_then(|m| m.row_exit.as_ref()),
            View::Entry => moved.and_then(|m| m.row_entry.as_ref()),
            View::AsPublished => None,
        }
        .unwrap_or(&self.event.frames[self.topic as usize])
    }
}

/// The sending half of a connection's queue, registered under each topic it subscribes to.
/// The receiving half is held by the connection's session task; when that task ends, the hub
/// drops the outbox at its next publish.
#[derive(Debug, Clone)]
pub struct Outbox {
    id: u64,
    tx: mpsc::Sender<Delivery>,
    /// Cancelled by the hub when a delivery did not fit; the session watches it and closes with 4008.
    overflow: CancellationToken,
}

impl Outbox {
    pub fn new(capacity: usize) -> (Outbox, mpsc::Receiver<Delivery>) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let (tx, rx) = mpsc::channel(capacity);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        (
            Outbox {
                id,
                tx,
                overflow: CancellationToken::new(),
            },
            rx,
        )
    }

    pub fn overflowed(&self) -> bool {
        self.overflow.is_cancelled()
    }

    /// Completes when the hub could not deliver to this connection.
    pub async fn overflowed_wait(&self) {
        self.overflow.cancelled().await
    }

    /// The signal that closes this connection as a slow consumer: live views (`feed::views`)
    /// fire it too when the connection does not take their frames.
    pub fn overflow_signal(&self) -> CancellationToken {
        self.overflow.clone()
    }
}

/// What the hub hands live views (`feed::views`): every event it publishes, in log order; how far
/// the log is relayed (every commit up to it is whole); and that the feed started over.
#[derive(Debug)]
pub enum Relayed {
    Event(Arc<Event>),
    Upto(Position),
    Reset,
}

/// Items the views may have waiting. Views keep up with the listener unless a reload stalls them;
/// past this many, the hub drops what does not fit and says so ([`Hub::tap_lost`]), and the views
/// read every window again rather than hold an unbounded backlog.
pub const TAP_QUEUE: usize = 65_536;
/// How long the listener waits for the views to make room before it publishes anyway: views
/// that stall never stall the feed for long.
pub const TAP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The log and its generation, which the cursors of what is published from now on name.
    epoch: Epoch,
    /// The newest relayed position.
    last: Position,
    /// `ring` holds every event after `floor`.
    floor: Position,
    ring: VecDeque<Arc<Event>>,
    topics: HashMap<String, Vec<Outbox>>,
    /// Live views' feed, once they asked for it ([`Hub::tap`]).
    tap: Option<mpsc::Sender<Relayed>>,
    /// Something did not fit into the tap.
    tap_lost: bool,
}

/// What a new subscription must be sent before its live events.
#[derive(Debug)]
pub enum Backlog {
    /// Nothing (a live subscription).
    None,
    /// These, from memory.
    Ring(Vec<Delivery>),
    /// The ring does not reach back far enough: read the log after the cursor.
    Log,
}

impl Hub {
    /// A hub whose feed starts after `head`.
    pub fn new(epoch: Epoch, head: Position) -> Self {
        let inner = Inner {
            epoch,
            last: head,
            floor: head,
            ring: VecDeque::new(),
            topics: HashMap::new(),
            tap: None,
            tap_lost: false,
        };
        Hub {
            inner: Mutex::new(inner),
        }
    }

    /// The log and the generation this server serves now.
    pub fn epoch(&self) -> Epoch {
        self.lock().epoch.clone()
    }

    /// Moves to generation `gen` (README "Running many servers and failing over"), `good` being
    /// the smallest `last_good_seq` of the generations after the current one: what was relayed
    /// up to it is the same in the new generation, what was relayed past it may not be. Past it,
    /// the feed starts over after `good` ([`Hub::reset`]): every subscriber resumes with its
    /// cursor and is told `log_diverged` or continues exactly. Returns whether it started over.
    pub fn set_generation(&self, gen: i32, good: Option<i64>) -> bool {
        let mut inner = self.lock();
        if gen <= inner.epoch.gen() {
            return false;
        }
        inner.epoch = inner.epoch.with_gen(gen);
        let good = Position::end_of(good.unwrap_or(0));
        if inner.last <= good {
            return false;
        }
        drop(inner);
        self.reset(good);
        true
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock; if something did, the data is still consistent
        // enough to keep serving, so take it back rather than poisoning the whole server.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest position the listener has relayed (published or advanced past): every seq up to
    /// it is final. The log may already hold newer commits.
    pub fn last(&self) -> Position {
        self.lock().last
    }

    /// Whether the ring holds every event after `since`.
    pub fn covers(&self, since: Position) -> bool {
        since >= self.lock().floor
    }

    /// Everything published from now on, for live views (`feed::views`); replaces an earlier tap.
    pub fn tap(&self) -> mpsc::Receiver<Relayed> {
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        let mut inner = self.lock();
        inner.tap = Some(tx);
        inner.tap_lost = false;
        rx
    }

    /// Waits, up to [`TAP_PATIENCE`], until live views can take `n` more items: the listener
    /// asks before it publishes a page, so a statement of 100,000 rows is fed to the views at
    /// their pace instead of overflowing their queue (which costs a read of every window).
    pub async fn tap_room(&self, n: usize) {
        let tap = self.lock().tap.clone();
        if let Some(tap) = tap {
            let _ = tokio::time::timeout(TAP_PATIENCE, tap.reserve_many(n.min(TAP_QUEUE))).await;
        }
    }

    /// Whether something did not fit into the tap since the last call: the views then read every
    /// window again.
    pub fn tap_lost(&self) -> bool {
        std::mem::take(&mut self.lock().tap_lost)
    }

    /// Registers `outbox` under `topic`. Returns the current position and, when `since` is given,
    /// what was published after it before this call. Everything published after this call reaches
    /// the outbox, so backlog + queue has no gap; the caller drops what it already sent by position.
    pub fn subscribe(&self, topic: &str, outbox: &Outbox, since: Option<Position>) -> (Position, Backlog) {
        let mut inner = self.lock();
        let subs = inner.topics.entry(topic.to_owned()).or_default();
        subs.retain(|o| o.id != outbox.id);
        subs.push(outbox.clone());
        let backlog = match since {
            None => Backlog::None,
            Some(since) if since < inner.floor => Backlog::Log,
            Some(since) => {
                let start = inner.ring.partition_point(|e| e.at <= since);
                let found = inner
                    .ring
                    .range(start..)
                    .filter_map(|e| e.topic_index(topic).map(|topic| Delivery::new(e.clone(), topic)))
                    .collect();
                Backlog::Ring(found)
            }
        };
        (inner.last, backlog)
    }

    pub fn unsubscribe(&self, topic: &str, outbox: &Outbox) {
        let mut inner = self.lock();
        if let Some(subs) = inner.topics.get_mut(topic) {
            subs.retain(|o| o.id != outbox.id);
            if subs.is_empty() {
                inner.topics.remove(topic);
            }
        }
    }

    /// Fans `events` (in log order, after everything published before) out to their topics'
    /// subscribers. Never waits: a full queue overflows its connection instead.
    pub fn publish(&self, events: impl IntoIterator<Item = Event>) {
        let mut inner = self.lock();
        for event in events {
            let event = Arc::new(event);
            for (i, topic) in event.topics.iter().enumerate() {
                let Some(subs) = inner.topics.get_mut(topic) else {
                    continue;
                };
                subs.retain(|o| match o.tx.try_send(Delivery::new(event.clone(), i)) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        o.overflow.cancel();
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
                if subs.is_empty() {
                    inner.topics.remove(topic);
                }
            }
            inner.last = event.at;
            inner.send_tap(Relayed::Event(event.clone()));
            if inner.ring.len() == RING {
                if let Some(old) = inner.ring.pop_front() {
                    inner.floor = old.at;
                }
            }
            inner.ring.push_back(event);
        }
    }

    /// Moves the relayed position forward past events that do not exist: after a read that found
    /// the rest of a commit, "after its last event" is "after the whole commit". Retention deletes
    /// whole commits, so a position at a commit's end never looks half-pruned.
    pub fn advance(&self, to: Position) {
        let mut inner = self.lock();
        inner.last = inner.last.max(to);
        inner.send_tap(Relayed::Upto(to));
    }

    /// Starts the feed over after `head`, dropping the ring and overflowing every subscriber, so
    /// that each one resumes from its cursor and learns whether it can still be served.
    pub fn reset(&self, head: Position) {
        let mut inner = self.lock();
        for outbox in inner.topics.values().flatten() {
            outbox.overflow.cancel();
        }
        inner.topics.clear();
        inner.ring.clear();
        inner.last = head;
        inner.floor = head;
        inner.send_tap(Relayed::Reset);
    }

    /// Topics with at least one subscriber, and subscriptions in all.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.topics.len(), inner.topics.values().map(Vec::len).sum())
    }
}

impl Inner {
    fn send_tap(&mut self, item: Relayed) {
        if let Some(tap) = &self.tap {
            if let Err(mpsc::error::TrySendError::Full(_)) = tap.try_send(item) {
                self.tap_lost = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LogRow;

    #[test]
    fn a_delivery_stays_two_words() {
        // Each connection's queue allocates a block of 32 deliveries when it is made.
        assert_eq!(std::mem::size_of::<Delivery>(), 16);
    }

    fn event(seq: i64, topics: &[&str]) -> Event {
        let row = LogRow {
            seq,
            pos: 1,
            kind: "study_created".into(),
            tbl: "studies".into(),
            op: "insert".into(),
            row_id: seq.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            data: "{}".into(),
            committed_at: chrono::Utc::now(),
            old: None,
            moved_from: None,
            before: None,
        };
        Event::from_row(row, &Epoch::new("e"))
    }

    #[test]
    fn a_subscriber_gets_its_topics_events_in_order_and_no_others() {
        let hub = Hub::new(Epoch::new("e"), Position::default());
        let (outbox, mut rx) = Outbox::new(8);
        hub.subscribe("studies:1", &outbox, None);
        hub.publish([
            event(1, &["studies", "studies:1"]),
            event(2, &["studies", "studies:2"]),
            event(3, &["studies:1"]),
        ]);
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|d| (d.at().seq, d.topic().to_owned()))
            .collect();
        assert_eq!(got, [(1, "studies:1".to_owned()), (3, "studies:1".to_owned())]);
    }

    #[test]
    fn a_full_queue_overflows_its_connection_without_blocking_others() {
        let hub = Hub::new(Epoch::new("e"), Position::default());
        let (slow, _slow_rx) = Outbox::new(2);
        let (fast, mut fast_rx) = Outbox::new(16);
        hub.subscribe("studies", &slow, None);
        hub.subscribe("studies", &fast, None);
        hub.publish((1..=5).map(|s| event(s, &["studies"])));
        assert!(slow.overflowed());
        assert!(!fast.overflowed());
        assert_eq!(std::iter::from_fn(|| fast_rx.try_recv().ok()).count(), 5);
        assert_eq!(hub.counts(), (1, 1), "the overflowed outbox is dropped");
    }

    #[test]
    fn a_new_generation_starts_the_feed_over_only_past_the_last_good_seq() {
        // Relayed up to 10, the new generation agrees up to 12: subscribers go on, under the new name.
        let hub = Hub::new(Epoch::new("e"), Position::default());
        hub.publish((1..=10).map(|s| event(s, &["studies"])));
        let (outbox, _rx) = Outbox::new(16);
        hub.subscribe("studies", &outbox, None);
        assert!(!hub.set_generation(2, Some(12)));
        assert_eq!(hub.epoch().gen(), 2);
        assert!(!outbox.overflowed());
        assert_eq!(hub.last().seq, 10);
        // An older or the same generation changes nothing.
        assert!(!hub.set_generation(2, Some(0)));
        // Relayed past the last good seq: every subscriber resumes (and is judged by its cursor),
        // and the feed goes on from the last good seq.
        assert!(hub.set_generation(3, Some(7)));
        assert!(outbox.overflowed());
        assert_eq!(hub.last(), Position::end_of(7));
        assert_eq!(hub.epoch().cursor(Position { seq: 8, pos: 1 }), "eg3-8-1");
    }

    #[test]
    fn resume_is_served_from_the_ring_while_it_reaches_back_far_enough() {
        let hub = Hub::new(Epoch::new("e"), Position::end_of(10));
        hub.publish((11..=RING as i64 + 20).map(|s| event(s, &["studies"])));
        let (outbox, _rx) = Outbox::new(1);
        assert!(matches!(
            hub.subscribe("studies", &outbox, Some(Position::end_of(10))).1,
            Backlog::Log
        ));
        let (last, backlog) = hub.subscribe(
            "studies",
            &outbox,
            Some(Position {
                seq: RING as i64 + 15,
                pos: 1,
            }),
        );
        assert_eq!(last.seq, RING as i64 + 20);
        let Backlog::Ring(found) = backlog else {
            panic!("expected the ring")
        };
        assert_eq!(
            found.iter().map(|d| d.at().seq).collect::<Vec<_>>(),
            (RING as i64 + 16..=RING as i64 + 20).collect::<Vec<_>>()
        );
    }
}
