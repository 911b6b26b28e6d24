//! The scenarios. Each starts its own `pgfeed serve` (so memory and CPU figures are its own),
//! measures, stops it, and prints a table and one JSON line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{stream, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{self, now_us, Tally, Ws};
use crate::report::{self, lost_and_doubled, verdict, Percentiles};
use crate::setup::{self, BenchDb, Server, WRITER_APP};
use crate::{Args, Scenario};

/// Subscribers connecting at once while a scenario sets up.
const CONNECT_CONCURRENCY: usize = 100;
/// How long subscribers may take, after the last commit, to receive everything.
const DRAIN: Duration = Duration::from_secs(60);

/// The writers' row: its body is the writer's timestamp (µs since the epoch), taken by the
/// INSERT itself just before its commit, on the machine's one clock.
const INSERT_STAMPED: &str = r#"insert into messages (study_id, author, body)
    values ($1, $2, (extract(epoch from clock_timestamp()) * 1000000)::bigint::text) returning id, body"#;

pub async fn run(scenario: Scenario, args: &Args, db: &BenchDb) -> anyhow::Result<()> {
    let binary = setup::pgfeed_binary(args.pgfeed.as_deref())?;
    let server = Server::start(&binary, db).await?;
    eprintln!("pgfeed-bench: {scenario:?} against pgfeed at {}", server.addr);
    let outcome = match scenario {
        Scenario::Latency => {
            let load = Load::Paced {
                rate: args.rate.unwrap_or(500),
                duration: args.duration,
            };
            stream_scenario("latency", args.subscribers.unwrap_or(100), load, args, db, &server).await
        }
        Scenario::Fanout => {
            let load = Load::Paced {
                rate: args.rate.unwrap_or(200),
                duration: args.duration,
            };
            stream_scenario("fanout", args.subscribers.unwrap_or(1000), load, args, db, &server).await
        }
        Scenario::Burst => {
            let load = Load::Burst {
                rows: args.rows.unwrap_or(20_000),
            };
            stream_scenario("burst", args.subscribers.unwrap_or(10), load, args, db, &server).await
        }
        Scenario::Idle => idle(args.subscribers.unwrap_or(10_000), db, &server).await,
        Scenario::Catchup => catchup(args.rows.unwrap_or(100_000), args, db, &server).await,
        Scenario::Writers => writers(args, db, &server).await,
        Scenario::All => unreachable!("expanded by the caller"),
    };
    server.stop().await?;
    outcome
}

/// The machine, for the README's performance section and the top of a run.
pub async fn machine(db: &BenchDb) -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let pg = db.version().await.unwrap_or_default();
    // Other work on the box skews every figure: the load average says how quiet it was.
    let load: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0);
    json!({"cores": cores, "memory_gib": report::round(mem_kib as f64 / 1048576.0), "cpu": cpu, "postgresql": pg, "loadavg_1m": load})
}

#[derive(Debug, Clone, Copy)]
enum Load {
    /// `rate` rows/s in all, spread over the writers on a fixed schedule, for `duration`.
    Paced { rate: u32, duration: Duration },
    /// `rows` rows, each writer inserting as fast as it can.
    Burst { rows: usize },
}

/// What the writers did.
struct Written {
    /// Every inserted row id, sorted.
    ids: Vec<i64>,
    first_us: i64,
    last_commit_us: i64,
    /// Largest delay of a paced insert behind its schedule.
    max_behind: Duration,
    /// Per row: the writer's own commit, from its row stamp to the acknowledgement (µs).
    commits_us: Vec<u32>,
}

async fn write(db: &BenchDb, writers: usize, study: i64, load: Load) -> anyhow::Result<Written> {
    let clients = db.writers(writers).await?;
    let first_us = now_us();
    let t0 = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, client)| {
            tokio::spawn(async move {
                let stmt = client.prepare(INSERT_STAMPED).await?;
                let author = format!("w{k}");
                let mut ids = Vec::new();
                let mut commits_us = Vec::new();
                let mut behind = Duration::ZERO;
                let mut last = 0;
                for i in 0.. {
                    match load {
                        Load::Paced { rate, duration } => {
                            let at = Duration::from_secs_f64((i * writers + k) as f64 / f64::from(rate));
                            if at >= duration {
                                break;
                            }
                            tokio::time::sleep_until(t0 + at).await;
                            behind = behind.max(t0.elapsed().saturating_sub(at));
                        }
                        Load::Burst { rows } => {
                            if i * writers + k >= rows {
                                break;
                            }
                        }
                    }
                    let row = client.query_one(&stmt, &[&study, &author]).await?;
                    last = now_us();
                    ids.push(row.get::<_, i64>(0));
                    let stamp: i64 = row.get::<_, &str>(1).parse()?;
                    commits_us.push(u32::try_from(last - stamp).unwrap_or(u32::MAX));
                }
                anyhow::Ok((ids, last, behind, commits_us))
            })
        })
        .collect();
    let mut written = Written {
        ids: Vec::new(),
        first_us,
        last_commit_us: 0,
        max_behind: Duration::ZERO,
        commits_us: Vec::new(),
    };
    for task in tasks {
        let (ids, last, behind, commits_us) = task.await??;
        written.ids.extend(ids);
        written.commits_us.extend(commits_us);
        written.last_commit_us = written.last_commit_us.max(last);
        written.max_behind = written.max_behind.max(behind);
    }
    written.ids.sort_unstable();
    Ok(written)
}

/// Opens `n` subscribers, each subscribed to `topic`.
async fn subscribers(server: &Server, n: usize, topic: &str, concurrency: usize) -> anyhow::Result<Vec<Ws>> {
    let addr = server.addr;
    let topic: Arc<str> = topic.into();
    let all: Vec<anyhow::Result<Ws>> = stream::iter(0..n)
        .map(|i| {
            let topic = topic.clone();
            async move {
                let mut ws = client::connect(addr, i).await?;
                client::subscribe(&mut ws, &topic, None).await?;
                Ok(ws)
            }
        })
        .buffered(concurrency)
        .collect()
        .await;
    all.into_iter().collect()
}

/// latency, fanout, burst: subscribers on `messages`, writers inserting messages, every delivery
/// checked against the inserted ids.
async fn stream_scenario(
    name: &str,
    n: usize,
    load: Load,
    args: &Args,
    db: &BenchDb,
    server: &Server,
) -> anyhow::Result<()> {
    let setup_conn = db.connect("pgfeed-bench").await?;
    let study = setup::new_study(&setup_conn).await?;
    eprintln!("pgfeed-bench: connecting {n} subscribers");
    let sockets = subscribers(server, n, "messages", CONNECT_CONCURRENCY).await?;
    let (target_tx, target_rx) = watch::channel(None);
    let deadline = Instant::now()
        + match load {
            Load::Paced { duration, .. } => duration,
            Load::Burst { .. } => Duration::from_secs(600),
        }
        + DRAIN;
    let receivers: Vec<_> = sockets
        .into_iter()
        .map(|ws| tokio::spawn(client::receive(ws, target_rx.clone(), deadline)))
        .collect();

    eprintln!("pgfeed-bench: writing ({load:?}, {} writers)", args.writers);
    let cpu0 = server.cpu_time();
    let own0 = setup::cpu_time("self");
    let mut written = write(db, args.writers, study, load).await?;
    target_tx.send_replace(Some(written.ids.len()));
    let mut tallies: Vec<Tally> = Vec::with_capacity(n);
    for r in receivers {
        tallies.push(r.await?);
    }
    let cpu = server.cpu_time().saturating_sub(cpu0);
    let own = setup::cpu_time("self").saturating_sub(own0);

    let rows = written.ids.len();
    let expected = rows * n;
    let commit = Percentiles::of(std::mem::take(&mut written.commits_us));
    let delivered: usize = tallies.iter().map(|t| t.ids.len()).sum();
    let (mut lost, mut doubled) = (0, 0);
    for t in &tallies {
        let (l, d) = lost_and_doubled(&written.ids, &t.ids);
        lost += l;
        doubled += d;
    }
    let out_of_order: u64 = tallies.iter().map(|t| t.out_of_order).sum();
    let closed: BTreeMap<u16, usize> = tallies
        .iter()
        .filter_map(|t| t.closed)
        .fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c).or_default() += 1;
            m
        });
    let last_delivery_us = tallies.iter().map(|t| t.last_at_us).max().unwrap_or(0);
    let tail_ms = (last_delivery_us - written.last_commit_us) as f64 / 1000.0;
    let span_s = (last_delivery_us.max(written.last_commit_us) - written.first_us) as f64 / 1e6;
    let write_s = (written.last_commit_us - written.first_us) as f64 / 1e6;
    let per_s = delivered as f64 / span_s.max(1e-9);
    let relay = Percentiles::of(
        tallies
            .iter_mut()
            .flat_map(|t| std::mem::take(&mut t.relay_us))
            .collect(),
    );
    let lat = Percentiles::of(tallies.into_iter().flat_map(|t| t.latencies_us).collect());
    let exact = lost == 0 && doubled == 0 && out_of_order == 0;

    let (ok, target) = match name {
        "latency" => (exact && lat.p99 <= 10.0, "none lost or doubled; p99 ≤ 10 ms"),
        "fanout" => (
            exact && per_s >= 195_000.0 && lat.p99 <= 100.0,
            "≥ 195,000 deliveries/s, p99 ≤ 100 ms, none lost",
        ),
        _ => (
            exact && delivered == expected,
            "all delivered; last commit → last delivery reported",
        ),
    };
    let mut table = vec![
        ("subscribers".to_owned(), format!("{n} on `messages`")),
        (
            "rows written".to_owned(),
            format!(
                "{rows} by {} writers in {write_s:.2} s ({:.0} rows/s; worst lag behind schedule {:?})",
                args.writers,
                rows as f64 / write_s.max(1e-9),
                written.max_behind
            ),
        ),
        ("deliveries".to_owned(), format!("{delivered} of {expected} expected")),
        (
            "deliveries/s".to_owned(),
            format!("{per_s:.0} (first write → last delivery)"),
        ),
        (
            "lost / doubled / out of order".to_owned(),
            format!("{lost} / {doubled} / {out_of_order}"),
        ),
        ("latency (receive − row stamp)".to_owned(), lat.text()),
        ("of which receive − committed_at".to_owned(), relay.text()),
        ("writer's commit (ack − row stamp)".to_owned(), commit.text()),
        ("last commit → last delivery".to_owned(), format!("{tail_ms:.1} ms")),
        (
            "pgfeed CPU".to_owned(),
            format!(
                "{:.2} s ({:.0}% of one core)",
                cpu.as_secs_f64(),
                100.0 * cpu.as_secs_f64() / span_s.max(1e-9)
            ),
        ),
        (
            "bench (writers + clients) CPU".to_owned(),
            format!(
                "{:.2} s ({:.0}% of one core)",
                own.as_secs_f64(),
                100.0 * own.as_secs_f64() / span_s.max(1e-9)
            ),
        ),
        ("connections closed by server".to_owned(), format!("{closed:?}")),
        ("target".to_owned(), target.to_owned()),
        ("verdict".to_owned(), verdict(ok).to_owned()),
    ];
    if closed.is_empty() {
        table.retain(|(k, _)| k != "connections closed by server");
    }
    let out = json!({
        "scenario": name, "subscribers": n, "writers": args.writers, "rows": rows,
        "rows_per_s": report::round(rows as f64 / write_s.max(1e-9)),
        "deliveries": delivered, "expected": expected, "deliveries_per_s": per_s.round(),
        "lost": lost, "doubled": doubled, "out_of_order": out_of_order,
        "latency": lat.json(), "relay_latency": relay.json(), "commit_latency": commit.json(), "tail_ms": report::round(tail_ms),
        "server_cpu_s": report::round(cpu.as_secs_f64()),
        "bench_cpu_s": report::round(own.as_secs_f64()), "closed": closed,
        "machine": machine(db).await, "meets_target": ok,
    });
    report::print(name, &table, &out);
    Ok(())
}

/// idle: many subscribed, silent connections; the server's RSS growth per connection.
async fn idle(n: usize, db: &BenchDb, server: &Server) -> anyhow::Result<()> {
    let limit = setup::file_limit() as usize;
    if limit < n + 256 {
        bail!(
            "the open-file limit is {limit}; `idle` with {n} connections needs {}",
            n + 256
        );
    }
    let setup_conn = db.connect("pgfeed-bench").await?;
    let study = setup::new_study(&setup_conn).await?;
    let topic = format!("studies:{study}");
    // One connection first, so lazily built state (pools, caches) is in the baseline, not the growth.
    let warm = subscribers(server, 1, &topic, 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib()?;
    eprintln!("pgfeed-bench: opening {n} idle connections on {topic}");
    let t0 = Instant::now();
    let sockets = subscribers(server, n, &topic, 256).await?;
    let opened = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib()?;
    let per_conn = (after.saturating_sub(before)) as f64 / n as f64;

    // Idle, not dead: one row reaches every one of them.
    let (target_tx, target_rx) = watch::channel(Some(1));
    let deadline = Instant::now() + Duration::from_secs(60);
    let receivers: Vec<_> = sockets
        .into_iter()
        .chain(warm)
        .map(|ws| tokio::spawn(client::receive(ws, target_rx.clone(), deadline)))
        .collect();
    let sent = now_us();
    setup_conn
        .execute(INSERT_STAMPED, &[&study, &"idle"])
        .await
        .context("inserting the wake-up row")?;
    let mut reached = 0;
    let mut last = sent;
    for r in receivers {
        let t = r.await?;
        if !t.ids.is_empty() {
            reached += 1;
            last = last.max(t.last_at_us);
        }
    }
    drop(target_tx);
    let ok = per_conn <= 6.0 && reached == n + 1;
    let table = [
        (
            "connections".to_owned(),
            format!(
                "{n} idle, subscribed to {topic}, from 127.0.0.2…127.0.0.{}",
                2 + (n - 1) / 200
            ),
        ),
        ("opened in".to_owned(), format!("{:.2} s", opened.as_secs_f64())),
        ("pgfeed RSS".to_owned(), format!("{before} KiB → {after} KiB")),
        ("growth per connection".to_owned(), format!("{per_conn:.2} KiB")),
        (
            "one row then reached".to_owned(),
            format!(
                "{reached} of {} connections, the last after {:.1} ms",
                n + 1,
                (last - sent) as f64 / 1000.0
            ),
        ),
        ("target".to_owned(), "≤ 6 KiB per connection".to_owned()),
        ("verdict".to_owned(), verdict(ok).to_owned()),
    ];
    let out = json!({
        "scenario": "idle", "connections": n, "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_connection": report::round(per_conn), "reached": reached,
        "machine": machine(db).await, "meets_target": ok,
    });
    report::print("idle", &table, &out);
    Ok(())
}

/// catchup: one client resumes from a cursor `rows` events behind, then stays live.
async fn catchup(rows: usize, args: &Args, db: &BenchDb, server: &Server) -> anyhow::Result<()> {
    let setup_conn = db.connect("pgfeed-bench").await?;
    let study = setup::new_study(&setup_conn).await?;
    let mut probe = client::connect(server.addr, 0).await?;
    let since = client::subscribe(&mut probe, "messages", None).await?;
    drop(probe);

    // Fill the log: transactions of 100 rows from the writers, so the replay crosses many commits.
    eprintln!("pgfeed-bench: writing {rows} rows to resume over");
    const PER_TX: usize = 100;
    let clients = db.writers(args.writers).await?;
    let txs = rows.div_ceil(PER_TX);
    let fills: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            let w = args.writers;
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for t in (k..txs).step_by(w) {
                    let count = PER_TX.min(rows - t * PER_TX) as i32;
                    let got = c
                        .query(
                            "insert into messages (study_id, author, body) select $1, 'fill', g::text from generate_series(1, $2) g returning id",
                            &[&study, &count],
                        )
                        .await?;
                    ids.extend(got.iter().map(|r| r.get::<_, i64>(0)));
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let mut expected = Vec::with_capacity(rows);
    for f in fills {
        expected.extend(f.await??);
    }
    expected.sort_unstable();

    let mut ws = client::connect(server.addr, 1).await?;
    eprintln!("pgfeed-bench: replaying {rows} events");
    let t0 = Instant::now();
    client::subscribe(&mut ws, "messages", Some(&since)).await?;
    let (target_tx, target_rx) = watch::channel(Some(rows));
    let deadline = Instant::now() + Duration::from_secs(300);
    let tally = read_into(&mut ws, target_rx, deadline).await;
    let replay = t0.elapsed();
    let per_s = tally.ids.len() as f64 / replay.as_secs_f64();
    let (lost, doubled) = lost_and_doubled(&expected, &tally.ids);

    // Then live: one more row arrives on the same subscription.
    let live_sent = now_us();
    setup_conn.execute(INSERT_STAMPED, &[&study, &"live"]).await?;
    target_tx.send_replace(Some(1));
    let live = read_into(&mut ws, target_tx.subscribe(), Instant::now() + Duration::from_secs(30)).await;
    let live_ms = (live.last_at_us - live_sent) as f64 / 1000.0;
    let went_live = live.ids.len() == 1;

    let ok = lost == 0 && doubled == 0 && tally.out_of_order == 0 && per_s >= 100_000.0 && went_live;
    let table = [
        (
            "behind by".to_owned(),
            format!("{rows} events ({txs} commits of {PER_TX} rows)"),
        ),
        (
            "replayed".to_owned(),
            format!(
                "{} events in {:.3} s: {per_s:.0} events/s",
                tally.ids.len(),
                replay.as_secs_f64()
            ),
        ),
        (
            "lost / doubled / out of order".to_owned(),
            format!("{lost} / {doubled} / {}", tally.out_of_order),
        ),
        (
            "then live".to_owned(),
            if went_live {
                format!("a new row arrived {live_ms:.1} ms after its INSERT was sent")
            } else {
                "the live row did not arrive".to_owned()
            },
        ),
        (
            "target".to_owned(),
            "≥ 100,000 events/s, in order, then live".to_owned(),
        ),
        ("verdict".to_owned(), verdict(ok).to_owned()),
    ];
    let out = json!({
        "scenario": "catchup", "behind": rows, "replayed": tally.ids.len(),
        "seconds": report::round(replay.as_secs_f64()), "events_per_s": per_s.round(),
        "lost": lost, "doubled": doubled, "out_of_order": tally.out_of_order,
        "live": went_live, "live_ms": report::round(live_ms),
        "machine": machine(db).await, "meets_target": ok,
    });
    report::print("catchup", &table, &out);
    Ok(())
}

/// `client::receive` on a borrowed socket: reads until `target` events.
async fn read_into(ws: &mut Ws, target: watch::Receiver<Option<usize>>, deadline: Instant) -> Tally {
    client::receive_on(ws, target, deadline).await
}

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

/// CPU used so far by the backends of each role, per backend pid (read from /proc: only when
/// PostgreSQL runs on this machine; otherwise every figure is 0).
async fn backend_cpu(conn: &tokio_postgres::Client) -> BTreeMap<(&'static str, i32), Duration> {
    let mut out = BTreeMap::new();
    let Ok(rows) = conn
        .query(
            "select pid, application_name from pg_stat_activity where backend_type = 'client backend'",
            &[],
        )
        .await
    else {
        return out;
    };
    for row in rows {
        let (pid, app): (i32, String) = (row.get(0), row.get(1));
        if let Some((role, _)) = BACKEND_ROLES.iter().find(|(_, a)| *a == app) {
            out.insert((*role, pid), setup::cpu_time(&pid.to_string()));
        }
    }
    out
}

/// writers: TPS of 1-row inserts at 1, 4 and 16 writers, per variant, with where writers wait.
///
/// The variants take turns within each round (no trigger, bare NOTIFY, capture, then again), so
/// drift on the machine (disk flush latency moves by tens of percent over minutes on a VM) lands
/// on all three alike; the ratio is taken per round and its median reported.
async fn writers(args: &Args, db: &BenchDb, server: &Server) -> anyhow::Result<()> {
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
                "no trigger {p:>6.0} · bare NOTIFY {n:>6.0} ({:.2}×) · capture {c:>6.0} TPS = {ratio:.2}× bare NOTIFY \
                 (rounds {})",
                n / p.max(1e-9),
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
            "capture_vs_notify": report::round(ratio),
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
        "scenario": "writers", "pass_s": args.pass.as_secs_f64(), "rounds": rounds,
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
