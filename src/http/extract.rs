//! Extractors whose rejections speak the REST API's error shape (README "REST API") instead of
//! axum's plain text: [`AppJson`], [`AppPath`], [`AppQuery`], and [`IfMatch`]; plus the field
//! checks that turn a body into a 422 with field-level details.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::{ApiError, Violations};

/// A JSON body: 400 when it is not JSON (or not `application/json`), 422 when it is JSON of the
/// wrong shape (a missing field, a wrong type, an unknown field or status).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct AppJson<T>(pub T);

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::Invalid(data_error_details(&e)),
            r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(r.body_text()),
            r => ApiError::BadRequest(r.body_text()),
        }
    }
}

/// JSON of the wrong shape, as field → problem: serde's path to the failure when there is one
/// (`status` → "unknown variant …"), the missing field's name for a missing field, else `""`.
fn data_error_details(e: &axum::extract::rejection::JsonDataError) -> Violations {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(err) = err.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>() {
            let problem = err.inner().to_string();
            let problem = problem.split(" at line ").next().unwrap_or(&problem).to_owned();
            let mut field = err.path().to_string();
            if let Some(missing) = problem
                .strip_prefix("missing field `")
                .and_then(|f| f.split('`').next())
            {
                field = missing.to_owned();
                return Violations::from([(field, "is required".to_owned())]);
            }
            if field == "." {
                field = String::new();
            }
            return Violations::from([(field, problem)]);
        }
        source = err.source();
    }
    Violations::from([(String::new(), e.body_text())])
}

/// Path parameters; a malformed one (`/api/studies/abc`) is a 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

/// The query string; one that does not parse (`?limit=many`) is a 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

/// `If-Match` (RFC 9110 §13.1.1): absent or `*` means "whatever is current"; otherwise the
/// strong entity tags it lists (weak ones never match, as the RFC says).
#[derive(Debug, Clone, Default)]
pub struct IfMatch(Option<Vec<String>>);

impl IfMatch {
    /// The tags as versions, for rows with a `version` column (a tag that is not a number
    /// matches nothing).
    pub fn versions(&self) -> Option<Vec<i32>> {
        self.0
            .as_ref()
            .map(|tags| tags.iter().filter_map(|t| t.parse().ok()).collect())
    }

    /// The tags as they are, for files (whose ETag is the sha256).
    pub fn tags(&self) -> Option<&[String]> {
        self.0.as_deref()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut tags = Vec::new();
        for value in parts.headers.get_all(header::IF_MATCH) {
            let value = value
                .to_str()
                .map_err(|_| ApiError::BadRequest("If-Match is not visible ASCII".into()))?;
            for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if tag == "*" {
                    return Ok(IfMatch(None));
                }
                if tag.starts_with("W/") {
                    continue;
                }
                // Lenient: an unquoted tag is taken as written.
                let tag = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(tag);
                tags.push(tag.to_owned());
            }
        }
        if parts.headers.contains_key(header::IF_MATCH) {
            Ok(IfMatch(Some(tags)))
        } else {
            Ok(IfMatch(None))
        }
    }
}

/// `ETag: "<tag>"`.
pub fn etag(tag: impl std::fmt::Display) -> [(HeaderName, String); 1] {
    [(header::ETAG, format!("\"{tag}\""))]
}

/// Collects field problems; [`Checks::done`] is a 422 listing all of them, or `Ok`.
#[derive(Debug, Default)]
pub struct Checks(Violations);

impl Checks {
    /// Text that must be non-blank (when `required`) and at most `max` characters, without NULs
    /// (PostgreSQL's text cannot hold them).
    pub fn text(&mut self, field: &str, value: Option<&str>, required: bool, max: usize) -> &mut Self {
        let problem = match value {
            None if required => Some("is required".to_owned()),
            None => None,
            Some(v) if required && v.trim().is_empty() => Some("must not be empty".to_owned()),
            Some(v) if v.chars().count() > max => Some(format!("must be at most {max} characters")),
            Some(v) if v.contains('\0') => Some("must not contain NUL characters".to_owned()),
            Some(_) => None,
        };
        if let Some(p) = problem {
            self.0.insert(field.to_owned(), p);
        }
        self
    }

    pub fn check(&mut self, field: &str, ok: bool, problem: &str) -> &mut Self {
        if !ok {
            self.0.insert(field.to_owned(), problem.to_owned());
        }
        self
    }

    pub fn done(&mut self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(std::mem::take(&mut self.0)))
        }
    }
}

/// Keyset pagination (`?limit=&after=`) shared by every list.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// At most this many items (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Only items with a greater id: pass the last id of the previous page.
    pub after: Option<i64>,
}

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

impl Page {
    pub fn limit(&self, checks: &mut Checks) -> i64 {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        checks.check("limit", (1..=MAX_LIMIT).contains(&limit), "must be between 1 and 500");
        limit
    }
}

/// `{"items":[…]}`, every list's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}
