use clap::Parser;
use pgfeed::app::{App, Database};
use pgfeed::config::{Cli, Command};
use pgfeed::shutdown::{self, Shutdown};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    pgfeed::telemetry::init("pgfeed=info,tower_http=warn", std::io::stderr);
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(config)) => serve(config).await,
        Some(Command::Migrate(db)) => migrate(db).await,
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
    let app = App::build(config, shutdown.clone()).await?;
    tokio::spawn(async move {
        shutdown::signal().await;
        shutdown.token.cancel();
    });
    app.run_until_stopped().await
}

async fn migrate(db: pgfeed::config::DbConfig) -> anyhow::Result<()> {
    let database = Database::open(&db).await?;
    let pool = pgfeed::db::connect(&database.url).await?;
    pgfeed::db::migrate(&pool).await?;
    pool.close().await;
    eprintln!("pgfeed: migrations applied");
    database.close().await
}
