//! A pgfeed server in the test's own runtime, on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pgfeed::app::App;
use pgfeed::config::ServeConfig;
use pgfeed::shutdown::Shutdown;
use serde_json::Value;

use super::db::{init_logging, TestDb};
use super::PATIENCE;

/// A pgfeed server running in this test's runtime.
pub struct TestApp {
    pub addr: SocketAddr,
    pub db: Arc<TestDb>,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// A server on a database of its own.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_on(TestDb::create().await).await
    }

    /// A server on `db`, which other servers may share.
    pub async fn spawn_on(db: Arc<TestDb>) -> TestApp {
        TestApp::spawn_with(db, |_| {}).await
    }

    pub async fn spawn_with(db: Arc<TestDb>, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
        init_logging();
        let mut config = ServeConfig::defaults();
        config.db.database_url = Some(db.url.clone());
        config.bind = "127.0.0.1:0".parse().expect("addr");
        tweak(&mut config);
        let shutdown = Shutdown::new();
        let app = App::build(config, shutdown.clone()).await.expect("building the app");
        let addr = app.addr();
        let handle = tokio::spawn(app.run_until_stopped());
        let app = TestApp {
            addr,
            db,
            shutdown,
            handle,
        };
        app.wait_healthy().await;
        app
    }

    /// Waits until `/healthz` says the listener is up, so nothing committed later is missed live.
    pub async fn wait_healthy(&self) {
        let url = format!("http://{}/healthz", self.addr);
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Ok(r) = reqwest::get(&url).await {
                    if r.status().is_success() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("server did not become healthy");
    }

    pub fn psql(&self, sql: &str) -> String {
        self.db.psql(sql)
    }

    /// Waits until retention (run every second when it is short) has pruned every commit.
    pub async fn wait_until_every_commit_is_pruned(&self) {
        tokio::time::timeout(super::PATIENCE, async {
            while self.psql("select count(*) from pgfeed.commits") != "0" {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("retention did not prune");
    }

    /// Stops the server as SIGTERM would, and waits for it.
    pub async fn stop(self) {
        self.shutdown.token.cancel();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("server did not stop")
            .expect("join")
            .expect("server failed");
    }

    /// Stops this server and starts another on the same database and the same address, as a
    /// restart would: clients that reconnect to the same URL find the new one.
    pub async fn restart(self) -> TestApp {
        let (db, addr) = (self.db.clone(), self.addr);
        self.stop().await;
        TestApp::spawn_at(db, addr).await
    }

    /// A server on `db` bound to `addr` (a port a stopped server used); retries the bind briefly.
    pub async fn spawn_at(db: Arc<TestDb>, addr: SocketAddr) -> TestApp {
        TestApp::spawn_at_with(db, addr, |_| {}).await
    }

    /// [`TestApp::spawn_at`] with settings of its own.
    pub async fn spawn_at_with(db: Arc<TestDb>, addr: SocketAddr, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
        for _ in 0..50 {
            // Probe the port first: App::build would fail outright if it is still taken.
            if std::net::TcpListener::bind(addr).is_ok() {
                return TestApp::spawn_with(db, |c| {
                    tweak(c);
                    c.bind = addr;
                })
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{addr} did not become free");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// One scrape of `/metrics` (a server without auth).
    pub async fn metrics(&self) -> Scrape {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        Scrape(text)
    }

    /// `GET {path}` as JSON, with its status.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::get(self.url(path)).await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("a JSON body"))
    }
}

/// A `/metrics` answer (Prometheus text).
pub struct Scrape(pub String);

impl Scrape {
    /// The value of the series named exactly `series` (labels included, as rendered); panics,
    /// showing the scrape, when there is none.
    pub fn value(&self, series: &str) -> f64 {
        self.0
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(name, _)| *name == series)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from:\n{}", self.0))
    }
}
