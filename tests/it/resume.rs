//! Resuming from a cursor: what was missed comes exactly once, from the memory ring or the log,
//! and a cursor that cannot be trusted gets an error or `refresh_needed`, never data.

use std::time::Duration;

use serde_json::json;

use crate::support::{ids, labels, Seen, TestApp, TestDb};

#[tokio::test]
async fn resume_with_since_gets_exactly_what_was_missed() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    app.psql("insert into studies (label, title) values ('a', 'A')");
    let seen = ws.next_event().await;
    ws.close().await;

    app.psql("insert into studies (label, title) values ('b', 'B'), ('c', 'C')");
    app.psql("update studies set title = 'A2' where label = 'a'");

    let mut ws = app.ws().await;
    let sub = ws.subscribe_since("studies", seen["cursor"].as_str().unwrap()).await;
    assert_eq!(sub["cursor"], seen["cursor"]);
    let missed = ws.events(3).await;
    assert_eq!(labels(&missed), ["b", "c", "a"]);
    ws.assert_quiet(Duration::from_millis(300)).await;

    // And it goes on live.
    app.psql("insert into studies (label, title) values ('d', 'D')");
    assert_eq!(ws.next_event().await["data"]["label"], "d");
}

#[tokio::test]
async fn resume_beyond_the_memory_ring_is_served_from_the_log_in_order() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    let start = ws.subscribe("messages").await["cursor"].clone();
    app.psql("insert into studies (id, label, title) values (1, 'x', 'X')");
    // More than the ring holds, so part of the resume must come from the database.
    let n = pgfeed::hub::RING + 2_500;
    app.psql(&format!(
        "insert into messages (study_id, author, body) select 1, 'a', g::text from generate_series(1, {n}) g"
    ));
    let live = ws.events(n).await;
    ws.close().await;

    let mut ws = app.ws().await;
    ws.subscribe_since("messages", start.as_str().unwrap()).await;
    let resumed = ws.events(n).await;
    assert_eq!(ids(&resumed), ids(&live));
    assert_eq!(resumed.last().unwrap()["cursor"], live.last().unwrap()["cursor"]);
    ws.assert_quiet(Duration::from_millis(300)).await;
}

/// A resume over many log pages whose seams fall inside commits: the next page is read while
/// one is sent (`Subscriptions::catch_up`), and the log hands over to the memory ring at the end.
/// On a WebSocket (one topic) and on SSE (several topics, one stream), every event arrives once,
/// in order.
#[tokio::test]
async fn a_resume_over_pages_cutting_through_commits_is_whole_and_in_order() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    let start = ws.subscribe("messages").await["cursor"].clone();
    app.psql("insert into studies (id, label, title) values (1, 'x', 'X')");
    // 130 commits of 97 rows: more than the ring holds, and pages of 1,000 events end mid-commit.
    let (commits, rows) = (130, 97);
    let script: String = (0..commits)
        .map(|_| {
            format!("insert into messages (study_id, author, body) select 1, 'a', g::text from generate_series(1, {rows}) g;\n")
        })
        .collect();
    app.db.psql_script(script).await.unwrap();
    let live = ws.events(commits * rows).await;
    ws.close().await;
    assert!(commits * rows > pgfeed::hub::RING);

    let mut ws = app.ws().await;
    ws.subscribe_since("messages", start.as_str().unwrap()).await;
    let resumed = ws.events(commits * rows).await;
    assert_eq!(ids(&resumed), ids(&live));
    ws.assert_quiet(Duration::from_millis(300)).await;

    let mut sse = app
        .sse(
            &format!("topics=messages,studies&since={}", start.as_str().unwrap()),
            None,
        )
        .await;
    sse.next().await.expect("subscribed");
    let merged = sse.events(1 + commits * rows).await;
    assert_eq!(merged[0]["type"], "study_created");
    assert_eq!(ids(&merged[1..]), ids(&live));
}

#[tokio::test]
async fn garbage_and_foreign_cursors_get_an_error_or_refresh_needed_never_data() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (label, title) values ('a', 'A')");
    let mut ws = app.ws().await;

    ws.send(json!({"action": "subscribe", "topic": "studies", "since": "not-a-cursor", "id": 1}))
        .await;
    let v = ws.next_json().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), &v["id"]),
        (Some("error"), Some("bad_request"), &json!(1))
    );

    ws.send(json!({"action": "subscribe", "topic": "studies", "since": "0123abcdef99-1-1"}))
        .await;
    let v = ws.next_json().await;
    assert_eq!(v["type"], "refresh_needed", "{v}");
    assert_eq!(v["topic"], "studies");

    // A cursor of this log but beyond its head (as from a restored backup) is not trusted either.
    let epoch = app.psql("select epoch from pgfeed.meta");
    ws.send(json!({"action": "subscribe", "topic": "studies", "since": format!("{epoch}-999999-1")}))
        .await;
    assert_eq!(ws.next_json().await["type"], "refresh_needed");

    // None of those subscribed: a new row reaches nobody here.
    app.psql("insert into studies (label, title) values ('b', 'B')");
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_cursor_older_than_retention_gets_refresh_needed() {
    let db = TestDb::create().await;
    let app = TestApp::spawn_with(db, |c| c.retention = Duration::from_secs(1)).await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    app.psql("insert into studies (label, title) values ('a', 'A')");
    let old = ws.next_event().await["cursor"].clone();
    app.psql("insert into studies (label, title) values ('b', 'B')");
    ws.next_event().await;
    app.wait_until_every_commit_is_pruned().await;

    let mut again = app.ws().await;
    again
        .send(json!({"action": "subscribe", "topic": "studies", "since": old}))
        .await;
    let v = again.next_json().await;
    assert_eq!(
        (v["type"].as_str(), v["reason"].as_str()),
        (Some("refresh_needed"), Some("cursor_expired"))
    );
}

#[tokio::test]
async fn after_a_server_restart_a_client_resumes_with_exactly_the_missed_rows() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    app.psql("insert into studies (label, title) values ('a', 'A')");
    let cursor = ws.next_event().await["cursor"].clone();
    let db = app.db.clone();
    app.stop().await;
    assert!(
        matches!(ws.next_seen().await, Seen::Closed(Some(1001))),
        "shutdown closes with 1001"
    );

    db.psql("insert into studies (label, title) values ('b', 'B')");
    db.psql("delete from studies where label = 'a'");

    let app = TestApp::spawn_on(db).await;
    let mut ws = app.ws().await;
    ws.subscribe_since("studies", cursor.as_str().unwrap()).await;
    let missed = ws.events(2).await;
    assert_eq!(
        (missed[0]["type"].as_str(), missed[1]["type"].as_str()),
        (Some("study_created"), Some("study_deleted"))
    );
    ws.assert_quiet(Duration::from_millis(300)).await;
}
