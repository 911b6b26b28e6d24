//! nodes: what PostgreSQL spends per commit as pgfeed servers are added on one database
//! (issue 18), for the build under test and, with `--pgfeed-before`, an older one, in
//! interleaved runs.
//!
//! Each run starts N servers of one build on that build's own database (each build installs its
//! own capture code), puts `--subscribers` WebSocket subscribers on `messages` on every server,
//! writes `--rate` 1-row commits per second from `--writers` connections for `--duration`, and
//! waits until every subscriber got every row. PostgreSQL's CPU is read from /proc: the
//! postmaster's utime + stime, its children's that exited (cutime + cstime), and each live
//! child's, between the first commit and the last delivery; divided by the commits. Every
//! subscriber's rows are checked against the ids written (none lost, none doubled, in order).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::streams::{write, Load};
use super::{machine, subscribers, CONNECT_CONCURRENCY, DRAIN, INSERT_STAMPED};
use crate::client::{self, Tally, Transport};
use crate::report::{self, lost_and_doubled, verdict};
use crate::setup::{self, BenchDb, ClusterCpu, Server, WRITER_APP};
use crate::Args;

/// Server counts measured unless `--nodes` says otherwise.
pub const DEFAULT_NODES: [usize; 3] = [1, 4, 8];
/// How long the writers write unless `--duration` says otherwise.
const DURATION: Duration = Duration::from_secs(15);
/// How long every server may take to answer `/healthz` with 200 (its listener connected).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The PostgreSQL processes a run's CPU is told apart by.
const ROLES: [&str; 4] = ["writers", "pgfeed sessions", "background", "exited"];

/// One build of pgfeed: its label and binary.
struct Build {
    label: &'static str,
    binary: PathBuf,
    /// Its database, beside the bench's, dropped at the end.
    database: String,
    url: String,
}

/// What one run measured.
struct Run {
    commits: usize,
    rate: f64,
    max_behind: Duration,
    /// PostgreSQL's CPU per commit, µs: all of it, and by role.
    pg_us: f64,
    roles_us: BTreeMap<&'static str, f64>,
    /// The pgfeed servers' own CPU per commit, µs (all servers together).
    pgfeed_us: f64,
    lost: usize,
    doubled: usize,
    out_of_order: u64,
    /// Subscribers that did not get exactly every row.
    short: usize,
    subscribers: usize,
}

pub(super) async fn nodes(args: &Args, db: &BenchDb) -> anyhow::Result<()> {
    let nodes = if args.nodes.is_empty() {
        DEFAULT_NODES.to_vec()
    } else {
        args.nodes.clone()
    };
    anyhow::ensure!(
        nodes.iter().all(|&n| (1..=32).contains(&n)),
        "--nodes takes server counts from 1 to 32"
    );
    let postmaster = db.postmaster_pid().await?;
    let after = setup::pgfeed_binary(args.pgfeed.as_deref())?;
    let mut builds = Vec::new();
    for (label, binary) in [("before", args.pgfeed_before.clone()), ("after", Some(after))] {
        let Some(binary) = binary else { continue };
        let (database, url) = db.sibling(&format!("nodes_{label}")).await?;
        builds.push(Build {
            label,
            binary,
            database,
            url,
        });
    }
    let outcome = measure_all(&nodes, &builds, args, postmaster).await;
    for build in &builds {
        db.drop_sibling(&build.database).await?;
    }
    let runs = outcome?;

    let rounds = args.repeat.max(1);
    let mut table = Vec::new();
    let mut rows = Vec::new();
    let mut exact = true;
    for &n in &nodes {
        let mut row = serde_json::Map::new();
        row.insert("servers".into(), json!(n));
        for build in &builds {
            let Some(rs) = runs.get(&(n, build.label)) else {
                continue;
            };
            let med = |f: &dyn Fn(&Run) -> f64| report::median(&rs.iter().map(f).collect::<Vec<_>>());
            let pg = med(&|r| r.pg_us);
            let pgfeed = med(&|r| r.pgfeed_us);
            let roles: Vec<(&str, f64)> = ROLES
                .iter()
                .map(|role| (*role, med(&|r| r.roles_us.get(role).copied().unwrap_or(0.0))))
                .collect();
            let (lost, doubled, ooo, short) = rs.iter().fold((0, 0, 0, 0), |a, r| {
                (a.0 + r.lost, a.1 + r.doubled, a.2 + r.out_of_order, a.3 + r.short)
            });
            exact &= lost == 0 && doubled == 0 && ooo == 0 && short == 0;
            let rate = med(&|r| r.rate);
            table.push((
                format!("{n} servers, {}", build.label),
                format!(
                    "PostgreSQL {pg:.0} µs/commit ({}) · pgfeed processes {pgfeed:.0} µs/commit · {rate:.0} commits/s · \
                     rounds {}",
                    roles
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.0}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    rs.iter()
                        .map(|r| format!("{:.0}", r.pg_us))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            ));
            table.push((
                format!("{n} servers, {}, exact", build.label),
                format!(
                    "{} subscribers per run: lost {lost} · doubled {doubled} · out of order {ooo} · short {short}",
                    rs[0].subscribers
                ),
            ));
            row.insert(
                build.label.into(),
                json!({
                    "pg_us_per_commit": pg.round(),
                    "pg_us_per_commit_rounds": rs.iter().map(|r| r.pg_us.round()).collect::<Vec<_>>(),
                    "pg_roles_us_per_commit": roles.iter().map(|(k, v)| ((*k).to_owned(), json!(v.round()))).collect::<serde_json::Map<_, _>>(),
                    "pgfeed_us_per_commit": pgfeed.round(),
                    "commits_per_s": rate.round(),
                    "max_behind_ms": rs.iter().map(|r| r.max_behind.as_millis()).max(),
                    "commits": rs.iter().map(|r| r.commits).collect::<Vec<_>>(),
                    "lost": lost, "doubled": doubled, "out_of_order": ooo, "short_subscribers": short,
                }),
            );
        }
        if let (Some(b), Some(a)) = (runs.get(&(n, "before")), runs.get(&(n, "after"))) {
            // The ratio of each round (the same minutes of the machine), then the median.
            let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.pg_us / b.pg_us.max(1e-9)).collect();
            let ratio = report::median(&ratios);
            table.push((
                format!("{n} servers, after/before"),
                format!(
                    "{ratio:.2}× PostgreSQL CPU per commit (rounds {})",
                    ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" ")
                ),
            ));
            row.insert("after_vs_before".into(), json!(report::round(ratio)));
        }
        rows.push(serde_json::Value::Object(row));
    }
    table.push((
        "target".to_owned(),
        "every subscriber on every server gets every row once, in order".to_owned(),
    ));
    table.push(("verdict".to_owned(), verdict(exact).to_owned()));
    let out = json!({
        "scenario": "nodes", "rate": args.rate.unwrap_or(1000), "duration_s": args.duration.unwrap_or(DURATION).as_secs_f64(),
        "writers": args.writers, "subscribers_per_server": args.subscribers.unwrap_or(10), "rounds": rounds,
        "results": rows, "machine": machine(db).await, "meets_target": exact,
    });
    report::print("nodes", &table, &out);
    Ok(())
}

/// Every run: for each round, each server count, each build (which goes first alternates).
async fn measure_all(
    nodes: &[usize],
    builds: &[Build],
    args: &Args,
    postmaster: u32,
) -> anyhow::Result<BTreeMap<(usize, &'static str), Vec<Run>>> {
    let rounds = args.repeat.max(1);
    let mut runs: BTreeMap<(usize, &'static str), Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        for &n in nodes {
            // Alternate which build goes first, so drift on the machine lands on both alike.
            let order: Vec<&Build> = if round % 2 == 0 {
                builds.iter().collect()
            } else {
                builds.iter().rev().collect()
            };
            for build in order {
                let run = run_once(build, n, args, postmaster)
                    .await
                    .with_context(|| format!("{} with {n} servers", build.label))?;
                eprintln!(
                    "pgfeed-bench: round {}/{rounds}, {n} servers, {}: {} commits at {:.0}/s, PostgreSQL {:.0} µs/commit, pgfeed {:.0} µs/commit, lost {} doubled {}",
                    round + 1,
                    build.label,
                    run.commits,
                    run.rate,
                    run.pg_us,
                    run.pgfeed_us,
                    run.lost,
                    run.doubled
                );
                runs.entry((n, build.label)).or_default().push(run);
            }
        }
    }

    Ok(runs)
}

/// One run: `n` servers of `build`, subscribers on each, the paced writers, every delivery.
async fn run_once(build: &Build, n: usize, args: &Args, postmaster: u32) -> anyhow::Result<Run> {
    let mut servers = Vec::with_capacity(n);
    // One at a time: the first migrates the database.
    for _ in 0..n {
        servers.push(Server::start_on(&build.binary, &build.url).await?);
    }
    let outcome = measure(&servers, build, args, postmaster).await;
    for s in servers {
        s.stop().await?;
    }
    outcome
}

async fn measure(servers: &[Server], build: &Build, args: &Args, postmaster: u32) -> anyhow::Result<Run> {
    let ready_by = Instant::now() + READY_TIMEOUT;
    for s in servers {
        while !s.healthy().await {
            anyhow::ensure!(Instant::now() < ready_by, "a server's listener did not connect");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let setup_conn = connect(&build.url, "pgfeed-bench").await?;
    let study = setup::new_study(&setup_conn).await?;
    let per_server = args.subscribers.unwrap_or(10);
    let mut subs = Vec::new();
    for s in servers {
        subs.extend(subscribers(s, Transport::Ws, per_server, "messages", CONNECT_CONCURRENCY).await?);
    }
    let writers = {
        let mut all = Vec::with_capacity(args.writers);
        for _ in 0..args.writers.max(1) {
            all.push(Arc::new(connect(&build.url, WRITER_APP).await?));
        }
        all
    };
    let duration = args.duration.unwrap_or(DURATION);
    let (target_tx, target_rx) = watch::channel(None);
    let deadline = Instant::now() + duration + DRAIN;
    let count = subs.len();
    let receivers: Vec<_> = subs
        .into_iter()
        .map(|sub| tokio::spawn(client::receive(sub, target_rx.clone(), deadline)))
        .collect();
    // Let every server settle into its steady state (followers waiting on the leader).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let pg0 = ClusterCpu::read(postmaster);
    let pgfeed0: Duration = servers.iter().map(Server::cpu_time).sum();
    let load = Load::Paced {
        rate: args.rate.unwrap_or(1000),
        duration,
    };
    let written = write(&writers, study, load, INSERT_STAMPED).await?;
    target_tx.send_replace(Some(written.ids.len()));
    let mut tallies: Vec<Tally> = Vec::with_capacity(count);
    for r in receivers {
        tallies.push(r.await?);
    }
    let pg1 = ClusterCpu::read(postmaster);
    let pgfeed1: Duration = servers.iter().map(Server::cpu_time).sum();

    // Which process is whose, as PostgreSQL sees it now (writers and pgfeed's sessions still open).
    let roles: BTreeMap<u32, &'static str> = setup_conn
        .query(
            "select pid, backend_type, coalesce(application_name, '') from pg_stat_activity where pid is not null",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let (pid, kind, app): (i32, Option<String>, String) = (r.get(0), r.get(1), r.get(2));
            let role = match kind.as_deref() {
                Some("client backend") if app == WRITER_APP => "writers",
                Some("client backend") if !app.starts_with("pgfeed-bench") => "pgfeed sessions",
                // The bench's own idle setup session, and PostgreSQL's background processes.
                _ => "background",
            };
            (pid as u32, role)
        })
        .collect();
    let commits = written.ids.len().max(1);
    let per_commit = |d: Duration| d.as_secs_f64() * 1e6 / commits as f64;
    let mut roles_us: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (pid, cpu) in &pg1.children {
        let before = pg0.children.get(pid).copied().unwrap_or_default();
        let role = roles.get(pid).copied().unwrap_or("background");
        *roles_us.entry(role).or_default() += per_commit(cpu.saturating_sub(before));
    }
    // The postmaster's own CPU, and that of children that exited meanwhile (their CPU before the
    // run, counted in `pg0.children`, is taken back out).
    let gone: Duration = pg0
        .children
        .iter()
        .filter(|(pid, _)| !pg1.children.contains_key(pid))
        .map(|(_, cpu)| *cpu)
        .sum();
    *roles_us.entry("exited").or_default() +=
        per_commit((pg1.postmaster + pg1.reaped).saturating_sub(pg0.postmaster + pg0.reaped + gone));
    let pg_us = roles_us.values().sum();

    let (mut lost, mut doubled) = (0, 0);
    for t in &tallies {
        let (l, d) = lost_and_doubled(&written.ids, &t.ids);
        lost += l;
        doubled += d;
    }
    let write_s = (written.last_commit_us - written.first_us) as f64 / 1e6;
    Ok(Run {
        commits: written.ids.len(),
        rate: written.ids.len() as f64 / write_s.max(1e-9),
        max_behind: written.max_behind,
        pg_us,
        roles_us,
        pgfeed_us: per_commit(pgfeed1.saturating_sub(pgfeed0)),
        lost,
        doubled,
        out_of_order: tallies.iter().map(|t| t.out_of_order).sum(),
        short: tallies.iter().filter(|t| t.ids.len() != written.ids.len()).count(),
        subscribers: count,
    })
}

async fn connect(url: &str, application_name: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().context("parsing the database URL")?;
    config.application_name(application_name);
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(conn);
    Ok(client)
}
