//! Who may call which REST route (README "Security: auth and limits"), in one table, plus the
//! request time limit.
//!
//! An admin (or anyone, when auth is off) may call everything. A member may read its studies and
//! their messages and files, and post messages and files to them; a file is judged by the study
//! it belongs to, so guessing ids reveals nothing. Every other route answers 403 to a member.
//!
//! The `{id}` is judged exactly as the handler reads it: by axum's own `Path` extractor, which
//! percent-decodes (`%32` is `2`) and parses as an `i64` does (`+2` and `002` are `2`). An id that
//! does not parse is refused here (fail closed), never passed on. The decision goes into the
//! request's extensions as a [`Decision`], which the member-reachable handlers take as an
//! extractor and check again against the id they read.
//!
//! A member's posts (messages and files) are also rate limited here, per token ([`super::rate`]).
//!
//! Which study an id concerns and whether a member may see it is [`crate::feed::access`]'s to
//! say, for the streams and REST alike, so the two cannot disagree.

use axum::extract::{FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::auth::{query_token, Access};
use crate::feed::access::{may_see, study_of, Concerns};

/// What a member may do: (method, route pattern, what the `{id}` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The guard's decision about one request, for the handler to check again.
#[derive(Debug, Clone)]
pub struct Decision {
    pub access: Access,
    /// The path's `{id}` as the guard read it, if the route has one.
    pub id: Option<i64>,
    /// For a member: the study the request was judged against (the id's, or its file's).
    pub study: Option<i64>,
}

impl Decision {
    /// Whether the request may act on the `{id}` the handler read: always for an admin; for a
    /// member only if the guard judged this very id and its study is one of the member's.
    pub fn check(&self, id: i64) -> Result<(), ApiError> {
        match &self.access {
            Access::Admin => Ok(()),
            Access::Member(_) if self.id == Some(id) && may_see(&self.access, self.study) => Ok(()),
            Access::Member(_) => Err(forbidden()),
        }
    }
}

/// A handler behind the guard gets its decision; anywhere else (a routing mistake) it fails closed.
impl<S: Send + Sync> FromRequestParts<S> for Decision {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Decision>()
            .cloned()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("{} is not behind the guard", parts.uri.path())))
    }
}

fn forbidden() -> ApiError {
    ApiError::Forbidden("this token may not do that".into())
}

pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    // The same extractor as the handler's `AppPath<i64>`: the route is matched here already.
    let id = if route.contains("{id}") {
        Some(
            Path::<i64>::from_request_parts(&mut parts, &state)
                .await
                .map(|Path(id)| id)
                .map_err(|rejection| ApiError::from(rejection).to_string()),
        )
    } else {
        None
    };
    let asked = Asked {
        route,
        method: parts.method.clone(),
        id,
        token: query_token(parts.uri.query()),
        headers: parts.headers.clone(),
    };
    let decision = match allow(&state, &asked).await {
        Ok(decision) => decision,
        Err(e) => return e.into_response(),
    };
    if let Some(decision) = decision {
        if !decision.access.is_admin() && asked.method == Method::POST {
            let token = presented_token(&asked.headers, asked.token.as_deref()).unwrap_or("");
            if let Err(retry_after) = state.member_posts.take(token) {
                return super::rate::refusal(retry_after);
            }
        }
        parts.extensions.insert(decision);
    }
    let req = Request::from_parts(parts, body);
    // A REST request (upload included) that takes longer is cut off: 503 `timeout`.
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(state.request_timeout).into_response(),
    }
}

/// What the guard needs of a request (the request itself is not `Sync`, so not held across awaits).
struct Asked {
    route: String,
    method: Method,
    /// The path's `{id}`, read as the handler reads it; `None` when the route has none.
    id: Option<Result<i64, String>>,
    token: Option<String>,
    headers: HeaderMap,
}

/// `Ok(None)` for a public route; otherwise who asks and, for a member, what was judged.
async fn allow(state: &AppState, req: &Asked) -> Result<Option<Decision>, ApiError> {
    let route = &req.route;
    if PUBLIC_ROUTES.contains(&route.as_str()) {
        return Ok(None);
    }
    let access = state
        .auth
        .check(&req.headers, req.token.as_deref())
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let id = match &req.id {
        Some(Ok(id)) => Some(*id),
        Some(Err(_)) | None => None,
    };
    if access.is_admin() {
        return Ok(Some(Decision {
            access,
            id,
            study: None,
        }));
    }
    let scope = MEMBER_ROUTES
        .iter()
        .find(|(m, r, _)| *m == req.method && r == route)
        .map(|(_, _, scope)| *scope)
        .ok_or_else(forbidden)?;
    // Fail closed: an id the handler could not read is refused here, with the handler's 400.
    let id = match &req.id {
        Some(Ok(id)) => *id,
        Some(Err(e)) => return Err(ApiError::BadRequest(e.clone())),
        None => return Err(forbidden()),
    };
    let concerns = match scope {
        Scope::Study => Concerns::Study(id),
        Scope::File => Concerns::Row("files", id),
    };
    let study = study_of(&state.feed.pool, concerns).await?;
    if !may_see(&access, study) {
        return Err(forbidden());
    }
    Ok(Some(Decision {
        access,
        id: Some(id),
        study,
    }))
}

/// The token a request presents, chosen as [`crate::auth::Auth::check`] chooses it.
fn presented_token<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .or(query_token)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_member_decision_holds_only_for_the_id_it_judged() {
        let member = |id, study| Decision {
            access: Access::Member(HashSet::from([1])),
            id,
            study,
        };
        assert!(member(Some(1), Some(1)).check(1).is_ok());
        assert!(member(Some(1), Some(1)).check(2).is_err());
        assert!(member(Some(30), Some(1)).check(30).is_ok());
        assert!(member(Some(30), Some(2)).check(30).is_err());
        assert!(member(None, None).check(1).is_err());
        let admin = Decision {
            access: Access::Admin,
            id: None,
            study: None,
        };
        assert!(admin.check(2).is_ok());
    }

    #[test]
    fn the_presented_token_is_the_bearer_else_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers, Some("q")), Some("q"));
        headers.insert(header::AUTHORIZATION, "Bearer h".parse().unwrap());
        assert_eq!(presented_token(&headers, Some("q")), Some("h"));
    }
}
