//! `/socket.io/` (README "Socket.IO", PROTOCOL §10): socketioxide mounted as a layer on the same
//! router and port, its connections let in by the same checks as `/ws` (origin, the JWT, the
//! per-client connection limit), then each run as a WebSocket session through
//! [`transport::socketio`](crate::transport::socketio).
//!
//! Its namespace connect is where a refusal can still be told: a middleware's error becomes the
//! client's `connect_error` with the message. So the checks run in the middleware, and what they
//! grant (who the client is, until when, its connection slot) waits in the socket's extensions for
//! the connect handler, which starts the session.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use serde::Deserialize;
use socketioxide::extract::TryData;
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{ParserConfig, SocketIo};
use tracing::Instrument;

use super::streams::{admit, Admitted};
use super::AppState;
use crate::metrics::Transport;
use crate::transport::session::{Connection, Initial, MAX_CLIENT_FRAME};
use crate::transport::socketio::{self as sio, SocketArc};

/// Packets one socket's buffer holds before an emit into it fails (socketioxide's default is
/// 128). The bridge waits for room rather than fail, so this only sets how much is in flight.
const BUFFER: usize = 256;
/// The largest request body of the polling transport and the largest WebSocket message a client
/// may send: a client event is at most [`MAX_CLIENT_FRAME`] and its packet framing. What the
/// server sends is not bounded by it (a packet larger than this goes out alone).
const MAX_INCOMING: usize = 2 * MAX_CLIENT_FRAME;
/// How long an engine.io connection may stay without joining the namespace (socketioxide's
/// default is 45 s): until it does, it has passed no check and holds no connection slot.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connect payload: `io(url, {auth: {token}})`.
#[derive(Debug, Default, Deserialize)]
struct AuthPayload {
    token: Option<String>,
}

/// What the middleware granted, for the handler (extensions hold clones, hence the cell).
#[derive(Clone)]
struct Granted(Arc<Mutex<Option<Admitted>>>);

/// The layer serving `/socket.io/`, and its sockets' handlers.
pub fn layer(state: &AppState) -> SocketIoLayer {
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(BUFFER)
        .max_payload(MAX_INCOMING as u64)
        .ws_max_message_size(MAX_INCOMING)
        .ws_max_frame_size(MAX_INCOMING)
        .connect_timeout(CONNECT_TIMEOUT)
        // No binary attachments: every pgfeed event is JSON.
        .with_parser(ParserConfig::common().max_incoming_binaries(0))
        .build_layer();
    let checks = state.clone();
    let middleware = move |SocketArc(s): SocketArc, TryData(auth): TryData<AuthPayload>| {
        let state = checks.clone();
        async move {
            let parts = s.req_parts();
            let token = match auth.ok().and_then(|a| a.token) {
                Some(t) => Some(t),
                None => crate::auth::query_token(parts.uri.query()),
            };
            let peer = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
            let admitted =
                admit(&state, &parts.headers, peer, token.as_deref()).map_err(|e| format!("{}: {e}", e.code()))?;
            s.extensions.insert(Granted(Arc::new(Mutex::new(Some(admitted)))));
            sio::prepare(&s);
            Ok::<(), String>(())
        }
    };
    let state = state.clone();
    let handler = move |SocketArc(s): SocketArc| {
        let state = state.clone();
        async move {
            let Some(Admitted {
                access,
                expires,
                permit,
            }) = s
                .extensions
                .remove::<Granted>()
                .and_then(|g| g.0.lock().unwrap_or_else(|e| e.into_inner()).take())
            else {
                return;
            };
            let conn = Connection {
                feed: state.feed.clone(),
                initial: Initial {
                    expires,
                    ..Initial::default()
                },
                config: state.session.clone(),
                access,
                metrics: state.metrics.connection(Transport::SocketIo),
                held: permit,
            };
            let span = tracing::debug_span!("socketio", socket = %s.id);
            if let Some(session) = sio::attach(s, conn, state.shutdown.token.clone()) {
                state.shutdown.tracker.spawn(session.instrument(span));
            }
        }
    };
    io.ns("/", handler.with(middleware));
    layer
}
