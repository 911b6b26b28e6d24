//! The `pgfeed` binary as a person runs it: help, serve, SIGTERM, embedded mode, refusals.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{Seen, TestDb, WsClient, PATIENCE};

const BIN: &str = env!("CARGO_BIN_EXE_pgfeed");

/// A `pgfeed` process and what it has logged so far.
struct Running {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// `pgfeed ARGS` with a clean environment (no DATABASE_URL or PGFEED_* from the caller), waiting
/// for its `listening on http://ADDR` line.
async fn serve(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k == "DATABASE_URL" || k.starts_with("PGFEED_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "pgfeed=info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting pgfeed");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    tokio::spawn({
        let log = log.clone();
        async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(i) = line.find("listening on http://") {
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(line[i + "listening on http://".len()..].trim().to_owned());
                    }
                }
                log.lock().unwrap().push(line);
            }
        }
    });
    let addr = match tokio::time::timeout(Duration::from_secs(60), addr_rx).await {
        Ok(Ok(addr)) => addr,
        _ => panic!(
            "pgfeed did not start listening; its log:\n{}",
            log.lock().unwrap().join("\n")
        ),
    };
    Running { child, addr, log }
}

impl Running {
    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid") as i32;
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "pgfeed did not exit after SIGTERM; its log:\n{}",
                self.log.lock().unwrap().join("\n")
            ),
        }
    }

    async fn ws(&self) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", self.addr))
            .await
            .expect("ws connect");
        WsClient { stream }
    }

    fn log_line(&self, needle: &str) -> Option<String> {
        self.log.lock().unwrap().iter().find(|l| l.contains(needle)).cloned()
    }
}

#[tokio::test]
async fn help_lists_every_setting_with_its_environment_variable() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .await
        .expect("pgfeed --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--database-url", "DATABASE_URL"),
        ("--bind", "PGFEED_BIND"),
        ("--data-dir", "PGFEED_DATA_DIR"),
        ("--jwt-secret", "PGFEED_JWT_SECRET"),
        ("--retention", "PGFEED_RETENTION"),
        ("--max-connections-per-ip", "PGFEED_MAX_CONNECTIONS_PER_IP"),
        ("--max-upload", "PGFEED_MAX_UPLOAD"),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing from:\n{help}"
        );
    }
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_exits_zero() {
    let db = TestDb::create().await;
    let server = serve(&["serve", "--bind", "127.0.0.1:0"], &[("DATABASE_URL", &db.url)]).await;
    let mut ws = server.ws().await;
    ws.subscribe("studies").await;
    db.psql("insert into studies (label, title) values ('a', 'A')");
    assert_eq!(ws.next_event().await["data"]["label"], "a");

    let status = server.terminate().await;
    assert!(matches!(ws.next_seen().await, Seen::Closed(Some(1001))));
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let db = TestDb::create().await;
    let out = Command::new(BIN)
        .args(["migrate", "--database-url", &db.url])
        .output()
        .await
        .expect("pgfeed migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(db.psql("select count(*) from pgfeed.tracked"), "3");
}

#[tokio::test]
async fn a_non_loopback_bind_without_a_jwt_secret_is_refused_in_one_line() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--bind",
            "0.0.0.0:0",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .env_remove("PGFEED_JWT_SECRET")
        .output()
        .await
        .expect("pgfeed");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--jwt-secret") && err.trim().lines().count() == 1, "{err}");
}

#[tokio::test]
async fn embedded_mode_keeps_its_data_across_restarts() {
    let dir = tempdir();
    let data_dir = dir.to_str().unwrap();
    let server = serve(&["serve", "--bind", "127.0.0.1:0", "--data-dir", data_dir], &[]).await;
    let url = embedded_url(&server);
    let mut ws = server.ws().await;
    ws.subscribe("studies").await;
    psql(&url, "insert into studies (label, title) values ('kept', 'Kept')");
    assert_eq!(ws.next_event().await["data"]["label"], "kept");
    assert!(server.terminate().await.success());
    assert!(
        !dir.join("pgdata/postmaster.pid").exists(),
        "the embedded cluster was stopped"
    );

    let server = serve(&["serve", "--bind", "127.0.0.1:0", "--data-dir", data_dir], &[]).await;
    let url = embedded_url(&server);
    assert_eq!(psql(&url, "select title from studies where label = 'kept'"), "Kept");
    assert!(server.terminate().await.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The embedded cluster's URL, which the server logs for people who want to psql into it.
fn embedded_url(server: &Running) -> String {
    let line = server
        .log_line("embedded PostgreSQL at ")
        .expect("the server logs its embedded URL");
    let url = &line[line.find("embedded PostgreSQL at ").unwrap() + "embedded PostgreSQL at ".len()..];
    url.split_whitespace().next().unwrap().to_owned()
}

fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgfeed-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
