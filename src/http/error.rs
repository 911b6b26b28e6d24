//! HTTP errors (README "REST API", "Errors"): one enum, one `match` for the status and one for the
//! contract's `code`, written as `{"error":{"code","message"}}` (plus `details`, field → problem,
//! on a 422).
//!
//! A client's mistake is always a 4xx. Server faults are logged with their chain and never
//! leak: a database failure answers 503 with a fixed message, anything else 500.
//!
//! The streams (WebSocket, SSE, long-poll) refuse with this type too, before they start, while
//! the status line is still ours: a [`FeedError`] becomes an answer here and nowhere else.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::limits::Refused;
use crate::feed::FeedError;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed: unparsable JSON, wrong content type, a bad path or query string.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No token, a bad signature, an expired token.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token that may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("the request took longer than {0:?}")]
    Timeout(std::time::Duration),
    /// A unique constraint, e.g. `studies_label_key`.
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` names none of the row's current ETags.
    #[error("If-Match does not match the current ETag {current}: reload and try again")]
    PreconditionFailed { current: String },
    #[error("{0}")]
    TooLarge(String),
    /// Validation, field by field.
    #[error("{}", summary(.0))]
    Invalid(Violations),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
    /// Every permit of a bounded resource (e.g. `--max-transfers`) is taken: 503 with Retry-After.
    #[error("{0}")]
    Busy(String),
    /// A stream's topic that names no tracked table or view.
    #[error("{0}")]
    UnknownTopic(String),
    /// A stream's cursor the log can no longer serve; the code is `refresh_needed`'s reason.
    #[error("the cursor is older than the log keeps: take a snapshot, then resume")]
    Refresh(&'static str),
    /// More than what one answer may carry (`--max-snapshot`).
    #[error("{0}")]
    SnapshotTooLarge(String),
    /// A stream's topic list over `--max-subscriptions`, refused before any work is done for it.
    #[error("at most {0} topics per connection")]
    TooManySubscriptions(usize),
    /// A stream over the per-client or total connection limit.
    #[error("{}", match .0 {
        Refused::PerIp(n) => format!("at most {n} connections per client address"),
        Refused::Total(n) => format!("the server is at its limit of {n} connections"),
    })]
    TooManyConnections(Refused),
    /// The feed failed on the server's side (its database, or a commit that stayed in flight).
    #[error(transparent)]
    Unavailable(FeedError),
}

impl From<FeedError> for ApiError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::BadRequest(m) => ApiError::BadRequest(m),
            e @ FeedError::UnknownTopic(_) => ApiError::UnknownTopic(e.to_string()),
            e @ FeedError::Forbidden(_) => ApiError::Forbidden(e.to_string()),
            FeedError::Refresh(reason) => ApiError::Refresh(reason),
            FeedError::TooLarge(m) => ApiError::SnapshotTooLarge(m),
            FeedError::Full(m) => ApiError::Busy(m),
            e @ (FeedError::Db(_) | FeedError::Busy(_) | FeedError::Internal(_)) => ApiError::Unavailable(e),
        }
    }
}

/// Field → what is wrong with it. `""` stands for the request as a whole.
pub type Violations = BTreeMap<String, String>;

fn summary(v: &Violations) -> String {
    let parts: Vec<String> = v
        .iter()
        .map(|(k, m)| if k.is_empty() { m.clone() } else { format!("{k}: {m}") })
        .collect();
    parts.join("; ")
}

impl ApiError {
    /// A 422 about one field.
    pub fn invalid(field: &str, problem: impl Into<String>) -> ApiError {
        ApiError::Invalid(Violations::from([(field.to_owned(), problem.into())]))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Db(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UnknownTopic(_) => StatusCode::NOT_FOUND,
            ApiError::Refresh(_) => StatusCode::GONE,
            ApiError::SnapshotTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManySubscriptions(_) => StatusCode::BAD_REQUEST,
            ApiError::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Timeout(_) => "timeout",
            ApiError::Conflict(_) => "conflict",
            ApiError::PreconditionFailed { .. } => "precondition_failed",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::Invalid(_) => "validation_failed",
            ApiError::Db(_) => "unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::Busy(_) => "busy",
            ApiError::UnknownTopic(_) => "unknown_topic",
            ApiError::Refresh(reason) => reason,
            ApiError::SnapshotTooLarge(_) => "too_large",
            ApiError::TooManySubscriptions(_) => "too_many_subscriptions",
            ApiError::TooManyConnections(_) => "too_many_connections",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `method_not_allowed`, `conflict`,
    /// `precondition_failed`, `payload_too_large`, `validation_failed`, `timeout`, `unavailable`,
    /// `busy` or `internal`; before a stream starts also `unknown_topic`, `too_large`,
    /// `too_many_subscriptions`, `too_many_connections`, or a cursor's `refresh_needed` reason.
    pub code: String,
    pub message: String,
    /// On `validation_failed`: each offending field and what is wrong with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<BTreeMap<String, String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Db(_) => FeedError::UNAVAILABLE.to_owned(),
            // A commit held in flight says so (as on the WebSocket); any other failure is hidden.
            ApiError::Unavailable(FeedError::Busy(why)) => (*why).to_owned(),
            ApiError::Unavailable(_) => FeedError::UNAVAILABLE.to_owned(),
            ApiError::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        };
        if self.status().is_server_error() && !matches!(self, ApiError::Busy(_)) {
            tracing::error!(error = ?self, "request failed");
        }
        let details = match &self {
            ApiError::Invalid(v) => Some(v.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message,
                details,
            },
        };
        let retry_after = matches!(self, ApiError::Busy(_)).then_some([(axum::http::header::RETRY_AFTER, "1")]);
        (self.status(), retry_after, axum::Json(body)).into_response()
    }
}

/// Turns a violation of the named constraint into a client error, at the call site
/// (realworld's `on_constraint`); any other error passes through.
pub trait ResultExt<T> {
    fn on_constraint(self, name: &str, f: impl FnOnce() -> ApiError) -> Result<T>;
}

impl<T, E: Into<ApiError>> ResultExt<T> for std::result::Result<T, E> {
    fn on_constraint(self, name: &str, f: impl FnOnce() -> ApiError) -> Result<T> {
        self.map_err(|e| match e.into() {
            ApiError::Db(sqlx::Error::Database(dbe)) if dbe.constraint() == Some(name) => f(),
            other => other,
        })
    }
}

/// JSON error answers for requests no route takes.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (u16, serde_json::Value) {
        let response = e.into_response();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_feed_failure_reads_like_a_rest_database_failure() {
        let rest = body(ApiError::Db(sqlx::Error::PoolTimedOut)).await;
        let stream = body(FeedError::Db(sqlx::Error::PoolTimedOut).into()).await;
        let internal = body(FeedError::Internal("a snapshot on SSE".into()).into()).await;
        assert_eq!(rest.0, 503);
        assert_eq!(rest, stream);
        assert_eq!(rest, internal);
        assert_eq!(rest.1["error"]["code"], "unavailable");
    }

    #[tokio::test]
    async fn stream_refusals_keep_their_statuses_and_codes() {
        let cases = [
            (ApiError::from(FeedError::BadRequest("x".into())), 400, "bad_request"),
            (FeedError::UnknownTopic("nope".into()).into(), 404, "unknown_topic"),
            (FeedError::Forbidden("studies:2".into()).into(), 403, "forbidden"),
            (FeedError::Refresh("cursor_expired").into(), 410, "cursor_expired"),
            (FeedError::TooLarge("big".into()).into(), 413, "too_large"),
            (ApiError::TooManySubscriptions(3), 400, "too_many_subscriptions"),
            (
                ApiError::TooManyConnections(Refused::PerIp(2)),
                429,
                "too_many_connections",
            ),
        ];
        for (e, status, code) in cases {
            let (s, v) = body(e).await;
            assert_eq!((s, v["error"]["code"].as_str()), (status, Some(code)), "{v}");
        }
    }
}
