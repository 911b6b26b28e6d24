//! The admin page (README "Admin page: `GET /`"): web/index.html, web/admin.js and web/admin.css,
//! built into the binary like `/client.js`, so users have nothing to build or ship.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const ADMIN_JS: &str = include_str!("../../web/admin.js");
const ADMIN_CSS: &str = include_str!("../../web/admin.css");

/// Only this origin's scripts, styles and connections (WebSocket included); never framed.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; object-src 'none'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/admin.js", get(admin_js))
        .route("/admin.css", get(admin_css))
}

// GET / — the live admin page.
async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX_HTML,
    )
}

async fn admin_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", ADMIN_JS)
}

async fn admin_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", ADMIN_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
