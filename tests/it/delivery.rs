//! What a subscriber receives over a real WebSocket, with psql as the writer: the rows of its
//! topics, whole, from the moment it subscribes until it unsubscribes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{position, TestApp};

#[tokio::test]
async fn psql_insert_update_delete_reach_a_studies_subscriber_with_the_row() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;

    app.psql("insert into studies (label, title) values ('s1', 'First')");
    app.psql("update studies set title = 'Renamed' where label = 's1'");
    app.psql("delete from studies where label = 's1'");

    let [created, updated, deleted] = <[Value; 3]>::try_from(ws.events(3).await).unwrap();
    assert_eq!(created["type"], "study_created");
    assert_eq!(created["op"], "insert");
    assert_eq!(created["topic"], "studies");
    assert_eq!(created["table"], "studies");
    assert_eq!(created["data"]["label"], "s1");
    assert_eq!(created["data"]["status"], "draft");
    assert_eq!(created["id"], created["data"]["id"]);
    assert_eq!(updated["type"], "study_updated");
    assert_eq!(updated["data"]["title"], "Renamed");
    assert_eq!(
        updated["data"]["version"], 2,
        "the database bumps version on every update"
    );
    assert_eq!(deleted["type"], "study_deleted");
    assert_eq!(
        deleted["data"]["title"], "Renamed",
        "a delete carries the row as it was"
    );
    assert!(created["committed_at"].as_str().unwrap().ends_with('Z'));
    assert!(position(&created["cursor"]) < position(&updated["cursor"]));
}

#[tokio::test]
async fn messages_and_files_reach_their_own_study_room_and_no_other() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'a', 'A'), (2, 'b', 'B')");
    let mut room1 = app.ws().await;
    room1.subscribe("studies:1").await;
    let mut room2 = app.ws().await;
    room2.subscribe("studies:2").await;

    app.psql("insert into messages (study_id, author, body) values (2, 'bob', 'for room 2')");
    app.psql("insert into messages (study_id, author, body) values (1, 'ana', 'hi')");
    app.psql("insert into files (study_id, name, content_type, size_bytes, sha256) values (1, 'a.txt', 'text/plain', 1, 'x')");
    app.psql("update studies set status = 'active' where id = 1");

    let events = room1.events(3).await;
    let kinds: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message_created", "file_created", "study_updated"]);
    assert!(events.iter().all(|e| e["topic"] == "studies:1"));
    assert_eq!(events[0]["data"]["body"], "hi");
    assert_eq!(events[0]["table"], "messages");

    let other = room2.next_event().await;
    assert_eq!(other["data"]["body"], "for room 2");
    room2.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_one_megabyte_row_arrives_whole() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'big', 'Big')");
    let mut ws = app.ws().await;
    ws.subscribe("studies:1").await;

    app.psql("insert into messages (study_id, author, body) values (1, 'a', repeat('x', 1048576))");
    let ev = ws.next_event().await;
    assert_eq!(ev["data"]["body"].as_str().unwrap().len(), 1_048_576);
}

#[tokio::test]
async fn unsubscribe_stops_events_and_ping_answers_pong() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    ws.send(json!({"action": "ping", "id": 7})).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong", "id": 7}));
    ws.send(json!({"action": "unsubscribe", "topic": "studies"})).await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "unsubscribed", "topic": "studies"})
    );
    app.psql("insert into studies (label, title) values ('a', 'A')");
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn connect_time_topics_and_since_subscribe_on_connect() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    let first = ws.subscribe("studies").await["cursor"].clone();
    app.psql("insert into studies (id, label, title) values (1, 'a', 'A')");
    ws.next_event().await;

    let mut ws = app
        .ws_at(&format!(
            "/ws?topics=studies,studies:1&since={}",
            first.as_str().unwrap()
        ))
        .await;
    let mut frames = Vec::new();
    for _ in 0..4 {
        frames.push(ws.next_json().await);
    }
    let summary: Vec<_> = frames
        .iter()
        .map(|f| (f["type"].as_str().unwrap(), f["topic"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("subscribed", "studies"),
            ("study_created", "studies"),
            ("subscribed", "studies:1"),
            ("study_created", "studies:1")
        ]
    );
}
