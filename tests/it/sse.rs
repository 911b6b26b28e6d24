//! `GET /events` (README "Without a WebSocket"): Server-Sent Events with psql as the writer.

use std::time::Duration;

use crate::support::{ids, TestApp, TestDb, PATIENCE};

#[tokio::test]
async fn each_change_arrives_with_its_cursor_as_id_and_its_type_as_event() {
    let app = TestApp::spawn().await;
    let mut sse = app.sse("topics=studies", None).await;
    let opened = sse.next().await.expect("stream");
    assert_eq!(opened.event, "subscribed");
    assert_eq!(
        opened.id.as_deref(),
        opened.json()["cursor"].as_str(),
        "the opening cursor is an id too"
    );

    app.psql("insert into studies (label, title) values ('s1', 'First')");
    app.psql("update studies set title = 'Renamed' where label = 's1'");

    let [created, updated] = <[_; 2]>::try_from(sse.events(2).await).unwrap();
    assert_eq!(created["type"], "study_created");
    assert_eq!(created["topic"], "studies");
    assert_eq!(created["data"]["label"], "s1");
    assert_eq!(updated["data"]["title"], "Renamed");
}

#[tokio::test]
async fn resume_with_last_event_id_gets_exactly_the_missed_events_across_topics_in_order() {
    // Two topics in one stream, written alternately: one cursor must cover both.
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'a', 'A')");
    let mut sse = app.sse("topics=studies:1,messages", None).await;
    sse.next().await.expect("subscribed");
    app.psql("insert into messages (id, study_id, author, body) overriding system value values (1, 1, 'x', 'one')");
    app.psql("update studies set title = 'A2' where id = 1");
    let seen = sse.events(2).await;
    let last_id = seen[1]["cursor"].as_str().unwrap().to_owned();
    drop(sse);

    app.psql("insert into messages (id, study_id, author, body) overriding system value values (2, 1, 'x', 'two')");
    app.psql("update studies set title = 'A3' where id = 1");
    app.psql("insert into messages (id, study_id, author, body) overriding system value values (3, 1, 'x', 'three')");

    let mut again = app
        .sse(
            "topics=studies:1,messages&since=garbage-is-ignored-when-last-event-id-is-sent",
            Some(&last_id),
        )
        .await;
    let opened = again.next().await.expect("subscribed");
    assert_eq!(
        opened.id.as_deref(),
        Some(last_id.as_str()),
        "resumes exactly where it left off"
    );
    let missed = again.events(3).await;
    let kinds: Vec<_> = missed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["message_created", "study_updated", "message_created"]);
    assert_eq!(
        (missed[0]["data"]["body"].as_str(), missed[2]["data"]["body"].as_str()),
        (Some("two"), Some("three"))
    );
    // A message is published on both `messages` and `studies:1`: one stream sends it once, on the
    // first of its topics the stream asked for (table before room).
    assert_eq!(missed[0]["topic"], "messages");
    assert_eq!(missed[1]["topic"], "studies:1");
    again.assert_quiet(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn since_resumes_every_topic_from_that_cursor_and_then_goes_live() {
    let app = TestApp::spawn().await;
    let (_, start) = app.get_json("/api/changes?topics=studies").await;
    for label in ["a", "b", "c"] {
        app.psql(&format!("insert into studies (label, title) values ('{label}', 'T')"));
    }
    let mut sse = app
        .sse(
            &format!("topics=studies&since={}", start["cursor"].as_str().unwrap()),
            None,
        )
        .await;
    sse.next().await.expect("subscribed");
    let backlog = sse.events(3).await;
    app.psql("insert into studies (label, title) values ('d', 'T')");
    let live = sse.next_event().await;
    let labels: Vec<_> = backlog
        .iter()
        .chain([&live])
        .map(|e| e["data"]["label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(labels, ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn bad_topics_and_cursors_are_refused_with_json_before_the_stream() {
    let app = TestApp::spawn().await;
    let cases = [
        ("/events?topics=nosuchtable", 404, "unknown_topic"),
        ("/events?topics=studies:abc", 404, "unknown_topic"),
        ("/events?topics=", 400, "bad_request"),
        ("/events?topics=studies&since=not-a-cursor", 400, "bad_request"),
    ];
    for (path, status, code) in cases {
        let (got, body) = app.get_json(path).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
        assert!(body["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn an_expired_cursor_gets_refresh_needed_then_the_live_stream() {
    let db = TestDb::create().await;
    let app = TestApp::spawn_with(db, |c| c.retention = Duration::from_secs(1)).await;
    let mut sse = app.sse("topics=studies", None).await;
    sse.next().await.expect("subscribed");
    app.psql("insert into studies (label, title) values ('a', 'A')");
    let old = sse.next_event().await["cursor"].as_str().unwrap().to_owned();
    drop(sse);
    app.psql("insert into studies (label, title) values ('b', 'B')");
    tokio::time::timeout(PATIENCE, async {
        while app.psql("select count(*) from pgfeed.commits") != "0" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("retention did not prune");

    let mut sse = app.sse("topics=studies", Some(&old)).await;
    let refresh = sse.next().await.expect("refresh_needed");
    assert_eq!(refresh.event, "refresh_needed");
    let v = refresh.json();
    assert_eq!(
        (v["type"].as_str(), v["topic"].as_str(), v["reason"].as_str()),
        (Some("refresh_needed"), Some("studies"), Some("cursor_expired"))
    );
    let opened = sse.next().await.expect("subscribed");
    assert_eq!(opened.event, "subscribed");
    assert_ne!(
        opened.id.as_deref(),
        Some(old.as_str()),
        "a reconnect must not land on the expired cursor again"
    );
    app.psql("insert into studies (label, title) values ('c', 'C')");
    // With a 1 s retention the listener may find its own position pruned on this wake-up and
    // reset the hub, which ends every stream; a client then reconnects with its last id, exactly
    // as an EventSource does, and must still get the insert.
    let c = match sse.next().await {
        Some(msg) => msg.json(),
        None => {
            let mut again = app.sse("topics=studies", opened.id.as_deref()).await;
            again.next().await.expect("subscribed");
            again.next_event().await
        }
    };
    assert_eq!(c["data"]["label"], "c");
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_a_reconnect_to_the_restarted_server_loses_nothing() {
    let app = TestApp::spawn().await;
    let mut sse = app.sse("topics=studies", None).await;
    sse.next().await.expect("subscribed");
    app.psql("insert into studies (id, label, title) values (1, 'a', 'A')");
    let last = sse.next_event().await["cursor"].as_str().unwrap().to_owned();

    let app = app.restart().await; // would hang if the SSE response held graceful shutdown (axum#2673)
    assert!(sse.next().await.is_none(), "the stream ends on shutdown");
    app.psql("insert into studies (id, label, title) values (2, 'b', 'B'), (3, 'c', 'C')");

    let mut sse = app.sse("topics=studies", Some(&last)).await;
    sse.next().await.expect("subscribed");
    assert_eq!(ids(&sse.events(2).await), [2, 3]);
    sse.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_backlog_longer_than_a_log_page_streams_in_order() {
    let app = TestApp::spawn().await;
    let (_, start) = app.get_json("/api/changes?topics=studies").await;
    app.psql("insert into studies (label, title) select 'l' || g, 't' from generate_series(1, 2500) g");
    let mut sse = app
        .sse(
            &format!("topics=studies,studies:1&since={}", start["cursor"].as_str().unwrap()),
            None,
        )
        .await;
    sse.next().await.expect("subscribed");
    let got = ids(&sse.events(2500).await);
    assert_eq!(got, (1..=2500).collect::<Vec<_>>());
    sse.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_quiet_stream_gets_a_keep_alive_comment_every_15_seconds() {
    // Proxies close idle responses: README promises a `: keep-alive` comment every 15 s.
    let app = TestApp::spawn().await;
    let mut resp = reqwest::Client::new()
        .get(app.url("/events?topics=studies"))
        .send()
        .await
        .expect("GET /events");
    assert_eq!(resp.status(), 200);
    let started = tokio::time::Instant::now();
    let mut text = String::new();
    let deadline = started + Duration::from_secs(25);
    while !text.contains(": keep-alive\n") {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("no keep-alive within 25 s")
            .expect("stream error")
            .expect("stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Not earlier than the interval (the stream opened with `subscribed` and nothing since).
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "keep-alive after {:?}",
        started.elapsed()
    );
    assert_eq!(text.matches("event:").count(), 1, "only `subscribed` before it: {text}");
}
