//! `GET /ws`: upgrades to a WebSocket and runs a [`session`](super::session) on it (PROTOCOL §5).
//!
//! The upgrade is the last point where the request is at hand, so everything that needs it
//! happens here: the `Origin` allow-list, auth (`?token=` or `Authorization`), the per-IP and
//! total connection limits, and connect-time subscriptions.

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::session::{self, Initial, MAX_CLIENT_FRAME};
use super::sse::topic_list;
use crate::http::limits::{ConnPermit, Refused};

/// Read buffer of a connection, and the most one read takes. tungstenite zero-fills the buffer
/// before every read attempt, and the session polls for client frames after every delivery, so its
/// 128 KiB default cost a 128 KiB memset per delivery (28% of pgfeed's CPU under fan-out) and made
/// every idle connection large. Client frames are small; a larger one grows the buffer to its
/// length and is read in several calls.
const READ_BUFFER: usize = 1024;
use crate::http::AppState;
use crate::metrics::Transport;

/// Bytes written to a connection are gathered up to this much before they go to the socket.
const WRITE_BUFFER: usize = 128 * 1024;
/// The largest event frame: PostgreSQL's largest value (1 GB, a row's `data`) and the frame's own
/// fields. Events have no size limit of their own (PROTOCOL §4), and only writers with database
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

/// A refusal before the upgrade, in the REST error shape.
pub fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

/// The checks every streaming transport makes before it starts: origin, auth, connection limits.
/// Also the token's `exp`, where the stream must end (PROTOCOL §8).
pub fn admit(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    token: Option<&str>,
) -> Result<(crate::auth::Access, Option<u64>, ConnPermit), Box<Response>> {
    if !state.origin_allowed(headers) {
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "origin not allowed",
        )));
    }
    let (access, expires) = state
        .auth
        .check_until(headers, token)
        .map_err(|e| refuse(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))?;
    // The client behind a trusted proxy, an IPv6 /64 as one (http/client.rs).
    let client = state.trusted_proxies.client_key(peer, headers);
    let permit = state.limits.acquire(client).map_err(|refused| {
        let message = match refused {
            Refused::PerIp(n) => format!("at most {n} connections per client address"),
            Refused::Total(n) => format!("the server is at its limit of {n} connections"),
        };
        Box::new(refuse(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", message))
    })?;
    Ok((access, expires, permit))
}

// PROTOCOL §5: `GET /ws?topics=a,b&since=C&token=JWT`.
pub async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // The topic list is judged before anything else costs: a list over the subscription limit
    // is refused here, before the upgrade, with no database work done for it.
    let topics = match topic_list(q.topics.as_deref(), state.session.max_subscriptions) {
        Ok(topics) => topics,
        Err(refusal) => return refusal.into_response(),
    };
    let (access, expires, permit) = match admit(&state, &headers, peer, q.token.as_deref()) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
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
    // its captures for its whole life (PERF: `idle`).
    let (feed, config) = (state.feed.clone(), state.session.clone());
    drop(state);
    // Frames up to 1 MiB are read whole so that one over 64 KiB is answered with 1009 rather
    // than a protocol error; larger ones fail in the reader and get the same answer.
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_write_buffer(feed.max_snapshot()))
        .max_message_size(16 * MAX_CLIENT_FRAME)
        .max_frame_size(16 * MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| {
            // axum does not track upgraded connections (axum#3003): the tracker does, so shutdown
            // can tell each session to close with 1001 and wait for it.
            tracker.track_future(
                session::run(socket, feed, initial, config, access, metrics, permit, shutdown).instrument(span),
            )
        })
}
