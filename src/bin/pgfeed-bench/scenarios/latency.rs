//! latency: pgfeed beside a bare-NOTIFY relay (`relay.rs`), in the same run: the same number of
//! subscribers on each, the same writers at the same rate, the two taking turns in passes
//! (`--repeat` rounds, which one goes first alternating), so that the box's drift lands on both.
//! Reports each one's latency (receive − the row's own timestamp, taken by its INSERT) and the
//! PostgreSQL CPU each used per row: the whole cluster's, over each pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::streams::{write, Load, Written};
use super::{machine, subscribers, CONNECT_CONCURRENCY, DRAIN, INSERT_STAMPED};
use crate::client::{self, Sub, Tally, Transport, Ws};
use crate::relay::{self, Relay};
use crate::report::{self, lost_and_doubled, verdict, Percentiles};
use crate::setup::{self, BenchDb, ClusterCpu, Server};
use crate::Args;

/// PostgreSQL backends whose CPU is reported apart, by `application_name`; the rest of the
/// cluster (pgfeed's pool, autovacuum, the WAL writer, the checkpointer, …) is "other".
const ROLES: [(&str, &str); 4] = [
    ("writers", setup::WRITER_APP),
    ("pgfeed reads", pgfeed::listener::READER_APPLICATION_NAME),
    ("pgfeed LISTEN", pgfeed::listener::APPLICATION_NAME),
    ("relay LISTEN", relay::LISTEN_APP),
];

/// pgfeed's count of wake-ups answered by reading the one commit they announced, by its seq.
const COMMIT_READS: &str = "pgfeed_listener_commit_reads_total";

/// A quiet moment between passes, so that one variant's tail work is not measured in the other's pass.
const BETWEEN_PASSES: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Pgfeed,
    Relay,
}

/// What one variant measured over all its passes.
#[derive(Debug, Default)]
struct Totals {
    rows: usize,
    delivered: usize,
    expected: usize,
    lost: usize,
    doubled: usize,
    out_of_order: u64,
    /// Subscribers, summed over passes, that did not receive exactly the pass's row count.
    short: usize,
    latencies_us: Vec<u32>,
    /// pgfeed only: receive − the event's `committed_at`.
    committed_us: Vec<u32>,
    commits_us: Vec<u32>,
    /// Write time of all passes (first write → last commit), for the rate.
    write_s: f64,
    max_behind: Duration,
    /// The whole PostgreSQL cluster's CPU over the passes; `None` when it is not on this machine.
    pg_cpu: Option<Duration>,
    /// Of that, the backends of each of [`ROLES`] and "other".
    by_role: BTreeMap<&'static str, Duration>,
    /// pgfeed's process, or the relay's threads.
    relay_cpu: Duration,
    closed: BTreeMap<u16, usize>,
    /// pgfeed only: its wake-ups answered by reading the one commit they announced
    /// (`pgfeed_listener_commit_reads_total` over the passes; `None` where the server has no such
    /// series, a build before it).
    commit_reads: Option<f64>,
    /// p50 of each pass, ms.
    pass_p50: Vec<f64>,
}

impl Totals {
    fn add(&mut self, written: &Written, tallies: Vec<Tally>) {
        let rows = written.ids.len();
        self.rows += rows;
        self.expected += rows * tallies.len();
        self.write_s += (written.last_commit_us - written.first_us) as f64 / 1e6;
        self.max_behind = self.max_behind.max(written.max_behind);
        self.commits_us.extend(&written.commits_us);
        let mut pass_us = Vec::new();
        for mut t in tallies {
            let (l, d) = lost_and_doubled(&written.ids, &t.ids);
            self.lost += l;
            self.doubled += d;
            self.delivered += t.ids.len();
            self.out_of_order += t.out_of_order;
            if t.ids.len() != rows {
                self.short += 1;
            }
            if let Some(c) = t.closed {
                *self.closed.entry(c).or_default() += 1;
            }
            pass_us.extend(&t.latencies_us);
            self.latencies_us.append(&mut t.latencies_us);
            self.committed_us.append(&mut t.relay_us);
        }
        self.pass_p50.push(Percentiles::of(pass_us).p50);
    }

    fn exact(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && self.out_of_order == 0 && self.short == 0
    }

    /// PostgreSQL CPU per row written, µs, without the other variant's LISTEN session (`other`
    /// in [`ROLES`]): every NOTIFY wakes every listening session of the database, whatever its
    /// channel, so each variant's writes also wake the other's idle listener, which alone it
    /// would not have.
    fn pg_us_per_row(&self, other: &str) -> Option<f64> {
        let theirs = self.by_role.get(other).copied().unwrap_or_default();
        self.pg_cpu
            .map(|c| c.saturating_sub(theirs).as_secs_f64() * 1e6 / self.rows.max(1) as f64)
    }

    /// The same with the other's listener: all the cluster used over the passes.
    fn pg_us_per_row_all(&self) -> Option<f64> {
        self.pg_cpu.map(|c| c.as_secs_f64() * 1e6 / self.rows.max(1) as f64)
    }

    fn process_us_per_row(&self) -> f64 {
        self.relay_cpu.as_secs_f64() * 1e6 / self.rows.max(1) as f64
    }
}

/// Everything one run of the scenario holds across passes.
struct Bench<'a> {
    server: &'a Server,
    relay: Relay,
    /// The cluster's postmaster, when PostgreSQL runs on this machine.
    cluster: Option<u32>,
    study: i64,
    rate: u32,
    pass: Duration,
    /// pgfeed's subscribers and the relay's, connected once for every pass.
    pgfeed_subs: Vec<Sub>,
    relay_subs: Vec<Ws>,
    relay_insert: String,
    /// The writers, connected once: their backends' CPU is read before and after each pass.
    writers: Vec<Arc<tokio_postgres::Client>>,
    observer: tokio_postgres::Client,
}

pub(super) async fn latency(
    args: &Args,
    db: &BenchDb,
    server: &Server,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<()> {
    let n = args.subscribers.unwrap_or(100);
    let rounds = args.repeat.max(1);
    let setup_conn = db.connect("pgfeed-bench").await?;
    let study = setup::new_study(&setup_conn).await?;
    relay::install(&setup_conn).await?;
    let cluster = db.postmaster_pid().await.ok();
    if cluster.is_none() {
        eprintln!("pgfeed-bench: PostgreSQL is not on this machine: its CPU is not measured");
    }
    let relay = Relay::start(&db.url).await?;
    eprintln!("pgfeed-bench: connecting {n} subscribers to pgfeed and {n} to the bare-NOTIFY relay");
    let pgfeed_subs = subscribers(server, Transport::Ws, n, "messages", CONNECT_CONCURRENCY).await?;
    let mut relay_subs = Vec::with_capacity(n);
    for i in 0..n {
        relay_subs.push(
            client::connect_relay(relay.addr, i)
                .await
                .context("connecting to the relay")?,
        );
    }
    let mut bench = Bench {
        server,
        relay,
        cluster,
        study,
        rate,
        pass: duration / u32::try_from(rounds).unwrap_or(u32::MAX),
        pgfeed_subs,
        relay_subs,
        relay_insert: INSERT_STAMPED.replacen("into messages", &format!("into {}", relay::TABLE), 1),
        writers: db.writers(args.writers).await?.into_iter().map(Arc::new).collect(),
        observer: setup_conn,
    };
    let own0 = setup::cpu_time("self");
    let started = Instant::now();
    let mut pgfeed = Totals::default();
    let mut bare = Totals::default();
    let outcome = async {
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [Variant::Pgfeed, Variant::Relay]
            } else {
                [Variant::Relay, Variant::Pgfeed]
            };
            for variant in order {
                let totals = match variant {
                    Variant::Pgfeed => &mut pgfeed,
                    Variant::Relay => &mut bare,
                };
                bench.pass(variant, totals).await?;
                eprintln!(
                    "pgfeed-bench: round {}/{rounds}, {variant:?}: p50 {:.2} ms",
                    round + 1,
                    totals.pass_p50.last().copied().unwrap_or(0.0)
                );
                tokio::time::sleep(BETWEEN_PASSES).await;
            }
        }
        anyhow::Ok(())
    }
    .await;
    let own = setup::cpu_time("self").saturating_sub(own0);
    let span_s = started.elapsed().as_secs_f64();
    let Bench {
        relay,
        pgfeed_subs,
        relay_subs,
        ..
    } = bench;
    for mut sub in pgfeed_subs {
        let _ = futures::SinkExt::close(&mut sub.ws).await;
    }
    drop(relay_subs);
    relay.stop();
    outcome?;
    report(args, db, n, rounds, duration, &pgfeed, &bare, own, span_s).await;
    Ok(())
}

impl Bench<'_> {
    /// One pass of `variant`: its subscribers read while the writers write to its table.
    async fn pass(&mut self, variant: Variant, totals: &mut Totals) -> anyhow::Result<()> {
        let load = Load::Paced {
            rate: self.rate,
            duration: self.pass,
        };
        let deadline = Instant::now() + self.pass + DRAIN;
        let reads0 = self.server.metric(COMMIT_READS).await;
        let backends0 = setup::backend_cpu(&self.observer, &ROLES).await;
        let pg0 = self.cluster.map(|pm| ClusterCpu::read(pm).total());
        let cpu0 = self.process_cpu(variant);
        let (written, tallies) = match variant {
            Variant::Pgfeed => {
                let receive = |mut sub: Sub, target| async move {
                    let tally = client::receive_pass(&mut sub, target, deadline).await;
                    (sub, tally)
                };
                let writing = write(&self.writers, self.study, load, INSERT_STAMPED);
                receive_while(&mut self.pgfeed_subs, receive, writing).await?
            }
            Variant::Relay => {
                let receive = |mut ws: Ws, target| async move {
                    let tally = client::receive_relay(&mut ws, target, deadline).await;
                    (ws, tally)
                };
                let writing = write(&self.writers, self.study, load, &self.relay_insert);
                receive_while(&mut self.relay_subs, receive, writing).await?
            }
        };
        let pg = self
            .cluster
            .as_ref()
            .zip(pg0)
            .map(|(&pm, pg0)| ClusterCpu::read(pm).total().saturating_sub(pg0));
        totals.relay_cpu += self.process_cpu(variant).saturating_sub(cpu0);
        if variant == Variant::Pgfeed {
            if let (Some(r0), Some(r1)) = (reads0, self.server.metric(COMMIT_READS).await) {
                *totals.commit_reads.get_or_insert(0.0) += r1 - r0;
            }
        }
        let mut roles = Duration::ZERO;
        for ((role, pid), cpu) in setup::backend_cpu(&self.observer, &ROLES).await {
            let used = cpu.saturating_sub(backends0.get(&(role, pid)).copied().unwrap_or_default());
            *totals.by_role.entry(role).or_default() += used;
            roles += used;
        }
        if let Some(pg) = pg {
            *totals.pg_cpu.get_or_insert(Duration::ZERO) += pg;
            *totals.by_role.entry("other").or_default() += pg.saturating_sub(roles);
        }
        totals.add(&written, tallies);
        Ok(())
    }

    /// CPU so far of what relays `variant`'s rows: the pgfeed process, or the relay's threads.
    fn process_cpu(&self, variant: Variant) -> Duration {
        match variant {
            Variant::Pgfeed => self.server.cpu_time(),
            Variant::Relay => self.relay.cpu_time(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn report(
    args: &Args,
    db: &BenchDb,
    n: usize,
    rounds: usize,
    duration: Duration,
    pgfeed: &Totals,
    bare: &Totals,
    own: Duration,
    span_s: f64,
) {
    let lat = Percentiles::of(pgfeed.latencies_us.clone());
    let bare_lat = Percentiles::of(bare.latencies_us.clone());
    let committed = Percentiles::of(pgfeed.committed_us.clone());
    let commit = Percentiles::of(pgfeed.commits_us.clone());
    let bare_commit = Percentiles::of(bare.commits_us.clone());
    let pg_us = pgfeed.pg_us_per_row("relay LISTEN");
    let bare_pg_us = bare.pg_us_per_row("pgfeed LISTEN");
    let pg_ratio = match (pg_us, bare_pg_us) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let exact = pgfeed.exact();
    // The relay's figures mean something only if it delivered every row.
    let bare_whole = bare.lost == 0 && bare.doubled == 0 && bare.short == 0;
    let p99_ok = lat.p99 <= 10.0;
    let p50_ok = lat.p50 <= bare_lat.p50;
    let cpu_ok = pg_ratio.is_some_and(|r| r <= 1.5);
    let ok = exact && bare_whole && p99_ok && p50_ok && cpu_ok;
    let ms = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
    let us = |x: Option<f64>| x.map_or("not measured".to_owned(), |x| format!("{x:.0} µs"));
    let rate = |t: &Totals| t.rows as f64 / t.write_s.max(1e-9);
    let per_row = |t: &Totals, d: Duration| d.as_secs_f64() * 1e6 / t.rows.max(1) as f64;
    let roles = |t: &Totals| {
        t.by_role
            .iter()
            .filter(|(_, d)| per_row(t, **d) >= 0.5)
            .map(|(role, d)| format!("{role} {:.0} µs", per_row(t, *d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let roles_json = |t: &Totals| {
        t.by_role
            .iter()
            .map(|(role, d)| ((*role).to_owned(), json!(per_row(t, *d).round())))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut table = vec![
        (
            "subscribers".to_owned(),
            format!("{n} on pgfeed's /ws (`messages`), {n} on the bare-NOTIFY relay"),
        ),
        (
            "passes".to_owned(),
            format!(
                "{rounds} per variant of {:.1} s, alternating (pgfeed first in rounds 1, 3, …)",
                duration.as_secs_f64() / rounds as f64
            ),
        ),
        (
            "rows written".to_owned(),
            format!(
                "pgfeed {} ({:.0} rows/s) · relay {} ({:.0} rows/s) by {} writers; worst lag behind schedule {:?} / {:?}",
                pgfeed.rows,
                rate(pgfeed),
                bare.rows,
                rate(bare),
                args.writers,
                pgfeed.max_behind,
                bare.max_behind
            ),
        ),
        (
            "pgfeed deliveries".to_owned(),
            format!(
                "{} of {}; lost / doubled / out of order {} / {} / {}",
                pgfeed.delivered, pgfeed.expected, pgfeed.lost, pgfeed.doubled, pgfeed.out_of_order
            ),
        ),
        (
            "relay deliveries".to_owned(),
            format!(
                "{} of {}; lost / doubled {} / {} (order not checked: it makes no promise)",
                bare.delivered, bare.expected, bare.lost, bare.doubled
            ),
        ),
        ("pgfeed latency (receive − row stamp)".to_owned(), lat.text()),
        ("relay latency (receive − row stamp)".to_owned(), bare_lat.text()),
        (
            "p50 per pass".to_owned(),
            format!("pgfeed {} · relay {} ms", ms(&pgfeed.pass_p50), ms(&bare.pass_p50)),
        ),
        ("pgfeed: receive − committed_at".to_owned(), committed.text()),
        (
            "writer's commit (ack − row stamp)".to_owned(),
            format!(
                "pgfeed p50 {:.2} · p99 {:.2} ms; relay p50 {:.2} · p99 {:.2} ms",
                commit.p50, commit.p99, bare_commit.p50, bare_commit.p99
            ),
        ),
        (
            "PostgreSQL CPU per row".to_owned(),
            format!(
                "pgfeed {} · relay {}{} (the whole cluster but the other's idle LISTEN session; with it {} · {})",
                us(pg_us),
                us(bare_pg_us),
                pg_ratio.map_or(String::new(), |r| format!(" = {r:.2}×")),
                us(pgfeed.pg_us_per_row_all()),
                us(bare.pg_us_per_row_all())
            ),
        ),
        (
            "of which, per row".to_owned(),
            format!("pgfeed: {} · relay: {}", roles(pgfeed), roles(bare)),
        ),
        (
            "pgfeed's commits read by seq".to_owned(),
            pgfeed.commit_reads.map_or("not counted by this build".to_owned(), |r| {
                format!(
                    "{r:.0} of {} rows' commits (the others by the general read: several commits a read, or a commit not yet visible)",
                    pgfeed.rows
                )
            }),
        ),
        (
            "relay process CPU per row".to_owned(),
            format!(
                "pgfeed {:.0} µs ({:.2} s) · bare relay's threads {:.0} µs ({:.2} s)",
                pgfeed.process_us_per_row(),
                pgfeed.relay_cpu.as_secs_f64(),
                bare.process_us_per_row(),
                bare.relay_cpu.as_secs_f64()
            ),
        ),
        (
            "bench (writers + clients + relay) CPU".to_owned(),
            format!("{:.2} s ({:.0}% of one core)", own.as_secs_f64(), 100.0 * own.as_secs_f64() / span_s.max(1e-9)),
        ),
        (
            "connections closed by server".to_owned(),
            format!("pgfeed {:?} · relay {:?}", pgfeed.closed, bare.closed),
        ),
        (
            "target".to_owned(),
            "none lost or doubled; p99 ≤ 10 ms; p50 ≤ the relay's; PostgreSQL CPU per row ≤ 1.5× the relay's".to_owned(),
        ),
        (
            "verdict".to_owned(),
            format!(
                "{} (exact {} · p99 {} · p50 {} · CPU {})",
                verdict(ok),
                mark(exact && bare_whole),
                mark(p99_ok),
                mark(p50_ok),
                mark(cpu_ok)
            ),
        ),
    ];
    if pgfeed.closed.is_empty() && bare.closed.is_empty() {
        table.retain(|(k, _)| k != "connections closed by server");
    }
    let out = json!({
        "scenario": "latency", "transport": "ws", "subscribers": n, "writers": args.writers,
        "rounds": rounds, "pass_s": report::round(duration.as_secs_f64() / rounds as f64),
        "rows": pgfeed.rows, "rows_per_s": report::round(rate(pgfeed)),
        "deliveries": pgfeed.delivered, "expected": pgfeed.expected, "short_subscribers": pgfeed.short,
        "lost": pgfeed.lost, "doubled": pgfeed.doubled, "out_of_order": pgfeed.out_of_order,
        "latency": lat.json(), "relay_latency": committed.json(), "commit_latency": commit.json(),
        "p50_per_pass_ms": pgfeed.pass_p50.iter().map(|x| report::round(*x)).collect::<Vec<_>>(),
        "server_cpu_s": report::round(pgfeed.relay_cpu.as_secs_f64()),
        "pg_cpu_us_per_row": pg_us.map(|x| x.round()), "pg_cpu_us_per_row_by_role": roles_json(pgfeed),
        "pg_cpu_us_per_row_all": pgfeed.pg_us_per_row_all().map(|x| x.round()),
        "commit_reads": pgfeed.commit_reads,
        "bare_relay": {
            "rows": bare.rows, "deliveries": bare.delivered, "expected": bare.expected,
            "short_subscribers": bare.short, "lost": bare.lost, "doubled": bare.doubled,
            "latency": bare_lat.json(), "commit_latency": bare_commit.json(),
            "p50_per_pass_ms": bare.pass_p50.iter().map(|x| report::round(*x)).collect::<Vec<_>>(),
            "cpu_s": report::round(bare.relay_cpu.as_secs_f64()),
            "pg_cpu_us_per_row": bare_pg_us.map(|x| x.round()), "pg_cpu_us_per_row_by_role": roles_json(bare),
            "pg_cpu_us_per_row_all": bare.pg_us_per_row_all().map(|x| x.round()),
        },
        "pg_cpu_ratio": pg_ratio.map(report::round),
        "bench_cpu_s": report::round(own.as_secs_f64()),
        "closed": pgfeed.closed, "bare_relay_closed": bare.closed,
        "machine": machine(db).await, "meets_target": ok,
    });
    report::print("latency (pgfeed beside a bare-NOTIFY relay)", &table, &out);
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

/// One pass: every subscriber of `subs` receives (in a task of its own) while `writing` writes,
/// until it has the rows written; each comes back to `subs`, and its tally with it.
async fn receive_while<S, Fut>(
    subs: &mut Vec<S>,
    receive: impl Fn(S, watch::Receiver<Option<usize>>) -> Fut,
    writing: impl std::future::Future<Output = anyhow::Result<Written>>,
) -> anyhow::Result<(Written, Vec<Tally>)>
where
    S: Send + 'static,
    Fut: std::future::Future<Output = (S, Tally)> + Send + 'static,
{
    let (target_tx, target_rx) = watch::channel(None);
    let readers: Vec<_> = subs
        .drain(..)
        .map(|s| tokio::spawn(receive(s, target_rx.clone())))
        .collect();
    let written = writing.await;
    target_tx.send_replace(Some(written.as_ref().map_or(0, |w| w.ids.len())));
    let mut tallies = Vec::with_capacity(readers.len());
    for r in readers {
        let (s, tally) = r.await?;
        subs.push(s);
        tallies.push(tally);
    }
    Ok((written?, tallies))
}
