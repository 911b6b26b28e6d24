//! Snapshots (PROTOCOL §5): a topic's current rows and the log position they reflect, read in one
//! REPEATABLE READ transaction, so that streaming from that position neither misses nor repeats.
//!
//! Rows are rendered with `to_jsonb` under UTC, exactly as the capture trigger renders them, so a
//! snapshot row and an event's `data` are byte-for-byte comparable.

use sqlx::PgPool;

use super::tracked::Tracked;
use crate::event::Position;
use crate::listener::log;

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
/// is judged in the database (`octet_length`), so an oversized snapshot is never sent to pgfeed,
/// let alone buffered for a client.
pub async fn take(pool: &PgPool, of: Of<'_>, max_bytes: usize) -> Result<(Position, Option<String>), sqlx::Error> {
    // The snapshot starts while no commit is in flight and none can start (a second connection
    // waits for them and holds new ones back, for about one commit: `log::while_commits_held`): every
    // commit with a seq up to the newest is then visible in it and final, and none after it, so
    // the rows below are exactly the log up to there. (Commits that happen at the same moment may
    // otherwise become visible out of seq order; see sql/capture.sql.)
    let one_at_a_time = BARRIER.lock().await;
    let mut tx = pool.begin().await?;
    let mut barrier = pool.acquire().await?;
    let seq = log::while_commits_held(&mut barrier, async |_: &mut sqlx::PgConnection| {
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        sqlx::query("set local timezone = 'UTC'").execute(&mut *tx).await?;
        log::newest_seq(&mut tx).await
    })
    .await?;
    drop((barrier, one_at_a_time));
    // `d` is the snapshot as text; `max_bytes` is a number, so formatting it in is safe.
    let capped =
        |inner: String| format!("select case when octet_length(d) <= {max_bytes} then d end from ({inner}) q(d)");
    let data: Option<String> = match of {
        Of::Table(t) => {
            let sql = format!(
                r#"select coalesce(jsonb_agg(to_jsonb(r) order by {pk}), '[]')::text from {rel} r"#,
                pk = t.pk.iter().map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", "),
                rel = t.relation,
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
                    format!(r#"select coalesce((select to_jsonb(r) from {} r where {cond}), 'null')::text"#, t.relation)
                }
                _ => format!(
                    r#"select coalesce((select to_jsonb(r) from {} r where concat_ws(',', {}) = $1), 'null')::text"#,
                    t.relation,
                    t.pk.iter().map(|c| format!("r.{c}::text")).collect::<Vec<_>>().join(", ")
                ),
            };
            sqlx::query_scalar(&capped(sql)).bind(key).fetch_one(&mut *tx).await?
        }
        Of::Room(id) => {
            sqlx::query_scalar(&capped(
                r#"select jsonb_build_object(
                       'study', (select to_jsonb(s) from studies s where s.id = $1),
                       'messages', coalesce((select jsonb_agg(to_jsonb(m) order by m.id) from messages m where m.study_id = $1), '[]'),
                       'files', coalesce((select jsonb_agg(to_jsonb(f) order by f.id) from files f where f.study_id = $1), '[]')
                   )::text"#
                    .to_owned(),
            ))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    Ok((Position::end_of(seq), data))
}
