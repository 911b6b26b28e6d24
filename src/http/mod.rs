//! HTTP: the router and the state every handler shares. One file per area; `router()` merges them.

pub mod health;

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::feed::Feed;
use crate::listener::ListenerStatus;
use crate::shutdown::Shutdown;
use crate::transport::{poll, session::SessionConfig, sse, ws};

/// The browser client library (web/client.js), built into the binary: no build step, no files to ship.
const CLIENT_JS: &str = include_str!("../../web/client.js");

// `GET /client.js`: an ES module, `import { connect } from "/client.js"`.
async fn client_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
}

#[derive(Clone)]
pub struct AppState {
    pub feed: Feed,
    pub listener: Arc<ListenerStatus>,
    pub session: SessionConfig,
    pub shutdown: Shutdown,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(ws::handler))
        .route("/events", get(sse::handler))
        .route("/api/changes", get(poll::handler))
        .route("/client.js", get(client_js))
        .route("/healthz", get(health::healthz))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
