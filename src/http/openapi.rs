//! `GET /api/openapi.json` (README "REST API"): the OpenAPI 3 document, generated from the
//! handlers' `#[utoipa::path]` annotations. The REST routes are registered through
//! `utoipa_axum::routes!`, so a REST route cannot be served without being documented; the routes
//! outside REST (`/ws`, `/events`, `/api/changes`, `/client.js`, `/healthz`, `/metrics`, and the
//! admin page's `/`, `/admin.js`, `/admin.css`) are described here, and a test checks that the
//! document and the router agree.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Required, ResponseBuilder};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "pgfeed", description = "PostgreSQL as a live change feed: the REST API. \
        Every write goes through the database's capture triggers, so it reaches `/ws` subscribers like any other writer's."),
    paths(ws, events, changes, client_js, healthz, metrics, admin_page, admin_js, admin_css),
    components(schemas(ErrorBody)),
    tags(
        (name = "studies"), (name = "messages"), (name = "files"),
        (name = "feed", description = "The live feed and health"),
        (name = "admin", description = "The live admin page"),
        (name = "meta", description = "This document"),
    ),
)]
pub struct ApiDoc;

/// Routes that take the position as `?position=` (a browser cannot send headers with a WebSocket
/// or an EventSource, and a long-poll takes the same parameters).
const POSITION_IN_QUERY: [&str; 3] = ["/ws", "/events", "/api/changes"];

/// Read your writes (`http::position`), which a middleware does for every route, so no handler's
/// annotation says it: each successful REST write answers the `Pgfeed-Position` header, and each
/// read takes it (a header; `?position=` on the streams), answering 400 for a position this server
/// cannot judge and 503 `busy` when it has not caught up within the wait.
pub fn with_positions(doc: &mut utoipa::openapi::OpenApi) {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let what = "A position a REST write answered: the read is served once this server has relayed past it";
    for (path, item) in doc.paths.paths.iter_mut() {
        if let Some(get) = item.get.as_mut() {
            let (name, place) = match POSITION_IN_QUERY.contains(&path.as_str()) {
                true => ("position", ParameterIn::Query),
                false => ("Pgfeed-Position", ParameterIn::Header),
            };
            get.parameters.get_or_insert_with(Vec::new).push(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(place)
                    .required(Required::False)
                    .description(Some(what))
                    .schema(Some(string()))
                    .build(),
            );
            let answers = &mut get.responses.responses;
            answers
                .entry("400".into())
                .or_insert_with(|| error("A malformed or foreign position, or one past the newest commit"));
            answers.entry("503".into()).or_insert_with(|| {
                error("`busy`: this server has not relayed the position within the wait; try again (`Retry-After`)")
            });
        }
        if !path.starts_with("/api/") {
            continue;
        }
        let writes: [&mut Option<Operation>; 4] = [&mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
        for op in writes.into_iter().flatten() {
            for (status, answer) in op.responses.responses.iter_mut() {
                if let (true, RefOr::T(answer)) = (status.starts_with('2'), answer) {
                    let mut header = Header::new(string());
                    header.description = Some("A position at or after this write's commit, for a later read".into());
                    answer.headers.insert("Pgfeed-Position".into(), header);
                }
            }
        }
    }
}

fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))))
                    .build(),
            )
            .build(),
    )
}

/// The rendered document, handed to [`document`] as an extension once the router is built.
#[derive(Clone)]
pub struct Document(pub Arc<String>);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(document))
}

// GET /api/openapi.json
/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json", body = Object)))]
async fn document(Extension(Document(json)): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json.as_str().to_owned())
}

/// The WebSocket endpoint (served by `http::streams` and `transport::session`; described here).
#[utoipa::path(get, path = "/ws", tag = "feed",
    params(
        ("topics" = Option<String>, Query, description = "Comma-separated topics to subscribe to on connect"),
        ("since" = Option<String>, Query, description = "Resume after this cursor"),
        ("token" = Option<String>, Query, description = "JWT, when auth is on"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request"),
    ))]
#[allow(dead_code)]
fn ws() {}

/// Health (served by `http::health`; described here).
#[utoipa::path(get, path = "/healthz", tag = "feed",
    responses(
        (status = 200, description = "The database and the listener are up", content_type = "application/json", body = Object),
        (status = 503, description = "The database or the listener is down", content_type = "application/json", body = Object),
    ))]
#[allow(dead_code)]
fn healthz() {}

/// Server-Sent Events (served by `http::streams` and `transport::sse`; described here).
#[utoipa::path(get, path = "/events", tag = "feed",
    params(
        ("topics" = String, Query, description = "Comma-separated topics"),
        ("since" = Option<String>, Query, description = "Resume after this cursor (`Last-Event-ID` wins)"),
        ("token" = Option<String>, Query, description = "JWT, when auth is on"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `id:` cursor, `event:` type, `data:` event JSON", content_type = "text/event-stream"),
        (status = 400, description = "Malformed topics or cursor", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "A topic this token may not read", body = ErrorBody),
        (status = 404, description = "Unknown topic", body = ErrorBody),
        (status = 429, description = "Too many connections", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn events() {}

/// Long-polling (served by `http::streams` and `transport::poll`; described here).
#[utoipa::path(get, path = "/api/changes", tag = "feed",
    params(
        ("topics" = String, Query, description = "Comma-separated topics"),
        ("since" = Option<String>, Query, description = "Events after this cursor; without it, the current cursor at once"),
        ("limit" = Option<u32>, Query, description = "At most this many events (default 500, max 1000)"),
        ("wait" = Option<u32>, Query, description = "Seconds to wait when nothing is new (default 25, max 60)"),
        ("token" = Option<String>, Query, description = "JWT, when auth is on"),
    ),
    responses(
        (status = 200, description = "`{\"events\":[…],\"cursor\":\"…\"}`", content_type = "application/json", body = Object),
        (status = 400, description = "Malformed parameters", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "A topic this token may not read", body = ErrorBody),
        (status = 404, description = "Unknown topic", body = ErrorBody),
        (status = 410, description = "`cursor_expired`: take a snapshot", body = ErrorBody),
        (status = 429, description = "Too many connections", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn changes() {}

/// The browser client module (served from the binary; described here).
#[utoipa::path(get, path = "/client.js", tag = "feed",
    responses((status = 200, description = "An ES module exporting `connect`", content_type = "text/javascript")))]
#[allow(dead_code)]
fn client_js() {}

/// Prometheus metrics (served by `http::observe`; described here).
#[utoipa::path(get, path = "/metrics", tag = "feed",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}

/// The live admin page (served by `http::web`; described here).
#[utoipa::path(get, path = "/", tag = "admin",
    responses((status = 200, description = "The admin page, an HTML document", content_type = "text/html")))]
#[allow(dead_code)]
fn admin_page() {}

/// The admin page's script, an ES module importing `/client.js`.
#[utoipa::path(get, path = "/admin.js", tag = "admin",
    responses((status = 200, description = "An ES module", content_type = "text/javascript")))]
#[allow(dead_code)]
fn admin_js() {}

/// The admin page's stylesheet.
#[utoipa::path(get, path = "/admin.css", tag = "admin",
    responses((status = 200, description = "CSS", content_type = "text/css")))]
#[allow(dead_code)]
fn admin_css() {}
