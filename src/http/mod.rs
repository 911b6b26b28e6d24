//! HTTP: the router and the state every handler shares. One file per area; `router()` merges them.

pub mod client;
pub mod error;
pub mod extract;
pub mod files;
pub mod guard;
pub mod health;
pub mod limits;
pub mod local;
pub mod messages;
pub mod observe;
pub mod openapi;
pub mod position;
pub mod rate;
pub mod serve;
pub mod socketio;
pub mod streams;
pub mod studies;
pub mod web;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::Auth;
use crate::feed::Feed;
use crate::listener::ListenerStatus;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::transport::session::SessionConfig;
use limits::ConnLimits;

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
    pub metrics: Arc<Metrics>,
    pub session: SessionConfig,
    pub shutdown: Shutdown,
    pub auth: Auth,
    pub limits: Arc<ConnLimits>,
    /// Browser origins allowed to open streams; empty allows any.
    pub allowed_origins: Arc<Vec<String>>,
    /// `--max-upload`: the largest file an upload may carry, in bytes.
    pub max_upload: u64,
    /// `--request-timeout`: the longest a REST request may take.
    pub request_timeout: std::time::Duration,
    /// `--max-transfers` permits: each upload and download holds one (owned, in its handler or its
    /// response body) until it ends; none left answers 503 `busy`.
    pub transfers: Arc<tokio::sync::Semaphore>,
    /// `--transfer-stall-timeout`: how long a download waits for its client to take a chunk.
    pub transfer_stall_timeout: std::time::Duration,
    /// `--insecure-no-auth`: without a secret, answer any IP address as `Host` too ([`local`]).
    pub insecure_no_auth: bool,
    /// `--max-member-posts-per-minute`, per member token ([`rate`]).
    pub member_posts: Arc<rate::PostLimiter>,
    /// `--trusted-proxies`: whose forwarding headers name the client (`client.rs`).
    pub trusted_proxies: Arc<client::TrustedProxies>,
}

impl AppState {
    /// Whether a request's `Origin` (if any) may open a WebSocket or SSE stream.
    pub fn origin_allowed(&self, headers: &axum::http::HeaderMap) -> bool {
        match headers.get(axum::http::header::ORIGIN).and_then(|o| o.to_str().ok()) {
            None => true,
            Some(origin) => self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|a| a == origin),
        }
    }
}

/// The REST routes (README "REST API") and their OpenAPI document, built from the same annotations.
pub fn api(max_upload: u64) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let upload_body = usize::try_from(max_upload.saturating_add(files::MULTIPART_OVERHEAD)).unwrap_or(usize::MAX);
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(studies::router())
        .merge(messages::router())
        .merge(files::router().layer(DefaultBodyLimit::max(upload_body)))
        .merge(openapi::router())
        .split_for_parts()
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-sent `X-Request-Id` kept.
const REQUEST_ID_MAX: usize = 64;

/// A client's `X-Request-Id` is kept (in logs and the answer) only if it is one short, plain
/// value: at most [`REQUEST_ID_MAX`] of `A-Z a-z 0-9 . _ -`. Anything else is dropped, and the
/// request gets a fresh UUID like one that sent none, so nobody writes what they like into logs.
async fn plain_request_id(mut req: Request<axum::body::Body>) -> Request<axum::body::Body> {
    let ids = req.headers().get_all(REQUEST_ID);
    let mut ids = ids.iter();
    let plain = match (ids.next(), ids.next()) {
        (Some(id), None) => {
            let id = id.as_bytes();
            !id.is_empty()
                && id.len() <= REQUEST_ID_MAX
                && id
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        _ => false,
    };
    if !plain {
        req.headers_mut().remove(REQUEST_ID);
    }
    req
}

/// CORS for the origins `--allowed-origins` lists, so that a page served elsewhere can use REST and
/// the streams client.js falls back to (SSE and long-poll are read with `fetch` and a bearer
/// header, which needs a preflight). None without a list: an open server is no reason to let any
/// website read it from its visitors' browsers, so only listed origins get CORS headers.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                HeaderName::from_static("last-event-id"),
                REQUEST_ID,
                position::HEADER,
            ])
            .expose_headers([header::ETAG, header::LOCATION, REQUEST_ID, position::HEADER])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

pub fn router(state: AppState) -> Router {
    let (api, mut doc) = api(state.max_upload);
    openapi::with_positions(&mut doc);
    // Who may call what (README "Security: auth and limits"), for REST and metrics; the streams
    // check tokens on connect, since a browser cannot send headers with a WebSocket or EventSource.
    let admin_only = axum::middleware::from_fn_with_state(state.clone(), guard::guard);
    let doc = openapi::Document(Arc::new(
        doc.to_json().unwrap_or_else(|e| panic!("OpenAPI document: {e}")),
    ));
    Router::new()
        .route("/ws", get(streams::ws))
        .route("/events", get(streams::events))
        .route("/api/changes", get(streams::changes))
        .route("/client.js", get(client_js))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(observe::metrics).route_layer(admin_only.clone()))
        .merge(api.route_layer(admin_only))
        .merge(web::router())
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        // `/socket.io/` (README "Socket.IO"): inside the layers below, so it is counted, traced,
        // and held to the same Host and Origin rules as the other streams.
        .layer(socketio::layer(&state))
        .layer(Extension(doc))
        // Inside the Host and Origin rules: a write's `Pgfeed-Position`, a read's wait for one.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            position::read_your_writes,
        ))
        // Without a secret, only loopback names, and no other site's streams or writes: otherwise
        // any page the local user visits could use pgfeed as a relay (README "Security: auth and
        // limits").
        .layer(axum::middleware::from_fn_with_state(state.clone(), local::local_only))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::count_requests,
        ))
        // The span names the route pattern and the request id, never the URI: query strings may
        // carry tokens (`?token=`), and bodies are never logged.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            let id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!("request", method = %req.method(), route, request_id = id)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::map_request(plain_request_id))
        // Outermost: a preflight is answered before routing and auth, as browsers send it
        // without credentials.
        .layer(tower::util::option_layer(cors(&state.allowed_origins)))
        .with_state(state)
}
