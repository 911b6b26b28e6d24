//! latency, fanout, burst: one scenario over a stream of inserts, paced or all at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{machine, subscribers, CONNECT_CONCURRENCY, DRAIN, INSERT_STAMPED};
use crate::client::{self, now_us, Tally, Transport};
use crate::report::{self, lost_and_doubled, verdict, Percentiles};
use crate::setup::{self, BenchDb, Server};
use crate::Args;

#[derive(Debug, Clone, Copy)]
pub(super) enum Load {
    /// `rate` rows/s in all, spread over the writers on a fixed schedule, for `duration`.
    Paced { rate: u32, duration: Duration },
    /// `rows` rows, each writer inserting as fast as it can.
    Burst { rows: usize },
}

/// What the writers did.
pub(super) struct Written {
    /// Every inserted row id, sorted.
    pub(super) ids: Vec<i64>,
    pub(super) first_us: i64,
    pub(super) last_commit_us: i64,
    /// Largest delay of a paced insert behind its schedule.
    pub(super) max_behind: Duration,
    /// Per row: the writer's own commit, from its row stamp to the acknowledgement (µs).
    pub(super) commits_us: Vec<u32>,
}

async fn write(db: &BenchDb, writers: usize, study: i64, load: Load) -> anyhow::Result<Written> {
    let clients = db.writers(writers).await?;
    write_with(clients.into_iter().map(Arc::new).collect(), study, load).await
}

/// [`write`] on connections the caller keeps (`nodes` reads their backends' CPU afterwards).
pub(super) async fn write_with(
    clients: Vec<Arc<tokio_postgres::Client>>,
    study: i64,
    load: Load,
) -> anyhow::Result<Written> {
    let writers = clients.len();
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

/// latency, fanout, burst: subscribers on `messages`, writers inserting messages, every delivery
/// checked against the inserted ids.
pub(super) async fn stream_scenario(
    name: &str,
    n: usize,
    load: Load,
    args: &Args,
    db: &BenchDb,
    server: &Server,
) -> anyhow::Result<()> {
    let setup_conn = db.connect("pgfeed-bench").await?;
    let study = setup::new_study(&setup_conn).await?;
    let transport = args.transport;
    eprintln!("pgfeed-bench: connecting {n} subscribers ({})", transport.label());
    let sockets = subscribers(server, transport, n, "messages", CONNECT_CONCURRENCY).await?;
    let (target_tx, target_rx) = watch::channel(None);
    let deadline = Instant::now()
        + match load {
            Load::Paced { duration, .. } => duration,
            Load::Burst { .. } => Duration::from_secs(600),
        }
        + DRAIN;
    let receivers: Vec<_> = sockets
        .into_iter()
        .map(|sub| tokio::spawn(client::receive(sub, target_rx.clone(), deadline)))
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
    let lat_counts: Vec<usize> = tallies.iter().map(|t| t.ids.len()).collect();
    let lat = Percentiles::of(tallies.into_iter().flat_map(|t| t.latencies_us).collect());
    let exact = lost == 0 && doubled == 0 && out_of_order == 0;
    // Every subscriber got every row: with none lost or doubled, its count is the row count.
    let short = tallies_short(&lat_counts, rows);

    let (ok, target) = match name {
        // Socket.IO is the compatibility path: its only target is that nothing is lost.
        _ if transport == Transport::Socketio => (
            exact && short == 0,
            "none lost, doubled or out of order (Socket.IO: no latency or rate target)",
        ),
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
        (
            "subscribers".to_owned(),
            format!("{n} on `messages`, over {}", transport.label()),
        ),
        (
            "rows written".to_owned(),
            format!(
                "{rows} by {} writers in {write_s:.2} s ({:.0} rows/s; worst lag behind schedule {:?})",
                args.writers,
                rows as f64 / write_s.max(1e-9),
                written.max_behind
            ),
        ),
        (
            "deliveries".to_owned(),
            format!("{delivered} of {expected} expected; {short} subscribers without exactly {rows}"),
        ),
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
        "scenario": name, "transport": transport.name(), "subscribers": n, "short_subscribers": short, "writers": args.writers, "rows": rows,
        "rows_per_s": report::round(rows as f64 / write_s.max(1e-9)),
        "deliveries": delivered, "expected": expected, "deliveries_per_s": per_s.round(),
        "lost": lost, "doubled": doubled, "out_of_order": out_of_order,
        "latency": lat.json(), "relay_latency": relay.json(), "commit_latency": commit.json(), "tail_ms": report::round(tail_ms),
        "server_cpu_s": report::round(cpu.as_secs_f64()),
        "bench_cpu_s": report::round(own.as_secs_f64()), "closed": closed,
        "machine": machine(db).await, "meets_target": ok,
    });
    let title = match transport {
        Transport::Ws => name.to_owned(),
        Transport::Socketio => format!("{name} (socket.io)"),
    };
    report::print(&title, &table, &out);
    Ok(())
}

/// Subscribers whose event count is not `rows`.
fn tallies_short(counts: &[usize], rows: usize) -> usize {
    counts.iter().filter(|&&c| c != rows).count()
}
