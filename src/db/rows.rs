//! Lookups of single rows that authorization needs.

use sqlx::PgExecutor;

/// The study a message or file belongs to (`None` when there is no such row).
pub async fn study_of(db: impl PgExecutor<'_>, table: &str, id: i64) -> Result<Option<i64>, sqlx::Error> {
    let sql = match table {
        "messages" => "select study_id from messages where id = $1",
        "files" => "select study_id from files where id = $1",
        _ => return Ok(None),
    };
    sqlx::query_scalar(sql).bind(id).fetch_optional(db).await
}
