//! `GET /api/changes` (README "Without a WebSocket"): long-polling with psql as the writer.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{ids, labels, TestApp, TestDb, PATIENCE};

fn cursor(v: &Value) -> &str {
    v["cursor"].as_str().expect("a cursor")
}

#[tokio::test]
async fn without_since_it_answers_at_once_with_the_current_cursor() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (label, title) values ('old', 'O')");
    let (status, v) = app.get_json("/api/changes?topics=studies&wait=60").await;
    assert_eq!(status, 200);
    assert_eq!(v["events"], serde_json::json!([]));
    app.psql("insert into studies (label, title) values ('new', 'N')");
    let (_, v) = app
        .get_json(&format!("/api/changes?topics=studies&since={}", cursor(&v)))
        .await;
    assert_eq!(
        labels(v["events"].as_array().unwrap()),
        ["new"],
        "only what came after the cursor"
    );
    // The answer is written out by hand around the stored frames: still JSON, labelled as such.
    let reply = app
        .get(&format!("/api/changes?topics=studies&since={}&wait=0", cursor(&v)))
        .await;
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["events"], serde_json::json!([]));
}

#[tokio::test]
async fn polling_with_each_answers_cursor_sees_every_event_once_in_pages() {
    let app = TestApp::spawn().await;
    let (_, start) = app.get_json("/api/changes?topics=studies").await;
    app.psql("insert into studies (label, title) select 'l' || g, 't' from generate_series(1, 25) g");
    let mut since = cursor(&start).to_owned();
    let mut got = Vec::new();
    loop {
        let (status, v) = app
            .get_json(&format!("/api/changes?topics=studies&since={since}&limit=10&wait=0"))
            .await;
        assert_eq!(status, 200);
        let events = v["events"].as_array().unwrap().clone();
        assert!(events.len() <= 10);
        since = cursor(&v).to_owned();
        if events.is_empty() {
            break;
        }
        got.extend(events);
    }
    assert_eq!(ids(&got), (1..=25).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_waiting_poll_wakes_within_a_second_of_an_insert() {
    let app = TestApp::spawn().await;
    let (_, start) = app.get_json("/api/changes?topics=studies").await;
    let url = app.url(&format!("/api/changes?topics=studies&since={}&wait=30", cursor(&start)));
    let poll = tokio::spawn(async move {
        let v: Value = reqwest::get(url).await.expect("poll").json().await.expect("JSON");
        (v, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the poll waits while nothing is new");

    app.psql("insert into studies (label, title) values ('x', 'X')");
    let inserted = Instant::now();
    let (v, answered) = tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("poll answered")
        .expect("join");
    assert_eq!(v["events"][0]["data"]["label"], "x");
    let after = answered.saturating_duration_since(inserted);
    assert!(after < Duration::from_secs(1), "answered {after:?} after the insert");
}

#[tokio::test]
async fn with_nothing_new_it_answers_after_wait_seconds_with_a_usable_cursor() {
    let app = TestApp::spawn().await;
    let (_, start) = app.get_json("/api/changes?topics=studies:1").await;
    app.psql("insert into studies (id, label, title) values (2, 'other', 'O')"); // not on studies:1
    let began = Instant::now();
    let (status, v) = app
        .get_json(&format!(
            "/api/changes?topics=studies:1&since={}&wait=1",
            cursor(&start)
        ))
        .await;
    let took = began.elapsed();
    assert_eq!(status, 200);
    assert_eq!(v["events"], serde_json::json!([]));
    assert!(took >= Duration::from_millis(950), "wait=1 waited only {took:?}");
    assert!(took < Duration::from_secs(10), "wait=1 took {took:?}");
    app.psql("insert into studies (id, label, title) values (1, 'mine', 'M')");
    let (_, v) = app
        .get_json(&format!("/api/changes?topics=studies:1&since={}&wait=0", cursor(&v)))
        .await;
    assert_eq!(ids(v["events"].as_array().unwrap()), [1]);
}

#[tokio::test]
async fn an_event_on_two_requested_topics_appears_once() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'a', 'A')");
    let (_, start) = app.get_json("/api/changes?topics=messages").await;
    app.psql("insert into messages (study_id, author, body) values (1, 'x', 'hi')");
    let (_, v) = app
        .get_json(&format!(
            "/api/changes?topics=studies:1,messages&since={}&wait=5",
            cursor(&start)
        ))
        .await;
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{v}");
    assert_eq!(
        events[0]["topic"], "messages",
        "the first of its topics that was asked for"
    );
}

#[tokio::test]
async fn bad_requests_and_expired_cursors_get_json_errors() {
    let db = TestDb::create().await;
    let app = TestApp::spawn_with(db, |c| c.retention = Duration::from_secs(1)).await;
    let (_, start) = app.get_json("/api/changes?topics=studies").await;
    app.psql("insert into studies (label, title) values ('a', 'A')");
    tokio::time::timeout(PATIENCE, async {
        while app.psql("select count(*) from pgfeed.commits") != "0" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("retention did not prune");

    let cases = [
        (
            format!("/api/changes?topics=studies&since={}", cursor(&start)),
            410,
            "cursor_expired",
        ),
        ("/api/changes?topics=studies&since=x".to_owned(), 400, "bad_request"),
        ("/api/changes?topics=nope".to_owned(), 404, "unknown_topic"),
        ("/api/changes".to_owned(), 400, "bad_request"),
        ("/api/changes?topics=studies&wait=soon".to_owned(), 400, "bad_request"),
    ];
    for (path, status, code) in cases {
        let (got, body) = app.get_json(&path).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn shutdown_answers_a_waiting_poll_at_once() {
    let app = TestApp::spawn().await;
    let (_, start) = app.get_json("/api/changes?topics=studies").await;
    let url = app.url(&format!("/api/changes?topics=studies&since={}&wait=60", cursor(&start)));
    let poll = tokio::spawn(async move {
        reqwest::get(url)
            .await
            .expect("poll")
            .json::<Value>()
            .await
            .expect("JSON")
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop().await; // would take the full minute (and fail) if the wait ignored shutdown
    let v = tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("answered")
        .expect("join");
    assert_eq!(v["events"], serde_json::json!([]));
    assert_eq!(cursor(&v), cursor(&start));
}
