//! The SQL of live views (README "Live views"): a tracked table's columns, and a window's rows
//! and count read at a position of the log. The statements themselves are built by
//! `feed::views` from a checked definition (quoted identifiers, literals as parameters).

use sqlx::{PgPool, Row};

use super::snapshot;
use crate::event::Position;

/// A column of a tracked table: name, `format_type` and whether it is NOT NULL.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub pg_type: String,
    pub not_null: bool,
}

/// The columns of a tracked table in their order, and its primary key columns (names); `None`
/// when `topic` is not tracked (any more).
pub async fn columns(pool: &PgPool, topic: &str) -> Result<Option<(Vec<Column>, Vec<String>)>, sqlx::Error> {
    let rows = sqlx::query(
        r#"select a.attname::text as name, format_type(a.atttypid, null) as pg_type, a.attnotnull, t.pk
           from pgfeed.tracked t
           join pg_attribute a on a.attrelid = t.relid and a.attnum > 0 and not a.attisdropped
           where t.topic = $1
           order by a.attnum"#,
    )
    .bind(topic)
    .fetch_all(pool)
    .await?;
    let Some(first) = rows.first() else { return Ok(None) };
    let pk: Vec<String> = first.try_get("pk")?;
    let columns = rows
        .iter()
        .map(|r| {
            Ok(Column {
                name: r.try_get("name")?,
                pg_type: r.try_get("pg_type")?,
                not_null: r.try_get("attnotnull")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(Some((columns, pk)))
}

/// A window's statements: its rows as JSON in order (`select pgfeed.serialize(r) … limit`), and
/// its count (`select count(*) …`) when asked; `binds` are the parameters as text, of which the
/// count takes the first `count_binds` (the filter's).
#[derive(Debug, Clone)]
pub struct WindowSql {
    pub rows: String,
    pub count: Option<String>,
    pub binds: Vec<String>,
    pub count_binds: usize,
}

/// What a window read: its rows (JSON as the capture trigger renders them), its count, and the
/// position of the log they reflect exactly (`snapshot::begin`).
#[derive(Debug)]
pub struct Loaded {
    pub at: Position,
    pub rows: Vec<String>,
    pub count: Option<i64>,
}

pub async fn load(pool: &PgPool, sql: &WindowSql) -> Result<Loaded, sqlx::Error> {
    let (mut tx, at) = snapshot::begin(pool).await?;
    let mut rows = sqlx::query_scalar::<_, String>(&sql.rows);
    for b in &sql.binds {
        rows = rows.bind(b);
    }
    let rows = rows.fetch_all(&mut *tx).await?;
    let count = match &sql.count {
        Some(count_sql) => {
            let mut q = sqlx::query_scalar::<_, i64>(count_sql);
            for b in &sql.binds[..sql.count_binds] {
                q = q.bind(b);
            }
            Some(q.fetch_one(&mut *tx).await?)
        }
        None => None,
    };
    tx.commit().await?;
    Ok(Loaded { at, rows, count })
}
