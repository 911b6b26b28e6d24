//! The listener: relays every committed change from the log to the hub, in commit order.
//!
//! One dedicated tokio-postgres session per server runs `LISTEN pgfeed`. A notification is only a
//! wake-up: on every wake-up that announces a commit not yet relayed, on every (re)connect and on
//! a slow safety tick, the listener reads every event after the last position it relayed, page by
//! page (`log::read_after`), and publishes them. A notification missed while disconnected, or
//! folded by PostgreSQL, therefore costs latency and never data; rows of any size arrive whole
//! because NOTIFY carries none.

pub mod log;

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

use crate::event::{Event, Position};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// The channel the commit stamp notifies (sql/capture.sql).
pub const CHANNEL: &str = "pgfeed";
/// `application_name` of the listener's session, to find it in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "pgfeed-listener";
/// `application_name` of the connection the listener reads the log on.
pub const READER_APPLICATION_NAME: &str = "pgfeed-reader";
/// Read the log this often even without a wake-up: a safety net, not the mechanism.
const SAFETY_TICK: Duration = Duration::from_secs(5);
/// Under load, log reads start at most this often, so that one read picks up several commits.
const READ_GAP: Duration = Duration::from_millis(1);
/// "Under load": more commits per second than this over the last [`RATE_WINDOW`].
const BUSY_COMMITS_PER_SEC: f64 = 1000.0;
const RATE_WINDOW: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Whether the listener holds a live LISTEN session (for `/healthz`).
#[derive(Debug, Default)]
pub struct ListenerStatus(AtomicBool);

impl ListenerStatus {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed)
    }
}

/// Runs until `shutdown`: connect, LISTEN, relay, and after any failure reconnect with backoff.
pub async fn run(
    url: String,
    pool: PgPool,
    hub: Arc<Hub>,
    status: Arc<ListenerStatus>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listen_and_relay(&url, &pool, &hub, &status, &metrics) => r,
        };
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
}

impl Announced {
    fn note(&self, payload: &str) {
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
}

/// Paces log reads under load. Each read costs a round trip, a statement and a wake-up of two
/// processes whatever it returns; at thousands of commits per second, reading at every wake-up
/// cost about as much CPU as the writers' triggers (40–60 µs per commit in the reading backend,
/// `pgfeed-bench writers`), taken from the writers on a 2-core box.
/// So when the last [`RATE_WINDOW`] relayed more than [`BUSY_COMMITS_PER_SEC`], a wake-up within
/// [`READ_GAP`] of the previous read waits for the rest of the gap (up to about 2 ms with tokio's
/// millisecond timer), and one read then takes every commit of the gap. Below that rate every
/// wake-up reads at once, so a quiet feed's latency is untouched.
#[derive(Debug)]
struct Pacer {
    window_start: Instant,
    window_seq: i64,
    busy: bool,
    next_read: Instant,
}

impl Pacer {
    fn new(now: Instant, relayed: i64) -> Pacer {
        Pacer {
            window_start: now,
            window_seq: relayed,
            busy: false,
            next_read: now,
        }
    }

    /// When the read for a wake-up at `now` may start, `relayed` being the hub's last seq.
    fn read_at(&mut self, now: Instant, relayed: i64) -> Instant {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            let rate = (relayed - self.window_seq) as f64 / elapsed.as_secs_f64();
            self.busy = rate > BUSY_COMMITS_PER_SEC;
            self.window_start = now;
            self.window_seq = relayed;
        }
        if self.busy {
            self.next_read.max(now)
        } else {
            now
        }
    }

    fn read_started(&mut self, now: Instant) {
        self.next_read = now + READ_GAP;
    }
}

/// One connection's life: returns when the connection or a log read fails.
async fn listen_and_relay(
    url: &str,
    pool: &PgPool,
    hub: &Hub,
    status: &ListenerStatus,
    metrics: &Metrics,
) -> anyhow::Result<()> {
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
        let options = (*pool.connect_options())
            .clone()
            .application_name(READER_APPLICATION_NAME);
        let mut reader = PgConnection::connect_with(&options)
            .await
            .context("connecting the listener's log reader")?;
        client
            .batch_execute(&format!("listen {CHANNEL}"))
            .await
            .context("LISTEN")?;
        status.set(true);
        tracing::info!("listener connected");
        // Everything committed before LISTEN took effect is read now; everything after it wakes us.
        relay(&mut reader, hub, metrics).await?;
        let mut tick = tokio::time::interval(SAFETY_TICK);
        let mut pacer = Pacer::new(Instant::now(), hub.last().seq);
        loop {
            tokio::select! {
                _ = announced.wake.notified() => {
                    let relayed = hub.last().seq;
                    if announced.pending(relayed) {
                        let now = Instant::now();
                        let at = pacer.read_at(now, relayed);
                        if at > now {
                            tokio::time::sleep_until(at).await;
                        }
                        pacer.read_started(Instant::now());
                        relay(&mut reader, hub, metrics).await?;
                    }
                }
                _ = tick.tick() => relay(&mut reader, hub, metrics).await?,
                ended = &mut driver => {
                    return match ended {
                        Ok(Ok(())) => Err(anyhow::anyhow!("connection closed")),
                        Ok(Err(e)) => Err(e).context("listener connection"),
                        Err(e) => Err(e).context("listener connection task"),
                    };
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// Publishes every event after the hub's last position, in log order, a page at a time.
pub async fn relay(reader: &mut PgConnection, hub: &Hub, metrics: &Metrics) -> anyhow::Result<()> {
    loop {
        let after = hub.last();
        let rows = match log::read_after(&mut *reader, after, None, log::PAGE)
            .await
            .context("reading the log")?
        {
            log::Page::Rows(rows) => rows,
            log::Page::Expired => {
                // Only when this server was cut off from the database for longer than the
                // retention: its subscribers may have missed pruned events, so they must resume
                // (and will be told to refresh).
                let head = log::head(&mut *reader).await.context("reading the log head")?;
                tracing::error!(
                    ?after,
                    ?head,
                    "the log was pruned past the listener's position; subscribers must refresh"
                );
                hub.reset(head);
                continue;
            }
        };
        let full = rows.len() as i64 == log::PAGE;
        metrics.events_relayed.inc_by(rows.len() as u64);
        if let Some(last) = rows.last() {
            metrics.last_relayed_seq.set(last.seq);
        }
        let epoch = hub.epoch().clone();
        hub.publish(rows.into_iter().filter_map(|row| match Event::from_row(row, &epoch) {
            Ok(event) => Some(event),
            Err(e) => {
                // The log holds jsonb, so this cannot happen; skipping is still better than stalling.
                tracing::error!(error = %e, "unreadable event in the log");
                None
            }
        }));
        if !full {
            // The page held everything committed so far, so its last commit is complete.
            hub.advance(Position::end_of(hub.last().seq));
            return Ok(());
        }
    }
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
    fn reads_are_paced_only_above_a_thousand_commits_a_second() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacer::new(t0, 0);
        // 50 commits in the first 100 ms (500/s): every wake-up reads at once.
        assert_eq!(p.read_at(t0 + ms(100), 50), t0 + ms(100));
        p.read_started(t0 + ms(100));
        assert_eq!(
            p.read_at(t0 + ms(100) + Duration::from_micros(300), 51),
            t0 + ms(100) + Duration::from_micros(300)
        );
        // 500 commits in the next 100 ms (5,000/s): a wake-up right after a read waits for the
        // rest of the gap, one after the gap reads at once.
        p.read_started(t0 + ms(200));
        assert_eq!(p.read_at(t0 + ms(200), 550), t0 + ms(200) + READ_GAP);
        p.read_started(t0 + ms(200) + READ_GAP);
        assert_eq!(p.read_at(t0 + ms(250), 800), t0 + ms(250));
        // The rate falls back (5 commits in the 100 ms after t0 + 300 ms): no more waiting.
        p.read_started(t0 + ms(300));
        assert_eq!(p.read_at(t0 + ms(300), 810), t0 + ms(300) + READ_GAP, "still 2,600/s");
        p.read_started(t0 + ms(400));
        assert_eq!(p.read_at(t0 + ms(400), 815), t0 + ms(400));
    }
}
