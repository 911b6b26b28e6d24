//! `pgfeed tail` (README "Without a WebSocket"): the real binary against a real server, psql as the writer.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::support::{TestApp, PATIENCE};

const BIN: &str = env!("CARGO_BIN_EXE_pgfeed");

/// A running `pgfeed tail` and its stdout, line by line.
struct Tail {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

/// `pgfeed tail ARGS` with a clean environment.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("tail").args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("PGFEED_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

impl Tail {
    fn start(args: &[&str]) -> Tail {
        Tail::start_with(args, &[])
    }

    fn start_with(args: &[&str], env: &[(&str, &str)]) -> Tail {
        let mut child = command(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pgfeed tail");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Tail { child, lines }
    }

    /// The next stdout line as JSON.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
            .await
            .expect("no line from tail in time")
            .expect("reading tail's stdout")
            .expect("tail exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("tail printed a line that is not JSON: {line:?}: {e}"))
    }

    async fn assert_quiet(&mut self, wait: Duration) {
        if let Ok(line) = tokio::time::timeout(wait, self.lines.next_line()).await {
            panic!("expected nothing from tail, got {line:?}");
        }
    }
}

/// Runs `pgfeed tail ARGS` to its end: (exit code, stdout, stderr).
async fn run_to_end(args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(PATIENCE, command(args).output())
        .await
        .expect("tail did not exit")
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

async fn current_cursor(app: &TestApp) -> String {
    let (_, v) = app.get_json("/api/changes?topics=studies").await;
    v["cursor"].as_str().expect("cursor").to_owned()
}

#[tokio::test]
async fn tail_prints_one_json_line_per_psql_insert() {
    let app = TestApp::spawn().await;
    let since = current_cursor(&app).await;
    let url = app.url("");
    let mut tail = Tail::start(&["studies", "--since", &since, "--url", &url]);

    for label in ["a", "b", "c"] {
        app.psql(&format!("insert into studies (label, title) values ('{label}', 'T')"));
    }
    for label in ["a", "b", "c"] {
        let line = tail.next().await;
        assert_eq!(
            (line["type"].as_str(), line["data"]["label"].as_str()),
            (Some("study_created"), Some(label))
        );
        assert!(line["cursor"].is_string());
    }
    tail.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn tail_survives_a_server_restart_without_loss_or_duplicates() {
    let app = TestApp::spawn().await;
    let since = current_cursor(&app).await;
    let url = app.url("");
    let mut tail = Tail::start(&["studies", "--since", &since, "--url", &url]);
    app.psql("insert into studies (id, label, title) values (1, 'a', 'T'), (2, 'b', 'T')");
    let mut got: Vec<i64> = Vec::new();
    for _ in 0..2 {
        got.push(tail.next().await["id"].as_i64().unwrap());
    }

    let db = app.db.clone();
    app.stop().await;
    db.psql("insert into studies (id, label, title) values (3, 'c', 'T')"); // while no server runs
    let app = TestApp::spawn_at(db, url.trim_start_matches("http://").parse().unwrap()).await;
    app.psql("insert into studies (id, label, title) values (4, 'd', 'T'), (5, 'e', 'T')");
    for _ in 0..3 {
        got.push(tail.next().await["id"].as_i64().unwrap());
    }
    assert_eq!(got, [1, 2, 3, 4, 5]);
    tail.assert_quiet(Duration::from_millis(500)).await;
    let _ = tail.child.kill().await;
}

#[tokio::test]
async fn tail_exits_with_one_clear_line_when_the_server_cannot_be_reached() {
    // A port nobody listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, stdout, stderr) = run_to_end(&["studies", "--url", &format!("http://127.0.0.1:{port}")]).await;
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(
        lines[0].starts_with("pgfeed: cannot reach http://127.0.0.1:"),
        "{stderr:?}"
    );
}

#[tokio::test]
async fn tail_exits_with_one_clear_line_when_the_token_is_refused() {
    // A stand-in server that refuses every upgrade with 401, as pgfeed does for a bad token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
            let _ = sock
                .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    let (code, stdout, stderr) = run_to_end(&["studies", "--url", &url, "--token", "bad"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("refused the token (HTTP 401"), "{stderr:?}");
}

#[tokio::test]
async fn tail_of_an_unknown_topic_exits_with_the_servers_reason() {
    let app = TestApp::spawn().await;
    let (code, _, stderr) = run_to_end(&["nosuchtable", "--url", &app.url("")]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("nosuchtable") && stderr.contains("unknown_topic"),
        "{stderr:?}"
    );
}

/// A TLS-terminating proxy on 127.0.0.1 in front of `upstream`, as a deployment would put before
/// pgfeed, with a fresh self-signed certificate for `localhost`: its port, and the certificate as
/// a PEM file in `dir`.
async fn tls_proxy(upstream: std::net::SocketAddr, dir: &std::path::Path) -> (u16, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let pem = dir.join("localhost.pem");
    std::fs::write(&pem, certified.cert.pem()).expect("writing the certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let (Ok(mut tls), Ok(mut server)) = (
                    acceptor.accept(tcp).await,
                    tokio::net::TcpStream::connect(upstream).await,
                ) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    (port, pem)
}

#[tokio::test]
async fn tail_reaches_a_server_behind_tls_with_an_https_url() {
    let app = TestApp::spawn().await;
    let dir = std::env::temp_dir().join(format!("pgfeed-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, pem) = tls_proxy(app.addr, &dir).await;
    let url = format!("https://localhost:{port}");
    let since = current_cursor(&app).await;

    // Trusting the proxy's certificate (SSL_CERT_FILE, as with curl or git): events over wss://.
    let mut tail = Tail::start_with(
        &["studies", "--url", &url, "--since", &since],
        &[("SSL_CERT_FILE", pem.to_str().unwrap())],
    );
    app.psql("insert into studies (label, title) values ('over-tls', 'T')");
    assert_eq!(tail.next().await["data"]["label"], "over-tls");

    // Not trusting it: refused at the start, with one line that says why.
    let (code, stdout, stderr) = run_to_end(&["studies", "--url", &url]).await;
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("certificate"), "{stderr:?}");
    std::fs::remove_dir_all(&dir).ok();
}
