//! One WebSocket connection's protocol (README "Subscribing: WebSocket `/ws`"): client frames
//! in, answers and events out, over any `Sink + Stream` of messages, so tests drive it over
//! channels without a socket.
//!
//! One task runs one `select!` loop per connection: client frames, the connection's queue of
//! live deliveries, the overflow signal, pings and shutdown. Subscribing (snapshot, resume from
//! the log) runs inside that loop, so a connection's frames always go out in a defined order.
//! `limits` holds the connection's budgets, `emit` writes a subscription's opening frames; the
//! frames themselves are `transport::frames`, shared with SSE.

mod emit;
mod limits;
#[cfg(test)]
mod tests;
mod views;

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::Access;
use crate::feed::{Feed, FeedError, Gone, Start, Stopped, Subscriptions};
use crate::hub::{Delivery, Outbox, CONNECTION_QUEUE};
use crate::metrics::ConnectionGuard;
use crate::transport::frames::{self, ClientFrame};
use emit::SocketEmitter;
use limits::{ErrorBudget, FrameCheck, FrameLimit, TokenBucket};
use views::ConnViews;

/// Close codes (README "Subscribing: WebSocket `/ws`"): each tells the client whether and how to
/// come back.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// Largest client frame accepted; a larger one closes the connection with 1009.
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// How long one write may wait for a client that does not read before the client is dropped.
/// Its queue overflows long before, so this only bounds how long a stuck socket is kept.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How long a closing server waits for the client's answering Close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Deliveries written per flush when several are waiting.
const WRITE_BATCH: usize = 64;
/// Snapshots (`subscribe` with `snapshot`, `refresh`) one connection may take per second, and in
/// a burst. Each takes the snapshot barrier, which holds writers' commits back for a moment, and
/// reads a whole table or room: past this budget they are answered `rate_limited`.
const SNAPSHOTS_PER_SECOND: f64 = 1.0;
const SNAPSHOT_BURST: f64 = 5.0;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub ping_interval: Duration,
    pub max_subscriptions: usize,
    /// Client frames per second (bursts of twice as many); see [`FrameLimit`].
    pub max_frames_per_second: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ping_interval: Duration::from_secs(30),
            max_subscriptions: 100,
            max_frames_per_second: 100,
        }
    }
}

/// Subscriptions requested on connect with `?topics=a,b&since=C`.
#[derive(Debug, Clone, Default)]
pub struct Initial {
    pub topics: Vec<String>,
    pub since: Option<String>,
    /// The token's `exp` (Unix seconds): the connection is closed with 4001 then, as its rights
    /// end with the token (README "Security: auth and limits").
    pub expires: Option<u64>,
}

/// Everything one connection's session is made of, besides its socket and the shutdown signal.
pub struct Connection<H> {
    pub feed: Feed,
    pub initial: Initial,
    pub config: SessionConfig,
    /// Who the client is; decides what it may subscribe to.
    pub access: Access,
    /// This connection in the server's gauges; dropped (taken out) when the session ends.
    pub metrics: ConnectionGuard,
    /// Whatever the transport holds for the connection's lifetime (its connection-limit permit):
    /// released when the session's future ends.
    pub held: H,
}

/// Runs the session until the client leaves, misbehaves, falls behind, or the server shuts down.
///
/// A plain function that builds the session and returns its loop as the connection's one future:
/// an `async fn` here would keep its arguments (the socket above all) in the future beside the
/// session they move into, and every idle connection would pay for both (README "Performance").
pub fn run<S, H>(
    socket: S,
    Connection {
        feed,
        initial,
        config,
        access,
        metrics,
        held,
    }: Connection<H>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
    H: Send,
{
    let (outbox, inbox) = Outbox::new(CONNECTION_QUEUE);
    let session = Session {
        socket,
        subs: Subscriptions::new(feed, outbox).with_access(access),
        frames: FrameLimit::new(config.max_frames_per_second),
        config,
        metrics,
        errors: ErrorBudget::new(),
        _held: held,
        snapshots: TokenBucket::new(SNAPSHOTS_PER_SECOND, SNAPSHOT_BURST),
        closed: false,
        views: None,
    };
    Box::new(session).serve(initial, inbox, shutdown)
}

struct Session<S, H> {
    socket: S,
    /// The connection's subscriptions, with the feed and who the client is, which decides what
    /// it may subscribe to: held once, there, as every idle connection pays for each field
    /// (README "Performance").
    subs: Subscriptions,
    config: SessionConfig,
    frames: FrameLimit,
    /// This connection in the server's gauges; dropping it (session end) takes it out.
    metrics: ConnectionGuard,
    errors: ErrorBudget,
    /// Whatever the transport holds for the connection's lifetime (its connection-limit permit).
    _held: H,
    /// The connection's snapshot budget.
    snapshots: TokenBucket,
    /// A Close frame was sent: nothing more is done for the connection.
    closed: bool,
    /// The connection's live views, from its first (boxed: most connections have none, and
    /// every idle connection pays for each field).
    views: Option<Box<ConnViews>>,
}

/// Why the loop ended early; the connection is gone either way.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("socket: {0}")]
    Socket(#[from] axum::Error),
    #[error("client stopped reading")]
    Stalled,
}

impl<S, H> Session<S, H>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
    H: Send,
{
    /// The connection's life: the loop, then the logged reason it ended. The session is boxed
    /// once, so the future holds a pointer to it rather than a copy beside its own locals.
    async fn serve(
        mut self: Box<Self>,
        initial: Initial,
        inbox: mpsc::Receiver<Delivery>,
        shutdown: CancellationToken,
    ) {
        if let Err(e) = self.run(initial, inbox, shutdown).await {
            tracing::debug!(error = %e, "session ended");
        }
    }

    async fn run(
        &mut self,
        initial: Initial,
        mut inbox: mpsc::Receiver<Delivery>,
        shutdown: CancellationToken,
    ) -> Result<(), End> {
        // Boxed, and only with a token: every idle connection's future would hold the timer.
        let mut expiry = initial.expires.map(|exp| Box::pin(crate::auth::expiry(Some(exp))));
        for topic in &initial.topics {
            // Errors count against the connection's budget like frames do: one that closed the
            // connection ends the list too.
            if self.closed {
                return Ok(());
            }
            let frame = ClientFrame {
                action: "subscribe".into(),
                topic: Some(topic.clone()),
                since: initial.since.clone(),
                ..ClientFrame::default()
            };
            Box::pin(self.subscribe(frame)).await?;
        }
        self.metrics.set_subscriptions(self.subscriptions());
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.ping_interval,
            self.config.ping_interval,
        );
        let mut awaiting_pong = false;
        let overflow = self.subs.outbox().clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return self.close(close::GOING_AWAY, "server shutting down").await,
                // Rights end with the token; the client reconnects with a fresh one and its last
                // cursor (README "Security: auth and limits").
                _ = async {
                    match expiry.as_mut() {
                        Some(at) => at.await,
                        None => std::future::pending().await,
                    }
                } => return self.close(close::TOKEN_EXPIRED, "token expired").await,
                _ = overflow.overflowed_wait() => {
                    self.metrics.slow_consumer();
                    return self.close(close::SLOW_CONSUMER, "slow consumer: resume from your last cursor").await;
                }
                msg = self.socket.next() => match msg {
                    None | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                    Some(Ok(Message::Ping(_))) => {} // answered by the socket itself
                    Some(Ok(Message::Text(text))) => {
                        if text.len() > MAX_CLIENT_FRAME {
                            return self.close(close::TOO_BIG, "frame over 64 KiB").await;
                        }
                        match self.frames.check() {
                            FrameCheck::Ok => {}
                            FrameCheck::Excess => {
                                let refusal = frames::Error::new("rate_limited", "too many frames; slow down", None);
                                Box::pin(self.send_frame(&refusal)).await?;
                                continue;
                            }
                            FrameCheck::Abuse => return self.close(close::POLICY, "persistently over the frame rate limit").await,
                        }
                        // Boxed: handling a frame (snapshots, catch-up reads) needs a deep future that
                        // would otherwise sit inside every idle connection's task (README "Performance").
                        Box::pin(self.handle(text.as_str())).await?;
                        if self.closed {
                            return Ok(());
                        }
                        self.metrics.set_subscriptions(self.subscriptions());
                    }
                    Some(Ok(Message::Binary(_))) => {
                        Box::pin(self.client_error("bad_request", "frames must be JSON text", None)).await?;
                        if self.closed {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => {
                        let text = format!("{e:#}");
                        if text.contains("too long") || text.contains("Space limit") {
                            return self.close(close::TOO_BIG, "frame over 64 KiB").await;
                        }
                        return Err(e.into());
                    }
                },
                Some(d) = inbox.recv() => self.deliver(d, &mut inbox).await?,
                Some(item) = ConnViews::next(&mut self.views) => Box::pin(self.deliver_view(item)).await?,
                _ = ping.tick() => {
                    if awaiting_pong {
                        tracing::debug!("peer missed a ping; dropping it");
                        return Ok(());
                    }
                    awaiting_pong = true;
                    Box::pin(self.write(Message::Ping(Bytes::new()))).await?;
                }
            }
        }
    }

    /// Writes `first` and whatever else is already queued, then flushes once.
    async fn deliver(&mut self, first: Delivery, inbox: &mut mpsc::Receiver<Delivery>) -> Result<(), End> {
        let mut next = Some(first);
        let mut fed = 0;
        let mut newest = None;
        while let Some(mut d) = next.take() {
            if self.subs.accept(&mut d) {
                stall(self.socket.feed(Message::Text(d.frame().clone()))).await??;
                fed += 1;
                newest = Some(d.event.committed_at);
            }
            if fed < WRITE_BATCH {
                next = inbox.try_recv().ok();
            }
        }
        stall(self.socket.flush()).await??;
        if let Some(committed_at) = newest {
            self.metrics.delivered(fed as u64, committed_at);
        }
        Ok(())
    }

    async fn handle(&mut self, text: &str) -> Result<(), End> {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let id = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").cloned());
                return self
                    .client_error("bad_request", &format!("invalid frame: {e}"), id.as_ref())
                    .await;
            }
        };
        match frame.action.as_str() {
            "subscribe" if frame.view.is_some() => self.subscribe_view(frame).await,
            "unsubscribe" if frame.view.is_some() => self.unsubscribe_view(frame).await,
            "subscribe" => self.subscribe(frame).await,
            "unsubscribe" => {
                let Some(topic) = frame.topic.as_deref() else {
                    return self
                        .client_error("bad_request", "unsubscribe needs a topic", frame.id.as_ref())
                        .await;
                };
                self.subs.remove(topic);
                self.send_frame(&frames::Unsubscribed::new(topic, frame.id.as_ref()))
                    .await
            }
            "refresh" => self.refresh(frame).await,
            "ping" => self.send_frame(&frames::Pong::new(frame.id.as_ref())).await,
            other => {
                let message = format!("unknown action {other:?} (subscribe, unsubscribe, refresh, ping)");
                self.client_error("bad_request", &message, frame.id.as_ref()).await
            }
        }
    }

    /// Subscribes live, with `since`, or with `snapshot`.
    async fn subscribe(&mut self, frame: ClientFrame) -> Result<(), End> {
        let id = frame.id.as_ref();
        let Some(topic) = frame.topic.as_deref() else {
            return self.client_error("bad_request", "subscribe needs a topic", id).await;
        };
        if !self.subs.contains(topic) && self.subscriptions() >= self.config.max_subscriptions {
            let message = format!("at most {} subscriptions per connection", self.config.max_subscriptions);
            return self.client_error("too_many_subscriptions", &message, id).await;
        }
        if frame.snapshot && !self.snapshots.take() {
            return self.snapshot_refused(id).await;
        }
        let outcome = async {
            let feed = self.subs.feed().clone();
            let table = feed.check_topic(topic).await?;
            feed.authorize(self.subs.access(), topic, &table).await?;
            let start = match (&frame.since, frame.snapshot) {
                (_, true) => Start::Snapshot(&table),
                (Some(c), false) => Start::After(feed.parse_cursor(c).await?),
                (None, false) => Start::Live,
            };
            let Session { socket, subs, .. } = self;
            subs.add(
                &[topic.to_owned()],
                start,
                &mut SocketEmitter {
                    socket,
                    feed: &feed,
                    topic,
                    id,
                },
            )
            .await
        }
        .await;
        self.answer(topic, id, outcome).await
    }

    /// Sends a new snapshot; the topic's stream continues after it.
    async fn refresh(&mut self, frame: ClientFrame) -> Result<(), End> {
        let id = frame.id.as_ref();
        let Some(topic) = frame.topic.as_deref() else {
            return self.client_error("bad_request", "refresh needs a topic", id).await;
        };
        if !self.subs.contains(topic) {
            return self
                .client_error("bad_request", &format!("not subscribed to {topic:?}"), id)
                .await;
        }
        if !self.snapshots.take() {
            return self.snapshot_refused(id).await;
        }
        let outcome = async {
            let feed = self.subs.feed();
            let table = feed.check_topic(topic).await?;
            let (at, data) = feed.snapshot(topic, &table).await?;
            let cursor = feed.cursor(at);
            self.subs.advance(topic, at);
            let msg = frames::snapshot_text(topic, &cursor, data, id);
            match stall(self.socket.send(Message::Text(msg))).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(Stopped::Gone(Gone)),
            }
        }
        .await;
        self.answer(topic, id, outcome).await
    }

    /// The answer to a snapshot over the connection's budget. Not counted as a bad frame: the
    /// frame rate limit already bounds how often it can be asked.
    async fn snapshot_refused(&mut self, id: Option<&Value>) -> Result<(), End> {
        let message = format!(
            "at most {SNAPSHOT_BURST} snapshots at once and {SNAPSHOTS_PER_SECOND} per second; \
             subscribe with since to resume instead"
        );
        self.send_frame(&frames::Error::new("rate_limited", &message, id)).await
    }

    /// Turns a failed subscribe/refresh into the frame the client is owed.
    async fn answer(&mut self, topic: &str, id: Option<&Value>, outcome: Result<(), Stopped>) -> Result<(), End> {
        let e = match outcome {
            Ok(()) => return Ok(()),
            Err(Stopped::Gone(_)) => return Err(End::Stalled),
            Err(Stopped::Feed(e)) => e,
        };
        match e {
            FeedError::BadRequest(m) => self.client_error("bad_request", &m, id).await,
            e @ FeedError::UnknownTopic(_) => self.client_error("unknown_topic", &e.to_string(), id).await,
            e @ FeedError::Forbidden(_) => self.client_error("forbidden", &e.to_string(), id).await,
            FeedError::TooLarge(m) => self.send_frame(&frames::Error::new("too_large", &m, id)).await,
            FeedError::Full(m) => {
                self.send_frame(&frames::Error::new("too_many_subscriptions", &m, id))
                    .await
            }
            FeedError::Refresh(reason) => self.send_frame(&frames::RefreshNeeded::new(topic, reason, id)).await,
            e @ (FeedError::Db(_) | FeedError::Busy(_) | FeedError::Internal(_)) => {
                let message = match e {
                    FeedError::Busy(why) => {
                        tracing::warn!(topic, why, "subscription failed");
                        why
                    }
                    e => {
                        tracing::error!(error = %e, topic, "subscription failed");
                        FeedError::UNAVAILABLE
                    }
                };
                self.send_frame(&frames::Error::new("unavailable", message, id)).await
            }
        }
    }

    /// An `error` frame for the client's mistake; too many in a short time close the connection.
    async fn client_error(&mut self, code: &str, message: &str, id: Option<&Value>) -> Result<(), End> {
        if !self.errors.spend() {
            return self.close(close::POLICY, "too many bad frames").await;
        }
        self.send_frame(&frames::Error::new(code, message, id)).await
    }

    async fn send_frame(&mut self, frame: &impl Serialize) -> Result<(), End> {
        self.write(Message::Text(frames::text(frame))).await
    }

    async fn write(&mut self, msg: Message) -> Result<(), End> {
        stall(self.socket.send(msg)).await??;
        Ok(())
    }

    /// Boxed: the closing handshake's future is large, and an unboxed one would be reserved in
    /// every connection's task for its whole life (README "Performance").
    fn close(&mut self, code: u16, reason: &'static str) -> futures::future::BoxFuture<'_, Result<(), End>> {
        Box::pin(self.close_handshake(code, reason))
    }

    async fn close_handshake(&mut self, code: u16, reason: &'static str) -> Result<(), End> {
        tracing::debug!(code, reason, "closing the connection");
        self.closed = true;
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        // Best effort: a client that does not read will not get it, and is dropped anyway.
        if tokio::time::timeout(Duration::from_secs(5), self.socket.send(Message::Close(Some(frame))))
            .await
            .is_err()
        {
            return Ok(());
        }
        // The closing handshake: read (and drop) what the client still sends until its Close.
        // Dropping the socket with unread client data in the kernel would send a TCP reset,
        // which can destroy our Close frame before the client reads it.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(msg)) = self.socket.next().await {
                if let Message::Close(_) = msg {
                    break;
                }
            }
        })
        .await;
        Ok(())
    }
}

/// Bounds a write by [`WRITE_STALL`].
async fn stall<T>(fut: impl std::future::Future<Output = T>) -> Result<T, End> {
    tokio::time::timeout(WRITE_STALL, fut).await.map_err(|_| End::Stalled)
}
