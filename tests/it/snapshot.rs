//! Snapshots: the rows as they are, then the stream after them without a gap or a repeat.

use std::time::Duration;

use serde_json::json;

use crate::support::{ids, Seen, TestApp, PATIENCE};

#[tokio::test]
async fn a_snapshot_then_the_stream_under_concurrent_inserts_has_no_loss_and_no_duplicate() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 's', 'S')");
    const N: usize = 400;
    let script: String = (0..N)
        .map(|i| {
            format!("insert into messages (study_id, author, body) values (1, 'w', '{i}');\nselect pg_sleep(0.001);\n")
        })
        .collect();
    let writer = app.db.psql_script(script);
    tokio::time::sleep(Duration::from_millis(150)).await;

    let mut ws = app.ws().await;
    let sub = ws
        .subscribe_with(json!({"action": "subscribe", "topic": "studies:1", "snapshot": true}))
        .await;
    let snap = ws.next_json().await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["cursor"], sub["cursor"]);
    assert_eq!(snap["data"]["study"]["label"], "s");
    let mut seen: Vec<i64> = snap["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    writer.await.expect("writer");

    let rest = ws.events(N - seen.len()).await;
    seen.extend(ids(&rest));
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), N, "no duplicate between snapshot and stream");
    assert_eq!(seen, sorted, "stream continues in order after the snapshot");
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn snapshots_of_a_table_a_row_and_refresh() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'a', 'A'), (2, 'b', 'B')");
    let mut ws = app.ws().await;
    ws.subscribe_with(json!({"action": "subscribe", "topic": "studies", "snapshot": true}))
        .await;
    let snap = ws.next_json().await;
    assert_eq!(snap["data"].as_array().unwrap().len(), 2);

    ws.subscribe_with(json!({"action": "subscribe", "topic": "studies:2", "snapshot": true}))
        .await;
    assert_eq!(ws.next_json().await["data"]["study"]["label"], "b");

    app.psql("insert into messages (id, study_id, author, body) values (5, 1, 'a', 'x')");
    ws.subscribe_with(json!({"action": "subscribe", "topic": "messages:5", "snapshot": true}))
        .await;
    assert_eq!(ws.next_json().await["data"]["body"], "x");

    app.psql("insert into studies (id, label, title) values (3, 'c', 'C')");
    assert_eq!(ws.next_event().await["topic"], "studies");
    ws.send(json!({"action": "refresh", "topic": "studies", "id": "r"}))
        .await;
    let again = ws.next_json().await;
    assert_eq!(
        (again["type"].as_str(), again["id"].as_str()),
        (Some("snapshot"), Some("r"))
    );
    assert_eq!(again["data"].as_array().unwrap().len(), 3);
}

// A commit stamped early and held open (`TestDb::stamped_open`) has its seq drawn but not yet
// visible: a snapshot must not take a cursor past it (see ordering.rs).

#[tokio::test]
async fn a_snapshot_waits_for_a_commit_in_flight_and_the_stream_after_it_neither_misses_nor_repeats() {
    let app = TestApp::spawn().await;

    // A stamps first and stays open; B commits after it (B's seq is the newest).
    let a = app
        .db
        .stamped_open("insert into studies (id, label, title) values (1, 'a', 'A');")
        .await;
    app.psql("insert into studies (id, label, title) values (2, 'b', 'B')");

    // A snapshot asked now waits for A (taken without it, with B's seq as its cursor, it would
    // never get A).
    let mut ws = app.ws().await;
    ws.send(json!({"action": "subscribe", "topic": "studies", "snapshot": true}))
        .await;
    assert!(
        ws.next_seen_within(Duration::from_millis(300)).await.is_none(),
        "the snapshot waits for the commit in flight"
    );
    a.finish("commit;").await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    let snap = ws.next_json().await;
    assert_eq!(snap["type"], "snapshot");
    let labels: Vec<&str> = snap["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["a", "b"]);

    // Then only what came after it.
    app.psql("insert into studies (id, label, title) values (3, 'c', 'C')");
    assert_eq!(ws.next_event().await["data"]["label"], "c");
    ws.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_snapshot_behind_a_commit_in_flight_for_too_long_fails_and_writers_go_on_meanwhile() {
    let app = TestApp::spawn().await;
    let a = app
        .db
        .stamped_open("insert into studies (id, label, title) values (1, 'a', 'A');")
        .await;

    let mut ws = app.ws().await;
    let asked = std::time::Instant::now();
    ws.send(json!({"action": "subscribe", "topic": "studies", "snapshot": true, "id": 7}))
        .await;
    // While the snapshot waits, its tries to hold commits back last 100 ms each: other writers
    // get through between them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.psql("insert into studies (id, label, title) values (2, 'b', 'B')");
    assert!(
        ws.next_seen_within(Duration::from_millis(200)).await.is_none(),
        "the writer got through while the snapshot still waited"
    );

    // It gives up after `log::HOLD_PATIENCE`, with an error, and the connection stays usable.
    let answer = match ws.next_seen_within(pgfeed::db::log::HOLD_PATIENCE + PATIENCE).await {
        Some(Seen::Frame(v)) => v,
        other => panic!("expected an error frame, got {other:?}"),
    };
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str(), answer["id"].as_i64()),
        (Some("error"), Some("unavailable"), Some(7)),
        "{answer}"
    );
    assert!(answer["message"].as_str().unwrap().contains("in flight"), "{answer}");
    assert!(
        asked.elapsed() >= pgfeed::db::log::HOLD_PATIENCE,
        "{:?}",
        asked.elapsed()
    );
    ws.send(json!({"action": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    a.finish("rollback;").await;
}
