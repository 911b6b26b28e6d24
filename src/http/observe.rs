//! `GET /metrics` and the request counter (README "Operating it").
//!
//! Every label of the counter comes from a bounded set, whatever clients send: the method is one
//! of [`METHODS`] or `other`, the route is a route pattern or `unmatched`, the status one that
//! pgfeed itself answers. A client cannot grow the metrics (or the server's memory) by inventing
//! methods or paths.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::db::{log, watermark};
use crate::metrics::HttpLabels;

pub async fn metrics(State(state): State<AppState>) -> Response {
    // The log's size and age, and this server's lag, are read at scrape time; a failed read
    // leaves the last values.
    if let Ok(size) = log::size(&state.feed.pool).await {
        state.metrics.log_events.set(size.events);
        state.metrics.oldest_event_age.set(size.oldest_age.unwrap_or(0.0));
    }
    if let Ok(lag) = watermark::lag(&state.feed.pool, state.feed.hub.last().seq).await {
        state.metrics.lag_seqs.set(lag.seqs);
        state.metrics.lag_seconds.set(lag.ms as f64 / 1000.0);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

/// Counts every request by method, route pattern and status.
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = method_label(req.method()).to_owned();
    let response = next.run(req).await;
    let labels = HttpLabels {
        method,
        route,
        // Statuses come from pgfeed's own answers; anything outside HTTP's classes is one label.
        status: match response.status().as_u16() {
            s @ 100..=599 => s,
            _ => 0,
        },
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    response
}

/// The methods counted by name; any other is `other`.
pub const METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// The `method` label: a known method's name, else `other` (an 8 KB invented method included).
pub fn method_label(method: &Method) -> &'static str {
    METHODS.iter().find(|m| *m == method).map_or("other", |m| m.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let invented = Method::from_bytes("X".repeat(8192).as_bytes()).unwrap();
        assert_eq!(method_label(&invented), "other");
        assert_eq!(method_label(&Method::from_bytes(b"get").unwrap()), "other");
    }
}
