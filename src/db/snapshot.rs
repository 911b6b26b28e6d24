//! Snapshots (README "Subscribing: WebSocket `/ws`"): a topic's current rows and the log position
//! they reflect, read in one REPEATABLE READ transaction, so that streaming from that position
//! neither misses nor repeats.
//!
//! Rows are rendered with `pgfeed.serialize` (`to_jsonb` as the powerless role `pgfeed_capture`)
//! under UTC, exactly as the capture trigger renders them, so a snapshot row and an event's `data`
//! are byte-for-byte comparable. Never with `to_jsonb` as pgfeed's own role: it runs casts to json
//! that a table's owner may write (sql/capture.sql, `pgfeed.serialize`).

use sqlx::PgPool;

use super::log;
use super::replica::{self, Standby};
use super::tracked::Tracked;
use crate::event::Position;
use crate::metrics::ReadOn;

/// What to take a snapshot of.
#[derive(Debug, Clone, Copy)]
pub enum Of<'a> {
    /// Every row of the table, in primary key order.
    Table(&'a Tracked),
    /// One row (`null` when there is none).
    Row(&'a Tracked, &'a str),
    /// A study's room: `{"study":…,"messages":[…],"files":[…]}`.
    Room(i64),
}

/// Snapshots take their barrier one at a time, so that waiting ones never hold the whole pool.
static BARRIER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The snapshot's JSON and its position; `None` for the JSON when it is over `max_bytes`. The size
/// is judged in the database, so an oversized snapshot is never sent to pgfeed, let alone buffered
/// for a client; and lists of rows are rendered in key order with a running total of their size
/// that stops the reading once it passes `max_bytes`, so a refusal costs about `max_bytes` of
/// rendering, not the whole table or room.
pub async fn take(
    pool: &PgPool,
    standby: Option<Standby<'_>>,
    of: Of<'_>,
    max_bytes: usize,
) -> Result<(Position, Option<String>), sqlx::Error> {
    let (mut tx, at) = begin_from(pool, standby).await?;
    // `d` is the snapshot as text; `max_bytes` is a number, so formatting it in is safe.
    let capped =
        |inner: String| format!("select case when octet_length(d) <= {max_bytes} then d end from ({inner}) q(d)");
    let data: Option<String> = match of {
        Of::Table(t) => {
            let sql = format!(
                r#"with {rows}
                   select case when exists (select from s where total > {max_bytes}) then null
                               else (select coalesce(jsonb_agg(j order by total), '[]') from s)::text end"#,
                rows = sized_rows(
                    "s",
                    &t.relation,
                    "true",
                    &t.pk.iter().map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ")
                ),
            );
            sqlx::query_scalar(&capped(sql)).fetch_one(&mut *tx).await?
        }
        Of::Row(t, key) => {
            let sql = match (t.pk.as_slice(), t.pk_types.as_slice()) {
                ([col], [ty]) => {
                    // Compare in the key's own type where the cast cannot fail, so the index serves.
                    let cond = match ty.as_str() {
                        "bigint" | "integer" | "smallint" => format!("r.{col} = $1::text::bigint"),
                        "text" => format!("r.{col} = $1"),
                        _ => format!("r.{col}::text = $1"),
                    };
                    format!(
                        r#"select coalesce((select pgfeed.serialize(r) from {} r where {cond}), 'null')::text"#,
                        t.relation
                    )
                }
                _ => format!(
                    r#"select coalesce((select pgfeed.serialize(r) from {} r where concat_ws(',', {}) = $1), 'null')::text"#,
                    t.relation,
                    t.pk.iter()
                        .map(|c| format!("r.{c}::text"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            sqlx::query_scalar(&capped(sql)).bind(key).fetch_one(&mut *tx).await?
        }
        Of::Room(id) => {
            let sql = format!(
                r#"with {m}, {f}
                   select case when exists (select from m where total > {max_bytes})
                                    or exists (select from f where total > {max_bytes}) then null
                               else jsonb_build_object(
                                   'study', (select pgfeed.serialize(s) from studies s where s.id = $1),
                                   'messages', coalesce((select jsonb_agg(j order by total) from m), '[]'),
                                   'files', coalesce((select jsonb_agg(j order by total) from f), '[]')
                               )::text end"#,
                m = sized_rows("m", "messages", "r.study_id = $1", "r.id"),
                f = sized_rows("f", "files", "r.study_id = $1", "r.id"),
            );
            sqlx::query_scalar(&capped(sql)).bind(id).fetch_one(&mut *tx).await?
        }
    };
    tx.commit().await?;
    Ok((at, data))
}

/// A snapshot transaction's settings, in one round trip (a `&str` with no binds goes out as one
/// simple query). The pools plan everything generically (`db::connect`: the log read is planned
/// once per connection); a snapshot's and a window's statements run once each and are planned
/// with their values, which a generic plan cannot see (it walked a whole index for a view filter
/// that matches nothing: 1.5 s against 0.2 ms).
pub(super) const READ_SETTINGS: &str = "set transaction isolation level repeatable read, read only; \
     set local timezone = 'UTC'; set local plan_cache_mode = force_custom_plan";

/// A read-only REPEATABLE READ transaction (TimeZone UTC, so rows render as the capture trigger
/// renders them) that sees exactly the log up to the position returned: what snapshots and live
/// views (`db::views`) read in.
///
/// The snapshot starts while no commit is in flight and none can start (a second connection
/// waits for them and holds new ones back, for about one commit: `log::while_commits_held`): every
/// commit with a seq up to the newest is then visible in it and final, and none after it, so
/// rows read in it are exactly the log up to there. (Commits that happen at the same moment may
/// otherwise become visible out of seq order; see sql/capture.sql.)
pub async fn begin(pool: &PgPool) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, Position), sqlx::Error> {
    let one_at_a_time = BARRIER.lock().await;
    let mut tx = pool.begin().await?;
    // Before the barrier: its snapshot is taken by its first query, so commits are held back only
    // for that one.
    sqlx::Executor::execute(&mut *tx, READ_SETTINGS).await?;
    let mut barrier = pool.acquire().await?;
    let seq = log::while_commits_held(&mut barrier, async |_: &mut sqlx::PgConnection| {
        log::newest_seq(&mut *tx).await
    })
    .await?;
    drop((barrier, one_at_a_time));
    Ok((tx, Position::end_of(seq)))
}

/// [`begin`] on the standby when it can give such a snapshot now (`replica::begin_snapshot`),
/// else on the primary.
pub async fn begin_from(
    pool: &PgPool,
    standby: Option<Standby<'_>>,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, Position), sqlx::Error> {
    if let Some(s) = standby {
        match replica::begin_snapshot(s.replica, s.at_least, s.gen).await {
            Ok(Some(taken)) => {
                s.replica.count(ReadOn::Standby, s.what);
                return Ok(taken);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "a snapshot on the standby failed; taking it on the primary"),
        }
        s.replica.count(ReadOn::Primary, s.what);
    }
    begin(pool).await
}

/// A CTE `name(j, total)`: the rows of `relation` that match `filter` as JSON, in `order`, each with
/// the running total of their rendered size. A CTE is read as far as its readers pull, and in key
/// order the window streams (from the key's index), so a reader that stops at the first `total`
/// over the limit renders little more than the limit. Every row adds at least 2 bytes (`{}`), so
/// `total` orders the rows as `order` does.
fn sized_rows(name: &str, relation: &str, filter: &str, order: &str) -> String {
    format!(
        r#"{name} as (
               select x.j, sum(octet_length(x.j::text)) over (order by {order}) as total
               from {relation} r cross join lateral (select pgfeed.serialize(r) as j) x
               where {filter}
           )"#
    )
}
