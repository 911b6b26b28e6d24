//! `files` and `file_contents` (PROTOCOL §2): one async fn per statement. Files are immutable
//! (no update, no version column): their ETag is the content's sha256, and a conditional
//! delete takes the `sha256`s it may delete.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use utoipa::ToSchema;

/// A `files` row, with exactly PROTOCOL §2's keys (the bytes are never part of it).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct File {
    pub id: i64,
    pub study_id: i64,
    pub name: String,
    pub content_type: String,
    pub size_bytes: i64,
    /// Lowercase hex SHA-256 of the content; also the file's ETag.
    pub sha256: String,
    #[serde(with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct NewFile<'a> {
    pub study_id: i64,
    pub name: &'a str,
    pub content_type: &'a str,
    pub sha256: &'a str,
    pub content: &'a [u8],
}

/// A file's stored bytes with what a download needs to describe them.
#[derive(Debug, sqlx::FromRow)]
pub struct Content {
    pub name: String,
    pub content_type: String,
    pub sha256: String,
    /// `None` when an outside writer inserted the row without content.
    pub content: Option<Vec<u8>>,
}

pub async fn list(
    db: impl PgExecutor<'_>,
    study_id: i64,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<File>, sqlx::Error> {
    sqlx::query_as::<_, File>(
        r#"select * from files where study_id = $1 and ($2::bigint is null or id > $2) order by id limit $3"#,
    )
    .bind(study_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Option<File>, sqlx::Error> {
    sqlx::query_as::<_, File>(r#"select * from files where id = $1"#)
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The metadata row; run [`insert_content`] in the same transaction. Fails with
/// `files_study_id_fkey` when the study does not exist.
pub async fn insert(db: impl PgExecutor<'_>, new: &NewFile<'_>) -> Result<File, sqlx::Error> {
    sqlx::query_as::<_, File>(
        r#"insert into files (study_id, name, content_type, size_bytes, sha256)
           values ($1, $2, $3, $4, $5)
           returning *"#,
    )
    .bind(new.study_id)
    .bind(new.name)
    .bind(new.content_type)
    .bind(new.content.len() as i64)
    .bind(new.sha256)
    .fetch_one(db)
    .await
}

pub async fn insert_content(db: impl PgExecutor<'_>, file_id: i64, content: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query(r#"insert into file_contents (file_id, content) values ($1, $2)"#)
        .bind(file_id)
        .bind(content)
        .execute(db)
        .await
        .map(drop)
}

pub async fn content(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Content>, sqlx::Error> {
    sqlx::query_as::<_, Content>(
        r#"select f.name, f.content_type, f.sha256, c.content
           from files f left join file_contents c on c.file_id = f.id
           where f.id = $1"#,
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// `None` when there is no such file or its sha256 is not one of `sha256s`.
pub async fn delete(db: impl PgExecutor<'_>, id: i64, sha256s: Option<&[String]>) -> Result<Option<File>, sqlx::Error> {
    sqlx::query_as::<_, File>(
        r#"delete from files where id = $1 and ($2::text[] is null or sha256 = any($2)) returning *"#,
    )
    .bind(id)
    .bind(sha256s)
    .fetch_optional(db)
    .await
}
