//! `GET /metrics` and the request counter (PROTOCOL §7).

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::metrics::HttpLabels;

pub async fn metrics(State(state): State<AppState>) -> Response {
    // The log's size and age are read at scrape time: a cheap estimate and an index lookup.
    let log = sqlx::query_as::<_, (i64, Option<f64>)>(
        r#"select (select greatest(reltuples, 0)::bigint from pg_class where oid = 'pgfeed.events'::regclass),
                  (select extract(epoch from clock_timestamp() - min(committed_at))::float8 from pgfeed.commits)"#,
    )
    .fetch_one(&state.feed.pool)
    .await;
    if let Ok((events, age)) = log {
        state.metrics.log_events.set(events);
        state.metrics.oldest_event_age.set(age.unwrap_or(0.0));
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
    let method = req.method().to_string();
    let response = next.run(req).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    response
}
