//! The change log (`pgfeed.*`, sql/capture.sql): every statement pgfeed runs on it, one async fn
//! per statement. The listener's relay and settling, every client's resume, snapshots' barrier,
//! retention and `/metrics` read or write the log only through these.
//!
//! Readers ask for events after a [`Position`], ordered by (commit seq, pos). Each transaction
//! draws its seq at its commit (sql/capture.sql), and transactions committing at the same moment
//! may become visible out of seq order; so every read stops before the first seq that has no
//! commit row in its snapshot ([`contiguous`](#bounds)). Up to the listener's position every seq
//! is final (it settled them: [`settle`]), and beyond it a seq with a row is final, so a reader
//! that has seen seq N never later finds a commit with a smaller seq: "after my cursor" never
//! skips anything.
//!
//! # Bounds
//! Every read takes `known`, a seq up to which every seq is known to be final (the hub's last
//! position, or the listener's settled one), and reads no further than the unbroken run of
//! commit rows from the greater of it and the reader's cursor (`pgfeed.contiguous`).

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgExecutor, PgPool, Row};
use tokio::time::Instant;

use crate::event::{Epoch, LogRow, Position};

/// Events per read. Bounds the memory of one read, whatever the backlog.
pub const PAGE: i64 = 1000;

/// The answer to "events after P": a page, or the news that retention already deleted some of them.
#[derive(Debug)]
pub enum Page {
    Rows(Vec<LogRow>),
    Expired,
}

/// Where a client's cursor stands against what the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Every event after it is still in the log.
    Kept,
    /// Retention deleted events after it: the client needs a snapshot.
    Expired,
    /// Beyond anything this log ever committed (a restored backup, another database): snapshot.
    Unknown,
}

/// The log's epoch: stamped into every cursor, so that a cursor from another log is recognised.
pub async fn epoch(db: impl PgExecutor<'_>) -> Result<Epoch, sqlx::Error> {
    let epoch: String = sqlx::query_scalar("select epoch from pgfeed.meta")
        .fetch_one(db)
        .await?;
    Ok(Epoch::new(&epoch))
}

/// How long one try to wait for the commits in flight lasts ([`hold_commits`]). Writers that
/// stamp meanwhile queue behind it, so it is short: a commit in flight that outlasts it is a
/// transaction that stamped early (`set constraints all immediate`) and stays open, and the
/// caller lets writers go on before it tries again.
pub const HOLD_TRY: Duration = Duration::from_millis(100);

/// How long [`while_commits_held`] keeps trying before it gives up.
pub const HOLD_PATIENCE: Duration = Duration::from_secs(10);

/// Just after the newest commit the log holds (or has pruned), read while commits are held back
/// ([`while_commits_held`]), so every seq up to it is final: where a listener starts, knowing
/// nothing yet. Waits for the commits in flight; [`final_head`] never waits.
pub async fn held_head(db: &mut PgConnection) -> Result<Position, sqlx::Error> {
    let seq = while_commits_held(db, async |held: &mut PgConnection| newest_seq(held).await).await?;
    Ok(Position::end_of(seq))
}

/// The newest commit seq the log holds or has pruned (0 for none), as `db` sees it now: a seq,
/// not a position, and final only while no commit is in flight ([`while_commits_held`]).
pub async fn newest_seq(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        r#"select greatest((select max(seq) from pgfeed.commits), (select pruned_upto from pgfeed.meta), 0)"#,
    )
    .fetch_one(db)
    .await
}

/// Runs `during` while no commit that has drawn its seq is in flight and none can start: `db`
/// holds them back ([`hold_commits`]) and hands itself to `during`, in that transaction. A try that
/// outlasts [`HOLD_TRY`] (a transaction that stamped early and stays open) lets writers go on
/// for as long before the next; after [`HOLD_PATIENCE`] the lock timeout is returned.
pub async fn while_commits_held<T>(
    db: &mut PgConnection,
    during: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    let give_up = Instant::now() + HOLD_PATIENCE;
    loop {
        let mut tx = db.begin().await?;
        match hold_commits(&mut tx).await {
            Ok(()) => {
                let out = during(&mut tx).await?;
                tx.rollback().await?;
                return Ok(out);
            }
            Err(e) if is_lock_timeout(&e) && Instant::now() < give_up => {
                tx.rollback().await?;
                tokio::time::sleep(HOLD_TRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits, in transaction `tx`, up to [`HOLD_TRY`] until no commit that has drawn its seq is in
/// flight, and holds new ones back until `tx` ends: `lock table pgfeed.commits in share mode`
/// against the `row exclusive` lock of each stamp's insert, taken before it draws its seq and held
/// to its commit. Fails with `lock_not_available` ([`is_lock_timeout`]) when that takes longer.
pub async fn hold_commits(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("set local lock_timeout = {}", HOLD_TRY.as_millis()))
        .execute(&mut *tx)
        .await?;
    sqlx::query("lock table pgfeed.commits in share mode")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Whether `e` is a lock wait past `lock_timeout` (SQLSTATE 55P03).
pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// Just after the newest commit that is final, reading on from `known`, a seq up to which all
/// are (see [Bounds](#bounds)): where a new subscriber starts. Never waits; it may stop before a
/// commit in flight that [`held_head`] would wait for.
pub async fn final_head<'e>(db: impl PgExecutor<'e>, known: i64) -> Result<Position, sqlx::Error> {
    let seq: i64 = sqlx::query_scalar(
        r#"select greatest(pgfeed.contiguous(greatest($1, m.pruned_upto)), m.pruned_upto, 0) from pgfeed.meta m"#,
    )
    .bind(known)
    .fetch_one(db)
    .await?;
    Ok(Position::end_of(seq))
}

/// The listener's step when a read found a seq missing below the newest commit: from `after`
/// (up to which every seq is final), the highest seq up to which every seq is final now. Waits a
/// little for commits in flight, and marks seqs that will never commit (`pgfeed.settle`).
pub async fn settle(db: impl PgExecutor<'_>, after: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select pgfeed.settle($1, $2)")
        .bind(after)
        .bind(SETTLE_WAIT_MS)
        .fetch_one(db)
        .await
}

/// How long [`settle`] waits for one commit in flight (they take about a WAL flush): past it, the
/// listener relays what comes before it and looks again at its next read.
const SETTLE_WAIT_MS: i32 = 50;

fn expired(after: Position, pruned_upto: i64) -> bool {
    pruned_upto > 0 && after < Position::end_of(pruned_upto)
}

/// Where `after` stands against what the log holds now ([`Standing`]).
pub async fn standing(db: impl PgExecutor<'_>, after: Position) -> Result<Standing, sqlx::Error> {
    let row = sqlx::query(
        r#"select (select pruned_upto from pgfeed.meta) as pruned,
                  coalesce((select max(seq) from pgfeed.commits), 0) as newest"#,
    )
    .fetch_one(db)
    .await?;
    let (pruned, newest): (i64, i64) = (row.get("pruned"), row.get("newest"));
    Ok(if expired(after, pruned) {
        Standing::Expired
    } else if after.seq > newest.max(pruned) {
        Standing::Unknown
    } else {
        Standing::Kept
    })
}

/// Commits one filtered read (a client's resume) walks at most unless told otherwise. A resume
/// of a quiet topic from an old cursor would otherwise walk every commit since in one statement;
/// bounded, each read costs at most this many index probes, and the caller goes on from
/// [`Read::scanned`] with the next read.
pub const RESUME_SCAN: i64 = 10_000;

/// The listener's read: up to `limit` events after `after` (every seq up to `after.seq` being
/// final); see [`Read`].
pub async fn read_all(db: impl PgExecutor<'_>, after: Position, limit: i64) -> Result<Read, sqlx::Error> {
    read(db, after, None, limit, after.seq, None).await
}

/// A follower's read: up to `limit` events after `after`, up to `upto` and no further (the
/// watermark: every seq up to it is final), whatever the log holds beyond. `upto` must not be
/// before `after.seq`. Unless the page is full, it holds every event up to `upto`.
pub async fn read_upto(db: impl PgExecutor<'_>, after: Position, limit: i64, upto: i64) -> Result<Read, sqlx::Error> {
    read(db, after, None, limit, upto, Some(upto - after.seq)).await
}

/// Up to `limit` events after `after` published on any of `topics`, in commit order, each event
/// once (one row per event, whatever the number of its topics that match); and the read's bound,
/// the newest final commit seq of the same snapshot. When fewer than `limit` rows come back, the
/// reader has seen every matching event up to that seq, so it may resume after it (long-poll's
/// next cursor). Walks at most `scan` commits: see [`Read::scanned`].
pub async fn read_after_any(
    db: impl PgExecutor<'_>,
    after: Position,
    topics: &[String],
    limit: i64,
    known: i64,
    scan: i64,
) -> Result<Read, sqlx::Error> {
    read(db, after, Some(topics), limit, known, Some(scan)).await
}

/// A log row from the columns of a read, from `at` on: kind, tbl, op, row_id, topics, data,
/// committed_at, old, moved_from, before (by index: by name, each would be a lookup, and a profile
/// of a resume shows them).
fn log_row(row: &sqlx::postgres::PgRow, seq: i64, pos: i32, at: usize) -> Result<LogRow, sqlx::Error> {
    Ok(LogRow {
        seq,
        pos,
        kind: row.try_get(at)?,
        tbl: row.try_get(at + 1)?,
        op: row.try_get(at + 2)?,
        row_id: row.try_get(at + 3)?,
        topics: row.try_get(at + 4)?,
        data: row.try_get(at + 5)?,
        committed_at: row.try_get(at + 6)?,
        old: row.try_get(at + 7)?,
        moved_from: row.try_get(at + 8)?,
        before: row.try_get(at + 9)?,
    })
}

/// The listener's read when a wake-up announces commit `seq` and the hub stands just after
/// `seq - 1` (every event up to it relayed, every seq up to it final): that commit's events,
/// looked up by its seq. No bound is computed and nothing settled, because nothing needs it: a
/// commit row that is visible is final, so every seq up to `seq` is; and a prune deletes a commit
/// row with its events in one statement, so a visible row comes with all of them. `None` when the
/// row is not visible (in flight, never to commit, or pruned) or the commit holds `limit` events
/// or more: the caller then reads as usual ([`read_all`]), which waits, settles, pages or
/// reports the gap. A seq marked as never to commit (txid 0) is `Some` of no events.
///
/// It answers the listener's usual wake-up (one commit, announced as the next one) with an index
/// lookup on `commits` and one on `events`, where [`read_all`] also reads `meta`, the newest seq,
/// and counts the commit rows up to it (README "Performance", the `latency` row).
pub async fn read_commit(db: impl PgExecutor<'_>, seq: i64, limit: i64) -> Result<Option<Vec<LogRow>>, sqlx::Error> {
    let rows = sqlx::query(
        r#"select e.pos, e.type, e.tbl, e.op, e.row_id::text as row_id, e.topics, e.data::text as data,
                  c.committed_at, e.old::text as old, e.moved_from, e.before::text as before
           from pgfeed.commits c
           left join lateral (
               select * from pgfeed.events e where e.txid = c.txid order by e.pos limit $2
           ) e on true
           where c.seq = $1"#,
    )
    .bind(seq)
    .bind(limit)
    .fetch_all(db)
    .await?;
    if rows.is_empty() || rows.len() as i64 >= limit {
        return Ok(None);
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        // The one row of a commit without events carries only `committed_at`.
        let Some(pos) = row.try_get::<Option<i32>, _>(0)? else {
            continue;
        };
        events.push(log_row(row, seq, pos, 1)?);
    }
    if !events.is_sorted_by_key(|r| r.pos) {
        events.sort_by_key(|r| r.pos);
    }
    Ok(Some(events))
}

/// What one read saw.
#[derive(Debug)]
pub struct Read {
    pub page: Page,
    /// The bound: every seq up to it is final, and the page holds every matching event up to it
    /// unless it is full.
    pub upto: i64,
    /// The newest commit seq visible to the read; above `upto`, a seq is missing below it.
    pub newest: i64,
    /// How far the read walked: `upto`, or less when its `scan` ran out first (`after.seq + scan`).
    /// Unless the page is full, it holds every matching event up to here; below `upto` the caller
    /// reads on from here, so a resume advances by ranges of commits whatever it matches.
    pub scanned: i64,
}

/// The one log read: up to `limit` events after `after` (on any of `topics`, when given), up to
/// the bound (see [Bounds](#bounds)), and that bound. The retention check, the bound and the read
/// are one statement, hence one snapshot, so a concurrent prune can never turn into a silent gap
/// (the answer is then `Expired`), and every commit up to the bound is in what the read sees.
///
/// The read walks commits in seq order and looks up each one's events by (txid, pos), so a page
/// costs its own size whatever the log holds. A plain join let the planner pick a hash join over
/// the whole events table (300 ms a page at 190,000 events, measured with `pgfeed-bench catchup`),
/// both when its statistics lagged a fast-growing log and in the generic plan a prepared statement
/// gets after five runs; a `limit` keeps the per-commit lookup from being flattened into such a
/// join. One statement is also one round trip, where a repeatable-read transaction took five.
async fn read<'e>(
    db: impl PgExecutor<'e>,
    after: Position,
    topics: Option<&[String]>,
    limit: i64,
    known: i64,
    scan: Option<i64>,
) -> Result<Read, sqlx::Error> {
    let rows = sqlx::query(
        r#"select m.pruned_upto,
                  greatest(b.upto, m.pruned_upto, 0) as upto,
                  greatest(b.newest, m.pruned_upto, 0) as newest,
                  r.*,
                  -- `least` skips a null: no `scan`, no bound but `upto`.
                  least(greatest(b.upto, m.pruned_upto, 0), $1 + $6::bigint) as scanned
           -- `limit 1`: the planner then knows the bound is one row. Guessing `meta`'s row count
           -- instead, it wrapped the per-row part below in a cache that copied every row read.
           from (select pruned_upto from pgfeed.meta limit 1) m
           cross join lateral (
               -- `offset 0`: computed once, not pulled up into a filter run for every commit row.
               -- The usual case, every seq up to the newest has its row, is answered here; only
               -- otherwise `pgfeed.contiguous` (plpgsql, a call per read) looks for the gap.
               select case
                          when n.newest <= n.from_seq then n.from_seq
                          when n.newest - n.from_seq <= 65536
                               and (select count(*) from pgfeed.commits
                                    where seq > n.from_seq and seq <= n.newest) = n.newest - n.from_seq
                              then n.newest
                          else pgfeed.contiguous(n.from_seq)
                      end as upto,
                      n.newest
               from (
                   select greatest($1, $5, m.pruned_upto) as from_seq,
                          coalesce((select max(seq) from pgfeed.commits), 0) as newest
                   offset 0
               ) n
               offset 0
           ) b
           left join lateral (
               select c.seq, e.pos, e.type, e.tbl, e.op, e.row_id::text as row_id, e.topics,
                      e.data::text as data, c.committed_at, e.old::text as old, e.moved_from,
                      e.before::text as before
               from pgfeed.commits c
               -- Each commit's events from the (txid, pos) index, from where the read left off in
               -- it, and at most a page of them: the outer sort then takes a page per commit, never
               -- a whole commit. (With `c.seq > $1 or e.pos > $2` as a filter and no limit here, each
               -- page of a 100,000-row commit read and sorted all of its rest: 60 ms a page,
               -- 2,000 events/s, measured with `pgfeed-bench views`.)
               cross join lateral (
                   select * from pgfeed.events e
                   where e.txid = c.txid and e.pos > case when c.seq > $1 then 0 else $2 end
                     and ($3::text[] is null or e.topics && $3)
                   order by e.pos
                   limit $4
               ) e
               where c.seq >= $1 and c.seq <= least(b.upto, $1 + $6::bigint)
               order by c.seq, e.pos
               limit $4
           ) r on true"#,
    )
    .bind(after.seq)
    .bind(after.pos)
    .bind(topics)
    .bind(limit)
    .bind(known)
    .bind(scan)
    .fetch_all(db)
    .await?;
    let (pruned, upto, newest, scanned): (i64, i64, i64, i64) = match rows.first() {
        Some(row) => (
            row.try_get("pruned_upto")?,
            row.try_get("upto")?,
            row.try_get("newest")?,
            row.try_get("scanned")?,
        ),
        None => (0, 0, 0, 0),
    };
    if expired(after, pruned) {
        return Ok(Read {
            page: Page::Expired,
            upto,
            newest,
            scanned,
        });
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        // The one row of an empty page carries only `pruned_upto`, `upto` and `newest`.
        let Some(seq) = row.try_get::<Option<i64>, _>(3)? else {
            continue;
        };
        events.push(log_row(row, seq, row.try_get(4)?, 5)?);
    }
    // The page comes in (seq, pos) order from the statement's inner `order by` through a join
    // with one row (no outer sort: it copied the page once more); checked, not assumed.
    if !events.is_sorted_by_key(|r| (r.seq, r.pos)) {
        events.sort_by_key(|r| (r.seq, r.pos));
    }
    Ok(Read {
        page: Page::Rows(events),
        upto,
        newest,
        scanned,
    })
}

/// Commits one [`prune_batch`] deletes at most: each batch is a short transaction, so retention
/// never holds locks long against the writers.
const PRUNE_BATCH: i32 = 1000;

/// Deletes what is older than `keep`, in batches of [`PRUNE_BATCH`]; returns the number of
/// commits removed.
pub async fn prune(pool: &PgPool, keep: Duration) -> Result<i64, sqlx::Error> {
    let mut total = 0i64;
    loop {
        let n = prune_batch(pool, keep, PRUNE_BATCH).await?;
        total += i64::from(n);
        if n == 0 {
            return Ok(total);
        }
    }
}

/// Deletes up to `batch` commits older than `keep`, with their events (`pgfeed.prune`); returns
/// how many it deleted.
pub async fn prune_batch(db: impl PgExecutor<'_>, keep: Duration, batch: i32) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("select pgfeed.prune(make_interval(secs => $1), $2)")
        .bind(keep.as_secs_f64())
        .bind(batch)
        .fetch_one(db)
        .await
}

/// The log's size and age, for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Events the log holds: the planner's estimate, cheap at any size.
    pub events: i64,
    /// Seconds since the oldest commit the log holds; `None` when it holds none.
    pub oldest_age: Option<f64>,
}

/// The log's [`Size`]: an estimate from the catalog and an index lookup, cheap enough for every scrape.
pub async fn size(db: impl PgExecutor<'_>) -> Result<Size, sqlx::Error> {
    let (events, oldest_age) = sqlx::query_as::<_, (i64, Option<f64>)>(
        r#"select (select greatest(reltuples, 0)::bigint from pg_class where oid = 'pgfeed.events'::regclass),
                  (select extract(epoch from clock_timestamp() - min(committed_at))::float8 from pgfeed.commits)"#,
    )
    .fetch_one(db)
    .await?;
    Ok(Size { events, oldest_age })
}
