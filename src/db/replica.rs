//! `--replica-url` (README "Running many servers and failing over"): a hot standby this server
//! reads the log, resumes, snapshots and live views from, so that the primary's read load does
//! not grow with the number of servers. Only what the standby has replayed of the leader's
//! watermark is read there; the listener (`listener::replica`) says whether the standby is
//! [`Replica::usable`], and every read that finds it unusable, or behind what it needs, goes to
//! the primary instead. Results are the same either way: both hold the same log up to the
//! watermark.
//!
//! A snapshot on a standby cannot hold commits back, as one on the primary does
//! (`log::while_commits_held` needs a lock a standby does not grant), so [`begin_snapshot`]
//! checks instead that what it sees is exactly the log up to a position: every seq up to the
//! watermark it sees is visible (the leader wrote that row after those commits were final, and a
//! standby replays commits in WAL order), and none is missing between the watermark and the
//! newest commit it sees. When one is (a commit visible out of seq order), it tries again a few
//! times, then reads from the primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use super::watermark::{self, Watermark};
use crate::event::Position;
use crate::metrics::{Metrics, ReadFor, ReadLabel, ReadOn};

/// `application_name` of this server's connections to the standby (`pg_stat_activity` there).
pub const APPLICATION_NAME: &str = "pgfeed-replica";

/// Connections the pool to the standby may hold: resumes, snapshots and view reads.
const POOL_SIZE: u32 = 16;

/// A read on the standby gives up on a connection after this long and goes to the primary.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Tries of a snapshot on the standby that found a seq missing (a commit visible out of seq
/// order, a moment before the one before it) before it is taken on the primary.
const SNAPSHOT_TRIES: u32 = 3;

/// The standby, and whether reads may go to it now.
#[derive(Debug)]
pub struct Replica {
    pub pool: PgPool,
    /// Set by the listener (`listener::replica`): the standby answers and is not behind.
    usable: AtomicBool,
    /// `pgfeed_replica_reads` and `pgfeed_replica_usable` (shared with the server's `/metrics`).
    reads: prometheus_client::metrics::family::Family<ReadLabel, prometheus_client::metrics::counter::Counter>,
    usable_gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Replica {
    /// A lazy pool to the standby at `url`: the server starts whether or not the standby is up
    /// (reads go to the primary until the listener finds it usable).
    pub fn connect(url: &str, metrics: &Metrics) -> anyhow::Result<Replica> {
        let options: PgConnectOptions = url.parse().context("parsing --replica-url")?;
        let options = options
            .options([("jit", "off"), ("plan_cache_mode", "force_generic_plan")])
            .application_name(APPLICATION_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        // Both series from the start, at 0, so that a scrape shows where reads go before any has.
        for on in [ReadOn::Standby, ReadOn::Primary] {
            for what in [ReadFor::Log, ReadFor::Resume, ReadFor::Snapshot, ReadFor::View] {
                metrics.replica_reads.get_or_create(&ReadLabel { on, what }).inc_by(0);
            }
        }
        Ok(Replica {
            pool,
            usable: AtomicBool::new(false),
            reads: metrics.replica_reads.clone(),
            usable_gauge: metrics.replica_usable.clone(),
        })
    }

    /// Whether reads may go to the standby: it answers, and its watermark is not behind the
    /// primary's for longer than the listener's bound.
    pub fn is_usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    pub fn set_usable(&self, usable: bool) {
        self.usable.store(usable, Ordering::Relaxed);
        self.usable_gauge.set(i64::from(usable));
    }

    /// Counts a read (a log page, a resume's read, a snapshot, a view read) where it went.
    pub fn count(&self, on: ReadOn, what: ReadFor) {
        self.reads.get_or_create(&ReadLabel { on, what }).inc();
    }
}

/// The watermark as the standby has replayed it (`None` when it is not usable now).
pub async fn watermark(replica: &Replica) -> Option<Watermark> {
    if !replica.is_usable() {
        return None;
    }
    match watermark::read(&replica.pool).await {
        Ok(wm) => Some(wm),
        Err(e) => {
            tracing::debug!(error = %e, "reading the standby's watermark failed; reading from the primary");
            None
        }
    }
}

/// A read-only REPEATABLE READ transaction on the standby that sees exactly the log up to the
/// position returned, which is at least `at_least` (the seq this server has relayed), in
/// generation `gen`; `None` when the standby cannot give one now (unusable, behind `at_least` or
/// in another generation, or a seq missing at every try): the caller reads from the primary.
pub async fn begin_snapshot(
    replica: &Replica,
    at_least: i64,
    gen: i32,
) -> Result<Option<(sqlx::Transaction<'static, sqlx::Postgres>, Position)>, sqlx::Error> {
    if !replica.is_usable() {
        return Ok(None);
    }
    for _ in 0..SNAPSHOT_TRIES {
        let mut tx = replica.pool.begin().await?;
        sqlx::Executor::execute(&mut *tx, super::snapshot::READ_SETTINGS).await?;
        // The snapshot is taken at this first statement: the watermark, the newest commit and
        // the unbroken run of commit rows from the watermark, all as of the same moment.
        let row = sqlx::query(
            r#"select w.seq, w.gen,
                      greatest((select max(seq) from pgfeed.commits), m.pruned_upto, 0) as newest,
                      pgfeed.contiguous(greatest(w.seq, m.pruned_upto)) as run
               from pgfeed.watermark w, (select pruned_upto from pgfeed.meta limit 1) m"#,
        )
        .fetch_one(&mut *tx)
        .await?;
        let (wm, newest, run): (i64, i64, i64) = (row.try_get("seq")?, row.try_get("newest")?, row.try_get("run")?);
        if wm < at_least || row.try_get::<i32, _>("gen")? != gen {
            // Behind what this server relayed (it read from the primary meanwhile), or not in
            // the generation it serves (a failover under way).
            return Ok(None);
        }
        if run >= newest {
            return Ok(Some((tx, Position::end_of(newest))));
        }
        tx.rollback().await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(None)
}

/// A snapshot's other place besides the primary: the standby, the least seq the snapshot must
/// reflect (what this server relayed) and the generation it serves.
#[derive(Debug, Clone, Copy)]
pub struct Standby<'a> {
    pub replica: &'a Replica,
    pub at_least: i64,
    pub gen: i32,
    /// A snapshot's or a view's (for `/metrics`).
    pub what: ReadFor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_url_that_does_not_parse_is_refused_at_start_and_a_good_one_starts_unused() {
        let metrics = Metrics::new();
        let err = Replica::connect("not a url", &metrics).expect_err("garbage is refused");
        assert!(format!("{err:#}").contains("--replica-url"), "{err:#}");
        let replica = Replica::connect("postgres://u@127.0.0.1:1/db", &metrics).expect("a URL");
        // Nothing goes to the standby before the listener has looked at it.
        assert!(!replica.is_usable());
        assert!(watermark(&replica).await.is_none());
        assert!(metrics
            .render()
            .contains(r#"pgfeed_replica_reads_total{on="standby",what="snapshot"} 0"#));
    }
}
