//! `/socket.io/` (README "Socket.IO", PROTOCOL §10) driven by the real clients: socket.io-client
//! 4.x under `node --test` (tests/socketio/) and python-socketio 5.x under pytest
//! (tests/socketio_py/), each over long-polling and WebSocket, with psql as the writer. This
//! starts the server and its throwaway database and hands them to the suites, which must pass.
//! Needs `node`, `npm ci --prefix tests/socketio` and `pip install -r
//! tests/socketio_py/requirements.txt`; a missing piece fails the test with the command.

use std::path::Path;
use std::process::Stdio;

use serde_json::json;

use crate::auth::{in_an_hour, token, SECRET};
use crate::support::app::Scrape;
use crate::support::{TestApp, TestDb, PATIENCE};

/// Subscriptions per connection in these servers: small, so the limit is reached for real.
const MAX_SUBSCRIPTIONS: usize = 5;

async fn server() -> TestApp {
    TestApp::spawn_with(TestDb::create().await, |c| {
        c.jwt_secret = Some(SECRET.into());
        c.max_subscriptions = MAX_SUBSCRIPTIONS;
    })
    .await
}

/// Runs `program args` in `dir` against `app`; panics with its output unless it succeeds.
async fn suite(app: &TestApp, dir: &str, program: &str, args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(&dir)
        .env("PGFEED_URL", app.url(""))
        .env("PGFEED_DB", &app.db.url)
        .env("PGFEED_JWT_SECRET", SECRET)
        .env("PGFEED_MAX_SUBSCRIPTIONS", MAX_SUBSCRIPTIONS.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is missing ({e}): apt-get install -y nodejs npm python3-pip"));
    let out = tokio::time::timeout(PATIENCE * 20, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish"))
        .expect("running the suite");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    // Shown with --nocapture: what the suite ran.
    println!("{text}");
}

/// One series of `/metrics`, read with an admin token.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let admin = token(json!({"role": "admin", "exp": in_an_hour()}));
    let text = reqwest::Client::new()
        .get(app.url("/metrics"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    Scrape(text).value(series)
}

#[tokio::test]
async fn socket_io_client_passes_its_suite_over_polling_and_websocket() {
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/socketio/node_modules/socket.io-client")
            .exists(),
        "socket.io-client is missing: npm ci --prefix tests/socketio"
    );
    let app = server().await;
    suite(&app, "tests/socketio", "node", &["--test", "--test-concurrency=1", "."]).await;
    // The suite's events went out through the Socket.IO sessions, and every session ended with its
    // socket: none is left counted once the last disconnect is processed.
    assert!(metric(&app, r#"pgfeed_deliveries_total{transport="socketio"}"#).await > 0.0);
    tokio::time::timeout(PATIENCE, async {
        while metric(&app, r#"pgfeed_connections{transport="socketio"}"#).await != 0.0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("Socket.IO connections still counted after every client left");
}

#[tokio::test]
async fn python_socketio_passes_its_suite_over_polling_and_websocket() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import socketio, websocket, pytest"])
        .status()
        .expect("python3 is missing: apt-get install -y python3 python3-pip");
    assert!(
        probe.success(),
        "python-socketio is missing: pip install -r tests/socketio_py/requirements.txt"
    );
    let app = server().await;
    suite(
        &app,
        "tests/socketio_py",
        "python3",
        &["-m", "pytest", "-q", "-p", "no:cacheprovider"],
    )
    .await;
}

/// A raw engine.io v4 long-polling client: the protocol by hand, so a test can be the client
/// that stops reading.
struct Polling {
    http: reqwest::Client,
    url: String,
}

impl Polling {
    /// Opens an engine.io session and joins the default namespace with `auth`.
    async fn connect(app: &TestApp, auth: serde_json::Value) -> Polling {
        let http = reqwest::Client::new();
        let base = app.url("/socket.io/?EIO=4&transport=polling");
        let open = http
            .get(&base)
            .send()
            .await
            .expect("handshake")
            .text()
            .await
            .expect("body");
        let handshake: serde_json::Value =
            serde_json::from_str(open.strip_prefix('0').expect("an open packet")).expect("handshake JSON");
        let url = format!("{base}&sid={}", handshake["sid"].as_str().expect("sid"));
        let mut client = Polling { http, url };
        client.post(&format!("40{auth}")).await;
        let connect = client.packets().await;
        assert!(
            connect.iter().any(|p| p.starts_with("40{")),
            "not connected: {connect:?}"
        );
        client
    }

    async fn post(&self, packet: &str) {
        let status = self
            .http
            .post(&self.url)
            .body(packet.to_owned())
            .send()
            .await
            .expect("POST")
            .status();
        assert!(status.is_success(), "POST {packet:?}: {status}");
    }

    /// One GET: the packets waiting (or the next one); answers the server's pings.
    async fn packets(&mut self) -> Vec<String> {
        self.try_packets().await.expect("GET")
    }

    /// [`Polling::packets`], or `None` once the server is gone.
    async fn try_packets(&mut self) -> Option<Vec<String>> {
        let body = self.http.get(&self.url).send().await.ok()?.text().await.ok()?;
        let packets: Vec<String> = body.split('\u{1e}').map(str::to_owned).collect();
        if packets.iter().any(|p| p == "2") {
            self.post("3").await;
        }
        Some(packets)
    }
}

/// The event of a `42["study_created",{…}]` packet.
fn study_created(packet: &str) -> Option<serde_json::Value> {
    let json = packet.strip_prefix(r#"42["study_created","#)?;
    Some(serde_json::from_str(json.strip_suffix(']')?).expect("event JSON"))
}

#[tokio::test]
async fn a_socket_that_falls_too_far_behind_is_told_4008_and_resumes_without_loss() {
    // Arrange: a client subscribed to `studies` that reads nothing more.
    let app = server().await;
    let auth = json!({ "token": token(json!({"role": "admin", "exp": in_an_hour()})) });
    let mut client = Polling::connect(&app, auth.clone()).await;
    client.post(r#"420["subscribe",{"topic":"studies"}]"#).await;
    let answer = client.packets().await;
    let subscribed: serde_json::Value = answer
        .iter()
        .find_map(|p| p.strip_prefix("430"))
        .map(|a| serde_json::from_str(a).expect("ack JSON"))
        .unwrap_or_else(|| panic!("no ack in {answer:?}"));

    // Act: one commit of more events than a connection's queue holds, then read again.
    const ROWS: usize = 6000;
    app.psql(&format!(
        "insert into studies(label, title) select 'slow-' || g, 't' from generate_series(1, {ROWS}) g"
    ));
    let mut closing = None;
    let mut events = Vec::new();
    tokio::time::timeout(PATIENCE * 3, async {
        loop {
            for p in client.packets().await {
                if let Some(event) = study_created(&p) {
                    events.push(event);
                } else if let Some(json) = p.strip_prefix(r#"42["closing","#) {
                    closing = Some(json.trim_end_matches(']').to_owned());
                } else if p == "41" {
                    return;
                }
            }
        }
    })
    .await
    .expect("the socket was never disconnected");

    // Assert: it was told why, got fewer events than were written, and was counted.
    let closing: serde_json::Value = serde_json::from_str(&closing.expect("a closing event")).unwrap();
    assert_eq!(closing["code"], 4008, "{closing}");
    assert!(events.len() < ROWS, "{} events", events.len());
    assert_eq!(
        metric(&app, r#"pgfeed_slow_consumer_closes_total{transport="socketio"}"#).await,
        1.0
    );

    // And it resumes: a new socket subscribed with the last cursor it got gets the rest, each
    // once, in commit order.
    let mut again = Polling::connect(&app, auth).await;
    let since = events
        .last()
        .map_or(subscribed[0]["cursor"].clone(), |e| e["cursor"].clone());
    again
        .post(&format!(
            "421{}",
            json!(["subscribe", {"topic": "studies", "since": since}])
        ))
        .await;
    tokio::time::timeout(PATIENCE * 3, async {
        while events.len() < ROWS {
            events.extend(again.packets().await.iter().filter_map(|p| study_created(p)));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} events of {ROWS} after the resume", events.len()));
    let labels: Vec<String> = events
        .iter()
        .map(|e| e["data"]["label"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=ROWS).map(|g| format!("slow-{g}")).collect();
    assert_eq!(labels, expected);
}

#[tokio::test]
async fn without_a_secret_another_site_cannot_open_a_socket() {
    let app = TestApp::spawn().await;
    let base = app.url("/socket.io/?EIO=4&transport=polling");
    let http = reqwest::Client::new();
    let foreign = http
        .get(&base)
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("GET");
    assert_eq!(foreign.status().as_u16(), 403);
    let own = http.get(&base).send().await.expect("GET");
    assert!(own.status().is_success());
}

#[tokio::test]
async fn a_shutdown_tells_each_socket_1001_and_does_not_wait_on_its_polling_request() {
    // Arrange: a polling socket whose GET is waiting when the server is told to stop.
    let app = server().await;
    let admin = token(json!({"role": "admin", "exp": in_an_hour()}));
    let mut client = Polling::connect(&app, json!({ "token": admin })).await;
    client.post(r#"420["subscribe",{"topic":"studies"}]"#).await;
    let answer = client.packets().await;
    assert!(answer.iter().any(|p| p.starts_with("430[")), "{answer:?}");
    let waiting = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !seen.iter().any(|p| p == "41") {
            match client.try_packets().await {
                Some(packets) => seen.extend(packets),
                None => break,
            }
        }
        seen
    });

    // Act: stop (TestApp::stop fails the test unless the server ends within PATIENCE).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    app.stop().await;

    // Assert: the socket was told why before its namespace disconnect.
    let seen = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the polling client never saw its disconnect")
        .expect("client task");
    let closing = seen
        .iter()
        .find_map(|p| p.strip_prefix(r#"42["closing","#))
        .unwrap_or_else(|| panic!("no closing event in {seen:?}"));
    let closing: serde_json::Value = serde_json::from_str(closing.trim_end_matches(']')).unwrap();
    assert_eq!(closing["code"], 1001, "{closing}");
}

#[tokio::test]
async fn sockets_count_against_the_per_client_connection_limit() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.jwt_secret = Some(SECRET.into());
        c.max_connections_per_ip = 2;
    })
    .await;
    let auth = json!({ "token": token(json!({"role": "admin", "exp": in_an_hour()})) });
    let first = Polling::connect(&app, auth.clone()).await;
    let _second = Polling::connect(&app, auth.clone()).await;

    // A third is refused with a connect_error that says why.
    let http = reqwest::Client::new();
    let base = app.url("/socket.io/?EIO=4&transport=polling");
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let handshake: serde_json::Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let mut third = Polling {
        http,
        url: format!("{base}&sid={}", handshake["sid"].as_str().unwrap()),
    };
    third.post(&format!("40{auth}")).await;
    let refusal = third.packets().await;
    let error = refusal
        .iter()
        .find_map(|p| p.strip_prefix("44"))
        .unwrap_or_else(|| panic!("no connect_error in {refusal:?}"));
    assert!(error.contains("too_many_connections"), "{error}");

    // Once one leaves, its slot is free again.
    first.post("41").await;
    tokio::time::timeout(PATIENCE, async {
        loop {
            third.post(&format!("40{auth}")).await;
            if third.packets().await.iter().any(|p| p.starts_with("40{")) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the slot of a socket that left was never freed");
}
