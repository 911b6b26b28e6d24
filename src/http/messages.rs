//! The REST API's messages (README "REST API"): a study's list, create, edit body, delete. Plain
//! SQL writes through [`crate::db::messages`]; the capture triggers make the events.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorBody, Result, ResultExt};
use super::extract::{etag, AppJson, AppPath, AppQuery, Checks, IfMatch, Items, Page};
use super::guard::Decision;
use super::AppState;
use crate::db::messages::{self, Message};
use crate::db::studies;

pub const AUTHOR_MAX: usize = 100;
pub const BODY_MAX: usize = 10_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(update, delete))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMessage {
    #[schema(min_length = 1, max_length = 100)]
    author: String,
    #[schema(min_length = 1, max_length = 10000)]
    body: String,
}

/// Only the body of a message can be edited.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMessage {
    #[schema(min_length = 1, max_length = 10000)]
    body: String,
}

fn no_study(id: i64) -> ApiError {
    ApiError::NotFound(format!("no study {id}"))
}

fn no_message(id: i64) -> ApiError {
    ApiError::NotFound(format!("no message {id}"))
}

/// After a conditional write touched no row: 404 if the message is gone, else 412.
async fn missed(state: &AppState, id: i64) -> ApiError {
    match messages::version(&state.feed.pool, id).await {
        Ok(Some(v)) => ApiError::PreconditionFailed {
            current: format!("\"{v}\""),
        },
        Ok(None) => no_message(id),
        Err(e) => e.into(),
    }
}

// GET /api/studies/{id}/messages
/// A study's messages in id order, one keyset page at a time.
#[utoipa::path(get, path = "/api/studies/{id}/messages", tag = "messages", params(("id" = i64, Path), Page),
    responses(
        (status = 200, body = Items<Message>),
        (status = 400, description = "Malformed id or query string", body = ErrorBody),
        (status = 404, description = "No such study", body = ErrorBody),
        (status = 422, description = "limit out of range", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
    access: Decision,
    AppQuery(page): AppQuery<Page>,
) -> Result<AppJson<Items<Message>>> {
    access.check(id)?;
    let mut checks = Checks::default();
    let limit = page.limit(&mut checks);
    checks.done()?;
    let pool = &state.feed.pool;
    if !studies::exists(pool, id).await? {
        return Err(no_study(id));
    }
    let items = messages::list(pool, id, page.after, limit).await?;
    Ok(AppJson(Items { items }))
}

// POST /api/studies/{id}/messages
/// Post a message to a study.
#[utoipa::path(post, path = "/api/studies/{id}/messages", tag = "messages", params(("id" = i64, Path)), request_body = CreateMessage,
    responses(
        (status = 201, body = Message, headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "Malformed id or JSON, or not application/json", body = ErrorBody),
        (status = 404, description = "No such study", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Validation failed", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn create(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
    access: Decision,
    AppJson(body): AppJson<CreateMessage>,
) -> Result<impl IntoResponse> {
    access.check(id)?;
    Checks::default()
        .text("author", Some(&body.author), true, AUTHOR_MAX)
        .text("body", Some(&body.body), true, BODY_MAX)
        .done()?;
    let message = messages::insert(&state.feed.pool, id, &body.author, &body.body)
        .await
        .on_constraint("messages_study_id_fkey", || no_study(id))?;
    Ok((StatusCode::CREATED, etag(message.version), AppJson(message)))
}

// PATCH /api/messages/{id}, honouring If-Match
/// Edit a message's body. With `If-Match: "<version>"`, only if nobody changed it since.
#[utoipa::path(patch, path = "/api/messages/{id}", tag = "messages", request_body = UpdateMessage,
    params(("id" = i64, Path), ("If-Match" = Option<String>, Header, description = "The ETag last read: \"<version>\"")),
    responses(
        (status = 200, body = Message, headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "Malformed id, JSON or If-Match", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 412, description = "If-Match does not match the current version", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Validation failed", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn update(
    State(state): State<AppState>,
    AppPath(id): AppPath<i64>,
    if_match: IfMatch,
    AppJson(body): AppJson<UpdateMessage>,
) -> Result<impl IntoResponse> {
    Checks::default()
        .text("body", Some(&body.body), true, BODY_MAX)
        .done()?;
    match messages::update_body(&state.feed.pool, id, if_match.versions().as_deref(), &body.body).await? {
        Some(m) => Ok((etag(m.version), AppJson(m))),
        None => Err(missed(&state, id).await),
    }
}

// DELETE /api/messages/{id}, honouring If-Match
/// Delete a message.
#[utoipa::path(delete, path = "/api/messages/{id}", tag = "messages",
    params(("id" = i64, Path), ("If-Match" = Option<String>, Header, description = "The ETag last read: \"<version>\"")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id or If-Match", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 412, description = "If-Match does not match the current version", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
async fn delete(State(state): State<AppState>, AppPath(id): AppPath<i64>, if_match: IfMatch) -> Result<StatusCode> {
    match messages::delete(&state.feed.pool, id, if_match.versions().as_deref()).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(missed(&state, id).await),
    }
}
