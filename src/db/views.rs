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

/// A window's read, open: the position its rows reflect exactly (`snapshot::begin`), and the
/// transaction in which its count may be read at that same position ([`Reading::count`]).
pub struct Reading {
    pub at: Position,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

/// Reads a window's rows (JSON as the capture trigger renders them, in order) at a position of
/// the log, and leaves the read open for its count.
pub async fn read(
    pool: &PgPool,
    standby: Option<super::replica::Standby<'_>>,
    sql: &WindowSql,
) -> Result<(Reading, Vec<String>), sqlx::Error> {
    let started = std::time::Instant::now();
    let (mut tx, at) = snapshot::begin_from(pool, standby).await?;
    let barrier = started.elapsed();
    // Planned with its values (`snapshot::begin` sets `plan_cache_mode`): a generic plan cannot
    // see that `label >= 'L5'` matches nothing or that an `ilike` pattern has a prefix, and walks
    // the order's whole index (seen: 1.5 to 9 s for a window on 1,000,000 studies that the planner
    // answers in 0.2 ms with the value). Unnamed (`persistent(false)`): each definition's text
    // runs once or at a refill, so caching it per connection would only fill the cache.
    let mut rows = sqlx::query_scalar::<_, String>(&sql.rows).persistent(false);
    for b in &sql.binds {
        rows = rows.bind(b);
    }
    let rows = rows.fetch_all(&mut *tx).await?;
    tracing::debug!(
        barrier_ms = barrier.as_secs_f64() * 1e3,
        rows_ms = (started.elapsed() - barrier).as_secs_f64() * 1e3,
        sql = %sql.rows,
        "a live view's rows read"
    );
    Ok((Reading { at, tx }, rows))
}

impl Reading {
    /// The count (`sql.count`, which must be set) at the read's position; ends the read.
    pub async fn count(mut self, sql: &WindowSql) -> Result<i64, sqlx::Error> {
        let started = std::time::Instant::now();
        let mut q = sqlx::query_scalar::<_, i64>(sql.count.as_deref().unwrap_or("select 0::int8")).persistent(false);
        for b in &sql.binds[..sql.count_binds] {
            q = q.bind(b);
        }
        let n = q.fetch_one(&mut *self.tx).await?;
        self.tx.commit().await?;
        tracing::debug!(
            count_ms = started.elapsed().as_secs_f64() * 1e3,
            "a live view's count read"
        );
        Ok(n)
    }

    /// Ends the read without a count.
    pub async fn end(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}
