//! The REST API's studies (README "REST API"): list, create, read, partial update, delete. Every
//! write is a plain SQL write through [`crate::db::studies`]; the capture triggers make the events.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody, Result, ResultExt};
use super::extract::{etag, AppJson, AppPath, AppQuery, Checks, IfMatch, Items, DEFAULT_LIMIT, MAX_LIMIT};
use super::guard::Decision;
use super::AppState;
use crate::db::studies::{self, Filter, NewStudy, Status, Study, StudyChanges};

pub const LABEL_MAX: usize = 100;
pub const TITLE_MAX: usize = 200;
pub const DESCRIPTION_MAX: usize = 10_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, delete))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only studies in this status.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    /// Case-insensitive substring of the label or the title.
    q: Option<String>,
    /// At most this many items (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Only studies with a greater id: pass the last id of the previous page.
    after: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStudy {
    #[schema(min_length = 1, max_length = 100)]
    label: String,
    #[schema(min_length = 1, max_length = 200)]
    title: String,
    #[schema(max_length = 10000)]
    description: Option<String>,
    status: Option<Status>,
}

/// Fields to change; absent (or `null`) ones keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateStudy {
    #[schema(min_length = 1, max_length = 100)]
    label: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    title: Option<String>,
    #[schema(max_length = 10000)]
    description: Option<String>,
    status: Option<Status>,
}

fn taken(label: &str) -> impl FnOnce() -> ApiError + '_ {
    move || ApiError::Conflict(format!("study label {label:?} is taken"))
}

fn no_study(id: i64) -> ApiError {
    ApiError::NotFound(format!("no study {id}"))
}

/// After a conditional write touched no row: 404 if the study is gone, else 412.
async fn missed(state: &AppState, id: i64) -> ApiError {
    match studies::get(&state.feed.pool, id).await {
        Ok(Some(s)) => ApiError::PreconditionFailed {
            current: format!("\"{}\"", s.version),
        },
        Ok(None) => no_study(id),
        Err(e) => e.into(),
    }
}

// GET /api/studies?status=&q=&limit=&after=
/// List studies in id order, filtered, one keyset page at a time.
#[utoipa::path(get, path = "/api/studies", tag = "studies", params(ListQuery),
    responses(
        (status = 200, body = Items<Study>),
        (status = 400, description = "Unparsable query string", body = ErrorBody),
        (status = 422, description = "Unknown status or limit out of range", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn list(State(state): State<AppState>, AppQuery(q): AppQuery<ListQuery>) -> Result<AppJson<Items<Study>>> {
    let mut checks = Checks::default();
    let status = q.status.as_deref().map(|s| s.parse::<Status>());
    checks.check(
        "status",
        !matches!(status, Some(Err(_))),
        "must be one of draft, active, closed, archived",
    );
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    checks.check("limit", (1..=MAX_LIMIT).contains(&limit), "must be between 1 and 500");
    checks.text("q", q.q.as_deref(), false, 200).done()?;
    let filter = Filter {
        status: status.and_then(|s| s.ok()),
        q: q.q,
        after: q.after,
        limit,
    };
    let items = studies::list(&state.feed.pool, &filter).await?;
    Ok(AppJson(Items { items }))
}

// POST /api/studies
/// Create a study.
#[utoipa::path(post, path = "/api/studies", tag = "studies", request_body = CreateStudy,
    responses(
        (status = 201, body = Study, headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "Malformed JSON or not application/json", body = ErrorBody),
        (status = 409, description = "The label is taken", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Validation failed", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn create(State(state): State<AppState>, AppJson(body): AppJson<CreateStudy>) -> Result<impl IntoResponse> {
    Checks::default()
        .text("label", Some(&body.label), true, LABEL_MAX)
        .text("title", Some(&body.title), true, TITLE_MAX)
        .text("description", body.description.as_deref(), false, DESCRIPTION_MAX)
        .done()?;
    let new = NewStudy {
        label: body.label,
        title: body.title,
        description: body.description,
        status: body.status,
    };
    let study = studies::insert(&state.feed.pool, &new)
        .await
        .on_constraint("studies_label_key", taken(&new.label))?;
    Ok((StatusCode::CREATED, etag(study.version), AppJson(study)))
}

// GET /api/studies/{id}
/// Read one study.
#[utoipa::path(get, path = "/api/studies/{id}", tag = "studies", params(("id" = i64, Path)),
    responses(
        (status = 200, body = Study, headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "No such study", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn read(State(state): State<AppState>, AppPath(id): AppPath<i64>, access: Decision) -> Result<impl IntoResponse> {
    access.check(id)?;
    let study = studies::get(&state.feed.pool, id).await?.ok_or_else(|| no_study(id))?;
    Ok((etag(study.version), AppJson(study)))
}

// PATCH /api/studies/{id}, honouring If-Match
/// Change some fields of a study. With `If-Match: "<version>"`, only if nobody changed it since.
#[utoipa::path(patch, path = "/api/studies/{id}", tag = "studies", request_body = UpdateStudy,
    params(("id" = i64, Path), ("If-Match" = Option<String>, Header, description = "The ETag last read: \"<version>\"")),
    responses(
        (status = 200, body = Study, headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "Malformed id, JSON or If-Match", body = ErrorBody),
        (status = 404, description = "No such study", body = ErrorBody),
        (status = 409, description = "The label is taken", body = ErrorBody),
        (status = 412, description = "If-Match does not match the current version", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Validation failed", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn update(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
    if_match: IfMatch,
    AppJson(body): AppJson<UpdateStudy>,
) -> Result<impl IntoResponse> {
    Checks::default()
        .text("label", body.label.as_deref(), body.label.is_some(), LABEL_MAX)
        .text("title", body.title.as_deref(), body.title.is_some(), TITLE_MAX)
        .text("description", body.description.as_deref(), false, DESCRIPTION_MAX)
        .done()?;
    let changes = StudyChanges {
        label: body.label,
        title: body.title,
        description: body.description,
        status: body.status,
    };
    let versions = if_match.versions();
    let pool = &state.feed.pool;
    // Nothing to change: no UPDATE, so no new version and no event.
    let written = if changes.is_empty() {
        studies::get_matching(pool, id, versions.as_deref()).await?
    } else {
        let label = changes.label.clone().unwrap_or_default();
        studies::update(pool, id, versions.as_deref(), &changes)
            .await
            .on_constraint("studies_label_key", taken(&label))?
    };
    match written {
        Some(study) => Ok((etag(study.version), AppJson(study))),
        None => Err(missed(&state, id).await),
    }
}

// DELETE /api/studies/{id}, honouring If-Match; cascades to messages and files
/// Delete a study with its messages and files (each deletion is an event).
#[utoipa::path(delete, path = "/api/studies/{id}", tag = "studies",
    params(("id" = i64, Path), ("If-Match" = Option<String>, Header, description = "The ETag last read: \"<version>\"")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id or If-Match", body = ErrorBody),
        (status = 404, description = "No such study", body = ErrorBody),
        (status = 412, description = "If-Match does not match the current version", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn delete(State(state): State<AppState>, AppPath(id): AppPath<i64>, if_match: IfMatch) -> Result<StatusCode> {
    match studies::delete(&state.feed.pool, id, if_match.versions().as_deref()).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(missed(&state, id).await),
    }
}
