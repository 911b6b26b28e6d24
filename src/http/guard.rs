//! Who may call which REST route (PROTOCOL §8), in one table, plus the request time limit.
//!
//! An admin (or anyone, when auth is off) may call everything. A member may read its studies and
//! their messages and files, and post messages and files to them; a file is judged by the study
//! it belongs to, so guessing ids reveals nothing. Every other route answers 403 to a member.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::auth::{query_token, Access};

/// What a member may do: (method, route pattern, what the `{id}` names).
enum Scope {
    Study,
    File,
}

const MEMBER_ROUTES: &[(Method, &str, Scope)] = &[
    (Method::GET, "/api/studies/{id}", Scope::Study),
    (Method::GET, "/api/studies/{id}/messages", Scope::Study),
    (Method::POST, "/api/studies/{id}/messages", Scope::Study),
    (Method::GET, "/api/studies/{id}/files", Scope::Study),
    (Method::POST, "/api/studies/{id}/files", Scope::Study),
    (Method::GET, "/api/files/{id}", Scope::File),
    (Method::GET, "/api/files/{id}/content", Scope::File),
];

/// Routes anyone may call: the API's own description.
const PUBLIC_ROUTES: &[&str] = &["/api/openapi.json"];

pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let asked = Asked {
        route: req
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        token: query_token(req.uri().query()),
        headers: req.headers().clone(),
    };
    match allow(&state, &asked).await {
        // A REST request (upload included) that takes longer is cut off: 503 `timeout`.
        Ok(()) => match tokio::time::timeout(state.request_timeout, next.run(req)).await {
            Ok(response) => response,
            Err(_) => ApiError::Timeout(state.request_timeout).into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// What the guard needs of a request (the request itself is not `Sync`, so not held across awaits).
struct Asked {
    route: String,
    method: Method,
    path: String,
    token: Option<String>,
    headers: axum::http::HeaderMap,
}

async fn allow(state: &AppState, req: &Asked) -> Result<(), ApiError> {
    let route = &req.route;
    if !state.auth.enabled() || PUBLIC_ROUTES.contains(&route.as_str()) {
        return Ok(());
    }
    let access = state
        .auth
        .check(&req.headers, req.token.as_deref())
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let Access::Member(_) = &access else { return Ok(()) };
    let forbidden = || ApiError::Forbidden("this token may not do that".into());
    let scope = MEMBER_ROUTES
        .iter()
        .find(|(m, r, _)| *m == req.method && r == route)
        .map(|(_, _, scope)| scope)
        .ok_or_else(forbidden)?;
    // The `{id}` segment of the concrete path; one that is not a number is the handler's 400.
    let Some(id) = path_id(route, &req.path) else {
        return Ok(());
    };
    let study = match scope {
        Scope::Study => Some(id),
        Scope::File => crate::db::rows::study_of(&state.feed.pool, "files", id).await?,
    };
    match study {
        Some(study) if access.may_study(study) => Ok(()),
        _ => Err(forbidden()),
    }
}

fn path_id(route: &str, path: &str) -> Option<i64> {
    let i = route.split('/').position(|s| s == "{id}")?;
    path.split('/').nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_read_from_the_routes_id_segment() {
        assert_eq!(
            path_id("/api/studies/{id}/messages", "/api/studies/42/messages"),
            Some(42)
        );
        assert_eq!(path_id("/api/files/{id}", "/api/files/x"), None);
        assert_eq!(path_id("/api/studies", "/api/studies"), None);
    }
}
