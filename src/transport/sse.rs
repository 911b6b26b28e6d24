//! `GET /events`: the feed as Server-Sent Events (README "Without a WebSocket"), for clients that cannot hold a
//! WebSocket. A plain browser `EventSource` gets every change in order and, because each event's
//! `id:` is its cursor and `Last-Event-ID` resumes after it, reconnects without loss or repeat.
//!
//! One stream carries several topics with one cursor, so it is joined with
//! [`Subscriptions::add`]: events go out in commit order across the topics, each event once
//! (an event published on two of the stream's topics is sent on the first of them). A cursor the
//! client got wrong is an error before the stream starts, while the status line is still ours
//! (the handler, in `http::streams`, answers it, as it checked origin, token and topics). An
//! expired cursor becomes `event: refresh_needed` for each topic, and the stream goes on live from
//! the current cursor.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::auth::Access;
use crate::feed::{Emit, Feed, FeedError, Gone, Item, Start, Stopped, Subscriptions};
use crate::hub::{Delivery, Outbox, CONNECTION_QUEUE};
use crate::metrics::{ConnectionGuard, Metrics, Transport};
use crate::shutdown::Shutdown;
use crate::transport::frames;

/// README "Without a WebSocket": a comment line this often, so proxies and the client see the stream is alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon (ms) an `EventSource` should reconnect after the stream ends (shutdown, slow consumer).
const RETRY_MS: u64 = 1000;
/// SSE events the stream task may have ready ahead of the socket. Small: the connection's real
/// buffer is its hub queue, whose overflow ends the stream so that the client resumes.
const STREAM_BUFFER: usize = 64;
/// How long one event may wait for a client that does not read before the stream is ended.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Starts the stream of `topics` (checked already: they exist and `access` may read them) after
/// `cursor` (`Last-Event-ID` or `since`), or live without one. A cursor the feed cannot parse is
/// the error, before anything is sent. `permit` is whatever the caller holds for the stream's
/// lifetime (its connection-limit slot); it is dropped when the stream ends.
pub async fn open<H: Send + 'static>(
    feed: Feed,
    topics: Vec<String>,
    cursor: Option<&str>,
    (access, expires): (Access, Option<u64>),
    metrics: &std::sync::Arc<Metrics>,
    permit: H,
    shutdown: &Shutdown,
) -> Result<Response, FeedError> {
    let (start, refresh) = match cursor {
        None => (Start::Live, None),
        Some(c) => match feed.parse_cursor(c).await {
            Ok(at) => (Start::After(at), None),
            Err(FeedError::Refresh(reason)) => (Start::Live, Some(reason)),
            Err(e) => return Err(e),
        },
    };

    let token = shutdown.token.clone();
    let (events_tx, events_rx) = mpsc::channel(STREAM_BUFFER);
    // The stream task is tracked so that shutdown waits for it; it ends on the token, and the
    // response body ends with it (and on the token too: axum#2673, an open SSE response would
    // otherwise hold graceful shutdown forever).
    let stream = SseStream {
        feed,
        topics,
        access,
        expires,
        metrics: metrics.connection(Transport::Sse),
        _permit: permit,
    };
    shutdown
        .tracker
        .spawn(run(stream, start, refresh, events_tx, token.clone()));
    Ok(response(events_rx, token))
}

/// The `text/event-stream` response of the events a stream task sends to `events_rx`, with
/// keep-alives; it ends with the task, or at shutdown (`token`).
pub fn response(events_rx: mpsc::Receiver<SseEvent>, token: CancellationToken) -> Response {
    let stream = ReceiverStream::new(events_rx)
        .map(Ok::<_, Infallible>)
        .take_until(token.cancelled_owned());
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    // Tell buffering reverse proxies (nginx) to pass events through as they come.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One SSE stream: what it reads, for whom, and what it holds for as long as it runs.
struct SseStream<H> {
    feed: Feed,
    topics: Vec<String>,
    access: Access,
    /// The token's `exp`: the stream ends then.
    expires: Option<u64>,
    /// The connection in the server's gauges.
    metrics: ConnectionGuard,
    /// The connection's slot in the connection limits, freed when the stream ends.
    _permit: H,
}

/// Feeds one SSE stream from `start` (after a `refresh_needed` for each topic when `refresh` says
/// why) until the client leaves, falls behind, its token expires, or the server shuts down; the
/// response ends with it.
async fn run<H>(
    stream: SseStream<H>,
    start: Start<'_>,
    refresh: Option<&'static str>,
    events_tx: mpsc::Sender<SseEvent>,
    shutdown: CancellationToken,
) {
    let SseStream {
        feed,
        topics,
        access,
        expires,
        mut metrics,
        _permit,
    } = stream;
    // The stream ends when its token expires, so its rights end with the token (README "Security:
    // auth and limits"); the client reconnects with a fresh token and its last id
    // (`Last-Event-ID`), losing nothing.
    let expiry = crate::auth::expiry(expires);
    tokio::pin!(expiry);
    let (outbox, mut inbox) = Outbox::new(CONNECTION_QUEUE);
    let mut subs = Subscriptions::new(feed.clone(), outbox.clone()).with_access(access);
    let mut writer = BodyEmitter {
        tx: &events_tx,
        feed: &feed,
        topics: &topics,
        shutdown: &shutdown,
    };
    let mut outcome = match refresh {
        Some(reason) => Err(Stopped::Feed(FeedError::Refresh(reason))),
        None => subs.add(&topics, start, &mut writer).await,
    };
    if let Err(Stopped::Feed(FeedError::Refresh(reason))) = outcome {
        // The client needs a snapshot (README "Without a WebSocket"). Tell it per topic, then go on
        // live, with the new cursor as the stream's id so a reconnect does not land on the old one.
        for topic in &topics {
            let data = frames::text(&frames::RefreshNeeded::new(topic, reason, None));
            if writer
                .send(SseEvent::default().event("refresh_needed").data(data.as_str()))
                .await
                .is_err()
            {
                return;
            }
        }
        outcome = subs.add(&topics, Start::Live, &mut writer).await;
    }
    match outcome {
        Ok(()) => {}
        Err(Stopped::Gone(_)) => return,
        Err(e) => {
            tracing::error!(error = %e, "SSE subscription failed");
            let data = frames::text(&frames::Error::new("unavailable", FeedError::UNAVAILABLE, None));
            let _ = writer
                .send(SseEvent::default().event("error").data(data.as_str()))
                .await;
            return;
        }
    }
    metrics.set_subscriptions(topics.len());
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = &mut expiry => return,
            // The queue overflowed: end the stream; the client reconnects with Last-Event-ID and
            // re-reads what it missed from the log (the WebSocket's 4008).
            _ = outbox.overflowed_wait() => {
                metrics.slow_consumer();
                return;
            }
            _ = events_tx.closed() => return,
            Some(mut d) = inbox.recv() => {
                if subs.accept(&mut d) {
                    if writer.send(event_of(&feed, &d)).await.is_err() {
                        return;
                    }
                    metrics.delivered(1, d.event.committed_at);
                }
            }
        }
    }
}

/// One change as an SSE event: `id:` its cursor, `event:` its type, `data:` its JSON.
fn event_of(feed: &Feed, d: &Delivery) -> SseEvent {
    // Frames are compact JSON (serde_json, jsonb text): no raw line breaks, as `data` requires.
    let data = d.frame().as_str();
    SseEvent::default()
        .id(feed.cursor(d.at()))
        .event(event_name(d.kind()))
        .data(data)
}

/// An event type as an SSE `event:` field. A type is `<table>_created` etc., and a tracked table's
/// name may hold any character: a line break would end the field (axum panics on one), and NUL
/// is dropped by browsers. Those become `_`; the exact type is in the `data:` JSON.
fn event_name(kind: &str) -> std::borrow::Cow<'_, str> {
    if kind.contains(['\n', '\r', '\0']) {
        kind.replace(['\n', '\r', '\0'], "_").into()
    } else {
        kind.into()
    }
}

/// Sends what precedes the live stream, and the live events, to the response body.
struct BodyEmitter<'a> {
    tx: &'a mpsc::Sender<SseEvent>,
    feed: &'a Feed,
    topics: &'a [String],
    shutdown: &'a CancellationToken,
}

impl BodyEmitter<'_> {
    async fn send(&mut self, event: SseEvent) -> Result<(), Gone> {
        tokio::select! {
            sent = tokio::time::timeout(WRITE_STALL, self.tx.send(event)) => match sent {
                Ok(Ok(())) => Ok(()),
                _ => Err(Gone),
            },
            _ = self.shutdown.cancelled() => Err(Gone),
        }
    }
}

impl Emit for BodyEmitter<'_> {
    async fn emit(&mut self, item: Item) -> Result<(), Gone> {
        let event = match item {
            // The stream's starting cursor as an id of its own, so that an `EventSource` that
            // reconnects before any change arrived resumes from here rather than from "now".
            Item::Subscribed(at) => {
                let cursor = self.feed.cursor(at);
                let data = frames::text(&frames::SubscribedAll::new(self.topics, &cursor));
                SseEvent::default()
                    .id(cursor)
                    .event("subscribed")
                    .retry(Duration::from_millis(RETRY_MS))
                    .data(data.as_str())
            }
            // Never happens: this stream only starts live or after a cursor. Were it to, the
            // stream ends (the client reconnects with its last id) rather than send a frame
            // SSE clients do not know.
            Item::Snapshot(..) => {
                tracing::error!("a snapshot was handed to an SSE stream");
                return Err(Gone);
            }
            Item::Event(d) => event_of(self.feed, &d),
        };
        self.send(event).await
    }
}
