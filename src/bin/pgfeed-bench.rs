//! `pgfeed-bench`: drives a real `pgfeed serve` over real sockets and prints what it measured.
//!
//! Each scenario starts the `pgfeed` binary that sits next to this one (build both with
//! `cargo build --release`), pointed at the bench's own PostgreSQL: a private, durable cluster in a
//! temp dir (fsync on, like production), or `--database-url`. Writers are separate PostgreSQL
//! connections, never calls into pgfeed; subscribers are WebSocket (or Socket.IO, `--transport socketio`) clients on loopback, spread over
//! 127.0.0.2… source addresses so that a per-IP connection limit never caps a scenario.
//!
//! Every scenario is bounded in time and count and prints a human table, then one JSON line.
//! Timings live here and only here: the tests assert behaviour, never durations.

// A crate root's modules resolve beside it, so the bench's own folder is named explicitly.
#[path = "pgfeed-bench/client.rs"]
mod client;
#[path = "pgfeed-bench/relay.rs"]
mod relay;
#[path = "pgfeed-bench/report.rs"]
mod report;
#[path = "pgfeed-bench/scenarios/mod.rs"]
mod scenarios;
#[path = "pgfeed-bench/setup.rs"]
mod setup;

use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "pgfeed-bench", about = "Benchmarks a real `pgfeed serve` over real sockets")]
pub struct Args {
    /// Which scenario to run; `all` runs each in turn.
    pub scenario: Scenario,

    /// What the subscribers of latency, fanout, burst and idle speak: `ws` (`/ws`) or `socketio`
    /// (`/socket.io/`, Engine.IO 4 over WebSocket; not long-polling). With `socketio`, `all`
    /// runs only those four.
    #[arg(long, value_enum, default_value_t = client::Transport::Ws)]
    pub transport: client::Transport,

    /// PostgreSQL to use (a scratch database: the bench writes rows and tables into it).
    /// Without it, the bench runs a private durable cluster in a temp dir and removes it afterwards.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// How long `latency` and `fanout` write for (default 20 s), `views` updates (default 30 s),
    /// `nodes` writes each run (default 15 s), or `idle` connections sit idle before one row wakes
    /// them (default 2 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// How long each `writers` pass lasts (3 variants × 3 writer counts × --repeat rounds).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub pass: Duration,

    /// `writers`: rounds per writer count, each one pass of every variant in turn; `bulk`: rounds
    /// of the statements on each table. The median of the per-round ratios is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,

    /// Subscribers (default per scenario: latency 100, fanout 1000, burst 10, idle 10000, views
    /// 1000; nodes: 10 on each server).
    #[arg(long)]
    pub subscribers: Option<usize>,

    /// Rows per second written (default: latency 500, fanout 200, nodes 1000), or updates per
    /// second (views 1000).
    #[arg(long)]
    pub rate: Option<u32>,

    /// Rows inserted by `burst` (default 20000), replayed by `catchup` (default 100000), per
    /// statement of `bulk` (default 100000), or the
    /// studies `views` and `admin-page` run on (default 1000000).
    #[arg(long)]
    pub rows: Option<usize>,

    /// Writer connections for latency, fanout, burst and catchup's fill.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,

    /// The `pgfeed` binary to run (default: next to this executable).
    #[arg(long)]
    pub pgfeed: Option<std::path::PathBuf>,

    /// `nodes`: an older `pgfeed` build to measure beside `--pgfeed` in interleaved runs, each on a
    /// database of its own (README Performance, "Many servers on one database").
    #[arg(long, env = "PGFEED_BENCH_BEFORE")]
    pub pgfeed_before: Option<std::path::PathBuf>,

    /// `writers` and `bulk`: this many more servers on the same database, started after the
    /// measured one (which so leads): what followers cost writers (README "Running many servers").
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=16))]
    pub followers: u8,

    /// `nodes`: the server counts to run, e.g. `1,4,8` (the default), each from 1 to 32.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<usize>,

    /// `admin-page`: the script that drives the page (default: this checkout's
    /// scripts/admin-page-bench.mjs), run with `node`.
    #[arg(long)]
    pub script: Option<std::path::PathBuf>,

    /// `admin-page`: set up the server on its studies and keep it running until Ctrl-C, printing
    /// its URL and database, instead of running the script.
    #[arg(long)]
    pub hold: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Latency,
    Fanout,
    Burst,
    Idle,
    Catchup,
    Writers,
    /// 100,000-row insert, update and delete with and without capture, then `writers`. Not part
    /// of `all`, which runs `writers` already.
    Bulk,
    Views,
    /// Not part of `all`: needs node and Chromium.
    AdminPage,
    /// PostgreSQL's CPU per commit with 1, 4 and 8 pgfeed servers on one database (`--nodes`),
    /// against `--pgfeed-before` when given. Not part of `all`.
    Nodes,
    All,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    pgfeed::telemetry::init("warn", pgfeed::config::LogFormat::Human, std::io::stderr);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgfeed-bench: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgfeed-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    setup::raise_file_limit();
    let list = match args.scenario {
        Scenario::All if args.transport == client::Transport::Socketio => {
            vec![Scenario::Latency, Scenario::Fanout, Scenario::Burst, Scenario::Idle]
        }
        Scenario::All => vec![
            Scenario::Latency,
            Scenario::Fanout,
            Scenario::Burst,
            Scenario::Idle,
            Scenario::Catchup,
            Scenario::Writers,
            // Last: it leaves a million studies in the bench database.
            Scenario::Views,
        ],
        one => vec![one],
    };
    if let Some(other) = list.iter().find(|s| !scenarios::over_any_transport(**s)) {
        if args.transport != client::Transport::Ws {
            anyhow::bail!("--transport socketio applies to latency, fanout, burst and idle, not {other:?}");
        }
    }
    let db = setup::BenchDb::open(args.database_url.as_deref()).await?;
    let mut result = Ok(());
    for scenario in list {
        let r = scenarios::run(scenario, &args, &db).await;
        if let Err(e) = r {
            eprintln!("pgfeed-bench: {scenario:?} failed: {e:#}");
            result = Err(e);
        }
    }
    db.close().await?;
    result
}
