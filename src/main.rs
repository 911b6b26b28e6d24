use clap::Parser;
use pgfeed::app::{App, Database};
use pgfeed::config::{Cli, Command};
use pgfeed::shutdown::{self, Shutdown};

/// mimalloc: faster than glibc's malloc on the many small, short-lived allocations of decoding and
/// serializing events, and less memory per idle connection (README, Performance).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    pgfeed::telemetry::init("pgfeed=info,tower_http=warn", cli.log_format, std::io::stderr);
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(config)) => serve(config).await,
        Some(Command::Migrate(db)) => migrate(db).await,
        Some(Command::Healthcheck { bind }) => healthcheck(&bind).await,
        Some(Command::Tail(config)) => pgfeed::tail::run(config, shutdown::signal()).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgfeed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: pgfeed::config::ServeConfig) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    // Installed first: a SIGTERM that comes while the server is still starting is kept for later.
    let stop = shutdown::signal();
    let app = App::build(config, shutdown.clone()).await?;
    tokio::spawn(async move {
        stop.await;
        shutdown.token.cancel();
    });
    app.run_until_stopped().await
}

/// A bare HTTP/1.0 GET of /healthz: the runtime image has no curl, and needs none.
async fn healthcheck(bind: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A wildcard bind is reached on loopback.
    let addr = bind.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    let check = async {
        let mut tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await.context("reading the answer")?;
        anyhow::ensure!(head.ends_with(b"200"), "unhealthy: {}", String::from_utf8_lossy(&head));
        Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), check)
        .await
        .context("timed out")?
}

async fn migrate(db: pgfeed::config::DbConfig) -> anyhow::Result<()> {
    let database = Database::open(&db).await?;
    let pool = pgfeed::db::connect(&database.url).await?;
    pgfeed::db::migrate(&pool).await?;
    pool.close().await;
    eprintln!("pgfeed: migrations applied");
    database.close().await
}
