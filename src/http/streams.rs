//! The streams' HTTP side: `GET /ws`, `GET /events` and `GET /api/changes` (README "Subscribing: WebSocket `/ws`" and "Without a WebSocket").
//!
//! The request is at hand only here, so everything that needs it happens here, once for the three
//! transports: the topic list, the `Origin` allow-list, auth (`?token=` or `Authorization`, and the
//! token's `exp`, where a stream ends), and the per-client and total connection limits. What is
//! refused is refused before a stream starts, while the status line is still ours, as an
//! [`ApiError`] like any REST answer. The transports then get the feed, their own settings, who
//! the client is, and a permit they hold without knowing what it is; they never see [`AppState`].

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::Instrument;

use super::error::{ApiError, Result};
use super::limits::ConnPermit;
use super::AppState;
use crate::auth::Access;
use crate::feed::Feed;
use crate::metrics::Transport;
use crate::transport::poll::{self, Window};
use crate::transport::session::{self, Connection, Initial, MAX_CLIENT_FRAME};
use crate::transport::{sse, views};

/// Read buffer of a connection, and the most one read takes. tungstenite zero-fills the buffer
/// before every read attempt, and the session polls for client frames after every delivery, so its
/// 128 KiB default cost a 128 KiB memset per delivery (28% of pgfeed's CPU under fan-out) and made
/// every idle connection large. Client frames are small; a larger one grows the buffer to its
/// length and is read in several calls.
const READ_BUFFER: usize = 1024;
/// Bytes written to a connection are gathered up to this much before they go to the socket.
const WRITE_BUFFER: usize = 128 * 1024;
/// The largest event frame: PostgreSQL's largest value (1 GB, a row's `data`) and the frame's own
/// fields. Events have no size limit of their own, and only writers with database
/// access make rows that large: what a client can post through REST is bounded by its body limits.
const MAX_EVENT_FRAME: usize = (1 << 30) + (1 << 20);

/// The most a connection's write buffer may hold. Once a write finds the socket full, the
/// connection takes no new message until its buffer is flushed, so the buffer holds at most
/// [`WRITE_BUFFER`] and one message, and a client that stops reading is dropped after
/// `WRITE_STALL`. The one message is what needed a bound: snapshots, which any subscriber can ask
/// for, have theirs (`--max-snapshot`, answered `too_large` before anything is read for the
/// client). A write past this bound is an error, never growth.
fn max_write_buffer(max_snapshot: usize) -> usize {
    WRITE_BUFFER + max_snapshot.max(MAX_EVENT_FRAME)
}

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// Comma-separated topics to subscribe to on connect.
    topics: Option<String>,
    since: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Comma-separated topics.
    topics: Option<String>,
    since: Option<String>,
    /// The JWT, when not sent as `Authorization: Bearer` (README "Security: auth and limits").
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChangesQuery {
    topics: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
    /// The JWT, when not sent as `Authorization: Bearer` (README "Security: auth and limits").
    token: Option<String>,
}

/// A client let in: who it is, until when (the token's `exp`), and its connection slot.
pub(super) struct Admitted {
    pub(super) access: Access,
    pub(super) expires: Option<u64>,
    /// Its slot in the connection limits; the stream (or the poll) holds it, and dropping it frees
    /// the slot.
    pub(super) permit: ConnPermit,
}

/// The checks every stream makes before it starts: origin, auth, connection limits. Socket.IO's
/// connect (`socketio.rs`) makes the same ones.
pub(super) fn admit(state: &AppState, headers: &HeaderMap, peer: SocketAddr, token: Option<&str>) -> Result<Admitted> {
    if !state.origin_allowed(headers) {
        return Err(ApiError::Forbidden("origin not allowed".into()));
    }
    let (access, expires) = state
        .auth
        .check_until(headers, token)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    // The client behind a trusted proxy, an IPv6 /64 as one (client.rs).
    let client = state.trusted_proxies.client_key(peer, headers);
    let permit = state.limits.acquire(client).map_err(ApiError::TooManyConnections)?;
    Ok(Admitted {
        access,
        expires,
        permit,
    })
}

/// A request's `topics=a,b` as a list, the same on every stream: names trimmed, empty ones
/// skipped, repeats dropped. More than `max` names (`--max-subscriptions`, repeats counted) is
/// refused while splitting, before anything else is done for them, so an oversized list costs
/// its length and no more.
fn topic_list(topics: Option<&str>, max: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let names = topics
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty());
    for (n, topic) in names.enumerate() {
        if n >= max {
            return Err(ApiError::TooManySubscriptions(max));
        }
        if seen.insert(topic) {
            out.push(topic.to_owned());
        }
    }
    Ok(out)
}

/// The topics of a request ([`topic_list`]), at least one, checked against the tracked tables
/// and against what the caller's token may read (README "Security: auth and limits").
async fn checked_topics(feed: &Feed, topics: Option<&str>, max: usize, access: &Access) -> Result<Vec<String>> {
    let out = topic_list(topics, max)?;
    if out.is_empty() {
        return Err(ApiError::BadRequest("topics=a,b is required".into()));
    }
    for topic in &out {
        let table = feed.check_topic(topic).await?;
        feed.authorize(access, topic, &table).await?;
    }
    Ok(out)
}

// `GET /ws?topics=a,b&since=C&token=JWT`.
pub async fn ws(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response> {
    // The topic list is judged before anything else costs: a list over the subscription limit
    // is refused here, before the upgrade, with no database work done for it.
    let topics = topic_list(q.topics.as_deref(), state.session.max_subscriptions)?;
    let Admitted {
        access,
        expires,
        permit,
    } = admit(&state, &headers, peer, q.token.as_deref())?;
    let initial = Initial {
        topics,
        since: q.since.filter(|s| !s.is_empty()),
        expires,
    };
    // The connection's logs carry the upgrade request's id.
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::debug_span!("ws", connection = %id);
    let shutdown = state.shutdown.token.clone();
    let tracker = state.shutdown.tracker.clone();
    let metrics = state.metrics.connection(Transport::Ws);
    // Only what the session needs goes into it, not the whole state: every idle connection holds
    // its captures for its whole life (README "Performance").
    let (feed, config) = (state.feed.clone(), state.session.clone());
    drop(state);
    // Frames up to 1 MiB are read whole so that one over 64 KiB is answered with 1009 rather
    // than a protocol error; larger ones fail in the reader and get the same answer.
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_write_buffer(feed.max_snapshot()))
        .max_message_size(16 * MAX_CLIENT_FRAME)
        .max_frame_size(16 * MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| {
            // axum does not track upgraded connections (axum#3003): the tracker does, so shutdown
            // can tell each session to close with 1001 and wait for it.
            tracker.track_future(
                session::run(
                    socket,
                    Connection {
                        feed,
                        initial,
                        config,
                        access,
                        metrics,
                        held: permit,
                    },
                    shutdown,
                )
                .instrument(span),
            )
        }))
}

// `GET /events?topics=a,b&since=C`, `Last-Event-ID` winning over `since`.
pub async fn events(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<EventsQuery>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let Admitted {
        access,
        expires,
        permit,
    } = admit(&state, &headers, peer, q.token.as_deref())?;
    if let Some(view) = views::from_query(raw.as_deref())? {
        let since = last_event_id(&headers).or(q.since.as_deref().filter(|s| !s.is_empty()));
        let feed = state.feed.clone();
        return Ok(views::sse(
            feed,
            view,
            since,
            (access, expires),
            &state.metrics,
            permit,
            &state.shutdown,
        )
        .await?);
    }
    let topics = checked_topics(
        &state.feed,
        q.topics.as_deref(),
        state.session.max_subscriptions,
        &access,
    )
    .await?;
    let cursor = last_event_id(&headers).or(q.since.as_deref().filter(|s| !s.is_empty()));
    let feed = state.feed.clone();
    Ok(sse::open(
        feed,
        topics,
        cursor,
        (access, expires),
        &state.metrics,
        permit,
        &state.shutdown,
    )
    .await?)
}

/// An SSE client's `Last-Event-ID`, when it sent one.
fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

// `GET /api/changes?topics=…&since=C&limit=500&wait=25`.
pub async fn changes(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<ChangesQuery>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    // A waiting poll holds a connection like a stream does, so it counts against the same limits.
    let Admitted {
        access,
        expires,
        permit: _permit,
    } = admit(&state, &headers, peer, q.token.as_deref())?;
    let _open = state.metrics.connection(Transport::Poll);
    let feed = &state.feed;
    if let Some(view) = views::from_query(raw.as_deref())? {
        let wait = Window::new(None, number("wait", q.wait.as_deref())?).wait();
        let answer = views::poll(
            feed,
            view,
            q.since.as_deref(),
            wait,
            (&access, expires),
            &state.shutdown.token,
        )
        .await?;
        return Ok(answer);
    }
    let topics = checked_topics(feed, q.topics.as_deref(), state.session.max_subscriptions, &access).await?;
    let limit = number("limit", q.limit.as_deref())?;
    let wait = number("wait", q.wait.as_deref())?;
    let answer = poll::changes(
        feed,
        &topics,
        q.since.as_deref(),
        Window::new(limit, wait),
        (&access, expires),
        &state.shutdown.token,
    )
    .await?;
    Ok(answer.into_response())
}

/// A whole-number query parameter; absent or empty is `None`.
fn number(name: &str, value: Option<&str>) -> Result<Option<u64>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("{name} must be a whole number, not {v:?}"))),
    }
}
