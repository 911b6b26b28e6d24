//! Faults the feed must ride out (README "How it works"), and capture installed by hand.

use std::time::Duration;

use pgfeed::embedded::Cluster;
use sqlx::{Connection, PgConnection};

use crate::support::{TestApp, TestDb, PATIENCE};

/// A test-private cluster: this test stops and restarts PostgreSQL itself.
async fn private_cluster(dir: &std::path::Path) -> Cluster {
    Cluster::start(dir).await.expect("starting a private cluster")
}

#[tokio::test]
async fn while_postgres_is_down_healthz_is_503_sockets_stay_open_and_nothing_is_lost() {
    // Arrange: pgfeed on a cluster of its own.
    let dir = std::env::temp_dir().join(format!("pgfeed-fault-{}", uuid::Uuid::new_v4().simple()));
    let cluster = private_cluster(&dir).await;
    let mut admin = PgConnection::connect(&cluster.url("postgres")).await.unwrap();
    sqlx::query("create database feed").execute(&mut admin).await.unwrap();
    drop(admin);
    let db = std::sync::Arc::new(TestDb::external("feed", cluster.url("feed")));
    let app = TestApp::spawn_on(db.clone()).await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    app.psql("insert into studies (label, title) values ('before', 'B')");
    assert_eq!(ws.next_event().await["data"]["label"], "before");

    // Act: PostgreSQL goes away.
    cluster.stop().await.unwrap();
    let health = format!("http://{}/healthz", app.addr);
    tokio::time::timeout(PATIENCE, async {
        while reqwest::get(&health).await.unwrap().status() != 503 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("healthz did not turn 503");
    ws.send(serde_json::json!({"action": "ping"})).await;
    assert_eq!(
        ws.next_json().await["type"],
        "pong",
        "the WebSocket stays open and usable"
    );

    // ... and comes back; a write right away still arrives, once.
    let cluster = private_cluster(&dir).await;
    app.psql("insert into studies (label, title) values ('after', 'A')");
    assert_eq!(ws.next_event().await["data"]["label"], "after");
    app.wait_healthy().await;
    ws.assert_quiet(Duration::from_millis(300)).await;

    app.stop().await;
    cluster.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn capture_installs_by_hand_with_psql_idempotently_and_tracks_any_table() {
    // A database that pgfeed never migrated: an existing application's.
    let db = TestDb::create_empty().await;
    let root = env!("CARGO_MANIFEST_DIR");
    for _ in 0..2 {
        let out = std::process::Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-1",
                "-d",
                &db.url,
                "-f",
                &format!("{root}/sql/capture.sql"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    db.psql("create table orders (id bigint primary key, total numeric)");
    db.psql("select pgfeed.track('orders')");
    db.psql("insert into orders values (1, 9.5)");
    db.psql("begin; insert into orders values (2, 1); rollback;");
    let logged = db.psql(
        "select c.seq || ' ' || e.type || ' ' || array_to_string(e.topics, ',') \
         from pgfeed.commits c join pgfeed.events e using (txid) order by c.seq, e.pos",
    );
    assert_eq!(logged, "1 orders_created orders,orders:1");
}

#[tokio::test]
async fn a_listener_that_keeps_losing_a_working_connection_retries_after_the_shortest_backoff() {
    // A pgfeed process, whose log the test reads: each loss of a connection that had been working
    // is logged with the wait before the next attempt, which must start again from the shortest
    // (100 ms) rather than keep doubling across separate outages.
    let db = TestDb::create().await;
    let server = crate::support::process::serve(
        &["serve", "--bind", "127.0.0.1:0", "--log-format", "json"],
        &[("DATABASE_URL", &db.url), ("RUST_LOG", "pgfeed=info")],
    )
    .await;
    // Only a session that is working counts: it has finished its LISTEN and joined the idle set
    // (the lock is granted and the statement answered). A session cut off before that never
    // worked, and its retry rightly backs off further.
    let kill = format!(
        "select count(pg_terminate_backend(a.pid)) from pg_stat_activity a \
         join pg_locks l on l.pid = a.pid and l.locktype = 'advisory' and l.granted \
           and l.classid = 0 and l.objid = {} and l.objsubid = 1 \
         where a.application_name = '{}' and a.datname = current_database() and a.state = 'idle'",
        pgfeed::listener::IDLE_LOCK,
        pgfeed::listener::APPLICATION_NAME
    );
    const OUTAGES: usize = 4;
    for _ in 0..OUTAGES {
        // Once the listener is back and working, cut it off.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while db.psql(&kill) != "1" {
            assert!(tokio::time::Instant::now() < deadline, "the listener never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let lost = loop {
        let lost: Vec<String> = server
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("listener lost its connection"))
            .cloned()
            .collect();
        if lost.len() >= OUTAGES || tokio::time::Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lost.len(), OUTAGES, "{lost:#?}");
    for line in &lost {
        let entry: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert_eq!(entry["retry_in"], "100ms", "backoff not reset: {line}");
    }
    // And it relays again.
    let mut ws = server.ws().await;
    ws.subscribe("studies").await;
    db.psql("insert into studies (label, title) values ('after', 'A')");
    assert_eq!(ws.next_event().await["data"]["label"], "after");
    server.terminate().await;
}
