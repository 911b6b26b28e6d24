//! The listener: relays every committed change from the log to the hub, in commit order.
//!
//! One dedicated tokio-postgres session per server runs `LISTEN pgfeed`. A notification is only a
//! wake-up: on every wake-up that announces a commit not yet relayed, on every (re)connect and on
//! a slow safety tick, the listener reads every event after the last position it relayed, page by
//! page (`log::read_all`), and publishes them. A notification missed while disconnected, or
//! folded by PostgreSQL, therefore costs latency and never data; rows of any size arrive whole
//! because NOTIFY carries none.
//!
//! Why a wake-up does not carry its commit's rows, though relaying them from the payload would
//! save the read (its round trip is a third of what pgfeed's p50 adds to a bare NOTIFY relay's;
//! the writer's commit, longer by capture's work, is half: README "Performance"):
//! - Any role that can connect may LISTEN on any channel and would hear every row. A secret
//!   channel could hide them, but only while its name stays out of everything that shows a
//!   LISTEN (`pg_stat_activity.query`, `pg_stat_statements`, logs) and out of the writers'
//!   reach (a function body is readable by all, a setting by the session that set it).
//! - A notification cannot be taken back. A transaction whose stamp ran early (`set constraints
//!   all immediate`, or a deferred trigger of its own writing a tracked table after the stamp)
//!   draws a new seq at its next change (`pgfeed.restamp`), and the first draw's notification,
//!   already queued, is still delivered at commit, before the second's. When the stamp runs it
//!   cannot know whether a change will follow, and when the listener gets the first notification
//!   it cannot know whether another from the same transaction is coming (it may arrive in a later
//!   pass of the LISTEN backend) without waiting for a later notification or asking the
//!   database: a round trip either way, which is what the payload was to save. Relaying it would
//!   deliver the transaction's events under a seq the log calls a hole, then again under the
//!   new one.
//!
//! Commits that happen at the same moment may become visible out of seq order, so the listener
//! relays no seq before every smaller one is final: when a read finds a seq missing below the
//! newest commit, it *settles* it (`log::settle`: waits for its writer, or marks it as never to
//! commit) before it reads on. Its position is therefore final, and other readers bound their
//! reads by it (see `db::log`).
//!
//! Under load (above `--poll-above` commits per second) a wake-up per commit costs more than it
//! brings, to writers most of all: so the listener then leaves the *idle set* and polls, reading
//! the log every [`READ_GAP`], and writers send no NOTIFY while no listener is idle. The idle set
//! is advisory lock [`IDLE_LOCK`], held shared by every waiting listener on its LISTEN session;
//! the commit stamp notifies only when its `pg_try_advisory_lock` on that key fails (and releases
//! the key at once when it succeeds; sql/capture.sql). A listener joining the set then waits for
//! every commit in flight, since those may have found the set empty, and reads once more before
//! it waits for wake-ups: nothing committed without a NOTIFY is left unread.
//!
//! With several servers on one database, one listener leads ([`leader`]): it alone does all of
//! the above, and writes the watermark covering what it relays: before it publishes a page with
//! `--durable-watermark standby`, after it (at most every few ms) with `local`. The others
//! follow: they wait on the leader's `pgfeed_watermark` wake-ups, read the log up to the
//! watermark and no further, never settle and never join the idle set (so writers notify only
//! while the leader waits, however many servers run), and try to take the lead every second.
//! No follower delivers past the watermark, and a new generation's `last_good_seq` is a
//! watermark; that is what keeps a cursor valid across a failover (see [`leader`],
//! "Generations" and "Deliver first").

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

pub mod leader;
mod replica;

use crate::config::DurableWatermark;
use crate::db::{log, watermark};
use crate::event::{Event, Position};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// The channel the commit stamp notifies (sql/capture.sql).
pub const CHANNEL: &str = "pgfeed";
/// `application_name` of the listener's session, to find it in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "pgfeed-listener";
/// `application_name` of the connection the listener reads the log on.
pub const READER_APPLICATION_NAME: &str = "pgfeed-reader";
/// The advisory lock key of the idle set: held shared by each listener waiting for wake-ups (the
/// commit stamp in sql/capture.sql notifies only while someone holds it).
pub const IDLE_LOCK: i64 = 7133003;
/// Read the log this often even without a wake-up: a safety net, not the mechanism.
const SAFETY_TICK: Duration = Duration::from_secs(5);
/// While polling, a log read starts this long after the previous one started (in practice every
/// 1–3 ms: tokio's timer has millisecond granularity, and the read takes its own time), so that
/// one read picks up several commits.
const READ_GAP: Duration = Duration::from_millis(1);
/// While polling, this many reads in a row that find nothing send the listener back to waiting.
const EMPTY_POLLS_TO_IDLE: u32 = 5;
/// After a try to join the idle set failed (a commit in flight outlasted `log::HOLD_TRY`), the
/// listener polls at least this long before it tries again.
const JOIN_RETRY: Duration = Duration::from_secs(1);
/// The commit rate that decides between waiting and polling is measured over this window.
const RATE_WINDOW: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Whether the listener holds a live LISTEN session, whether it leads, and whether the leader's
/// watermark waits for the standby (for `/healthz`).
#[derive(Debug, Default)]
pub struct ListenerStatus {
    up: AtomicBool,
    leader: AtomicBool,
    waiting: AtomicBool,
}

impl ListenerStatus {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed)
    }

    /// Whether this server leads its database (see [`leader`]).
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed)
    }

    /// Whether events wait for the durable standby (`--durable-watermark standby`) for longer than a moment.
    pub fn is_waiting_for_standby(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Relaxed)
    }
}

/// What one listener works with: its settings, and the handles it reads from and publishes to.
pub struct Listener {
    /// Where the LISTEN session connects: `--listen-database-url`, else the pool's database.
    pub url: String,
    /// Opens the listener's own log reader, with the pool's connect options (see `listen_and_relay`).
    pub pool: PgPool,
    /// Where the events go, and whose last position the listener reads on from.
    pub hub: Arc<Hub>,
    /// Up while the LISTEN session is, for `/healthz` (held by the HTTP state too).
    pub status: Arc<ListenerStatus>,
    pub metrics: Arc<Metrics>,
    /// `--poll-above`: the commit rate above which it polls rather than waits for wake-ups.
    pub poll_above: u32,
    /// `--durable-watermark`, and `--durable-standby`: what the leader's watermark waits for.
    pub durable: DurableWatermark,
    pub durable_standby: Option<String>,
    /// A `--database-url` naming several hosts: at each connect, the pool is pointed at the one
    /// that is the primary now (`db::primary`).
    pub multi_host_url: Option<String>,
    /// `--replica-url`: as a follower, read the log from this standby ([`replica`]).
    pub replica: Option<Arc<crate::db::replica::Replica>>,
}

/// Runs until `shutdown`: connect, LISTEN, relay, and after any failure reconnect with backoff.
pub async fn run(listener: Listener, shutdown: CancellationToken) {
    let Listener { status, metrics, .. } = &listener;
    let mut backoff = BACKOFF_MIN;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listen_and_relay(&listener) => r,
        };
        metrics.listener_polling.set(0);
        if status.is_up() {
            // It had been working: retry soon, and back off only if it keeps failing.
            metrics.listener_reconnects.inc();
            backoff = BACKOFF_MIN;
        }
        status.set(false);
        if let Err(e) = outcome {
            tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff, "listener lost its connection");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// What notifications have announced since the listener last looked: the newest commit seq (the
/// stamp's payload), and whether one came without a seq (anyone may `NOTIFY pgfeed`).
///
/// Notifications that arrive while a read runs are folded into one more wake-up, and that read
/// has often already relayed the commits they announce; such a wake-up is dropped without a
/// read, which under load saves a log read (a round trip and a statement) per commit.
#[derive(Debug, Default)]
struct Announced {
    newest: AtomicI64,
    unknown: AtomicBool,
    wake: Notify,
    /// When the last notification arrived: the trace of a by-seq read tells how long its wake-up
    /// waited for the listener's task (README "Performance", latency beside a bare relay).
    noted_at: std::sync::Mutex<Option<Instant>>,
}

impl Announced {
    fn note(&self, payload: &str) {
        if tracing::enabled!(tracing::Level::TRACE) {
            *self.noted_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        match payload.parse::<i64>() {
            Ok(seq) => {
                self.newest.fetch_max(seq, Ordering::SeqCst);
            }
            Err(_) => self.unknown.store(true, Ordering::SeqCst),
        }
        self.wake.notify_one();
    }

    /// Whether a commit after `relayed` (the hub's last seq) was announced; consumes a seq-less one.
    fn pending(&self, relayed: i64) -> bool {
        let unknown = self.unknown.swap(false, Ordering::SeqCst);
        unknown || self.newest.load(Ordering::SeqCst) > relayed
    }

    /// What a leader's wake-up asks for, the hub standing at `last`; consumes a seq-less one.
    fn wanted(&self, last: Position) -> Wanted {
        let unknown = self.unknown.swap(false, Ordering::SeqCst);
        let newest = self.newest.load(Ordering::SeqCst);
        if unknown {
            Wanted::Read
        } else if newest <= last.seq {
            Wanted::Nothing
        } else if newest == last.seq + 1 && last == Position::end_of(last.seq) {
            Wanted::Commit(newest)
        } else {
            Wanted::Read
        }
    }
}

/// What a wake-up asks the leader to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// Every commit announced was relayed.
    Nothing,
    /// Only the commit right after the hub's position: read by its seq ([`relay_commit`]).
    Commit(i64),
    /// Anything else: a read from the hub's position on ([`relay`]).
    Read,
}

/// Measures the commit rate the listener relays, over windows of [`RATE_WINDOW`], to decide
/// when to poll. Each wake-up costs a NOTIFY in the writer (a queue lock held through its commit,
/// a queue entry, a signal to every listening backend of the database), the listening backend's
/// and pgfeed's handling, and a log read; at thousands of commits per second that took the
/// writers' CPU on a 2-core box (`pgfeed-bench writers`). A read every few milliseconds takes the
/// same commits for a fraction of that.
#[derive(Debug)]
struct Rate {
    window_start: Instant,
    window_seq: i64,
    above: bool,
    limit: f64,
}

impl Rate {
    /// `limit`: commits per second above which [`Rate::above`] holds.
    fn new(now: Instant, relayed: i64, limit: u32) -> Rate {
        Rate {
            window_start: now,
            window_seq: relayed,
            above: false,
            limit: f64::from(limit),
        }
    }

    /// Whether the last full window relayed more than the limit, `relayed` being the hub's last
    /// seq at `now`. Seqs count commits (with a hole for each one that failed at commit).
    fn above(&mut self, now: Instant, relayed: i64) -> bool {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            let rate = (relayed - self.window_seq) as f64 / elapsed.as_secs_f64();
            self.above = rate > self.limit;
            self.window_start = now;
            self.window_seq = relayed;
        }
        self.above
    }
}

/// One connection's life: returns when the connection or a log read fails.
async fn listen_and_relay(listener: &Listener) -> anyhow::Result<()> {
    let Listener {
        url,
        pool,
        hub,
        status,
        metrics,
        poll_above,
        ..
    } = listener;
    let poll_above = *poll_above;
    let mut config = tokio_postgres::Config::from_str(url).context("parsing the database URL")?;
    config.application_name(APPLICATION_NAME);
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting the listener")?;

    let announced = Arc::new(Announced::default());
    // The connection must be polled for the client to make progress and for notifications to
    // arrive. This task ends when the connection does; its end is how we learn of it.
    let mut driver = tokio::spawn({
        let announced = announced.clone();
        async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => announced.note(n.payload()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    });

    let result = async {
        // The log is read on a connection of the listener's own, opened like the pool's: a wake-up
        // costs one round trip, where a pool checkout first pings the connection (another round
        // trip, and a wake-up of its backend, per commit under load). It fails and is replaced
        // together with the LISTEN session.
        if let Some(url) = &listener.multi_host_url {
            crate::db::repoint(pool, url).await.context("finding the primary")?;
        }
        let options = (*pool.connect_options())
            .clone()
            .application_name(READER_APPLICATION_NAME);
        let mut reader = PgConnection::connect_with(&options)
            .await
            .context("connecting the listener's log reader")?;
        // The generation served so far, for followers too (and before `/healthz` can say
        // "leader"); a leader that finds a newer one sets it again.
        metrics.generation.set(i64::from(hub.epoch().gen()));
        // One leader per database; the others follow until the lead is free.
        if !leader::try_lead(&client).await? {
            status.set(true);
            tracing::info!("listener connected; following the leader");
            match &listener.replica {
                Some(standby) => {
                    replica::follow(&client, &mut reader, standby, listener, &announced, &mut driver).await?
                }
                None => follow(&client, &mut reader, listener, &announced, &mut driver).await?,
            }
        }
        status.set_leader(true);
        metrics.leader.set(1);
        let mut lead = Lead {
            client: &client,
            status,
            publisher: leader::Publisher::new(listener.durable, listener.durable_standby.clone()),
        };
        // Before anything is relayed: the generation it is relayed under, and a watermark
        // covering what this server relayed (every seq up to it is final).
        lead.check_generation(hub, metrics).await?;
        lead.publisher
            .write_now(&client, hub.last().seq, status, metrics)
            .await?;
        client
            .batch_execute(&format!("listen {CHANNEL}"))
            .await
            .context("LISTEN")?;
        // Listening, then in the idle set: writers notify from here on. (If commits in flight
        // keep it from joining, it polls first.)
        let joined = join_idle_set(&client, &mut reader).await?;
        status.set(true);
        tracing::info!("listener connected; leading");
        // Everything committed before that is read now; everything after it wakes us.
        if joined {
            relay(&mut reader, hub, metrics, &mut lead).await?;
        } else {
            poll(&mut reader, hub, metrics, &mut lead, PollFrom::FailedJoin).await?;
        }
        let mut tick = tokio::time::interval(SAFETY_TICK);
        let mut rate = Rate::new(Instant::now(), hub.last().seq, poll_above);
        loop {
            tokio::select! {
                _ = announced.wake.notified() => {
                    let last = hub.last();
                    let wanted = announced.wanted(last);
                    if wanted == Wanted::Nothing {
                        continue;
                    }
                    if rate.above(Instant::now(), last.seq) {
                        poll(&mut reader, hub, metrics, &mut lead, PollFrom::IdleSet).await?;
                        rate = Rate::new(Instant::now(), hub.last().seq, poll_above);
                    } else if let Wanted::Commit(seq) = wanted {
                        let noted_at = announced.noted_at.lock().unwrap_or_else(|e| e.into_inner()).take();
                        if let Some(at) = noted_at {
                            tracing::trace!(seq, wait_us = at.elapsed().as_micros() as u64, "a wake-up taken");
                        }
                        relay_commit(&mut reader, hub, metrics, &mut lead, seq).await?;
                    } else {
                        relay(&mut reader, hub, metrics, &mut lead).await?;
                    }
                }
                _ = tick.tick() => {
                    lead.check_generation(hub, metrics).await?;
                    relay(&mut reader, hub, metrics, &mut lead).await?
                }
                _ = lead.owed_due() => lead.catch_up(metrics).await?,
                ended = &mut driver => return connection_ended(ended),
            }
        }
    }
    .await;
    driver.abort();
    status.set_leader(false);
    metrics.leader.set(0);
    result
}

/// The error a listener connection's end is.
fn connection_ended(ended: Result<Result<(), tokio_postgres::Error>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match ended {
        Ok(Ok(())) => Err(anyhow::anyhow!("connection closed")),
        Ok(Err(e)) => Err(e).context("listener connection"),
        Err(e) => Err(e).context("listener connection task"),
    }
}

/// What the leader relays with: the session that holds the lead, which alone writes the
/// watermark, and how it writes it.
struct Lead<'a> {
    client: &'a tokio_postgres::Client,
    status: &'a ListenerStatus,
    publisher: leader::Publisher,
}

impl Lead<'_> {
    /// Records a new generation if the database changed under the log, and moves the hub to it.
    async fn check_generation(&mut self, hub: &Hub, metrics: &Metrics) -> anyhow::Result<()> {
        let serving = hub.epoch().gen();
        let current = leader::generation(self.client, serving).await?;
        if current.gen != serving {
            // The feed may start over before what was published: publish from there again.
            self.publisher.restart();
        }
        move_to_generation(hub, metrics, current.gen, current.good_after);
        Ok(())
    }

    async fn publish(&mut self, upto: i64, metrics: &Metrics) -> anyhow::Result<()> {
        self.publisher.publish(self.client, upto, self.status, metrics).await
    }

    /// Writes the watermark owed to the followers when it is due (`leader::Publisher::catch_up`).
    async fn catch_up(&mut self, metrics: &Metrics) -> anyhow::Result<()> {
        self.publisher.catch_up(self.client, metrics).await
    }

    /// Until the owed watermark is due (forever when none is owed).
    async fn owed_due(&self) {
        match self.publisher.due() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// Moves the hub to generation `gen` when it is newer than the one it serves.
fn move_to_generation(hub: &Hub, metrics: &Metrics, gen: i32, good_after: Option<i64>) {
    let serving = hub.epoch().gen();
    if gen > serving {
        let restarted = hub.set_generation(gen, good_after);
        tracing::warn!(
            from = serving,
            to = gen,
            last_good_seq = good_after,
            restarted,
            "serving a new generation of the log"
        );
    }
    metrics.generation.set(i64::from(hub.epoch().gen()));
}

/// A follower's life on one connection: it listens for the leader's watermark wake-ups and
/// delivers up to the watermark ([`follow_relay`]); it never settles and never joins the idle
/// set. Every [`leader::TAKEOVER_TRY`] it tries to take the lead, and returns once it holds it.
async fn follow(
    client: &tokio_postgres::Client,
    reader: &mut PgConnection,
    listener: &Listener,
    announced: &Announced,
    driver: &mut tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> anyhow::Result<()> {
    let Listener { hub, metrics, .. } = listener;
    client
        .batch_execute(&format!("listen {}", leader::WATERMARK_CHANNEL))
        .await
        .context("LISTEN")?;
    follow_relay(reader, hub, metrics).await?;
    let mut tick = tokio::time::interval(leader::TAKEOVER_TRY);
    loop {
        tokio::select! {
            _ = announced.wake.notified() => {
                if announced.pending(hub.last().seq) {
                    follow_relay(reader, hub, metrics).await?;
                }
            }
            _ = tick.tick() => {
                if leader::try_lead(client).await? {
                    tracing::info!("the lead was free: this server leads now");
                    client
                        .batch_execute(&format!("unlisten {}", leader::WATERMARK_CHANNEL))
                        .await
                        .context("UNLISTEN")?;
                    return Ok(());
                }
                follow_relay(reader, hub, metrics).await?;
            }
            ended = &mut *driver => return connection_ended(ended),
        }
    }
}

/// A follower's read: moves to the watermark's generation, then publishes every event after the
/// hub's last position up to the watermark, a page at a time. Every seq up to the watermark is
/// final, so nothing is settled; nothing past it is delivered.
pub async fn follow_relay(reader: &mut PgConnection, hub: &Hub, metrics: &Metrics) -> anyhow::Result<()> {
    let wm = watermark::read(&mut *reader).await.context("reading the watermark")?;
    let serving = hub.epoch().gen();
    if wm.gen > serving {
        let good = watermark::good_after(&mut *reader, serving)
            .await
            .context("reading the generations")?;
        move_to_generation(hub, metrics, wm.gen, good);
    } else if wm.gen < serving {
        // A database behind this server's generation (the old primary, back after a failover):
        // nothing it holds can be told apart from what diverged.
        return Ok(());
    }
    metrics.watermark_seq.set(wm.seq);
    loop {
        let after = hub.last();
        if after >= Position::end_of(wm.seq) {
            return Ok(());
        }
        let read = log::read_upto(&mut *reader, after, log::PAGE, wm.seq.max(after.seq))
            .await
            .context("reading the log")?;
        let rows = match read.page {
            log::Page::Rows(rows) => rows,
            log::Page::Expired => {
                tracing::error!(
                    ?after,
                    "the log was pruned past the listener's position; subscribers must refresh"
                );
                hub.reset(Position::end_of(wm.seq));
                return Ok(());
            }
        };
        let full = rows.len() as i64 == log::PAGE;
        publish_page(hub, metrics, rows).await;
        if !full {
            hub.advance(Position::end_of(wm.seq));
            return Ok(());
        }
    }
}

/// Polls under load: leaves the idle set (writers stop notifying unless another listener waits),
/// reads the log every [`READ_GAP`] until [`EMPTY_POLLS_TO_IDLE`] reads in a row find nothing,
/// then rejoins the idle set and reads once more.
///
/// Rejoining waits for every commit in flight (any of them may have found the set empty and sent
/// no NOTIFY), so the last read sees them all; every later commit notifies. A lost LISTEN session
/// loses its lock with it, and the reconnect reads.
async fn poll(
    reader: &mut PgConnection,
    hub: &Hub,
    metrics: &Metrics,
    lead: &mut Lead<'_>,
    from: PollFrom,
) -> anyhow::Result<()> {
    let client = lead.client;
    if from == PollFrom::IdleSet {
        leave_idle_set(client).await?;
    }
    metrics.listener_polling.set(1);
    metrics.listener_polls.inc();
    // Not before this: a failed try to join held writers back for up to `log::HOLD_TRY`.
    let mut join_after = match from {
        PollFrom::IdleSet => Instant::now(),
        PollFrom::FailedJoin => Instant::now() + JOIN_RETRY,
    };
    loop {
        let mut empty = 0;
        while empty < EMPTY_POLLS_TO_IDLE || Instant::now() < join_after {
            let started = Instant::now();
            let before = hub.last().seq;
            relay(reader, hub, metrics, lead).await?;
            empty = if hub.last().seq == before { empty + 1 } else { 0 };
            tokio::time::sleep_until(started + READ_GAP).await;
        }
        if join_idle_set(client, reader).await? {
            break;
        }
        join_after = Instant::now() + JOIN_RETRY;
    }
    metrics.listener_polling.set(0);
    relay(reader, hub, metrics, lead).await
}

/// Where [`poll`] starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PollFrom {
    /// In the idle set (the commit rate passed `--poll-above`): it leaves the set first.
    IdleSet,
    /// Out of it: a try to join just failed, so the next waits [`JOIN_RETRY`].
    FailedJoin,
}

/// Joins the idle set, then waits for the commits in flight. False (and out of the set again)
/// when one kept it waiting past `log::HOLD_TRY`: a transaction that stamped early and stays
/// open; the listener goes on polling.
async fn join_idle_set(client: &tokio_postgres::Client, reader: &mut PgConnection) -> anyhow::Result<bool> {
    client
        .batch_execute(&format!("select pg_advisory_lock_shared({IDLE_LOCK})"))
        .await
        .context("joining the idle set")?;
    let waited = async {
        let mut tx = reader.begin().await?;
        log::hold_commits(&mut tx).await?;
        tx.commit().await
    }
    .await;
    match waited {
        Ok(()) => Ok(true),
        Err(e) if log::is_lock_timeout(&e) => {
            tracing::debug!("a commit in flight kept the listener from waiting for wake-ups; it polls on");
            leave_idle_set(client).await?;
            Ok(false)
        }
        Err(e) => Err(e).context("waiting for the commits in flight"),
    }
}

async fn leave_idle_set(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client
        .batch_execute(&format!("select pg_advisory_unlock_shared({IDLE_LOCK})"))
        .await
        .context("leaving the idle set")
}

/// Publishes every event after the hub's last position, in log order, a page at a time, up to
/// the newest commit; a seq missing below it is settled first (`log::settle`), and reading stops
/// before one still in flight after that (the next read goes on from there). Then writes the
/// watermark the followers are owed, when it is due. With `--durable-watermark standby` each
/// page is covered by the watermark before this server publishes it; with `local` the leader
/// delivers first and the watermark follows (see [`leader`], "Deliver first").
async fn relay(reader: &mut PgConnection, hub: &Hub, metrics: &Metrics, lead: &mut Lead<'_>) -> anyhow::Result<()> {
    relay_pages(reader, hub, metrics, lead).await?;
    lead.catch_up(metrics).await
}

async fn relay_pages(
    reader: &mut PgConnection,
    hub: &Hub,
    metrics: &Metrics,
    lead: &mut Lead<'_>,
) -> anyhow::Result<()> {
    loop {
        let after = hub.last();
        let started = Instant::now();
        let read = log::read_all(&mut *reader, after, log::PAGE)
            .await
            .context("reading the log")?;
        tracing::trace!(read_ms = started.elapsed().as_secs_f64() * 1e3, "a log page read");
        let rows = match read.page {
            log::Page::Rows(rows) => rows,
            log::Page::Expired => {
                // Only when this server was cut off from the database for longer than the
                // retention: its subscribers may have missed pruned events, so they must resume
                // (and will be told to refresh).
                let head = log::held_head(&mut *reader).await.context("reading the log head")?;
                tracing::error!(
                    ?after,
                    ?head,
                    "the log was pruned past the listener's position; subscribers must refresh"
                );
                hub.reset(head);
                lead.publish(head.seq, metrics).await?;
                continue;
            }
        };
        let full = rows.len() as i64 == log::PAGE;
        // A full page ends within its last commit, which is final (every seq up to the bound is);
        // a page that is not full holds everything up to the bound.
        let covered = match rows.last() {
            Some(last) if full => last.seq,
            _ => read.upto,
        };
        lead.publish(covered, metrics).await?;
        publish_page(hub, metrics, rows).await;
        if full {
            continue;
        }
        // The page held every event up to the bound, so its last commit is complete, and so is
        // everything up to the bound (commits without events, seqs that never committed).
        hub.advance(Position::end_of(read.upto));
        if read.upto >= read.newest {
            return Ok(());
        }
        let settled = log::settle(&mut *reader, read.upto).await.context("settling the log")?;
        if settled == read.upto {
            // Still in flight: its commit wakes this listener, or the next poll reads it.
            return Ok(());
        }
    }
}

/// The wake-up for commit `seq`, the one right after the hub's position: that commit alone, read
/// by its seq (`log::read_commit`: every seq before it is final, and a visible commit is final
/// too, so there is no bound to compute and nothing to settle). A commit not visible yet, or too
/// big for one page, is read as usual ([`relay`]).
///
/// This is the listener's usual wake-up at low rates, one commit each: the by-seq read costs
/// PostgreSQL less than the general one (README "Performance", the `latency` row).
async fn relay_commit(
    reader: &mut PgConnection,
    hub: &Hub,
    metrics: &Metrics,
    lead: &mut Lead<'_>,
    seq: i64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let Some(rows) = log::read_commit(&mut *reader, seq, log::PAGE)
        .await
        .context("reading a commit")?
    else {
        return relay(reader, hub, metrics, lead).await;
    };
    let read = started.elapsed();
    metrics.listener_commit_reads.inc();
    lead.publish(seq, metrics).await?;
    publish_page(hub, metrics, rows).await;
    hub.advance(Position::end_of(seq));
    tracing::trace!(
        seq,
        read_us = read.as_micros() as u64,
        publish_us = (started.elapsed() - read).as_micros() as u64,
        "a commit read by seq"
    );
    Ok(())
}

/// Hands a page of the log to the hub (leader and followers alike), once the views have room.
async fn publish_page(hub: &Hub, metrics: &Metrics, rows: Vec<crate::event::LogRow>) {
    metrics.events_relayed.inc_by(rows.len() as u64);
    if let Some(last) = rows.last() {
        metrics.last_relayed_seq.set(last.seq);
    }
    let epoch = hub.epoch();
    let started = Instant::now();
    hub.tap_room(rows.len() + 1).await;
    let waited = started.elapsed();
    let n = rows.len();
    hub.publish(rows.into_iter().map(|row| Event::from_row(row, &epoch)));
    tracing::trace!(
        events = n,
        views_wait_ms = waited.as_secs_f64() * 1e3,
        publish_ms = (started.elapsed() - waited).as_secs_f64() * 1e3,
        "a log page published"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_reads_only_for_commits_not_yet_relayed() {
        let a = Announced::default();
        a.note("7");
        a.note("5");
        assert!(a.pending(6), "seq 7 is after the relayed 6");
        assert!(!a.pending(7), "everything announced was relayed");
        a.note("not a seq");
        assert!(a.pending(7), "a notification without a seq always reads");
        assert!(!a.pending(7), "and is consumed by that read");
    }

    #[test]
    fn only_the_commit_right_after_a_whole_commit_is_read_by_its_seq() {
        let a = Announced::default();
        let mid = |seq| Position { seq, pos: 3 };
        a.note("7");
        assert_eq!(a.wanted(Position::end_of(6)), Wanted::Commit(7));
        assert_eq!(a.wanted(Position::end_of(7)), Wanted::Nothing);
        assert_eq!(a.wanted(Position::end_of(5)), Wanted::Read, "two commits to read");
        assert_eq!(
            a.wanted(mid(6)),
            Wanted::Read,
            "the hub stands within a commit read a page at a time"
        );
        a.note("not a seq");
        assert_eq!(
            a.wanted(Position::end_of(7)),
            Wanted::Read,
            "a wake-up without a seq reads"
        );
        assert_eq!(a.wanted(Position::end_of(7)), Wanted::Nothing, "and is consumed");
    }

    #[test]
    fn the_rate_is_judged_over_whole_windows() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Rate::new(t0, 0, 1000);
        // Nothing is judged before a window has passed, however fast the commits come.
        assert!(!r.above(t0 + ms(50), 500));
        // 50 commits in the first 100 ms: 500/s.
        assert!(!r.above(t0 + ms(100), 50));
        // 500 commits in the next 100 ms: 5,000/s, and it stays so within the window.
        assert!(r.above(t0 + ms(200), 550));
        assert!(r.above(t0 + ms(250), 551));
        // 5 commits in the next window: back below.
        assert!(!r.above(t0 + ms(300), 555));
        // A limit of 0 polls as soon as a window saw a commit.
        let mut zero = Rate::new(t0, 0, 0);
        assert!(!zero.above(t0 + ms(100), 0));
        assert!(zero.above(t0 + ms(200), 1));
    }
}
