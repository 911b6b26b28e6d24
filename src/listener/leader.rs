//! One leader per database (README "Running many servers and failing over").
//!
//! Every server's listener tries session advisory lock [`LEADER_LOCK`] on its LISTEN session; the
//! one that holds it leads, the others follow (`listener::follow`) and try again every
//! [`TAKEOVER_TRY`], so leadership moves within about that long after the leader's session dies.
//! Only the leader joins the idle set (writers NOTIFY only while it waits), settles, and writes
//! the watermark: on the session that holds the lock, so a leader that lost its session (and with
//! it the lock) can no longer write one, and two leaders never write at once.
//!
//! # Generations
//! On taking the lock, and at every safety tick, the leader compares the database's timeline and
//! system identifier with the newest generation. The timeline comes from the WAL file name of the
//! current LSN (as Patroni does: the control file's lags after a fast promotion). When either
//! differs, a standby was promoted (or the log moved to another cluster): the commits the old
//! primary handed out past what the standby received are gone, and the sequence hands their seqs
//! out again to other commits. The new generation's `last_good_seq` is the watermark row this
//! database holds: written after the commits it covers, so it holds them too. A too low bound
//! costs some clients a needless refresh; it is never too high. The seqs the old primary handed out
//! past it that this database never saw are holes the leader settles as never committed, as any
//! other (`pgfeed.settle`).
//!
//! Writers that commit on the new primary before its leader looks take seqs past the promoted
//! sequence value; no server delivers them before the leader has recorded the new generation (it
//! looks before it relays anything on a new connection), so they are delivered under it.
//!
//! # Deliver first, watermark after (`--durable-watermark local`)
//! Followers deliver only up to a written watermark. The leader, in local mode, delivers a page as
//! soon as every seq up to it is final, and writes the watermark afterwards, at most every
//! [`FOLLOWED_EVERY`] while pages keep coming ([`ALONE_EVERY`] when no other server follows):
//! one flushed commit per interval instead of one per page, which at low load was one per
//! writer's commit. Why no client is ever told "exact" wrongly:
//!
//! 1. What the leader delivers is durable on the primary: a tracked writer commits with
//!    `synchronous_commit` on (the stamp sets it, sql/capture.sql), so its commit is flushed
//!    before the leader's read can see it; a seq the leader settles as never committed lies below
//!    such a commit, and so does the sequence's WAL record that covers it. A crash and restart of
//!    the same primary loses nothing delivered and hands no delivered seq out again. (The
//!    watermark's own flushed commit, which used to come before each page, adds nothing here.)
//! 2. The watermark row is written after the commits it covers are final, so its WAL record comes
//!    after theirs: a standby that holds a watermark row holds every commit and settle mark up to
//!    it. That does not depend on when the leader delivered them.
//! 3. After a failover, the new generation's `last_good_seq` is the watermark row the promoted
//!    standby holds (2: every seq up to it is the same event in both logs, and the new primary's
//!    sequence, replayed past every seq it holds, hands out only seqs past it). A cursor at or
//!    before it resumes exactly; a cursor past it gets `log_diverged`. The leader's deliveries
//!    past the last written watermark are cursors past any `last_good_seq` the standby can hold,
//!    so they are judged diverged (a refresh, possibly needless: their commit may have reached the
//!    standby), never "exact". Delivering first only widens the set of clients that refresh after
//!    a lossy failover, by at most [`FOLLOWED_EVERY`] of commits; a clean switchover (the standby
//!    caught up, so holding the newest row) refreshes nobody, as before.
//! 4. With `--durable-watermark standby` the leader still writes the watermark, and waits for the
//!    standby, before it delivers: that mode promises that nothing it delivered is lost, and
//!    `last_good_seq` covers everything any server delivered.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::Client;

use crate::config::DurableWatermark;
use crate::metrics::Metrics;

use super::ListenerStatus;

/// The advisory lock the leader holds on its LISTEN session, for as long as it leads.
pub const LEADER_LOCK: i64 = 7133004;
/// The channel the leader notifies after each watermark it writes; followers LISTEN on it.
pub const WATERMARK_CHANNEL: &str = "pgfeed_watermark";
/// How often a follower tries to take the lead (and reads the watermark, should a wake-up be lost).
pub const TAKEOVER_TRY: Duration = Duration::from_secs(1);
/// How often the leader asks whether the standby has flushed (`--durable-watermark standby`).
const STANDBY_POLL: Duration = Duration::from_millis(5);
/// A wait for the standby longer than this shows in `/healthz` and the log.
const WAIT_IS_NEWS: Duration = Duration::from_secs(1);
/// With `--durable-watermark local`, the leader delivers first and writes the watermark after
/// (see "Deliver first" above), at most this often while pages keep coming when other servers
/// follow: a follower's events wait up to this long more than the leader's. Each write is a
/// commit of its own with its own WAL flush, which at low load came after every writer's commit.
const FOLLOWED_EVERY: Duration = Duration::from_millis(20);
/// The same when no other server follows: nobody reads the watermark then but a new
/// generation's `last_good_seq` after a failover, for which an older one is as true (only more
/// cursors are judged diverged), and a follower that starts meanwhile.
const ALONE_EVERY: Duration = Duration::from_secs(1);
/// How often the leader looks whether other servers follow it.
const FOLLOWERS_EVERY: Duration = Duration::from_secs(1);

/// Takes the lead when nobody holds it; true when this session now leads.
pub async fn try_lead(client: &Client) -> anyhow::Result<bool> {
    let row = client
        .query_one(&format!("select pg_try_advisory_lock({LEADER_LOCK})"), &[])
        .await
        .context("trying the leader lock")?;
    Ok(row.get(0))
}

/// The generation the leader serves, and what a server in an older one must know to move to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub gen: i32,
    /// The smallest `last_good_seq` of the generations after the one asked about.
    pub good_after: Option<i64>,
}

/// Records a new generation when the database's timeline or system identifier differs from the
/// newest one's (or none exists), and returns the current one, judged from `serving`, the
/// generation the caller serves now. Runs on the leader's session only.
pub async fn generation(client: &Client, serving: i32) -> anyhow::Result<Generation> {
    let here = client
        .query_one(
            r#"select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int,
                      (select system_identifier from pg_control_system())"#,
            &[],
        )
        .await
        .context("reading the timeline")?;
    let (timeline, system_id): (i32, i64) = (here.get(0), here.get(1));
    let newest = client
        .query_opt(
            "select gen, timeline, system_id from pgfeed.generations order by gen desc limit 1",
            &[],
        )
        .await
        .context("reading the generations")?;
    match newest {
        Some(row) if row.get::<_, i32>(1) == timeline && row.get::<_, i64>(2) == system_id => {}
        newest => {
            let gen = newest.map_or(1, |r| r.get::<_, i32>(0) + 1);
            // One transaction: the generation and the watermark's move to it.
            client.batch_execute("begin").await?;
            let written = async {
                client
                    .execute(
                        r#"insert into pgfeed.generations (gen, timeline, system_id, last_good_seq)
                           select $1, $2, $3, case when $1 = 1 then null else greatest(seq, pending) end
                           from pgfeed.watermark"#,
                        &[&gen, &timeline, &system_id],
                    )
                    .await?;
                client
                    .execute(
                        "update pgfeed.watermark set gen = $1, timeline = $2, seq = greatest(seq, pending)",
                        &[&gen, &timeline],
                    )
                    .await?;
                client.batch_execute("commit").await
            }
            .await;
            if let Err(e) = written {
                let _ = client.batch_execute("rollback").await;
                return Err(e).context("recording a new generation");
            }
            if gen == 1 {
                tracing::info!(gen, timeline, system_id, "the log's first generation starts");
            } else {
                tracing::warn!(
                    gen,
                    timeline,
                    system_id,
                    "the database changed under the log: a new generation starts"
                );
            }
        }
    }
    let row = client
        .query_one(
            r#"select (select max(gen) from pgfeed.generations),
                      (select min(coalesce(last_good_seq, 0)) from pgfeed.generations where gen > $1)"#,
            &[&serving],
        )
        .await
        .context("reading the generations")?;
    Ok(Generation {
        gen: row.get(0),
        good_after: row.get(1),
    })
}

/// Writes the watermark for the leader, and waits for the standby when it must.
#[derive(Debug)]
pub struct Publisher {
    pub durable: DurableWatermark,
    /// `--durable-standby`: the standby to wait for (every connected one when `None`).
    pub standby: Option<String>,
    /// The newest seq the watermark row covers, as this leader wrote it.
    pub published: i64,
    /// The newest seq the leader may deliver (every seq up to it final): with
    /// `--durable-watermark local` it delivers up to here at once and writes the watermark after.
    pub owed: i64,
    /// Whether other servers' listeners were connected when last looked, and when that was.
    pub followers: Option<(bool, tokio::time::Instant)>,
    /// When the watermark was last written.
    pub written: Option<tokio::time::Instant>,
}

impl Publisher {
    pub fn new(durable: DurableWatermark, standby: Option<String>) -> Publisher {
        Publisher {
            durable,
            standby,
            published: 0,
            owed: 0,
            followers: None,
            written: None,
        }
    }

    /// Forgets what was published: the leader's feed moved to a new generation and may relay
    /// from an earlier position again.
    pub fn restart(&mut self) {
        self.published = 0;
        self.owed = 0;
    }

    /// Whether another server's listener is connected to this database (looked up at most every
    /// [`FOLLOWERS_EVERY`]).
    async fn followed(&mut self, client: &Client) -> anyhow::Result<bool> {
        if let Some((followed, at)) = self.followers {
            if at.elapsed() < FOLLOWERS_EVERY {
                return Ok(followed);
            }
        }
        let followed: bool = client
            .query_one(
                r#"select exists (select from pg_stat_activity
                                  where application_name = $1 and datname = current_database()
                                    and pid <> pg_backend_pid())"#,
                &[&super::APPLICATION_NAME],
            )
            .await
            .context("looking for followers")?
            .get(0);
        self.followers = Some((followed, tokio::time::Instant::now()));
        Ok(followed)
    }

    /// How long after the last write the next one may come (local mode), as last looked.
    fn every(&self) -> Duration {
        match self.followers {
            Some((false, _)) => ALONE_EVERY,
            _ => FOLLOWED_EVERY,
        }
    }

    /// When a watermark the leader owes its followers is due ([`Publisher::catch_up`]), if one is.
    pub fn due(&self) -> Option<tokio::time::Instant> {
        if self.owed <= self.published {
            return None;
        }
        Some(
            self.written
                .map_or_else(tokio::time::Instant::now, |at| at + self.every()),
        )
    }
}

impl Publisher {
    /// Lets the leader deliver commits up to `upto` (all final, all read by the leader), before it
    /// delivers them. With `--durable-watermark local` that is all: the watermark comes after
    /// ([`Publisher::catch_up`]). With `--durable-watermark standby`, it writes the watermark on
    /// the leader's session and wakes the followers, but only once the standby has flushed the WAL
    /// that holds the row's `pending` (and so every commit up to it); until then this waits, and
    /// `/healthz` says so.
    pub async fn publish(
        &mut self,
        client: &Client,
        upto: i64,
        status: &ListenerStatus,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        self.owed = self.owed.max(upto);
        if upto <= self.published || self.durable == DurableWatermark::Local {
            return Ok(());
        }
        let row = client
            .query_one(
                r#"update pgfeed.watermark set pending = greatest(pending, $1), written_at = clock_timestamp()
                   returning pending"#,
                &[&upto],
            )
            .await
            .context("writing the pending watermark")?;
        let _: i64 = row.get(0);
        // Read after that commit: the WAL up to here holds the row.
        let lsn: String = client
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await
            .context("reading the WAL position")?
            .get(0);
        self.wait_for_standby(client, &lsn, status, metrics).await?;
        self.write(client, upto, metrics).await
    }

    /// After delivering: writes the watermark the leader owes its followers when it is due (local
    /// mode; in standby mode it was written before the pages): [`FOLLOWED_EVERY`] after the last
    /// write, or [`ALONE_EVERY`] when no other server's listener is connected.
    pub async fn catch_up(&mut self, client: &Client, metrics: &Metrics) -> anyhow::Result<()> {
        if self.owed <= self.published {
            return Ok(());
        }
        let since = self.written.map(|at| at.elapsed());
        if since.is_some_and(|s| s < FOLLOWED_EVERY) {
            return Ok(());
        }
        if since.is_some_and(|s| s < ALONE_EVERY) && !self.followed(client).await? {
            return Ok(());
        }
        self.write(client, self.owed, metrics).await
    }

    /// Writes the watermark at once, whatever the mode: when the leader takes the lead, so that
    /// the followers' watermark covers what it relayed as one of them.
    pub async fn write_now(
        &mut self,
        client: &Client,
        upto: i64,
        status: &ListenerStatus,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        self.publish(client, upto, status, metrics).await?;
        if self.owed > self.published {
            self.write(client, self.owed, metrics).await?;
        }
        Ok(())
    }

    /// Writes the watermark row (`seq` and `pending` up to `upto`) on the leader's session and
    /// wakes the followers.
    async fn write(&mut self, client: &Client, upto: i64, metrics: &Metrics) -> anyhow::Result<()> {
        client
            .query_one(
                r#"with w as (
                       update pgfeed.watermark
                       set seq = greatest(seq, $1), pending = greatest(pending, $1),
                           lsn = pg_current_wal_lsn(), written_at = clock_timestamp()
                       returning seq
                   )
                   select pg_notify($2, (select seq from w)::text)"#,
                &[&upto, &WATERMARK_CHANNEL],
            )
            .await
            .context("writing the watermark")?;
        self.published = self.published.max(upto);
        self.written = Some(tokio::time::Instant::now());
        metrics.watermark_seq.set(upto);
        Ok(())
    }

    /// Waits until the standby has flushed the WAL up to `lsn`.
    async fn wait_for_standby(
        &self,
        client: &Client,
        lsn: &str,
        status: &ListenerStatus,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        let mut waited = false;
        loop {
            let row = client
                .query_one(
                    r#"select count(*) filter (where flush_lsn >= $1::text::pg_lsn), count(*)
                       from pg_stat_replication
                       where $2::text is null or application_name = $2"#,
                    &[&lsn, &self.standby],
                )
                .await
                .context("asking whether the standby flushed")?;
            let (flushed, connected): (i64, i64) = (row.get(0), row.get(1));
            if connected > 0 && flushed == connected {
                break;
            }
            // A standby flushes within a few ms; only a longer wait is news.
            if !waited && started.elapsed() >= WAIT_IS_NEWS {
                waited = true;
                status.set_waiting(true);
                metrics.watermark_waiting.set(1);
                tracing::warn!(standby = ?self.standby, connected, "events wait for the durable standby to flush");
            }
            tokio::time::sleep(STANDBY_POLL).await;
        }
        if waited {
            status.set_waiting(false);
            metrics.watermark_waiting.set(0);
            tracing::info!("the durable standby caught up");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watermark_is_owed_only_past_what_was_written_and_due_after_the_interval() {
        let mut p = Publisher::new(DurableWatermark::Local, None);
        assert_eq!(p.due(), None, "nothing delivered, nothing owed");
        p.owed = 10;
        let now = tokio::time::Instant::now();
        assert!(
            p.due().is_some_and(|d| d <= tokio::time::Instant::now()),
            "never written: due at once"
        );
        p.written = Some(now);
        p.published = 5;
        assert_eq!(
            p.due(),
            Some(now + FOLLOWED_EVERY),
            "followers unknown yet: the short interval"
        );
        p.followers = Some((false, now));
        assert_eq!(p.due(), Some(now + ALONE_EVERY), "nobody follows: once a second");
        p.followers = Some((true, now));
        assert_eq!(p.due(), Some(now + FOLLOWED_EVERY));
        p.published = 10;
        assert_eq!(p.due(), None, "written up to what was delivered");
        p.restart();
        assert_eq!((p.published, p.owed, p.due()), (0, 0, None));
    }
}
