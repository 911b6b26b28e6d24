//! The admin page (README "Admin page: `GET /`"): web/index.html, its ES modules (web/admin.js
//! and web/admin/, one per screen) and web/admin.css, built into the binary like `/client.js`, so
//! users have nothing to build or ship.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../web/index.html");

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TS: &str = "application/typescript; charset=utf-8";

/// The page's assets: path → (content type, body). A new module under web/admin/ is one more row.
const ASSETS: &[(&str, (&str, &str))] = &[
    ("/admin.js", (JS, include_str!("../../web/admin.js"))),
    ("/admin.css", (CSS, include_str!("../../web/admin.css"))),
    ("/admin/api.js", (JS, include_str!("../../web/admin/api.js"))),
    ("/admin/common.js", (JS, include_str!("../../web/admin/common.js"))),
    ("/admin/confirm.js", (JS, include_str!("../../web/admin/confirm.js"))),
    ("/admin/list.js", (JS, include_str!("../../web/admin/list.js"))),
    ("/admin/room.js", (JS, include_str!("../../web/admin/room.js"))),
    ("/admin/route.js", (JS, include_str!("../../web/admin/route.js"))),
    ("/admin/signin.js", (JS, include_str!("../../web/admin/signin.js"))),
    ("/admin/study.js", (JS, include_str!("../../web/admin/study.js"))),
    ("/admin/table.js", (JS, include_str!("../../web/admin/table.js"))),
    // The types of /client.js (served beside it in http/mod.rs), for editors and `tsc`.
    ("/client.d.ts", (TS, include_str!("../../web/client.d.ts"))),
];

/// Only this origin's scripts, styles and connections (WebSocket included); never framed.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; object-src 'none'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    ASSETS.iter().fold(
        Router::new().route("/", get(index)),
        |router, &(path, (content_type, body))| {
            router.route(path, get(move || async move { asset(content_type, body) }))
        },
    )
}

// GET / — the live admin page (README "Admin page: `GET /`").
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
