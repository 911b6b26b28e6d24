//! The `pgfeed` binary as a person runs it: help, serve, SIGTERM, embedded mode, refusals.

use tokio::process::Command;

use crate::support::process::{serve, Running, BIN};
use crate::support::{Seen, TestDb};

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

#[tokio::test]
async fn json_logs_carry_request_ids_and_never_tokens_or_payloads() {
    let db = TestDb::create().await;
    let server = serve(
        &["serve", "--bind", "127.0.0.1:0", "--log-format", "json"],
        &[("DATABASE_URL", &db.url), ("RUST_LOG", "pgfeed=debug,tower_http=debug")],
    )
    .await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token=SECRET123&topics=studies", server.addr))
            .await
            .expect("ws");
    let _ = reqwest::get(format!("http://{}/healthz?token=SECRET123", server.addr))
        .await
        .unwrap();
    db.psql("insert into studies (label, title) values ('PAYLOAD456', 'x')");
    let mut client = crate::support::WsClient { stream: ws };
    assert_eq!(client.next_json().await["type"], "subscribed");
    assert_eq!(client.next_event().await["data"]["label"], "PAYLOAD456");
    ws = client.stream;
    drop(ws);
    let log = server.log.clone();
    assert!(server.terminate().await.success());

    let lines = log.lock().unwrap().clone();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
        assert!(
            !line.contains("SECRET123") && !line.contains("PAYLOAD456"),
            "leaked into the log: {line}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("request_id")), "requests carry an id");
}

#[tokio::test]
async fn healthcheck_exits_zero_for_a_healthy_server_and_non_zero_otherwise() {
    let db = TestDb::create().await;
    let server = serve(&["serve", "--bind", "127.0.0.1:0"], &[("DATABASE_URL", &db.url)]).await;
    // Healthy once the listener has connected, moments after the server listens.
    let check = || Command::new(BIN).args(["healthcheck", "--bind", &server.addr]).output();
    let mut ok = check().await.unwrap();
    for _ in 0..100 {
        if ok.status.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        ok = check().await.unwrap();
    }
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(server.terminate().await.success());
    let down = Command::new(BIN)
        .args(["healthcheck", "--bind", "127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert!(!down.status.success());
}

#[tokio::test]
async fn insecure_no_auth_allows_a_wildcard_bind_and_says_so_loudly() {
    let db = TestDb::create().await;
    let server = serve(
        &["serve", "--bind", "0.0.0.0:0", "--insecure-no-auth"],
        &[("DATABASE_URL", &db.url)],
    )
    .await;
    let warning = server.log_line("WITHOUT AUTHENTICATION").expect("a warning at start");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(server.terminate().await.success());
}
