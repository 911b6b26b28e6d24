//! writers: what capture costs the writers, against no trigger and a bare NOTIFY trigger.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use super::machine;
use crate::report::{self, verdict};
use crate::setup::{self, BenchDb, Server, WRITER_APP};
use crate::Args;

/// The three writer variants: what each insert also does.
const VARIANTS: [(&str, &str); 3] = [
    ("no trigger", "bench_plain"),
    ("bare NOTIFY", "bench_notify"),
    ("pgfeed capture", "bench_tracked"),
];

/// What one (writer count, variant) measured over all rounds.
struct VariantResult {
    writers: usize,
    variant: &'static str,
    /// TPS of each round, in round order.
    tps: Vec<f64>,
    /// Machine CPU (all processes, all cores) per transaction, µs, per round.
    cpu_us: Vec<f64>,
    /// Of that, the pgfeed process's, per round.
    pgfeed_us: Vec<f64>,
    /// Of that, PostgreSQL backends' by role (see [`BACKEND_ROLES`]), per round.
    backend_us: BTreeMap<&'static str, Vec<f64>>,
    /// The writers' wait events (samples), summed over rounds.
    waits: BTreeMap<String, u64>,
    /// Capture only: time between successive commit stamps (`pgfeed.commits.committed_at`, taken
    /// as each commit draws its seq), p10 / p50 / p90 in µs, per round: how commits are spaced
    /// (commits that share a WAL flush stamp close together).
    stamp_gap_us: Vec<[f64; 3]>,
}

/// The seq of the newest commit stamp so far (0 for none).
async fn newest_seq(conn: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(conn
        .query_one("select coalesce(max(seq), 0) from pgfeed.commits", &[])
        .await?
        .get(0))
}

/// p10 / p50 / p90 of the µs between successive commit stamps with seq in `(after, upto]`
/// (commits only: a txid-0 row marks a seq that never committed, stamped when it was marked).
async fn stamp_gaps(conn: &tokio_postgres::Client, after: i64, upto: i64) -> anyhow::Result<[f64; 3]> {
    let row = conn
        .query_one(
            "select coalesce(percentile_cont(array[0.1, 0.5, 0.9]) within group (order by us), array[0, 0, 0])
             from (select extract(epoch from committed_at - lag(committed_at) over (order by seq))::float8 * 1e6 as us
                   from pgfeed.commits where seq > $1 and seq <= $2 and txid <> '0') gaps
             where us is not null",
            &[&after, &upto],
        )
        .await?;
    let p: Vec<f64> = row.get(0);
    Ok([p[0], p[1], p[2]])
}

/// Busy jiffies (1/100 s of one core) of the whole machine so far, from /proc/stat (0 where
/// unreadable).
fn machine_busy_jiffies() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(cpu) = stat.lines().next() else {
        return 0;
    };
    let f: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    let total: u64 = f.iter().take(8).sum();
    total.saturating_sub(idle)
}

/// PostgreSQL backends whose CPU the `writers` scenario reports, by `application_name`.
const BACKEND_ROLES: [(&str, &str); 4] = [
    ("writers", WRITER_APP),
    ("pgfeed reads", pgfeed::listener::READER_APPLICATION_NAME),
    ("pgfeed LISTEN", pgfeed::listener::APPLICATION_NAME),
    ("bare-NOTIFY LISTEN", NOTIFY_LISTENER_APP),
];
const NOTIFY_LISTENER_APP: &str = "pgfeed-bench-notify-listener";

async fn backend_cpu(conn: &tokio_postgres::Client) -> BTreeMap<(&'static str, i32), Duration> {
    setup::backend_cpu(conn, &BACKEND_ROLES).await
}

/// writers: TPS of 1-row inserts at 1, 4 and 16 writers, per variant, with where writers wait.
///
/// The variants take turns within each round (no trigger, bare NOTIFY, capture, then again), so
/// drift on the machine (disk flush latency moves by tens of percent over minutes on a VM) lands
/// on all three alike; the ratio is taken per round and its median reported.
pub(super) async fn writers(args: &Args, db: &BenchDb, server: &Server) -> anyhow::Result<()> {
    let setup_conn = db.connect("pgfeed-bench").await?;
    setup_conn
        .batch_execute(
            r#"
            create table if not exists bench_plain (id bigint generated always as identity primary key, body text not null);
            create table if not exists bench_notify (id bigint generated always as identity primary key, body text not null);
            create table if not exists bench_tracked (id bigint generated always as identity primary key, body text not null);
            -- What a NOTIFY-based relay (FastAPI+asyncpg, Node ws+pg) installs: the row in the payload.
            create or replace function bench_notify() returns trigger language plpgsql as $$
            begin
                perform pg_notify('bench_notify', row_to_json(new)::text);
                return null;
            end $$;
            drop trigger if exists bench_notify on bench_notify;
            create trigger bench_notify after insert on bench_notify for each row execute function bench_notify();
            select pgfeed.track('bench_tracked');
            "#,
        )
        .await
        .context("creating the writer tables")?;
    // The bare-NOTIFY relay's LISTEN connection, as pgfeed's listener is for capture.
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listen = {
        let mut config: tokio_postgres::Config = db.url.parse()?;
        config.application_name(NOTIFY_LISTENER_APP);
        let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
        let received = received.clone();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(_) = m {
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        client.batch_execute("listen bench_notify").await?;
        (client, driver)
    };

    let pool = db.writers(16).await?;
    let observer = db.connect("pgfeed-bench").await?;
    let rounds = args.repeat.max(1);
    let hz = 100.0; // USER_HZ: /proc/stat counts in 1/100 s on Linux
    let mut results: Vec<VariantResult> = Vec::new();
    for &w in &[1usize, 4, 16] {
        let first = results.len();
        for (variant, _) in VARIANTS {
            results.push(VariantResult {
                writers: w,
                variant,
                tps: vec![],
                cpu_us: vec![],
                pgfeed_us: vec![],
                backend_us: BTreeMap::new(),
                waits: BTreeMap::new(),
                stamp_gap_us: vec![],
            });
        }
        for round in 0..rounds {
            for (k, (variant, table)) in VARIANTS.iter().enumerate() {
                let seq0 = newest_seq(&observer).await?;
                let backends0 = backend_cpu(&observer).await;
                let busy0 = machine_busy_jiffies();
                let server0 = server.cpu_time();
                let (tps, pass_waits) = writer_pass(&pool[..w], table, args.pass, db).await?;
                let busy1 = machine_busy_jiffies();
                let seq1 = newest_seq(&observer).await?;
                let txns = (tps * args.pass.as_secs_f64()).max(1.0);
                let cpu_us = busy1.saturating_sub(busy0) as f64 / hz * 1e6 / txns;
                let pgfeed_us = (server.cpu_time() - server0).as_secs_f64() * 1e6 / txns;
                let mut by_role: BTreeMap<&'static str, f64> = BTreeMap::new();
                for ((role, pid), cpu) in backend_cpu(&observer).await {
                    let before = backends0.get(&(role, pid)).copied().unwrap_or_default();
                    *by_role.entry(role).or_default() += cpu.saturating_sub(before).as_secs_f64() * 1e6 / txns;
                }
                eprintln!(
                    "pgfeed-bench: {w:>2} writers, round {}/{rounds}, {variant}: {tps:.0} TPS, {cpu_us:.0} µs CPU per transaction",
                    round + 1
                );
                let r = &mut results[first + k];
                r.tps.push(tps);
                r.cpu_us.push(cpu_us);
                r.pgfeed_us.push(pgfeed_us);
                for (role, _) in BACKEND_ROLES {
                    r.backend_us
                        .entry(role)
                        .or_default()
                        .push(by_role.get(role).copied().unwrap_or(0.0));
                }
                for (key, v) in pass_waits {
                    *r.waits.entry(key).or_default() += v;
                }
                if seq1 > seq0 + 1 {
                    r.stamp_gap_us.push(stamp_gaps(&observer, seq0, seq1).await?);
                }
            }
        }
    }
    listen.1.abort();
    drop(listen.0);

    let find = |w: usize, v: &str| results.iter().find(|r| r.writers == w && r.variant == v);
    let mut table = Vec::new();
    let mut rows = Vec::new();
    let mut ok = true;
    for &w in &[1usize, 4, 16] {
        let (Some(plain), Some(notify), Some(capture)) =
            (find(w, "no trigger"), find(w, "bare NOTIFY"), find(w, "pgfeed capture"))
        else {
            continue;
        };
        // The ratio of each round (same minutes of the machine), then the median of those.
        let per_round: Vec<f64> = capture
            .tps
            .iter()
            .zip(&notify.tps)
            .map(|(c, n)| c / n.max(1e-9))
            .collect();
        let ratio = report::median(&per_round);
        ok &= ratio >= 0.8;
        let (p, n, c) = (
            report::median(&plain.tps),
            report::median(&notify.tps),
            report::median(&capture.tps),
        );
        let cpu = |r: &VariantResult| report::median(&r.cpu_us);
        table.push((
            format!("{w:>2} writers"),
            format!(
                "no trigger {p:>6.0} · bare NOTIFY {n:>6.0} ({:.2}×) · capture {c:>6.0} TPS ({:.2}×) = {ratio:.2}× bare NOTIFY \
                 (rounds {})",
                n / p.max(1e-9),
                c / p.max(1e-9),
                per_round
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ));
        let roles = |r: &VariantResult| {
            BACKEND_ROLES
                .iter()
                .map(|(role, _)| {
                    (
                        *role,
                        report::median(r.backend_us.get(role).map_or(&[][..], |v| v.as_slice())),
                    )
                })
                .filter(|(_, us)| *us >= 0.5)
                .collect::<Vec<_>>()
        };
        let show = |r: &VariantResult| {
            roles(r)
                .iter()
                .map(|(role, us)| format!("{role} {us:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        table.push((
            format!("{w:>2} writers, backends"),
            format!("µs/txn · bare NOTIFY: {} · capture: {}", show(notify), show(capture)),
        ));
        table.push((
            format!("{w:>2} writers, CPU/txn"),
            format!(
                "no trigger {:.0} µs · bare NOTIFY {:.0} µs · capture {:.0} µs, of which the pgfeed process {:.0} µs \
                 (whole machine)",
                cpu(plain),
                cpu(notify),
                cpu(capture),
                report::median(&capture.pgfeed_us)
            ),
        ));
        let gap = |k: usize| report::median(&capture.stamp_gap_us.iter().map(|g| g[k]).collect::<Vec<_>>());
        table.push((
            format!("{w:>2} writers, stamps"),
            format!(
                "capture: successive commit stamps p10 {:.0} · p50 {:.0} · p90 {:.0} µs apart",
                gap(0),
                gap(1),
                gap(2)
            ),
        ));
        rows.push(json!({
            "stamp_gap_us": {"p10": gap(0).round(), "p50": gap(1).round(), "p90": gap(2).round()},
            "writers": w, "no_trigger_tps": p.round(), "notify_tps": n.round(), "capture_tps": c.round(),
            "capture_vs_notify": report::round(ratio), "capture_vs_no_trigger": report::round(c / p.max(1e-9)),
            "capture_vs_notify_rounds": per_round.iter().map(|r| report::round(*r)).collect::<Vec<_>>(),
            "cpu_us_per_txn": {"no_trigger": cpu(plain).round(), "notify": cpu(notify).round(), "capture": cpu(capture).round(),
                "capture_pgfeed_process": report::median(&capture.pgfeed_us).round(),
                "notify_backends": roles(notify).into_iter().map(|(k, v)| (k.to_owned(), json!(v.round()))).collect::<serde_json::Map<_, _>>(),
                "capture_backends": roles(capture).into_iter().map(|(k, v)| (k.to_owned(), json!(v.round()))).collect::<serde_json::Map<_, _>>()},
        }));
    }
    let mut wait_json = serde_json::Map::new();
    for VariantResult {
        writers: w,
        variant,
        waits,
        ..
    } in &results
    {
        let mut waits: Vec<(&String, &u64)> = waits.iter().collect();
        waits.sort_by_key(|w| std::cmp::Reverse(*w.1));
        if *w == 16 && *variant != "no trigger" {
            let total: u64 = waits.iter().map(|x| x.1).sum::<u64>().max(1);
            let top: Vec<String> = waits
                .iter()
                .take(4)
                .map(|(k, v)| format!("{k} {:.0}%", 100.0 * **v as f64 / total as f64))
                .collect();
            table.push((format!("16 writers wait ({variant})"), top.join(", ")));
            wait_json.insert(
                variant.to_string(),
                json!(waits
                    .iter()
                    .take(6)
                    .map(|(k, v)| json!({"wait": k, "share": report::round(**v as f64 / total as f64)}))
                    .collect::<Vec<_>>()),
            );
        }
    }
    table.push((
        "target".to_owned(),
        "capture ≥ 0.8× bare NOTIFY at every writer count".to_owned(),
    ));
    table.push(("verdict".to_owned(), verdict(ok).to_owned()));
    let out = json!({
        "scenario": "writers", "pass_s": args.pass.as_secs_f64(), "rounds": rounds, "followers": args.followers,
        "results": rows, "waits_at_16": wait_json,
        "notifications_received": received.load(std::sync::atomic::Ordering::Relaxed),
        "machine": machine(db).await, "meets_target": ok,
    });
    report::print("writers", &table, &out);
    Ok(())
}

/// One closed-loop pass: each writer inserts 1-row transactions into `table` for `pass`; a sampler
/// reads the writers' wait events from `pg_stat_activity` every 10 ms.
async fn writer_pass(
    writers: &[tokio_postgres::Client],
    table: &str,
    pass: Duration,
    db: &BenchDb,
) -> anyhow::Result<(f64, BTreeMap<String, u64>)> {
    let sql = format!("insert into {table} (body) values ('bench')");
    let stop = Instant::now() + pass;
    let sampler_conn = db.connect("pgfeed-bench-sampler").await?;
    let sampler = tokio::spawn(async move {
        let mut waits: BTreeMap<String, u64> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while Instant::now() < stop {
            tick.tick().await;
            let Ok(rows) = sampler_conn
                .query(
                    "select coalesce(wait_event_type || ':' || wait_event, 'CPU') from pg_stat_activity where application_name = $1 and state = 'active'",
                    &[&WRITER_APP],
                )
                .await
            else {
                break;
            };
            for r in rows {
                *waits.entry(r.get::<_, String>(0)).or_default() += 1;
            }
        }
        waits
    });
    let t0 = Instant::now();
    let counts = futures::future::try_join_all(writers.iter().map(|c| {
        let sql = sql.clone();
        async move {
            let stmt = c.prepare(&sql).await?;
            let mut n = 0u64;
            while Instant::now() < stop {
                c.execute(&stmt, &[]).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }
    }))
    .await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let waits = sampler.await.unwrap_or_default();
    Ok((counts.iter().sum::<u64>() as f64 / elapsed, waits))
}
