//! Read your writes across servers (README "Running many servers and failing over"): every
//! successful REST write answers `Pgfeed-Position: <cursor>`, a position at or after its commit;
//! a read that carries it (the same header, or `?position=` where a browser cannot send headers:
//! WebSocket, EventSource) is served only once this server has relayed past it, so its
//! snapshot, view, resume or long-poll includes the write, whichever server took it and whether
//! this one reads from a standby (`--replica-url`) or the primary.
//!
//! The wait is bounded ([`WAIT`]); past it the answer is 503 `busy` with `Retry-After`, never a
//! hang. A position this server cannot judge is the client's mistake, answered 400 at once: not
//! a cursor, another log's, or past the newest commit the primary holds (a forged one, which
//! would otherwise wait for a commit that may never come).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::error::ApiError;
use super::AppState;
use crate::db::{log, watermark};
use crate::event::{CursorCheck, Position};

/// The header a write answers with and a read may carry.
pub const HEADER: HeaderName = HeaderName::from_static("pgfeed-position");

/// The longest a read waits for this server to relay a position: a server that follows through
/// a standby is normally a few milliseconds behind, and one that falls back to the primary does so
/// within about a second (`listener::replica`); longer means it cannot serve the read now.
pub const WAIT: Duration = Duration::from_secs(5);

/// How often a waiting read looks at what the server relayed.
const LOOK_EVERY: Duration = Duration::from_millis(5);

/// The longest position accepted (a cursor is far shorter); anything longer is refused unread.
const MAX_LEN: usize = 128;

/// Adds `Pgfeed-Position` to successful REST writes, and holds reads that carry one until this
/// server has relayed past it.
pub async fn read_your_writes(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if write {
        let api = req.uri().path().starts_with("/api/");
        let mut res = next.run(req).await;
        if api && res.status().is_success() {
            // After the handler's commit: the newest commit is it or a later one.
            match log::newest_seq(&state.feed.pool).await {
                Ok(seq) => {
                    let cursor = state.feed.cursor(Position::end_of(seq));
                    if let Ok(v) = HeaderValue::from_str(&cursor) {
                        res.headers_mut().insert(HEADER, v);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the write's position failed"),
            }
        }
        return res;
    }
    match asked(&req) {
        Ok(None) => next.run(req).await,
        Ok(Some(position)) => match wait_for(&state, &position).await {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// The position a read asks for: the header, else `?position=`.
fn asked(req: &Request) -> Result<Option<String>, ApiError> {
    let mut headers = req.headers().get_all(&HEADER).iter();
    let from_header = match (headers.next(), headers.next()) {
        (None, _) => None,
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Pgfeed-Position is not a cursor".into()))?
                .to_owned(),
        ),
        (Some(_), Some(_)) => return Err(ApiError::BadRequest("more than one Pgfeed-Position".into())),
    };
    if from_header.is_some() {
        return Ok(from_header);
    }
    let query = req.uri().query().unwrap_or("");
    // A query string that does not parse is the route's to refuse, in its own words.
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    Ok(pairs.into_iter().find(|(k, _)| k == "position").map(|(_, v)| v))
}

/// Waits until this server has relayed past `position` (at most [`WAIT`]).
async fn wait_for(state: &AppState, position: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("position {:?} {why}", truncated(position)));
    if position.len() > MAX_LEN {
        return Err(bad("is not a cursor"));
    }
    let hub = &state.feed.hub;
    let epoch = hub.epoch();
    let (gen, at) = match epoch.parse_cursor(position) {
        Err(_) => return Err(bad("is not a cursor")),
        Ok(CursorCheck::Foreign) => return Err(bad("is another log's")),
        Ok(CursorCheck::Ours(at)) => (epoch.gen(), at),
        // Of an older generation: this server serves a later one, which holds every commit the
        // position could name that survived the failover.
        Ok(CursorCheck::Other { gen, .. }) if gen < epoch.gen() => return Ok(()),
        // Of a newer one: this server moves to it within seconds; wait for that as for a seq.
        Ok(CursorCheck::Other { gen, at }) => (gen, at),
    };
    let passed = || hub.last() >= at && hub.epoch().gen() >= gen;
    if passed() {
        return Ok(());
    }
    if at.seq > log::newest_seq(&state.feed.pool).await? {
        return Err(bad("is past the newest commit"));
    }
    if gen > epoch.gen() && !watermark::known(&state.feed.pool, gen).await? {
        return Err(bad("names a generation this log never had"));
    }
    let until = Instant::now() + WAIT;
    while !passed() {
        if Instant::now() >= until {
            return Err(ApiError::Busy(format!(
                "this server has not caught up with position {position:?} within {WAIT:?}; try again"
            )));
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
    Ok(())
}

/// At most 40 characters of what a client sent, for an error message.
fn truncated(s: &str) -> String {
    s.chars().take(40).collect()
}
