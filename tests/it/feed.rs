//! The feed's guarantees over a real WebSocket, with psql as the writer.

use std::collections::HashSet;
use std::time::Duration;

use pgfeed::event::{CursorCheck, Epoch, Position};
use serde_json::{json, Value};

use crate::support::{ids, labels, Seen, TestApp, TestDb, PATIENCE};

/// The position inside an (opaque) cursor, to check ordering in tests.
fn position(cursor: &Value) -> Position {
    let s = cursor.as_str().expect("cursor is a string");
    let epoch = s.split('-').next().expect("epoch");
    match Epoch::new(epoch).parse_cursor(s) {
        Ok(CursorCheck::Ours(at)) => at,
        other => panic!("unreadable cursor {s}: {other:?}"),
    }
}

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
async fn concurrent_writers_with_rollbacks_are_delivered_once_each_in_commit_order() {
    // Arrange: 4 psql writers × 500 rows: single-row commits, multi-row transactions, and
    // rolled-back transactions and savepoints whose rows must never appear.
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'load', 'Load')");
    let mut ws = app.ws().await;
    ws.subscribe("messages").await;

    const WRITERS: usize = 4;
    const ROWS: usize = 500;
    let scripts: Vec<String> = (0..WRITERS)
        .map(|w| {
            let mut sql = String::new();
            let mut n = 0;
            while n < ROWS {
                let row =
                    |n: usize| format!("insert into messages (study_id, author, body) values (1, 'w{w}', '{n}');\n");
                match n % 7 {
                    0 if n + 3 <= ROWS => {
                        sql += "begin;\n";
                        for k in 0..3 {
                            sql += &row(n + k);
                        }
                        sql += "commit;\n";
                        n += 3;
                    }
                    3 => {
                        sql += &format!("begin;\n{}rollback;\n", row(9_000_000 + n));
                        sql += &format!(
                            "begin;\n{}savepoint s;\n{}rollback to s;\ncommit;\n",
                            row(n),
                            row(9_000_000 + n)
                        );
                        n += 1;
                    }
                    _ => {
                        sql += &row(n);
                        n += 1;
                    }
                }
            }
            sql
        })
        .collect();

    // Act
    let writers: Vec<_> = scripts.into_iter().map(|s| app.db.psql_script(s)).collect();
    for w in writers {
        w.await.expect("writer");
    }

    // Assert: exactly the committed rows, each once, in strictly increasing log order, and every
    // writer's rows in the order that writer committed them.
    let events = ws.events(WRITERS * ROWS).await;
    ws.assert_quiet(Duration::from_millis(500)).await;
    let committed: HashSet<i64> = app
        .psql("select id from messages")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let got = ids(&events);
    assert_eq!(
        got.iter().copied().collect::<HashSet<_>>(),
        committed,
        "every committed row, nothing else"
    );
    assert_eq!(got.len(), committed.len(), "no duplicates");
    assert_in_log_order_and_each_writer_in_its_own(&events, WRITERS, ROWS);
}

/// Cursors strictly increase, and the rows of each writer `w{w}` (bodies `0`, `1`, … `rows - 1`,
/// in the order it committed them) arrive in that order.
fn assert_in_log_order_and_each_writer_in_its_own(events: &[Value], writers: usize, rows: usize) {
    let positions: Vec<Position> = events.iter().map(|e| position(&e["cursor"])).collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "cursors strictly increase");
    for w in 0..writers {
        let seq: Vec<i64> = events
            .iter()
            .filter(|e| e["data"]["author"] == format!("w{w}"))
            .map(|e| e["data"]["body"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            seq,
            (0..rows as i64).collect::<Vec<_>>(),
            "writer {w}'s rows in its own order"
        );
    }
}

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
    // Retention runs every second with this setting; wait until it has pruned both commits.
    tokio::time::timeout(crate::support::PATIENCE, async {
        while app.psql("select count(*) from pgfeed.commits") != "0" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("retention did not prune");

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
async fn killing_the_listener_connections_while_a_writer_inserts_loses_and_doubles_nothing() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'x', 'X')");
    let mut ws = app.ws().await;
    ws.subscribe("messages").await;

    const N: usize = 600;
    let script: String = (0..N)
        .map(|i| {
            format!("insert into messages (study_id, author, body) values (1, 'w', '{i}');\nselect pg_sleep(0.002);\n")
        })
        .collect();
    let writer = app.db.psql_script(script);
    // Its LISTEN session and the connection it reads the log on, in turn, each once the listener
    // has reconnected after the previous kill.
    for session in [
        pgfeed::listener::APPLICATION_NAME,
        pgfeed::listener::READER_APPLICATION_NAME,
        pgfeed::listener::APPLICATION_NAME,
        pgfeed::listener::READER_APPLICATION_NAME,
    ] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let kill = format!(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = '{session}' and datname = current_database()"
        );
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while app.psql(&kill) != "1" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the listener's {session} session never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    writer.await.expect("writer");

    let events = ws.events(N).await;
    let bodies: Vec<i64> = events
        .iter()
        .map(|e| e["data"]["body"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(bodies, (0..N as i64).collect::<Vec<_>>());
    ws.assert_quiet(Duration::from_millis(500)).await;
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

#[tokio::test]
async fn two_servers_on_one_database_relay_the_same_events_with_the_same_cursors() {
    let one = TestApp::spawn().await;
    let two = TestApp::spawn_on(one.db.clone()).await;
    let mut a = one.ws().await;
    a.subscribe("studies").await;
    let mut b = two.ws().await;
    b.subscribe("studies").await;

    one.psql("insert into studies (label, title) values ('a', 'A'), ('b', 'B')");
    let (ea, eb) = (a.events(2).await, b.events(2).await);
    assert_eq!(ea, eb, "same events, same cursors on both servers");

    // A REST write through server two reaches a client of server one.
    two.post("/api/studies", json!({"label": "via-two", "title": "T"}))
        .await
        .ok(201);
    assert_eq!(a.next_event().await["data"]["label"], "via-two");
    let via_two = b.next_event().await;
    assert_eq!(via_two["data"]["label"], "via-two");

    // A cursor from one server resumes on the other.
    b.close().await;
    one.psql("insert into studies (label, title) values ('c', 'C')");
    let mut b = two.ws().await;
    b.subscribe_since("studies", via_two["cursor"].as_str().unwrap()).await;
    assert_eq!(b.next_event().await["data"]["label"], "c");
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

#[tokio::test]
async fn a_table_tracked_with_pgfeed_track_joins_the_feed() {
    let app = TestApp::spawn().await;
    app.psql(
        "create table audit.entries (sku text primary key, qty int)"
            .replace("audit.", "public.")
            .as_str(),
    );
    app.psql("create schema audit; create table audit.log (id int primary key, what text)");
    app.psql("select pgfeed.track('entries'); select pgfeed.track('audit.log')");
    let mut ws = app.ws().await;
    ws.subscribe("entries").await;
    ws.subscribe("audit.log:3").await;

    app.psql("insert into entries values ('x-1', 5)");
    app.psql("insert into audit.log values (3, 'hello')");
    let e = ws.next_event().await;
    assert_eq!(
        (e["type"].as_str(), e["topic"].as_str(), e["id"].as_str()),
        (Some("entries_created"), Some("entries"), Some("x-1"))
    );
    let l = ws.next_event().await;
    assert_eq!(
        (l["type"].as_str(), l["topic"].as_str(), l["table"].as_str()),
        (Some("log_created"), Some("audit.log:3"), Some("audit.log"))
    );

    app.psql("select pgfeed.untrack('entries')");
    app.psql("insert into entries values ('x-2', 1)");
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_table_dropped_and_created_again_can_be_tracked_again() {
    let app = TestApp::spawn().await;
    app.psql("create table gadgets (id int primary key); select pgfeed.track('gadgets')");
    app.psql("drop table gadgets");
    app.psql("create table gadgets (id int primary key, name text); select pgfeed.track('gadgets')");
    let mut ws = app.ws().await;
    ws.subscribe("gadgets").await;
    app.psql("insert into gadgets values (1, 'sprocket')");
    let e = ws.next_event().await;
    assert_eq!(
        (e["type"].as_str(), e["data"]["name"].as_str()),
        (Some("gadgets_created"), Some("sprocket"))
    );
}

#[tokio::test]
async fn capture_renders_timestamps_in_utc_and_leaves_the_writers_time_zone_alone() {
    let app = TestApp::spawn().await;
    app.psql("create table stamps (id int primary key, at timestamptz not null); select pgfeed.track('stamps')");
    let mut ws = app.ws().await;
    ws.subscribe("stamps").await;
    // The writer works in New York time; after its captured rows, in the same transaction and
    // after it, its zone is still New York.
    let zones = app.psql(
        "set timezone = 'America/New_York';
         begin;
         insert into stamps values (1, '2026-11-23 12:00:00+00');
         update stamps set at = at + interval '1 hour 30 minutes';
         create temp table seen as select current_setting('TimeZone') as zone;
         commit;
         insert into seen select current_setting('TimeZone');
         select string_agg(zone, ' ') from seen",
    );
    assert_eq!(zones, "America/New_York America/New_York");
    let events = ws.events(2).await;
    assert_eq!(events[0]["data"]["at"], "2026-11-23T12:00:00+00:00");
    assert_eq!(events[1]["data"]["at"], "2026-11-23T13:30:00+00:00");
}

#[tokio::test]
async fn a_writer_without_rights_on_the_pgfeed_schema_is_captured() {
    let app = TestApp::spawn().await;
    app.psql("create table tickets (id int primary key, what text); select pgfeed.track('tickets')");
    // A login of its own (roles are cluster-wide: named after this test's database), allowed to
    // write `tickets` and nothing in the pgfeed schema.
    let role = format!("w_{}", app.psql("select current_database()"));
    app.psql(&format!(
        "create role \"{role}\"; grant insert, update, delete, select on tickets to \"{role}\""
    ));
    assert_eq!(
        app.psql(&format!(
            "select has_schema_privilege('{role}', 'pgfeed', 'usage'), \
                    has_table_privilege('{role}', 'pgfeed.events', 'insert')"
        )),
        "f|f"
    );
    // Only the triggers (as their owner) draw or move commit rows; nobody else may call those.
    assert_eq!(
        app.psql(&format!(
            "select has_function_privilege('{role}', 'pgfeed.draw()', 'execute'), \
                    has_function_privilege('{role}', 'pgfeed.restamp()', 'execute')"
        )),
        "f|f"
    );
    let mut ws = app.ws().await;
    ws.subscribe("tickets").await;
    app.psql(&format!(
        "set role \"{role}\"; insert into tickets values (1, 'open'); update tickets set what = 'closed'"
    ));
    let events = ws.events(2).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e["type"].as_str(), e["data"]["what"].as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("tickets_created"), Some("open")),
            (Some("tickets_updated"), Some("closed"))
        ]
    );
    app.psql(&format!("drop owned by \"{role}\"; drop role \"{role}\""));
}

/// The capture trigger runs as its owner (security definer) without a `set search_path` clause,
/// so it must not resolve any name through the writer's search_path.
#[tokio::test]
async fn a_writers_search_path_cannot_redirect_the_capture_trigger() {
    let app = TestApp::spawn().await;
    app.psql("create table notes (id int primary key, body text); select pgfeed.track('notes')");
    // Operators and functions that shadow pg_catalog's for a session that puts `evil` first.
    app.psql(
        r#"create schema evil;
           create function evil.always(a text, b text) returns boolean language sql as 'select true';
           create operator evil.= (leftarg = text, rightarg = text, function = evil.always);
           create operator evil.<> (leftarg = text, rightarg = text, function = evil.always);
           create function evil.to_jsonb(anyelement) returns jsonb language sql as $$select '{"id": 0}'::jsonb$$;
           create function evil.current_setting(text) returns text language sql as $$select 'evil'$$;
           create function evil.strpos(text, text) returns int language sql as 'select 1';"#,
    );
    let mut ws = app.ws().await;
    ws.subscribe("notes").await;
    app.psql(
        "set search_path = evil, pg_catalog, public;
         insert into notes values (1, 'kept');
         update notes set body = 'changed' where id = 1;
         delete from notes where id = 1",
    );
    let events = ws.events(3).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e["type"].as_str(), e["id"].as_i64(), e["data"]["body"].as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("notes_created"), Some(1), Some("kept")),
            (Some("notes_updated"), Some(1), Some("changed")),
            (Some("notes_deleted"), Some(1), Some("changed")),
        ]
    );
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_rolled_back_transaction_produces_no_event() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    app.psql("begin; insert into studies (label, title) values ('gone', 'G'); rollback;");
    app.psql("insert into studies (label, title) values ('kept', 'K')");
    assert_eq!(ws.next_event().await["data"]["label"], "kept");
    ws.assert_quiet(Duration::from_millis(300)).await;
}

/// `writers` psql processes at once, writer `w` committing one message per body in `bodies`
/// (author `w{w}`, study 1), each insert followed by `after` (more SQL, or ""); returns when all
/// have finished.
async fn write_burst(db: &TestDb, writers: usize, bodies: std::ops::Range<usize>, after: &str) {
    let running: Vec<_> = (0..writers)
        .map(|w| {
            let script: String = bodies
                .clone()
                .map(|n| format!("insert into messages (study_id, author, body) values (1, 'w{w}', '{n}');\n{after}"))
                .collect();
            db.psql_script(script)
        })
        .collect();
    for w in running {
        w.await.expect("writer");
    }
}

/// A LISTEN pgfeed session of the test's own: its notifications' payloads arrive on the channel.
async fn listen_to_pgfeed(url: &str) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("listening session");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("listen pgfeed").await.expect("LISTEN");
    (client, rx)
}

#[tokio::test]
async fn writers_notify_only_while_a_listener_waits_in_the_idle_set() {
    // No pgfeed server: the test's own session plays the listener.
    let db = TestDb::create().await;
    let (listener, mut wakes) = listen_to_pgfeed(&db.url).await;
    let idle = pgfeed::listener::IDLE_LOCK;
    let quiet = Duration::from_millis(300);

    // Listening, but not in the idle set (a polling listener): commits send no NOTIFY.
    db.psql("insert into studies (label, title) values ('a', 'A')");
    assert!(
        tokio::time::timeout(quiet, wakes.recv()).await.is_err(),
        "no wake-up while no listener waits"
    );

    // In the idle set: every commit wakes it, with its seq.
    listener
        .batch_execute(&format!("select pg_advisory_lock_shared({idle})"))
        .await
        .unwrap();
    db.psql("insert into studies (label, title) values ('b', 'B')");
    let seq = tokio::time::timeout(PATIENCE, wakes.recv())
        .await
        .expect("a wake-up")
        .unwrap();
    assert_eq!(seq, db.psql("select max(seq) from pgfeed.commits"));

    // Out of it again: silence.
    listener
        .batch_execute(&format!("select pg_advisory_unlock_shared({idle})"))
        .await
        .unwrap();
    db.psql("insert into studies (label, title) values ('c', 'C')");
    assert!(tokio::time::timeout(quiet, wakes.recv()).await.is_err());

    // A writer that found the set empty sent no NOTIFY, so a listener joining the set waits for
    // every commit in flight (`log::wait_for_commits_in_flight`) before its read, which then sees
    // it. The stamp runs early here (`set constraints all immediate`), leaving the transaction
    // open after it.
    let (writer, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    writer
        .batch_execute("begin; insert into studies (label, title) values ('d', 'D'); set constraints all immediate")
        .await
        .unwrap();
    listener
        .batch_execute(&format!("select pg_advisory_lock_shared({idle})"))
        .await
        .expect("joining the set does not wait");
    let blocked = listener
        .batch_execute("begin; set local lock_timeout = '300ms'; lock table pgfeed.commits in share mode")
        .await
        .expect_err("waiting for the commits in flight waits for the open writer");
    assert_eq!(
        blocked.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{blocked:?}"
    );
    listener.batch_execute("rollback").await.unwrap();
    writer.batch_execute("commit").await.unwrap();
    listener
        .batch_execute("begin; lock table pgfeed.commits in share mode; commit")
        .await
        .expect("nothing in flight once the writer committed");
    assert_eq!(
        db.psql("select count(*) from pgfeed.commits"),
        "4",
        "the writer's commit is visible to the read after that"
    );
    assert!(
        tokio::time::timeout(quiet, wakes.recv()).await.is_err(),
        "that commit sent no NOTIFY"
    );
}

#[tokio::test]
async fn a_polling_listener_relays_every_commit_once_in_order_and_goes_back_to_waiting() {
    // Polling whenever anything commits, so that each burst below switches the listener to
    // polling and each pause sends it back to waiting for wake-ups.
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.poll_above = 0).await;
    app.psql("insert into studies (id, label, title) values (1, 'load', 'Load')");
    let mut ws = app.ws().await;
    ws.subscribe("messages").await;

    // Act: 3 bursts of 3 psql writers × 300 single-row commits, 300 ms apart. Each writer sleeps
    // 1 ms after each commit, so that a burst outlasts the listener's 100 ms rate window
    // (unpaced, writers on the test cluster can finish a burst within one window).
    const BURSTS: usize = 3;
    const WRITERS: usize = 3;
    const ROWS: usize = 300;
    for b in 0..BURSTS {
        write_burst(&app.db, WRITERS, b * ROWS..(b + 1) * ROWS, "select pg_sleep(0.001);\n").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Assert: every commit once, in order, each writer's in its own order.
    let events = ws.events(BURSTS * WRITERS * ROWS).await;
    ws.assert_quiet(Duration::from_millis(300)).await;
    let got: HashSet<i64> = ids(&events).into_iter().collect();
    assert_eq!(got.len(), BURSTS * WRITERS * ROWS, "no duplicates");
    assert_in_log_order_and_each_writer_in_its_own(&events, WRITERS, BURSTS * ROWS);

    // It did poll, more than once (so it went back to waiting in between), and waits now.
    let metrics = app.metrics().await;
    assert!(
        metrics.value("pgfeed_listener_polls_total") >= 2.0,
        "the listener switched to polling in more than one burst:\n{}",
        metrics.0
    );
    assert_eq!(metrics.value("pgfeed_listener_polling"), 0.0, "waiting after the pause");

    // Waiting again: a lone commit notifies, and arrives well before the 5 s safety read.
    app.psql("insert into messages (study_id, author, body) values (1, 'late', 'x')");
    match ws.next_seen_within(Duration::from_secs(2)).await {
        Some(Seen::Frame(event)) => assert_eq!(event["data"]["author"], "late"),
        other => panic!("expected the late row at once, got {other:?}"),
    }
}

#[tokio::test]
async fn a_polling_server_and_a_waiting_one_on_one_database_relay_the_same_events() {
    // One server polls whenever anything commits, the other waits for wake-ups at this rate
    // (below its 1,000 commits/s): writers must keep notifying the waiting one while the other
    // polls, and both must relay every commit once, in the same order, with the same cursors.
    let polling = TestApp::spawn_with(TestDb::create().await, |c| c.poll_above = 0).await;
    let waiting = TestApp::spawn_on(polling.db.clone()).await;
    polling.psql("insert into studies (id, label, title) values (1, 'load', 'Load')");
    let mut a = polling.ws().await;
    a.subscribe("messages").await;
    let mut b = waiting.ws().await;
    b.subscribe("messages").await;

    const WRITERS: usize = 2;
    const ROWS: usize = 150;
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for burst in 0..2 {
        write_burst(
            &polling.db,
            WRITERS,
            burst * ROWS..(burst + 1) * ROWS,
            "select pg_sleep(0.002);\n",
        )
        .await;
        // The waiting server was woken by the burst's commits while the other polled, so it has
        // them at once, long before its next 5 s safety read.
        eb.extend(
            tokio::time::timeout(Duration::from_secs(2), b.events(WRITERS * ROWS))
                .await
                .expect("the waiting server relayed the burst at once (writers notified it)"),
        );
        ea.extend(a.events(WRITERS * ROWS).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    assert_eq!(ea, eb, "same events, same order, same cursors on both servers");
    let got: HashSet<i64> = ids(&ea).into_iter().collect();
    assert_eq!(got.len(), 2 * WRITERS * ROWS, "no duplicates");
    assert_in_log_order_and_each_writer_in_its_own(&ea, WRITERS, 2 * ROWS);
    a.assert_quiet(Duration::from_millis(300)).await;
    b.assert_quiet(Duration::from_millis(100)).await;
    assert!(
        polling.metrics().await.value("pgfeed_listener_polls_total") >= 1.0,
        "the first server polled"
    );
}

// Commits are numbered at commit without holding other writers back, so commits made at the same
// moment may become visible out of seq order. The tests below hold one transaction open after its
// stamp (`set constraints all immediate` stamps at the end of the statement) to make that moment
// last as long as they need.

#[tokio::test]
async fn a_commit_made_while_an_earlier_seq_is_in_flight_waits_for_it_and_both_arrive_in_seq_order() {
    let app = TestApp::spawn().await;
    let mut early = app.ws().await;
    let before = early.subscribe("studies").await["cursor"].as_str().unwrap().to_owned();

    // Arrange: A stamps first and stays open; B commits after it.
    let a = app
        .db
        .stamped_open("insert into studies (label, title) values ('a', 'A');")
        .await;
    app.psql("insert into studies (label, title) values ('b', 'B')");

    // Assert: while A is in flight, B is not delivered, to live subscribers nor to one that
    // subscribes now (its cursor is before A's seq).
    early.assert_quiet(Duration::from_millis(500)).await;
    let mut late = app.ws().await;
    late.subscribe("studies").await;
    late.assert_quiet(Duration::from_millis(200)).await;
    // Nor to a long-poll from before both, which reads the log itself.
    let changes = format!("/api/changes?topics=studies&since={before}&wait=0");
    let (_, polled) = app.get_json(&changes).await;
    assert_eq!(polled["events"], json!([]), "{polled}");

    // Act: A commits. All get A, then B, in seq order.
    a.finish("commit;").await;
    for ws in [&mut early, &mut late] {
        let events = ws.events(2).await;
        assert_eq!(labels(&events), ["a", "b"]);
        assert!(position(&events[0]["cursor"]) < position(&events[1]["cursor"]));
    }
    let (_, polled) = app.get_json(&changes).await;
    assert_eq!(labels(polled["events"].as_array().unwrap()), ["a", "b"]);
}

#[tokio::test]
async fn a_change_made_after_an_early_stamp_moves_the_transaction_after_the_commits_it_followed() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (10, 'shared', 'Before')");
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;

    // A stamps early; B then changes row 10 and commits; A overwrites B's change and commits.
    let mut a = app
        .db
        .stamped_open("insert into studies (id, label, title) values (11, 'a', 'A');")
        .await;
    app.psql("update studies set title = 'B' where id = 10");
    a.run("update studies set title = 'A' where id = 10;").await;
    a.finish("commit;").await;

    // B's change comes first, then all of A's, so the last event of row 10 is its final state.
    let events = ws.events(3).await;
    let seen: Vec<(i64, &str)> = events
        .iter()
        .map(|e| (e["data"]["id"].as_i64().unwrap(), e["data"]["title"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [(10, "B"), (11, "A"), (10, "A")]);
    assert_eq!(app.psql("select title from studies where id = 10"), "A");
    let positions: Vec<Position> = events.iter().map(|e| position(&e["cursor"])).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // A's first seq was given up: it is marked as never committed, and nothing else came.
    assert_eq!(app.psql("select count(*) from pgfeed.commits where txid = '0'"), "1");
    ws.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn seqs_that_never_commit_are_marked_and_passed_and_a_writer_never_reuses_one() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    app.psql("insert into studies (label, title) values ('first', 'First')");
    ws.next_event().await;

    // A stamps, then rolls back; a seq drawn by a writer that never inserts its row (as if it
    // stalled there) is the other kind of hole.
    let a = app
        .db
        .stamped_open("insert into studies (label, title) values ('rolled back', 'R');")
        .await;
    a.finish("rollback;").await;
    let stalled = app.psql("select nextval('pgfeed.commit_seq')");
    app.psql("insert into studies (label, title) values ('after', 'After')");
    assert_eq!(ws.next_event().await["data"]["label"], "after");

    // The listener marked both holes (txid 0) before it passed them.
    let stalled: i64 = stalled.parse().unwrap();
    assert_eq!(
        app.psql("select string_agg(seq::text, ',' order by seq) from pgfeed.commits where txid = '0'"),
        format!("{},{stalled}", stalled - 1)
    );
    // A writer whose draw lands on a marked seq draws again (sequence set back to before the holes).
    app.psql(&format!("select setval('pgfeed.commit_seq', {})", stalled - 2));
    app.psql("insert into studies (label, title) values ('again', 'Again')");
    let again = ws.next_event().await;
    assert_eq!(again["data"]["label"], "again");
    assert_eq!(
        app.psql("select max(seq) from pgfeed.commits where txid <> '0'"),
        (stalled + 2).to_string(),
        "drawn past the holes and 'after'"
    );
    ws.assert_quiet(Duration::from_millis(200)).await;
}

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
