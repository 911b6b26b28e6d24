//! `GET /healthz` (README "Operating it"): 200 when the database and the listener are up, else 503.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("select 1").execute(&state.feed.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let listener = state.listener.is_up();
    let status = if db && listener {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"database": db, "listener": listener})))
}
