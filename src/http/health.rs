//! `GET /healthz` (README "Operating it"): 200 when the database and the listener are up, else 503.
//! It also says whether this server leads its database, which generation of the log it serves,
//! and whether events wait for the durable standby (README "Running many servers and failing over").

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
    (
        status,
        Json(json!({
            "database": db,
            "listener": listener,
            "role": if state.listener.is_leader() { "leader" } else { "follower" },
            "generation": state.feed.hub.epoch().gen(),
            "relayed_seq": state.feed.hub.last().seq,
            "waiting_for_standby": state.listener.is_waiting_for_standby(),
            // `--replica-url`: where reads go now (`null` without one).
            "reads_from": state.feed.replica.as_deref().map(|r| if r.is_usable() { "standby" } else { "primary" }),
        })),
    )
}
