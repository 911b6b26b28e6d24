//! `studies`: one async fn per statement. Writes go through the tables like any
//! other writer's, so the capture triggers turn each into an event; nothing here publishes.
//!
//! Conditional writes take `versions`: `None` writes whatever the current version is, `Some`
//! writes only when the row's version is one of them (an `If-Match`). Under READ COMMITTED a
//! concurrent writer's `where version = …` is re-checked against the row it waited for, so two
//! writers holding the same version can never both succeed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use utoipa::ToSchema;

/// A study's lifecycle; the table's check constraint allows exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Status {
    Draft,
    Active,
    Closed,
    Archived,
}

impl std::str::FromStr for Status {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| ())
    }
}

/// A `studies` row, with exactly the table's columns as keys.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Study {
    pub id: i64,
    pub label: String,
    pub title: String,
    pub description: String,
    pub status: Status,
    /// Bumped by the database on every update, whoever writes; the ETag is `"<version>"`.
    pub version: i32,
    #[serde(with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(with = "super::timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub struct NewStudy {
    pub label: String,
    pub title: String,
    pub description: Option<String>,
    pub status: Option<Status>,
}

/// Columns to change; `None` keeps the current value.
#[derive(Debug, Default)]
pub struct StudyChanges {
    pub label: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub status: Option<Status>,
}

impl StudyChanges {
    pub fn is_empty(&self) -> bool {
        self.label.is_none() && self.title.is_none() && self.description.is_none() && self.status.is_none()
    }
}

#[derive(Debug, Default)]
pub struct Filter {
    pub status: Option<Status>,
    /// Matched as a case-insensitive substring of the label or the title.
    pub q: Option<String>,
    /// Keyset pagination: only ids greater than this.
    pub after: Option<i64>,
    pub limit: i64,
}

pub async fn list(db: impl PgExecutor<'_>, f: &Filter) -> Result<Vec<Study>, sqlx::Error> {
    // `q` is a substring, not a pattern: escape LIKE's wildcards.
    let pattern =
        f.q.as_ref()
            .map(|q| format!("%{}%", q.replace('\\', r"\\").replace('%', r"\%").replace('_', r"\_")));
    sqlx::query_as::<_, Study>(
        r#"select * from studies
           where ($1::text is null or status = $1)
             and ($2::text is null or label ilike $2 or title ilike $2)
             and ($3::bigint is null or id > $3)
           order by id
           limit $4"#,
    )
    .bind(f.status)
    .bind(pattern)
    .bind(f.after)
    .bind(f.limit)
    .fetch_all(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Study>, sqlx::Error> {
    sqlx::query_as::<_, Study>(r#"select * from studies where id = $1"#)
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn exists(db: impl PgExecutor<'_>, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(r#"select exists (select from studies where id = $1)"#)
        .bind(id)
        .fetch_one(db)
        .await
}

/// Fails with `studies_label_key` when the label is taken.
pub async fn insert(db: impl PgExecutor<'_>, new: &NewStudy) -> Result<Study, sqlx::Error> {
    sqlx::query_as::<_, Study>(
        r#"insert into studies (label, title, description, status)
           values ($1, $2, coalesce($3, ''), coalesce($4, 'draft'))
           returning *"#,
    )
    .bind(&new.label)
    .bind(&new.title)
    .bind(&new.description)
    .bind(new.status)
    .fetch_one(db)
    .await
}

/// `None` when there is no such study or its version is not one of `versions`.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: i64,
    versions: Option<&[i32]>,
    c: &StudyChanges,
) -> Result<Option<Study>, sqlx::Error> {
    sqlx::query_as::<_, Study>(
        r#"update studies
           set label = coalesce($3, label), title = coalesce($4, title),
               description = coalesce($5, description), status = coalesce($6, status)
           where id = $1 and ($2::int[] is null or version = any($2))
           returning *"#,
    )
    .bind(id)
    .bind(versions)
    .bind(&c.label)
    .bind(&c.title)
    .bind(&c.description)
    .bind(c.status)
    .fetch_optional(db)
    .await
}

/// The row if its version is one of `versions` (for a PATCH that changes nothing).
pub async fn get_matching(
    db: impl PgExecutor<'_>,
    id: i64,
    versions: Option<&[i32]>,
) -> Result<Option<Study>, sqlx::Error> {
    sqlx::query_as::<_, Study>(r#"select * from studies where id = $1 and ($2::int[] is null or version = any($2))"#)
        .bind(id)
        .bind(versions)
        .fetch_optional(db)
        .await
}

/// Deletes the study; its messages and files (and their contents) go with it by cascade,
/// each an event of its own. `None` as for [`update`].
pub async fn delete(db: impl PgExecutor<'_>, id: i64, versions: Option<&[i32]>) -> Result<Option<Study>, sqlx::Error> {
    sqlx::query_as::<_, Study>(
        r#"delete from studies where id = $1 and ($2::int[] is null or version = any($2)) returning *"#,
    )
    .bind(id)
    .bind(versions)
    .fetch_optional(db)
    .await
}
