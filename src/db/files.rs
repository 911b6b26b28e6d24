//! `files` and `file_contents`: one async fn per statement. Files are immutable
//! (no update, no version column): their ETag is the content's sha256, and a conditional
//! delete takes the `sha256`s it may delete.
//!
//! Bytes move a chunk at a time, never a whole file (migration 0002): an upload stages each
//! chunk in `file_upload_chunks` ([`stage_chunk`]) and [`join_chunks`] turns them into the
//! `file_contents` row inside the database; a download reads [`content_slice`]s.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use utoipa::ToSchema;
use uuid::Uuid;

/// A `files` row, with exactly the table's columns as keys (the bytes are never part of it).
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
    pub size_bytes: i64,
}

/// What a download needs to describe a file's stored bytes before it reads them.
#[derive(Debug, sqlx::FromRow)]
pub struct Content {
    pub name: String,
    pub content_type: String,
    pub sha256: String,
    /// The stored content's length; `None` when an outside writer inserted the row without content.
    pub length: Option<i64>,
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

/// The metadata row; run [`join_chunks`] in the same transaction. Fails with
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
    .bind(new.size_bytes)
    .bind(new.sha256)
    .fetch_one(db)
    .await
}

/// Stages chunk `seq` (from 0) of `upload`, in its own statement: nothing of it stays in pgfeed.
pub async fn stage_chunk(db: impl PgExecutor<'_>, upload: Uuid, seq: i32, data: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query(r#"insert into file_upload_chunks (upload, seq, data) values ($1::uuid, $2, $3)"#)
        .bind(upload.to_string())
        .bind(seq)
        .bind(data)
        .execute(db)
        .await
        .map(drop)
}

/// Joins `upload`'s `chunks` staged chunks, in order, into `file_id`'s `file_contents` row (in the
/// database, never through pgfeed) and drops them. `false` when some chunk is missing (swept as
/// abandoned), in which case nothing was written. Run it in the transaction of [`insert`].
pub async fn join_chunks(
    db: &mut sqlx::PgConnection,
    file_id: i64,
    upload: Uuid,
    chunks: i32,
) -> Result<bool, sqlx::Error> {
    let joined = sqlx::query(
        r#"insert into file_contents (file_id, content)
           select $1, coalesce(string_agg(data, ''::bytea order by seq), ''::bytea)
           from file_upload_chunks where upload = $2::uuid
           having count(*) = $3"#,
    )
    .bind(file_id)
    .bind(upload.to_string())
    .bind(i64::from(chunks))
    .execute(&mut *db)
    .await?
    .rows_affected()
        == 1;
    unstage(&mut *db, upload).await?;
    Ok(joined)
}

/// Drops whatever `upload` staged (it failed, or was abandoned by its client).
pub async fn unstage(db: impl PgExecutor<'_>, upload: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(r#"delete from file_upload_chunks where upload = $1::uuid"#)
        .bind(upload.to_string())
        .execute(db)
        .await
        .map(drop)
}

/// Drops chunks staged more than a day ago: left by a server that died mid-upload (no upload
/// lasts that long: `--request-timeout` cuts it off first).
pub async fn sweep_staged(db: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    sqlx::query(r#"delete from file_upload_chunks where created_at < now() - interval '1 day'"#)
        .execute(db)
        .await
        .map(|r| r.rows_affected())
}

pub async fn content(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Content>, sqlx::Error> {
    sqlx::query_as::<_, Content>(
        r#"select f.name, f.content_type, f.sha256, length(c.content)::bigint as length
           from files f left join file_contents c on c.file_id = f.id
           where f.id = $1"#,
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Up to `len` bytes of file `id`'s content from byte `offset` (from 0; a bytea is under 1 GiB).
/// `None` when the content is gone (the file was deleted meanwhile).
pub async fn content_slice(
    db: impl PgExecutor<'_>,
    id: i64,
    offset: i32,
    len: i32,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar::<_, Vec<u8>>(
        r#"select substring(content from $2 for $3) from file_contents where file_id = $1"#,
    )
    .bind(id)
    .bind(offset + 1)
    .bind(len)
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
