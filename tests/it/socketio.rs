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
