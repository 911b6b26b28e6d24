//! One PostgreSQL per test binary and one database per test; psql as the writer outside pgfeed.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use pgfeed::embedded::Cluster;
use sqlx::{Connection, PgConnection};

use super::PATIENCE;

/// Lives for the whole test binary: the cluster's processes and the setup work run on it,
/// since each `#[tokio::test]` has a runtime of its own that ends with the test.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("test runtime")
});

/// The migrated database each test clones; named per process, since several test runs may share
/// one `DATABASE_URL` server.
static TEMPLATE: LazyLock<String> = LazyLock::new(|| format!("pgfeed_template_{}", std::process::id()));

struct Server {
    /// `database` → URL on the test server.
    url_for: Box<dyn Fn(&str) -> String + Send + Sync>,
    /// The throwaway cluster; it dies with this process (never dropped: it is in a static).
    _cluster: Option<Cluster>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

pub(super) fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            pgfeed::telemetry::init("pgfeed=debug,info", pgfeed::config::LogFormat::Human, std::io::stderr);
        }
    });
}

/// Runs the future made by `make` to completion on the harness runtime, from any context.
fn on_runtime<T, F>(make: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    std::thread::spawn(move || RUNTIME.block_on(make()))
        .join()
        .expect("harness thread")
}

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        init_logging();
        on_runtime(|| async {
            let server = match std::env::var("DATABASE_URL") {
                Ok(url) => {
                    let base = url.parse::<url_base::Base>().expect("DATABASE_URL");
                    Server {
                        url_for: Box::new(move |db| base.with_database(db)),
                        _cluster: None,
                    }
                }
                Err(_) => {
                    let cluster = Cluster::start_ephemeral().await.expect("starting the test cluster");
                    let cluster_urls = cluster.url("DBNAME");
                    Server {
                        url_for: Box::new(move |db| cluster_urls.replace("DBNAME", db)),
                        _cluster: Some(cluster),
                    }
                }
            };
            let admin = (server.url_for)("postgres");
            let mut conn = PgConnection::connect(&admin)
                .await
                .expect("connecting to the test server");
            sqlx::query(&format!("drop database if exists {} with (force)", *TEMPLATE))
                .execute(&mut conn)
                .await
                .expect("drop template");
            sqlx::query(&format!("create database {}", *TEMPLATE))
                .execute(&mut conn)
                .await
                .expect("create template");
            let pool = pgfeed::db::connect(&(server.url_for)(&TEMPLATE))
                .await
                .expect("template pool");
            pgfeed::db::migrate(&pool).await.expect("migrating the template");
            pool.close().await;
            server
        })
    })
}

/// A database of its own for one test (and every server the test starts on it).
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// Whether it is on the shared test server, to be dropped when the test passes.
    owned: bool,
}

impl TestDb {
    /// A database on the shared test server, cloned from the migrated template.
    pub async fn create() -> Arc<TestDb> {
        let server = server();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&(server.url_for)("postgres"))
            .await
            .expect("admin connection");
        sqlx::query(&format!("create database {name} template {}", *TEMPLATE))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let url = (server.url_for)(&name);
        // A fresh epoch: this database's cursors must not be taken for another's.
        let mut conn = PgConnection::connect(&url).await.expect("test database");
        sqlx::query("update pgfeed.meta set epoch = substr(md5(random()::text), 1, 12)")
            .execute(&mut conn)
            .await
            .expect("epoch");
        Arc::new(TestDb { name, url, owned: true })
    }

    /// An empty database on the shared test server (no pgfeed schema).
    pub async fn create_empty() -> Arc<TestDb> {
        let server = server();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&(server.url_for)("postgres"))
            .await
            .expect("admin connection");
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let url = (server.url_for)(&name);
        Arc::new(TestDb { name, url, owned: true })
    }

    /// A database the test manages itself (on a server of its own); never dropped by the harness.
    pub fn external(name: &str, url: String) -> TestDb {
        TestDb {
            name: name.to_owned(),
            url,
            owned: false,
        }
    }

    /// Runs SQL through `psql`, a writer outside pgfeed; returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = std::process::Command::new("psql")
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts `psql -f -` with `script` on stdin, without waiting for it.
    pub fn psql_script(&self, script: String) -> tokio::task::JoinHandle<()> {
        let url = self.url.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut child = tokio::process::Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("running psql");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(script.as_bytes()).await.expect("feeding psql");
            drop(stdin);
            let out = child.wait_with_output().await.expect("psql");
            assert!(
                out.status.success(),
                "psql script failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    }
}

/// A `psql` process holding a session (and a transaction, once it began one) open: a writer
/// outside pgfeed that the test steps through statement by statement.
pub struct OpenPsql {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    name: String,
    db: Arc<TestDb>,
}

impl TestDb {
    /// Starts `psql` reading statements from stdin; see [`OpenPsql::run`].
    pub fn open_psql(self: &Arc<Self>) -> OpenPsql {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("open-psql-{}", N.fetch_add(1, Ordering::Relaxed));
        let mut child = tokio::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url])
            .env("PGAPPNAME", &name)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("running psql");
        let stdin = child.stdin.take().expect("stdin");
        OpenPsql {
            child,
            stdin,
            name,
            db: self.clone(),
        }
    }

    /// A `psql` writer whose transaction ran `change` and stamped its commit early (`set
    /// constraints all immediate`), left open: its seq is drawn and in flight until it ends.
    pub async fn stamped_open(self: &Arc<Self>, change: &str) -> OpenPsql {
        let mut psql = self.open_psql();
        psql.run("begin;").await;
        psql.run(change).await;
        psql.run("set constraints all immediate;").await;
        psql
    }
}

impl OpenPsql {
    /// Sends one statement and waits until the session has run it.
    pub async fn run(&mut self, statement: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{statement}\n").as_bytes())
            .await
            .expect("feeding psql");
        self.stdin.flush().await.expect("feeding psql");
        let done = format!(
            "select count(*) from pg_stat_activity where application_name = '{}' and state <> 'active' and query = '{}'",
            self.name,
            statement.replace('\'', "''")
        );
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.db.psql(&done) != "1" {
            assert!(tokio::time::Instant::now() < deadline, "psql did not run {statement:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends one statement without waiting for it (it may block), then ends the session and waits
    /// for psql to exit successfully.
    pub async fn finish(mut self, statement: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{statement}\n").as_bytes())
            .await
            .expect("feeding psql");
        drop(self.stdin);
        let out = self.child.wait_with_output().await.expect("psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if std::thread::panicking() {
            eprintln!("test database kept for inspection: {}", self.url);
            return;
        }
        let (admin, name) = ((server().url_for)("postgres"), self.name.clone());
        on_runtime(move || async move {
            if let Ok(mut conn) = PgConnection::connect(&admin).await {
                let _ = sqlx::query(&format!("drop database if exists {name} with (force)"))
                    .execute(&mut conn)
                    .await;
            }
        });
    }
}

/// The database part of a `DATABASE_URL`, to point the same server at other databases.
mod url_base {
    pub struct Base(String, Option<String>);

    impl std::str::FromStr for Base {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            // postgres://user@host:port/db?params → keep everything but the database.
            let (head, query) = match s.split_once('?') {
                Some((h, q)) => (h.to_owned(), Some(q.to_owned())),
                None => (s.to_owned(), None),
            };
            let scheme_end = head.find("://").ok_or("DATABASE_URL must be a postgres:// URL")? + 3;
            let head = match head[scheme_end..].find('/') {
                Some(i) => head[..scheme_end + i].to_owned(),
                None => head,
            };
            Ok(Base(head, query))
        }
    }

    impl Base {
        pub fn with_database(&self, db: &str) -> String {
            match &self.1 {
                Some(q) => format!("{}/{db}?{q}", self.0),
                None => format!("{}/{db}", self.0),
            }
        }
    }
}
