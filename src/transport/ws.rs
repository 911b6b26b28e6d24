//! `GET /ws`: upgrades to a WebSocket and runs a [`session`](super::session) on it (PROTOCOL §5).

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::session::{self, Initial, MAX_CLIENT_FRAME};

/// Read buffer of a connection, and the most one read takes. tungstenite zero-fills the buffer
/// before every read attempt, and the session polls for client frames after every delivery, so its
/// 128 KiB default cost a 128 KiB memset per delivery (28% of pgfeed's CPU under fan-out) and made
/// every idle connection large. Client frames are small; a larger one grows the buffer to its
/// length and is read in several calls.
const READ_BUFFER: usize = 1024;
use crate::http::AppState;

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// Comma-separated topics to subscribe to on connect.
    topics: Option<String>,
    since: Option<String>,
}

// PROTOCOL §5: `GET /ws?topics=a,b&since=C`. The upgrade is the last point where the request is
// at hand, so connect-time subscriptions (and, later, auth) are read here.
pub async fn handler(State(state): State<AppState>, Query(q): Query<WsQuery>, ws: WebSocketUpgrade) -> Response {
    let initial = Initial {
        topics: q
            .topics
            .iter()
            .flat_map(|t| t.split(','))
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        since: q.since.filter(|s| !s.is_empty()),
    };
    let shutdown = state.shutdown.token.clone();
    let tracker = state.shutdown.tracker.clone();
    // Frames up to 1 MiB are read whole so that one over 64 KiB is answered with 1009 rather
    // than a protocol error; larger ones fail in the reader and get the same answer.
    ws.read_buffer_size(READ_BUFFER)
        .max_message_size(16 * MAX_CLIENT_FRAME)
        .max_frame_size(16 * MAX_CLIENT_FRAME)
        // axum does not track upgraded connections (axum#3003): the tracker does, so shutdown
        // can tell each session to close with 1001 and wait for it.
        .on_upgrade(move |socket| {
            tracker.track_future(session::run(socket, state.feed, initial, state.session, shutdown))
        })
}
