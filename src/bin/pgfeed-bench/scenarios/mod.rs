//! The scenarios. Each starts its own `pgfeed serve` (so memory and CPU figures are its own),
//! measures, stops it, and prints a table and one JSON line.

mod admin_page;
mod bulk;
mod catchup;
mod idle;
mod latency;
mod nodes;
mod streams;
mod views;
mod writers;

use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use serde_json::json;

use crate::client::{self, Sub, Transport};
use crate::report;
use crate::setup::{self, BenchDb, Server};
use crate::{Args, Scenario};
use admin_page::admin_page;
use bulk::bulk;
use catchup::catchup;
use idle::idle;
use nodes::nodes;
use streams::{stream_scenario, Load};
use views::views;
use writers::writers;

/// Subscribers connecting at once while a scenario sets up.
pub(super) const CONNECT_CONCURRENCY: usize = 100;
/// How long `fanout` writes for, and `latency` for each of pgfeed and the bare relay.
const PACED_DURATION: Duration = Duration::from_secs(20);
/// How long subscribers may take, after the last commit, to receive everything.
pub(super) const DRAIN: Duration = Duration::from_secs(60);

/// The writers' row: its body is the writer's timestamp (µs since the epoch), taken by the
/// INSERT itself just before its commit, on the machine's one clock.
pub(super) const INSERT_STAMPED: &str = r#"insert into messages (study_id, author, body)
    values ($1, $2, (extract(epoch from clock_timestamp()) * 1000000)::bigint::text) returning id, body"#;

pub async fn run(scenario: Scenario, args: &Args, db: &BenchDb) -> anyhow::Result<()> {
    if scenario == Scenario::Nodes {
        // It starts servers of its own, several at a time.
        return nodes(args, db).await;
    }
    let binary = setup::pgfeed_binary(args.pgfeed.as_deref())?;
    let server = Server::start(&binary, db).await?;
    eprintln!("pgfeed-bench: {scenario:?} against pgfeed at {}", server.addr);
    let mut followers = Vec::new();
    if matches!(scenario, Scenario::Writers | Scenario::Bulk) {
        for _ in 0..args.followers {
            followers.push(Server::start_on(&binary, &db.url).await?);
        }
        for f in &followers {
            let ready_by = tokio::time::Instant::now() + Duration::from_secs(60);
            while !f.healthy().await {
                anyhow::ensure!(
                    tokio::time::Instant::now() < ready_by,
                    "a follower's listener did not connect"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if !followers.is_empty() {
            eprintln!(
                "pgfeed-bench: {} following servers on the same database",
                followers.len()
            );
        }
    }
    let outcome = match scenario {
        Scenario::Latency => {
            let (rate, duration) = (args.rate.unwrap_or(500), args.duration.unwrap_or(PACED_DURATION));
            match args.transport {
                // Beside the bare-NOTIFY relay, which speaks plain WebSocket only.
                Transport::Ws => latency::latency(args, db, &server, rate, duration).await,
                Transport::Socketio => {
                    let load = Load::Paced { rate, duration };
                    stream_scenario("latency", args.subscribers.unwrap_or(100), load, args, db, &server).await
                }
            }
        }
        Scenario::Fanout => {
            let load = Load::Paced {
                rate: args.rate.unwrap_or(200),
                duration: args.duration.unwrap_or(PACED_DURATION),
            };
            stream_scenario("fanout", args.subscribers.unwrap_or(1000), load, args, db, &server).await
        }
        Scenario::Burst => {
            let load = Load::Burst {
                rows: args.rows.unwrap_or(20_000),
            };
            stream_scenario("burst", args.subscribers.unwrap_or(10), load, args, db, &server).await
        }
        Scenario::Idle => idle(args.subscribers.unwrap_or(10_000), args, db, &server).await,
        Scenario::Catchup => catchup(args.rows.unwrap_or(100_000), args, db, &server).await,
        Scenario::Writers => writers(args, db, &server).await,
        // Bulk statements, then the 1-row writers beside them (issue 19 sets targets for both).
        Scenario::Bulk => match bulk(args, db, &server).await {
            Ok(()) => writers(args, db, &server).await,
            Err(e) => Err(e),
        },
        Scenario::Views => views(args, db, &server).await,
        Scenario::AdminPage => admin_page(args, db, &server).await,
        Scenario::Nodes | Scenario::All => unreachable!("run above, or expanded by the caller"),
    };
    for f in followers {
        f.stop().await?;
    }
    server.stop().await?;
    outcome
}

/// Whether `scenario` runs over `--transport socketio` too (the others speak `/ws` only).
pub fn over_any_transport(scenario: Scenario) -> bool {
    matches!(
        scenario,
        Scenario::Latency | Scenario::Fanout | Scenario::Burst | Scenario::Idle
    )
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

/// Opens `n` subscribers over `transport`, each subscribed to `topic`.
pub(super) async fn subscribers(
    server: &Server,
    transport: Transport,
    n: usize,
    topic: &str,
    concurrency: usize,
) -> anyhow::Result<Vec<Sub>> {
    let addr = server.addr;
    let topic: Arc<str> = topic.into();
    let all: Vec<anyhow::Result<Sub>> = stream::iter(0..n)
        .map(|i| {
            let topic = topic.clone();
            async move {
                let mut sub = client::connect_over(addr, i, transport).await?;
                client::subscribe_over(&mut sub, &topic).await?;
                Ok(sub)
            }
        })
        .buffered(concurrency)
        .collect()
        .await;
    all.into_iter().collect()
}
