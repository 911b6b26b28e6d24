//! The watermark and the generations (`pgfeed.watermark`, `pgfeed.generations`, sql/capture.sql):
//! what every server reads of them. The leader writes them on its own session
//! (`listener::leader`), since only the session holding the leader lock may.
//!
//! Every server delivers only up to the watermark's `seq`: the leader wrote it after the commits
//! it covers were final (and, with `--durable-watermark standby`, flushed on the standby), so a
//! standby that holds a watermark row holds every commit up to it. That is what makes the last
//! good seq of a new generation safe to continue from.

use sqlx::{PgExecutor, Row};

use crate::event::Position;

/// What servers may deliver: every commit up to `seq`, under generation `gen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    pub seq: i64,
    pub gen: i32,
    /// The database is on another timeline than the one the leader last recorded: a standby was
    /// promoted a moment ago, and no leader has recorded the new generation yet. Until one has,
    /// nothing read past the watermark can be told apart from what diverged.
    pub moved: bool,
}

/// The watermark as `db` sees it now (a primary's: the timeline is that of its current WAL file;
/// a standby's: as far as it has replayed).
pub async fn read(db: impl PgExecutor<'_>) -> Result<Watermark, sqlx::Error> {
    let row = sqlx::query(
        r#"select seq, gen,
                  -- A standby (`--replica-url`) has no current WAL file of its own; it replays
                  -- the primary's watermark, generation included.
                  case when pg_is_in_recovery() then false
                       else timeline is distinct from
                                ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
                  end as moved
           from pgfeed.watermark"#,
    )
    .fetch_one(db)
    .await?;
    Ok(Watermark {
        seq: row.try_get("seq")?,
        gen: row.try_get("gen")?,
        moved: row.try_get("moved")?,
    })
}

/// Where a server starting with `head` (every seq up to it final, read while commits were held)
/// begins to serve: the watermark when it is behind `head`, so that what it serves never runs
/// ahead of what the leader published. A database no leader ever served (no generation yet: no
/// cursor was ever handed out) starts its watermark at `head` rather than make the first
/// servers read the whole log again.
pub async fn start(db: impl PgExecutor<'_>, head: Position) -> Result<Position, sqlx::Error> {
    let seq: i64 = sqlx::query_scalar(
        r#"with init as (
               update pgfeed.watermark set seq = $1, pending = $1
               where seq = 0 and pending = 0 and not exists (select from pgfeed.generations)
               returning seq
           )
           select coalesce((select seq from init), (select seq from pgfeed.watermark))"#,
    )
    .bind(head.seq)
    .fetch_one(db)
    .await?;
    Ok(head.min(Position::end_of(seq)))
}

/// The smallest `last_good_seq` of the generations after `gen`: up to it, a cursor of `gen`
/// names the same event in every later generation. `None` when no later generation has one.
pub async fn good_after(db: impl PgExecutor<'_>, gen: i32) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("select min(coalesce(last_good_seq, 0)) from pgfeed.generations where gen > $1")
        .bind(gen)
        .fetch_one(db)
        .await
}

/// Whether generation `gen` was ever recorded in this log.
pub async fn known(db: impl PgExecutor<'_>, gen: i32) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select from pgfeed.generations where gen = $1)")
        .bind(gen)
        .fetch_one(db)
        .await
}

/// How far a server is behind the log: the commits after the one it relayed last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// The newest committed seq minus the relayed one (0 when caught up; seqs that never
    /// committed count too).
    pub seqs: i64,
    /// How long ago the first commit after the relayed one committed, in ms (0 when caught up).
    pub ms: i64,
}

/// The lag of a server that relayed up to seq `relayed`, as `db` sees the log now: two lookups
/// on the commits' primary key, cheap enough for every `/healthz` and scrape. On a follower it
/// includes the wait for the leader's watermark.
pub async fn lag(db: impl PgExecutor<'_>, relayed: i64) -> Result<Lag, sqlx::Error> {
    let row = sqlx::query(
        r#"select coalesce((select seq from pgfeed.commits where txid <> '0' order by seq desc limit 1), 0) as newest,
                  (select (extract(epoch from clock_timestamp() - committed_at) * 1000)::bigint
                   from pgfeed.commits where seq > $1 and txid <> '0' order by seq limit 1) as age_ms"#,
    )
    .bind(relayed)
    .fetch_one(db)
    .await?;
    let newest: i64 = row.try_get("newest")?;
    let age: Option<i64> = row.try_get("age_ms")?;
    Ok(Lag {
        seqs: (newest - relayed).max(0),
        ms: age.unwrap_or(0).max(0),
    })
}
