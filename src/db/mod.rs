//! Database access: the pool, migrations, and one async fn per statement in each area's module.
//! Nothing here knows about HTTP or sockets.

pub mod files;
pub mod literals;
pub mod log;
pub mod messages;
pub mod primary;
pub mod replica;
pub mod rows;
pub mod snapshot;
pub mod studies;
pub mod timestamp;
pub mod tracked;
pub mod views;
pub mod watermark;

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// The capture code: one source, applied by `migrate` and installable by hand with psql.
pub const CAPTURE_SQL: &str = include_str!("../../sql/capture.sql");

/// Connections the server's pool may hold: REST, snapshots, resumes and the listener's reads.
const POOL_SIZE: u32 = 16;

pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    let options = connect_options(url).await?;
    PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")
}

/// Points `pool` at the host of a multi-host `url` that is the primary now ([`primary`]); new
/// connections go there, and those to a host that failed are dropped as they fail.
pub async fn repoint(pool: &PgPool, url: &str) -> anyhow::Result<()> {
    pool.set_connect_options(connect_options(url).await?);
    Ok(())
}

/// The pool's connect options for `url` (its primary's, when it names several hosts).
async fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = if primary::is_multi_host(url) {
        primary::find(url).await?
    } else {
        url.parse().context("parsing the database URL")?
    };
    // Plan each prepared statement once per connection (its generic plan), not at every run: the
    // estimate for `seq >= $1` over the whole log makes the log read's generic plan look far dearer
    // than a custom one, so PostgreSQL re-planned it at every wake-up, 0.3 ms of planning for 0.1 ms
    // of execution (pg_stat_statements under `pgfeed-bench writers`), on the CPU the writers share.
    // Every query here is a short index walk whose plan does not depend on its parameters' values.
    //
    // That estimate is also why JIT must stay off: JIT compiles a query whose estimated cost is
    // high, and spent 440 ms compiling a 5 ms page read. pgfeed's queries are all short.
    Ok(options
        .options([("jit", "off"), ("plan_cache_mode", "force_generic_plan")])
        .application_name("pgfeed")
        .log_statements(tracing::log::LevelFilter::Debug))
}

/// Installs (or updates) the capture code, then applies the schema migrations, which attach
/// studies, messages and files to the feed. Safe to run from several servers at once.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(CAPTURE_SQL)
        .execute(&mut *tx)
        .await
        .context("installing sql/capture.sql")?;
    tx.commit().await?;
    sqlx::migrate!("./migrations")
        .run(pool)
        .await
        .context("applying migrations")?;
    Ok(())
}
