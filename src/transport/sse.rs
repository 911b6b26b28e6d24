//! `GET /events`: the feed as Server-Sent Events (PROTOCOL §6), for clients that cannot hold a
//! WebSocket. A plain browser `EventSource` gets every change in order and, because each event's
//! `id:` is its cursor and `Last-Event-ID` resumes after it, reconnects without loss or repeat.
//!
//! One stream carries several topics with one cursor, so it is joined with
//! [`Subscriptions::add_merged`]: events go out in commit order across the topics, each event once
//! (an event published on two of the stream's topics is sent on the first of them). A topic or
//! cursor the client got wrong is answered with a 400/404 JSON error before the stream starts,
//! while the status line is still ours. An expired cursor becomes `event: refresh_needed` for each
//! topic, and the stream goes on live from the current cursor.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::ws::admit;
use crate::auth::Access;
use crate::feed::{Emit, Feed, FeedError, Item, Start, Subscriptions};
use crate::http::limits::ConnPermit;
use crate::http::AppState;
use crate::hub::{Delivery, Outbox, CONNECTION_QUEUE};
use crate::metrics::{ConnectionGuard, Transport};

/// PROTOCOL §6: a comment line this often, so proxies and the client see the stream is alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How soon (ms) an `EventSource` should reconnect after the stream ends (shutdown, slow consumer).
const RETRY_MS: u64 = 1000;
/// SSE events the stream task may have ready ahead of the socket. Small: the connection's real
/// buffer is its hub queue, whose overflow ends the stream so that the client resumes.
const STREAM_BUFFER: usize = 64;
/// How long one event may wait for a client that does not read before the stream is ended.
const WRITE_STALL: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Comma-separated topics.
    topics: Option<String>,
    since: Option<String>,
    /// PROTOCOL §8: the JWT, when not sent as `Authorization: Bearer`.
    token: Option<String>,
}

/// A client error answered before a stream or a poll starts: `{"error":{"code","message"}}`.
pub struct Refusal(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let Refusal(status, code, message) = self;
        (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
    }
}

impl From<FeedError> for Refusal {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::BadRequest(m) => Refusal(StatusCode::BAD_REQUEST, "bad_request", m),
            e @ FeedError::UnknownTopic(_) => Refusal(StatusCode::NOT_FOUND, "unknown_topic", e.to_string()),
            e @ FeedError::Forbidden(_) => Refusal(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            FeedError::Refresh(reason) => Refusal(
                StatusCode::GONE,
                reason,
                "the cursor is older than the log keeps: take a snapshot, then resume".into(),
            ),
            FeedError::TooLarge(m) => Refusal(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            e @ (FeedError::Db(_) | FeedError::Busy(_) | FeedError::Internal(_) | FeedError::Gone) => {
                tracing::error!(error = %e, "feed unavailable");
                Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; try again".into(),
                )
            }
        }
    }
}

/// A request's `topics=a,b` as a list, the same on every stream transport (WebSocket, SSE,
/// long-poll): names trimmed, empty ones skipped, repeats dropped. More than `max` names
/// (`--max-subscriptions`, repeats counted) is refused while splitting, before anything else is
/// done for them, so an oversized list costs its length and no more.
pub fn topic_list(topics: Option<&str>, max: usize) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let names = topics
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty());
    for (n, topic) in names.enumerate() {
        if n >= max {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "too_many_subscriptions",
                format!("at most {max} topics per connection"),
            ));
        }
        if seen.insert(topic) {
            out.push(topic.to_owned());
        }
    }
    Ok(out)
}

/// The topics of a request ([`topic_list`]), checked against the feed (PROTOCOL §3) and against
/// what the caller may read (PROTOCOL §8).
pub async fn checked_topics(
    feed: &Feed,
    topics: Option<&str>,
    max: usize,
    access: &Access,
) -> Result<Vec<String>, Refusal> {
    let out = topic_list(topics, max)?;
    if out.is_empty() {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "topics=a,b is required".into(),
        ));
    }
    for topic in &out {
        let table = feed.check_topic(topic).await?;
        feed.authorize(access, topic, &table).await?;
    }
    Ok(out)
}

// PROTOCOL §6: `GET /events?topics=a,b&since=C`, `Last-Event-ID` winning over `since`.
pub async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let (access, expires, permit) = match admit(&state, &headers, peer, q.token.as_deref()) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    match open(state, q, headers, (access, expires), permit).await {
        Ok(sse) => sse,
        Err(refusal) => refusal.into_response(),
    }
}

async fn open(
    state: AppState,
    q: EventsQuery,
    headers: HeaderMap,
    (access, expires): (Access, Option<u64>),
    permit: ConnPermit,
) -> Result<Response, Refusal> {
    let feed = state.feed.clone();
    let topics = checked_topics(&feed, q.topics.as_deref(), state.session.max_subscriptions, &access).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let cursor = last_event_id.or(q.since.as_deref().filter(|s| !s.is_empty()));
    let (start, refresh) = match cursor {
        None => (Start::Live, None),
        Some(c) => match feed.parse_cursor(c).await {
            Ok(at) => (Start::After(at), None),
            Err(FeedError::Refresh(reason)) => (Start::Live, Some(reason)),
            Err(e) => return Err(e.into()),
        },
    };

    let token = state.shutdown.token.clone();
    let (events_tx, events_rx) = mpsc::channel(STREAM_BUFFER);
    // The stream task is tracked so that shutdown waits for it; it ends on the token, and the
    // response body ends with it (and on the token too: axum#2673, an open SSE response would
    // otherwise hold graceful shutdown forever).
    state.shutdown.tracker.spawn(run(
        feed,
        access,
        topics,
        start,
        refresh,
        events_tx,
        token.clone(),
        expires,
        (state.metrics.connection(Transport::Sse), permit),
    ));
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
    Ok(response)
}

/// Feeds one SSE stream until the client leaves, falls behind, its token expires, or the server
/// shuts down. The connection's gauge and its slot in the connection limits are held for as long
/// as it runs; the response ends with it.
#[allow(clippy::too_many_arguments)]
async fn run(
    feed: Feed,
    access: Access,
    topics: Vec<String>,
    start: Start,
    refresh: Option<&'static str>,
    events_tx: mpsc::Sender<SseEvent>,
    shutdown: CancellationToken,
    expires: Option<u64>,
    (mut metrics, _permit): (ConnectionGuard, ConnPermit),
) {
    // PROTOCOL §8: the stream ends when its token expires, so its rights end with the token; the
    // client reconnects with a fresh token and its last id (`Last-Event-ID`), losing nothing.
    let expiry = crate::auth::expiry(expires);
    tokio::pin!(expiry);
    let (outbox, mut inbox) = Outbox::new(CONNECTION_QUEUE);
    let mut subs = Subscriptions::new(feed.clone(), outbox.clone()).with_access(access);
    let mut writer = Writer {
        tx: &events_tx,
        feed: &feed,
        topics: &topics,
        shutdown: &shutdown,
    };
    let mut outcome = match refresh {
        Some(reason) => Err(FeedError::Refresh(reason)),
        None => subs.add_merged(&topics, start, &mut writer).await,
    };
    if let Err(FeedError::Refresh(reason)) = outcome {
        // PROTOCOL §5/§6: the client needs a snapshot. Tell it per topic, then go on live, with
        // the new cursor as the stream's id so a reconnect does not land on the old one again.
        for topic in &topics {
            let data = json!({"type": "refresh_needed", "topic": topic, "reason": reason}).to_string();
            if writer
                .send(SseEvent::default().event("refresh_needed").data(data))
                .await
                .is_err()
            {
                return;
            }
        }
        outcome = subs.add_merged(&topics, Start::Live, &mut writer).await;
    }
    match outcome {
        Ok(()) => {}
        Err(FeedError::Gone) => return,
        Err(e) => {
            tracing::error!(error = %e, "SSE subscription failed");
            let data =
                json!({"type": "error", "code": "unavailable", "message": "the database is unavailable; try again"});
            let _ = writer
                .send(SseEvent::default().event("error").data(data.to_string()))
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
struct Writer<'a> {
    tx: &'a mpsc::Sender<SseEvent>,
    feed: &'a Feed,
    topics: &'a [String],
    shutdown: &'a CancellationToken,
}

impl Writer<'_> {
    async fn send(&mut self, event: SseEvent) -> Result<(), FeedError> {
        tokio::select! {
            sent = tokio::time::timeout(WRITE_STALL, self.tx.send(event)) => match sent {
                Ok(Ok(())) => Ok(()),
                _ => Err(FeedError::Gone),
            },
            _ = self.shutdown.cancelled() => Err(FeedError::Gone),
        }
    }
}

impl Emit for Writer<'_> {
    async fn emit(&mut self, item: Item) -> Result<(), FeedError> {
        let event = match item {
            // The stream's starting cursor as an id of its own, so that an `EventSource` that
            // reconnects before any change arrived resumes from here rather than from "now".
            Item::Subscribed(at) => {
                let cursor = self.feed.cursor(at);
                let data = json!({"type": "subscribed", "topics": self.topics, "cursor": cursor});
                SseEvent::default()
                    .id(cursor)
                    .event("subscribed")
                    .retry(Duration::from_millis(RETRY_MS))
                    .data(data.to_string())
            }
            Item::Snapshot(..) => return Err(FeedError::Internal("snapshots are not sent on SSE".into())),
            Item::Event(d) => event_of(self.feed, &d),
        };
        self.send(event).await
    }
}
