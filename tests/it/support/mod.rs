//! The test harness: one PostgreSQL per test binary, one database per test, real servers on
//! port 0, real WebSocket clients, and psql as the outside writer.
//!
//! The cluster is the embedded-mode code (`Cluster::start_ephemeral`), unless `DATABASE_URL`
//! names a server to use instead. A template database is migrated once; each test clones it,
//! gets its own log epoch, and drops its database when it passes (a failed test's is kept).

#![allow(dead_code)]

pub mod browser;
pub mod process;
pub mod rest;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgfeed::app::App;
use pgfeed::config::ServeConfig;
use pgfeed::embedded::Cluster;
use pgfeed::shutdown::Shutdown;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something it expects before failing with a clear message.
pub const PATIENCE: Duration = Duration::from_secs(20);

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

fn init_logging() {
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
        for _ in 0..50 {
            // Probe the port first: App::build would fail outright if it is still taken.
            if std::net::TcpListener::bind(addr).is_ok() {
                return TestApp::spawn_with(db, |c| c.bind = addr).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{addr} did not become free");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Opens `GET /events?{query}` with an optional `Last-Event-ID`; panics unless it is a 200 stream.
    pub async fn sse(&self, query: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = reqwest::Client::new().get(self.url(&format!("/events?{query}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("GET /events");
        assert_eq!(
            resp.status(),
            200,
            "GET /events?{query}: {}",
            resp.text().await.unwrap_or_default()
        );
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        SseClient {
            resp,
            buf: String::new(),
        }
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

    pub async fn ws(&self) -> WsClient {
        self.ws_at("/ws").await
    }

    pub async fn ws_at(&self, path: &str) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{}{}", self.addr, path))
            .await
            .expect("ws connect");
        WsClient { stream }
    }
}

/// A real WebSocket client, with the assertions tests need.
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// A WebSocket handshake over a socket the test set up itself.
pub async fn ws_over(tcp: TcpStream, addr: SocketAddr) -> WsClient {
    let (stream, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(tcp))
        .await
        .expect("ws handshake");
    WsClient { stream }
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

/// What a client saw next.
#[derive(Debug)]
pub enum Seen {
    Frame(Value),
    Closed(Option<u16>),
}

impl WsClient {
    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, text: String) {
        self.stream.send(Message::Text(text.into())).await.expect("ws send");
    }

    /// The next JSON frame or the close, within `PATIENCE`.
    pub async fn next_seen(&mut self) -> Seen {
        self.next_seen_within(PATIENCE)
            .await
            .expect("no frame from the server in time")
    }

    pub async fn next_seen_within(&mut self, wait: Duration) -> Option<Seen> {
        tokio::time::timeout(wait, async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Seen::Frame(serde_json::from_str(&t).expect("server sent bad JSON"))
                    }
                    Some(Ok(Message::Close(frame))) => return Seen::Closed(frame.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Seen::Closed(None),
                }
            }
        })
        .await
        .ok()
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next_seen().await {
            Seen::Frame(v) => v,
            Seen::Closed(code) => panic!("connection closed ({code:?}) while a frame was expected"),
        }
    }

    /// The next frame that is a change event (has a `cursor` and an `op`).
    pub async fn next_event(&mut self) -> Value {
        let v = self.next_json().await;
        assert!(v.get("op").is_some(), "expected an event, got {v}");
        v
    }

    /// Subscribes and returns the `subscribed` answer.
    pub async fn subscribe(&mut self, topic: &str) -> Value {
        self.subscribe_with(json!({"action": "subscribe", "topic": topic}))
            .await
    }

    pub async fn subscribe_since(&mut self, topic: &str, since: &str) -> Value {
        self.subscribe_with(json!({"action": "subscribe", "topic": topic, "since": since}))
            .await
    }

    pub async fn subscribe_with(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        let v = self.next_json().await;
        assert_eq!(v["type"], "subscribed", "expected subscribed, got {v}");
        v
    }

    /// Collects `n` events, failing if they do not come within `PATIENCE`.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_event().await);
        }
        out
    }

    /// Asserts that nothing arrives for `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(seen) = self.next_seen_within(wait).await {
            panic!("expected nothing, got {seen:?}");
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .stream
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
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

/// One Server-Sent Event as a client parses it.
#[derive(Debug, Clone, Default)]
pub struct SseMsg {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseMsg {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("bad JSON in SSE data {:?}: {e}", self.data))
    }
}

/// A minimal `text/event-stream` reader (comments are skipped, like a browser's EventSource).
pub struct SseClient {
    resp: reqwest::Response,
    buf: String,
}

impl SseClient {
    /// The next event, `None` when the stream ended, within `PATIENCE`.
    pub async fn next(&mut self) -> Option<SseMsg> {
        self.next_within(PATIENCE).await.expect("no SSE event in time")
    }

    /// `Some(None)`: the stream ended; `None`: nothing within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Option<SseMsg>> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let mut msg = SseMsg {
                        event: "message".into(),
                        ..SseMsg::default()
                    };
                    let mut data = Vec::new();
                    for line in block.lines() {
                        let (field, value) = line
                            .split_once(':')
                            .map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)))
                            .unwrap_or((line, ""));
                        match field {
                            "id" => msg.id = Some(value.to_owned()),
                            "event" => msg.event = value.to_owned(),
                            "data" => data.push(value.to_owned()),
                            _ => {}
                        }
                    }
                    if data.is_empty() {
                        continue; // a comment or a bare retry: not an event
                    }
                    msg.data = data.join("\n");
                    return Some(msg);
                }
                match self.resp.chunk().await {
                    Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                    Ok(None) | Err(_) => return None,
                }
            }
        })
        .await
        .ok()
    }

    /// The next event, which must be a change (its `id` is its cursor).
    pub async fn next_event(&mut self) -> Value {
        let msg = self
            .next()
            .await
            .expect("the SSE stream ended while an event was expected");
        let v = msg.json();
        assert!(v.get("op").is_some(), "expected a change event, got {msg:?}");
        assert_eq!(msg.id.as_deref(), v["cursor"].as_str(), "id: is the event's cursor");
        assert_eq!(msg.event, v["type"].as_str().unwrap(), "event: is the event's type");
        v
    }

    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_event().await);
        }
        out
    }

    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(seen) = self.next_within(wait).await {
            panic!("expected nothing, got {seen:?}");
        }
    }
}

/// The id of each event's row, in arrival order.
pub fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().expect("numeric id")).collect()
}

/// The `label` of each event's row (studies), in order.
pub fn labels(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["data"]["label"].as_str().expect("a label"))
        .collect()
}
