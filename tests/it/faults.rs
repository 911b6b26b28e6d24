//! Faults the feed must ride out (DESIGN "Failure behaviour"), and capture installed by hand.

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
