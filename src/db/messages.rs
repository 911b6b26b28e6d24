//! `messages`: one async fn per statement. Conditional writes take `versions`
//! exactly as in [`super::studies`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use utoipa::ToSchema;

/// A `messages` row, with exactly the table's columns as keys.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Message {
    pub id: i64,
    pub study_id: i64,
    pub author: String,
    pub body: String,
    /// Bumped by the database on every update; the ETag is `"<version>"`.
    pub version: i32,
    #[serde(with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
}

pub async fn list(
    db: impl PgExecutor<'_>,
    study_id: i64,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as::<_, Message>(
        r#"select * from messages where study_id = $1 and ($2::bigint is null or id > $2) order by id limit $3"#,
    )
    .bind(study_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The message's current version, `None` when there is no such message.
pub async fn version(db: impl PgExecutor<'_>, id: i64) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar(r#"select version from messages where id = $1"#)
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Fails with `messages_study_id_fkey` when the study does not exist.
pub async fn insert(db: impl PgExecutor<'_>, study_id: i64, author: &str, body: &str) -> Result<Message, sqlx::Error> {
    sqlx::query_as::<_, Message>(r#"insert into messages (study_id, author, body) values ($1, $2, $3) returning *"#)
        .bind(study_id)
        .bind(author)
        .bind(body)
        .fetch_one(db)
        .await
}

/// `None` when there is no such message or its version is not one of `versions`.
pub async fn update_body(
    db: impl PgExecutor<'_>,
    id: i64,
    versions: Option<&[i32]>,
    body: &str,
) -> Result<Option<Message>, sqlx::Error> {
    sqlx::query_as::<_, Message>(
        r#"update messages set body = $3 where id = $1 and ($2::int[] is null or version = any($2)) returning *"#,
    )
    .bind(id)
    .bind(versions)
    .bind(body)
    .fetch_optional(db)
    .await
}

pub async fn delete(
    db: impl PgExecutor<'_>,
    id: i64,
    versions: Option<&[i32]>,
) -> Result<Option<Message>, sqlx::Error> {
    sqlx::query_as::<_, Message>(
        r#"delete from messages where id = $1 and ($2::int[] is null or version = any($2)) returning *"#,
    )
    .bind(id)
    .bind(versions)
    .fetch_optional(db)
    .await
}
