//! The server: `App::build(config)` → `addr()` → `run_until_stopped()` (zero2prod's shape).
//!
//! Build connects to PostgreSQL (or starts the embedded cluster), applies the capture code and
//! migrations, and binds the socket; run serves HTTP and WebSockets beside the listener and the
//! retention task until the shutdown token is cancelled, then closes everything in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;

use crate::config::{DbConfig, ServeConfig};
use crate::db::log;
use crate::embedded::Cluster;
use crate::feed::Feed;
use crate::http::{self, AppState};
use crate::hub::Hub;
use crate::listener::{self, ListenerStatus};
use crate::shutdown::{Shutdown, GRACE};
use crate::transport::session::SessionConfig;

/// The database pgfeed creates and uses inside its embedded cluster.
pub const EMBEDDED_DATABASE: &str = "pgfeed";

/// A database to talk to: its URL, and the embedded cluster behind it, if any.
pub struct Database {
    pub url: String,
    /// The embedded cluster; stopped by [`Database::close`]. `None` with `--database-url`.
    pub cluster: Option<Cluster>,
}

impl Database {
    /// The configured URL, or the embedded cluster under the data dir (started, with the
    /// `pgfeed` database created on first use).
    pub async fn open(config: &DbConfig) -> anyhow::Result<Database> {
        if let Some(url) = &config.database_url {
            return Ok(Database {
                url: url.clone(),
                cluster: None,
            });
        }
        let cluster = Cluster::start(&config.data_dir).await?;
        let admin = crate::db::connect(&cluster.url("postgres")).await?;
        let exists: bool = sqlx::query_scalar("select exists (select from pg_database where datname = $1)")
            .bind(EMBEDDED_DATABASE)
            .fetch_one(&admin)
            .await?;
        if !exists {
            sqlx::query(&format!("create database {EMBEDDED_DATABASE}"))
                .execute(&admin)
                .await?;
        }
        admin.close().await;
        let url = cluster.url(EMBEDDED_DATABASE);
        tracing::info!("embedded PostgreSQL at {url} (data in {})", config.data_dir.display());
        Ok(Database {
            url,
            cluster: Some(cluster),
        })
    }

    pub async fn close(self) -> anyhow::Result<()> {
        if let Some(cluster) = self.cluster {
            cluster.stop().await.context("stopping the embedded cluster")?;
        }
        Ok(())
    }
}

pub struct App {
    config: ServeConfig,
    tcp: tokio::net::TcpListener,
    database: Database,
    pool: PgPool,
    state: AppState,
}

impl App {
    pub async fn build(config: ServeConfig, shutdown: Shutdown) -> anyhow::Result<App> {
        if let Some(secret) = config.jwt_secret.as_deref() {
            if secret.len() < crate::auth::MIN_SECRET_BYTES {
                anyhow::bail!(
                    "refusing to start: the JWT secret (--jwt-secret / PGFEED_JWT_SECRET) is {} bytes, and HS256 needs \
                     at least {} (RFC 7518 §3.2); make one with `openssl rand -base64 48`",
                    secret.len(),
                    crate::auth::MIN_SECRET_BYTES
                );
            }
        }
        if config.jwt_secret.is_none() && !config.bind.ip().is_loopback() && !config.insecure_no_auth {
            anyhow::bail!(
                "refusing to listen on {} without auth: pass --jwt-secret (PGFEED_JWT_SECRET) or bind a loopback address",
                config.bind
            );
        }
        let database = Database::open(&config.db).await?;
        let pool = crate::db::connect(&database.url).await?;
        crate::db::migrate(&pool).await?;

        let epoch = log::epoch(&pool).await.context("reading the log's epoch")?;
        let head = log::held_head(&mut *pool.acquire().await?)
            .await
            .context("reading the log's head")?;
        // Never ahead of the watermark: other servers deliver up to it (README "Running many
        // servers and failing over").
        let head = crate::db::watermark::start(&pool, head)
            .await
            .context("reading the watermark")?;
        // The generation the database's watermark is in: this server's cursors name it.
        let epoch = epoch.with_gen(
            crate::db::watermark::read(&pool)
                .await
                .context("reading the watermark")?
                .gen,
        );
        let hub = Arc::new(Hub::new(epoch, head));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let replica = match &config.replica_url {
            Some(url) => Some(Arc::new(crate::db::replica::Replica::connect(url, &metrics)?)),
            None => None,
        };
        let feed = Feed::new(pool.clone(), hub)
            .await
            .context("loading tracked tables")?
            .with_limits(
                usize::try_from(config.max_snapshot).unwrap_or(usize::MAX),
                config.max_resume_scan,
            )
            .bounded_by_watermark(config.durable_watermark == crate::config::DurableWatermark::Standby)
            .reading_from(replica)
            .with_views(config.view_count_wait, shutdown.token.clone());
        if config.jwt_secret.is_none() && !config.bind.ip().is_loopback() {
            tracing::warn!(
                bind = %config.bind,
                "--insecure-no-auth: serving WITHOUT AUTHENTICATION on a non-loopback address; \
                 anyone who can reach it can read and write everything"
            );
        }
        let session = SessionConfig {
            ping_interval: config.ws_ping_interval,
            max_subscriptions: config.max_subscriptions,
            max_frames_per_second: config.max_frames_per_second,
        };
        let state = AppState {
            feed,
            listener: Arc::new(ListenerStatus::default()),
            metrics,
            session,
            shutdown,
            auth: crate::auth::Auth::new(config.jwt_secret.as_deref())
                .expecting(config.jwt_audience.as_deref(), config.jwt_issuer.as_deref()),
            limits: http::limits::ConnLimits::new(config.max_connections_per_ip, config.max_connections),
            allowed_origins: Arc::new(config.allowed_origins.clone()),
            max_upload: config.max_upload,
            request_timeout: config.request_timeout,
            transfers: Arc::new(tokio::sync::Semaphore::new(config.max_transfers)),
            transfer_stall_timeout: config.transfer_stall_timeout,
            insecure_no_auth: config.insecure_no_auth,
            member_posts: Arc::new(http::rate::PostLimiter::new(config.max_member_posts_per_minute)),
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
        };
        http::serve::raise_file_limit(config.max_tcp_connections);

        let tcp = tokio::net::TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("binding {}", config.bind))?;
        Ok(App {
            config,
            tcp,
            database,
            pool,
            state,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.config.bind)
    }

    /// Serves until the shutdown token is cancelled; then closes WebSockets with 1001, waits for
    /// sessions and background tasks (up to [`GRACE`]), and stops the embedded cluster.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let App {
            config,
            tcp,
            database,
            pool,
            state,
        } = self;
        let shutdown = state.shutdown.clone();
        let relay = listener::Listener {
            url: config
                .listen_database_url
                .clone()
                .unwrap_or_else(|| database.url.clone()),
            pool: pool.clone(),
            hub: state.feed.hub.clone(),
            status: state.listener.clone(),
            metrics: state.metrics.clone(),
            poll_above: config.poll_above,
            durable: config.durable_watermark,
            durable_standby: config.durable_standby.clone(),
            multi_host_url: crate::db::primary::is_multi_host(&database.url).then(|| database.url.clone()),
            replica: state.feed.replica.clone(),
        };
        let state_replica = state.feed.replica.clone();
        shutdown.tracker.spawn(listener::run(relay, shutdown.token.clone()));
        shutdown
            .tracker
            .spawn(prune(pool.clone(), config.retention, shutdown.token.clone()));

        let accept = http::serve::Accept {
            header_read_timeout: config.header_read_timeout,
            connections: http::limits::ConnLimits::new(config.max_tcp_connections_per_ip, config.max_tcp_connections),
            trusted_proxies: state.trusted_proxies.clone(),
        };
        tracing::info!("listening on http://{}", tcp.local_addr()?);
        http::serve::serve(tcp, http::router(state), accept, shutdown.token.clone()).await;

        shutdown.tracker.close();
        if tokio::time::timeout(GRACE, shutdown.tracker.wait()).await.is_err() {
            tracing::warn!("some sessions did not finish within {GRACE:?}");
        }
        pool.close().await;
        if let Some(replica) = &state_replica {
            replica.pool.close().await;
        }
        database.close().await
    }
}

/// Retention (README "Operating it"): deletes commits older than `keep`, in small batches, each its
/// own short transaction, so pruning never holds back writers or the listener.
async fn prune(pool: PgPool, keep: Duration, stop: tokio_util::sync::CancellationToken) {
    let every = (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => match log::prune(&pool, keep).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(commits = n, "pruned the log"),
                Err(e) => tracing::warn!(error = %e, "pruning the log failed"),
            },
        }
    }
}
