//! `GET /healthz` (README "Operating it"): 200 when the database and the listener are up, else 503.
//! It also says whether this server leads its database, which generation of the log it serves,
//! how far it is behind the log (`lag_seqs`, `lag_ms`: `db::watermark::lag`), and whether events
//! wait for the durable standby (README "Running many servers and failing over").

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::db::watermark;

pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let relayed = state.feed.hub.last().seq;
    // The lag's read is the database probe too.
    let lag = tokio::time::timeout(Duration::from_secs(2), watermark::lag(&state.feed.pool, relayed))
        .await
        .ok()
        .and_then(Result::ok);
    let db = lag.is_some();
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
            "relayed_seq": relayed,
            "lag_seqs": lag.map(|l| l.seqs),
            "lag_ms": lag.map(|l| l.ms),
            "waiting_for_standby": state.listener.is_waiting_for_standby(),
            // `--replica-url`: where reads go now (`null` without one).
            "reads_from": state.feed.replica.as_deref().map(|r| if r.is_usable() { "standby" } else { "primary" }),
        })),
    )
}
