//! HTTP: the router and the state every handler shares. One file per area; `router()` merges them.

pub mod error;
pub mod extract;
pub mod files;
pub mod health;
pub mod messages;
pub mod openapi;
pub mod studies;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Extension, Router};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::feed::Feed;
use crate::listener::ListenerStatus;
use crate::shutdown::Shutdown;
use crate::transport::{session::SessionConfig, ws};

#[derive(Clone)]
pub struct AppState {
    pub feed: Feed,
    pub listener: Arc<ListenerStatus>,
    pub session: SessionConfig,
    pub shutdown: Shutdown,
    /// `--max-upload`: the largest file an upload may carry, in bytes.
    pub max_upload: u64,
}

/// The REST routes (PROTOCOL §7) and their OpenAPI document, built from the same annotations.
pub fn api(max_upload: u64) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let upload_body = usize::try_from(max_upload.saturating_add(files::MULTIPART_OVERHEAD)).unwrap_or(usize::MAX);
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(studies::router())
        .merge(messages::router())
        .merge(files::router().layer(DefaultBodyLimit::max(upload_body)))
        .merge(openapi::router())
        .split_for_parts()
}

pub fn router(state: AppState) -> Router {
    let (api, doc) = api(state.max_upload);
    let doc = openapi::Document(Arc::new(
        doc.to_json().unwrap_or_else(|e| panic!("OpenAPI document: {e}")),
    ));
    Router::new()
        .route("/ws", get(ws::handler))
        .route("/healthz", get(health::healthz))
        .merge(api)
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(Extension(doc))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
