//! `--replica-url` (PROTOCOL.md §11, README "Running many servers and failing over"): a server
//! that reads from a hot standby serves what a server on the primary serves, falls back to the
//! primary while the standby is paused or down, and honours a write's `Pgfeed-Position`.
//!
//! The clusters are the failover tests' pair (a primary, a streaming standby, a proxy in front of
//! the primary); writers are psql on the primary.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::failover::{assert_one_event_per_cursor, health, series, spawn_client, wait_seen, write};
use crate::support::replica::Pair;
use crate::support::views::{assert_rows, ViewRows};
use crate::support::{TestApp, TestDb, PATIENCE};

/// A server on the pair's primary that reads from its standby, once it does.
async fn replica_node(pair: &Pair) -> TestApp {
    let standby = pair.standby.url();
    let node = TestApp::spawn_with(pair.db(), |c| c.replica_url = Some(standby.clone())).await;
    wait_usable(&node, true).await;
    node
}

/// Waits until `pgfeed_replica_usable` is 1 (`usable`) or 0.
async fn wait_usable(node: &TestApp, usable: bool) {
    let want = if usable { 1.0 } else { 0.0 };
    let deadline = Instant::now() + PATIENCE;
    while node.metrics().await.value("pgfeed_replica_usable") != want {
        assert!(Instant::now() < deadline, "pgfeed_replica_usable never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pgfeed_replica_reads_total` for reads `on` the standby or the primary, for `what`.
fn reads(scrape: &crate::support::app::Scrape, on: &str, what: &str) -> f64 {
    scrape.value(&format!("pgfeed_replica_reads_total{{on=\"{on}\",what=\"{what}\"}}"))
}

/// Every (cursor, label) of `studies` after `since`, long-polling `node` until `until` comes.
async fn poll_until(node: &TestApp, since: &str, until: &str) -> Vec<(String, String)> {
    let mut since = since.to_owned();
    let mut out = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "{until} never came from {}", node.addr);
        let (status, v) = node
            .get_json(&format!("/api/changes?topics=studies&since={since}&limit=37&wait=1"))
            .await;
        assert_eq!(status, 200, "{v}");
        for e in v["events"].as_array().expect("events") {
            out.push((
                e["cursor"].as_str().expect("cursor").to_owned(),
                e["data"]["label"].as_str().expect("label").to_owned(),
            ));
        }
        since = v["cursor"].as_str().expect("cursor").to_owned();
        if out.iter().any(|(_, l)| l == until) {
            return out;
        }
    }
}

/// The primary's labels of `studies`, in id order.
fn primary_labels(db: &TestDb) -> Vec<String> {
    db.psql("select string_agg(label, ',' order by id) from studies")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_the_standby_serves_resumes_snapshots_and_views_as_a_server_on_the_primary_does() {
    let pair = Pair::start().await;
    let db = pair.db();
    let primary_node = TestApp::spawn_on(db.clone()).await;
    let node = replica_node(&pair).await;
    let (_, start) = node.get_json("/api/changes?topics=studies").await;
    let start = start["cursor"].as_str().expect("cursor").to_owned();
    let (rec, live) = spawn_client(&[node.addr], None, "end");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = node.metrics().await;

    // Writers on the primary; a snapshot through the standby while they write.
    let writer = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || write(&db, "w", 300))
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ws = node.ws().await;
    let sub = ws
        .subscribe_with(json!({"action": "subscribe", "topic": "studies", "snapshot": true}))
        .await;
    let snap = ws.next_json().await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["cursor"], sub["cursor"]);
    let mut labels: Vec<String> = snap["data"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["label"].as_str().expect("label").to_owned())
        .collect();
    writer.await.expect("writer");
    db.psql("insert into studies (label, title) values ('end', 't')");
    loop {
        let e = ws.next_event().await;
        let label = e["data"]["label"].as_str().expect("label").to_owned();
        labels.push(label.clone());
        if label == "end" {
            break;
        }
    }
    // The snapshot and the stream after it are exactly the table, nothing missing or twice.
    assert_eq!(labels, primary_labels(&db), "snapshot + stream through the standby");

    // The live client saw every commit once, in order.
    tokio::time::timeout(PATIENCE, live)
        .await
        .expect("the live client saw everything")
        .expect("client");
    assert_eq!(
        rec.lock().unwrap().labels(),
        [series("w", 300), vec!["end".into()]].concat()
    );
    // A resume through the standby answers what a resume on the primary answers, cursor for cursor.
    let via_standby = poll_until(&node, &start, "end").await;
    let via_primary = poll_until(&primary_node, &start, "end").await;
    assert_eq!(via_standby, via_primary);
    assert_one_event_per_cursor(&[&rec]);

    // A live view through the standby is PostgreSQL's own window on the primary.
    let mut ws = node.ws().await;
    let mut v = ViewRows::default();
    v.apply(
        &ws.open_view(
            "recent",
            json!({"topic": "studies", "filter": {"label": "ilike.w-1*"}, "order": "label.desc", "limit": 7, "count": true}),
        )
        .await,
    );
    assert_rows(
        &v,
        &node.oracle("studies", "label ilike 'w-1%'", r#"label collate "C" desc, id"#, 7),
        "a view through the standby",
    );
    assert_eq!(v.count, Some(node.count("studies", "label ilike 'w-1%'")));

    // And the reads went to the standby: counted there, and its connections are open on it.
    let scrape = node.metrics().await;
    for what in ["log", "resume", "snapshot", "view"] {
        assert!(
            reads(&scrape, "standby", what) > reads(&before, "standby", what),
            "no {what} read on the standby: {}",
            scrape.0
        );
    }
    assert_eq!(scrape.value("pgfeed_replica_usable"), 1.0);
    assert_eq!(health(&node).await["reads_from"], "standby");
    assert_eq!(health(&primary_node).await["reads_from"], Value::Null);
    let on_standby: i64 = pair
        .standby
        .db()
        .psql("select count(*) from pg_stat_activity where application_name = 'pgfeed-replica'")
        .parse()
        .expect("a count");
    assert!(on_standby >= 1, "no pgfeed-replica connection on the standby");
    node.stop().await;
    primary_node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_standby_paused_or_stopped_a_replica_server_reads_from_the_primary_and_loses_nothing() {
    let pair = Pair::start().await;
    let db = pair.db();
    let leader = TestApp::spawn_on(db.clone()).await;
    let node = replica_node(&pair).await;
    let (rec, live) = spawn_client(&[node.addr], None, "end");
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(&db, "one", 10);
    wait_seen(&rec, "one-9").await;
    let (_, at) = node.get_json("/api/changes?topics=studies").await;
    let after_one = at["cursor"].as_str().expect("cursor").to_owned();

    // Replay paused: the standby holds none of "two", so whoever delivers it read the primary.
    pair.standby.db().psql("select pg_wal_replay_pause()");
    let before = node.metrics().await;
    write(&db, "two", 50);
    wait_seen(&rec, "two-49").await;
    wait_usable(&node, false).await;
    let resumed = poll_until(&node, &after_one, "two-49").await;
    assert_eq!(
        resumed.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
        series("two", 50),
        "a resume while the standby is behind"
    );
    let scrape = node.metrics().await;
    for what in ["log", "resume"] {
        assert!(
            reads(&scrape, "primary", what) > reads(&before, "primary", what),
            "no {what} read on the primary: {}",
            scrape.0
        );
    }

    // Replay resumed: back to the standby.
    pair.standby.db().psql("select pg_wal_replay_resume()");
    wait_usable(&node, true).await;
    write(&db, "three", 10);
    wait_seen(&rec, "three-9").await;

    // The standby stopped: the primary again, nothing lost.
    pair.standby.stop("fast");
    write(&db, "four", 20);
    db.psql("insert into studies (label, title) values ('end', 't')");
    tokio::time::timeout(PATIENCE, live)
        .await
        .expect("the live client saw everything")
        .expect("client");
    {
        let rec = rec.lock().unwrap();
        assert!(rec.refreshes.is_empty(), "{rec:?}");
        let expected = [
            series("one", 10),
            series("two", 50),
            series("three", 10),
            series("four", 20),
            vec!["end".into()],
        ]
        .concat();
        assert_eq!(rec.labels(), expected);
    }
    assert_eq!(node.metrics().await.value("pgfeed_replica_usable"), 0.0);
    // A snapshot with the standby down is taken on the primary.
    let mut ws = node.ws().await;
    ws.subscribe_with(json!({"action": "subscribe", "topic": "studies", "snapshot": true}))
        .await;
    let snap = ws.next_json().await;
    assert_eq!(snap["data"].as_array().expect("rows").len(), 91);
    node.stop().await;
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_moves_leadership_within_seconds_with_no_loss_with_a_replica_server_among_them() {
    let pair = Pair::start().await;
    let db = pair.db();
    let a = TestApp::spawn_on(db.clone()).await;
    let b = TestApp::spawn_on(db.clone()).await;
    let r = replica_node(&pair).await;
    assert_eq!(health(&a).await["role"], "leader");
    assert_eq!(health(&r).await["role"], "follower");
    let (rec_r, task_r) = spawn_client(&[r.addr], None, "end");
    let (rec_b, task_b) = spawn_client(&[b.addr], None, "end");
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(&db, "one", 10);
    wait_seen(&rec_r, "one-9").await;
    let writer = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || write(&db, "two", 200))
    };
    a.stop().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let roles = [health(&b).await["role"].clone(), health(&r).await["role"].clone()];
        if roles.iter().filter(|r| *r == "leader").count() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "nobody took the lead within 5 s: {roles:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.await.expect("writer");
    db.psql("insert into studies (label, title) values ('end', 't')");
    for task in [task_r, task_b] {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the client saw everything")
            .expect("client");
    }
    let expected = [series("one", 10), series("two", 200), vec!["end".into()]].concat();
    for rec in [&rec_r, &rec_b] {
        let rec = rec.lock().unwrap();
        assert!(rec.refreshes.is_empty(), "{rec:?}");
        assert_eq!(rec.labels(), expected);
    }
    assert_one_event_per_cursor(&[&rec_r, &rec_b]);
    let leaders = [health(&b).await, health(&r).await]
        .iter()
        .filter(|h| h["role"] == "leader")
        .count();
    assert_eq!(leaders, 1);
    r.stop().await;
    b.stop().await;
}

/// Writes a study through `via` and answers its id and the write's `Pgfeed-Position`.
async fn write_with_position(via: &TestApp, label: &str) -> (i64, String) {
    let reply = via.post("/api/studies", json!({"label": label, "title": "t"})).await;
    let row = reply.ok(201);
    let position = reply
        .header("pgfeed-position")
        .expect("a write answers Pgfeed-Position")
        .to_owned();
    (row["id"].as_i64().expect("id"), position)
}

/// The snapshot of `studies:<id>` through `node`, the socket opened with `?position=`.
async fn room_snapshot(node: &TestApp, id: i64, position: &str) -> Value {
    let mut ws = node.ws_at(&format!("/ws?position={position}")).await;
    ws.subscribe_with(json!({"action": "subscribe", "topic": format!("studies:{id}"), "snapshot": true}))
        .await;
    let snap = ws.next_json().await;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    snap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_server_is_seen_through_the_replica_server_with_its_position() {
    let pair = Pair::start().await;
    let primary_node = TestApp::spawn_on(pair.db()).await;
    let node = replica_node(&pair).await;
    for i in 0..10 {
        let label = format!("p-{i}");
        let (id, position) = write_with_position(&primary_node, &label).await;
        // At once, through the standby: the snapshot holds the write.
        let snap = room_snapshot(&node, id, &position).await;
        assert_eq!(snap["data"]["study"]["label"], label.as_str(), "{snap}");
        // The header works on long-poll and REST reads too.
        let changes = node
            .request(Method::GET, &format!("/api/changes?topics=studies:{id}"), |r| {
                r.header("pgfeed-position", &position)
            })
            .await;
        changes.ok(200);
    }
    // With the standby's replay paused, the read still sees the write: the server waits, and
    // once the standby counts as behind it reads from the primary, within the bound.
    pair.standby.db().psql("select pg_wal_replay_pause()");
    let (id, position) = write_with_position(&primary_node, "paused").await;
    let snap = room_snapshot(&node, id, &position).await;
    assert_eq!(snap["data"]["study"]["label"], "paused", "{snap}");
    pair.standby.db().psql("select pg_wal_replay_resume()");
    node.stop().await;
    primary_node.stop().await;
}

#[tokio::test]
async fn a_malformed_foreign_or_forged_position_is_a_400_at_once_never_a_wait() {
    let app = TestApp::spawn().await;
    let (_, position) = write_with_position(&app, "real").await;
    let epoch = position.rsplitn(3, '-').nth(2).expect("an epoch").to_owned();
    let forged = [
        "garbage".to_owned(),
        "x".repeat(1_000),
        format!("{epoch}-99999999-0"),
        format!("{epoch}g7-1-0"),
        "someotherlog-1-0".to_owned(),
        format!("{epoch}--1-0"),
        format!("{epoch}-1-x"),
    ];
    // Far shorter than the wait a real position may get: none of these is waited for.
    let at_once = pgfeed::http::position::WAIT / 2;
    for bad in &forged {
        let reply = tokio::time::timeout(
            at_once,
            app.request(Method::GET, "/api/changes?topics=studies", |r| {
                r.header("pgfeed-position", bad)
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{:.40} was waited for", bad));
        reply.assert_error(400, "bad_request");
        let url = format!("ws://{}/ws?position={}", app.addr, url_escape(bad));
        match tokio::time::timeout(at_once, tokio_tungstenite::connect_async(url)).await {
            Err(_) => panic!("{bad:.40} was waited for on /ws"),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => assert_eq!(res.status(), 400),
            Ok(other) => panic!("a WebSocket with position {bad:.40} was not refused: {other:?}"),
        }
    }
    // Two positions in one request.
    let reply = app
        .request(Method::GET, "/api/studies", |r| {
            r.header("pgfeed-position", &position)
                .header("pgfeed-position", &position)
        })
        .await;
    reply.assert_error(400, "bad_request");
    // The real one, passed already, is served at once.
    let reply = app
        .request(Method::GET, "/api/studies", |r| r.header("pgfeed-position", &position))
        .await;
    reply.ok(200);
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Transactions `db`'s database has counted (every statement outside a transaction is one),
/// after waiting out PostgreSQL's statistics flush (an idle backend reports within 10 s).
async fn transactions(db: &TestDb) -> i64 {
    tokio::time::sleep(Duration::from_secs(11)).await;
    db.psql("select xact_commit + xact_rollback from pg_stat_database where datname = current_database()")
        .parse()
        .expect("a count")
}

/// A measurement, not a check of behaviour (README "Running many servers and failing over"):
/// the primary's transactions per commit when three more servers follow on the primary, or one
/// or three on the standby with `--replica-url`, beside a lone leader; interleaved, twice. Every client
/// must see every row, or the figures mean nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --test it replica::measure -- --ignored --nocapture"]
async fn measure_the_primarys_transactions_per_commit_with_followers_on_the_primary_or_the_standby() {
    const COMMITS: usize = 300;
    let pair = Pair::start().await;
    let db = pair.db();
    let standby_db = pair.standby.db();
    let leader = TestApp::spawn_on(db.clone()).await;
    let mut figures = Vec::new();
    for round in 0..2 {
        // (followers, on the standby)
        let variants = [(0, false), (3, false), (1, true), (3, true)];
        for (v, (followers, on_standby)) in variants.into_iter().enumerate() {
            let variant = match (followers, on_standby) {
                (0, _) => "leader alone".to_owned(),
                (n, false) => format!("{n} followers on the primary"),
                (n, true) => format!("{n} followers on the standby"),
            };
            let mut nodes = Vec::new();
            for _ in 0..followers {
                nodes.push(match on_standby {
                    false => TestApp::spawn_on(db.clone()).await,
                    true => replica_node(&pair).await,
                });
            }
            let prefix = format!("m{round}{v}");
            let end = format!("{prefix}-end");
            let addrs: Vec<_> = if nodes.is_empty() {
                vec![leader.addr]
            } else {
                nodes.iter().map(|n| n.addr).collect()
            };
            let clients: Vec<_> = addrs.iter().map(|a| spawn_client(&[*a], None, &end)).collect();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (p0, s0) = (transactions(&db).await, transactions(&standby_db).await);
            write(&db, &prefix, COMMITS);
            db.psql(&format!("insert into studies (label, title) values ('{end}', 't')"));
            for (rec, task) in clients {
                tokio::time::timeout(PATIENCE, task)
                    .await
                    .expect("a client saw everything")
                    .expect("client");
                assert_eq!(rec.lock().unwrap().labels().len(), COMMITS + 1);
            }
            let (p1, s1) = (transactions(&db).await, transactions(&standby_db).await);
            let per = |d: i64| d as f64 / (COMMITS + 1) as f64;
            figures.push(format!(
                "round {round}, {variant}: primary {:.2} transactions per commit, standby {:.2}",
                per(p1 - p0),
                per(s1 - s0)
            ));
            for n in nodes {
                n.stop().await;
            }
        }
    }
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    for f in figures {
        println!("{f}");
    }
    leader.stop().await;
}

#[tokio::test]
async fn a_read_waiting_for_a_position_the_server_cannot_reach_is_a_503_within_the_bound() {
    // With `--durable-watermark standby` and no standby at all, nothing is ever relayed: a real
    // write's position is never passed.
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.durable_watermark = pgfeed::config::DurableWatermark::Standby;
    })
    .await;
    let (_, position) = write_with_position(&app, "never-relayed").await;
    let bound = pgfeed::http::position::WAIT + Duration::from_secs(3);
    let reply = tokio::time::timeout(
        bound,
        app.request(Method::GET, "/api/changes?topics=studies", |r| {
            r.header("pgfeed-position", &position)
        }),
    )
    .await
    .expect("the wait is bounded");
    reply.assert_error(503, "busy");
    assert_eq!(reply.header("retry-after"), Some("1"));
}

#[tokio::test]
async fn a_server_whose_standby_never_answers_serves_everything_from_the_primary() {
    let db = TestDb::create().await;
    // Nothing listens on port 1.
    let node = TestApp::spawn_with(db.clone(), |c| {
        c.replica_url = Some("postgres://postgres@127.0.0.1:1/pgfeed".into());
    })
    .await;
    let (_, start) = node.get_json("/api/changes?topics=studies").await;
    let start = start["cursor"].as_str().expect("cursor").to_owned();
    let mut ws = node.ws().await;
    ws.subscribe("studies").await;
    write(&db, "p", 5);
    db.psql("insert into studies (label, title) values ('end', 't')");
    let live: Vec<String> = ws
        .events(6)
        .await
        .iter()
        .map(|e| e["data"]["label"].as_str().expect("label").to_owned())
        .collect();
    let expected = [series("p", 5), vec!["end".into()]].concat();
    assert_eq!(live, expected);
    let resumed: Vec<String> = poll_until(&node, &start, "end")
        .await
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(resumed, expected);
    let mut ws = node.ws().await;
    ws.subscribe_with(json!({"action": "subscribe", "topic": "studies", "snapshot": true}))
        .await;
    assert_eq!(ws.next_json().await["data"].as_array().expect("rows").len(), 6);
    let scrape = node.metrics().await;
    assert_eq!(scrape.value("pgfeed_replica_usable"), 0.0);
    assert_eq!(health(&node).await["reads_from"], "primary");
    for what in ["log", "resume", "snapshot"] {
        assert_eq!(reads(&scrape, "standby", what), 0.0, "{what}");
    }
    assert!(reads(&scrape, "primary", "snapshot") >= 1.0);
    node.stop().await;
}

/// README: a read may carry the position as `?position=` on `/ws`, `/events` and `/api/changes`
/// (both its topic and its view form); each route takes it beside its own parameters, and what
/// it serves then includes the write.
#[tokio::test]
async fn every_stream_route_takes_a_position_in_its_query_and_serves_the_write() {
    let app = TestApp::spawn().await;
    let (_, before) = write_with_position(&app, "before").await;
    let (_, position) = write_with_position(&app, "seen-by-query").await;
    let (since, p) = (url_escape(&before), url_escape(&position));

    let mut sse = app
        .sse(&format!("topics=studies&since={since}&position={p}"), None)
        .await;
    assert_eq!(sse.next().await.expect("subscribed").event, "subscribed");
    let first = sse.next_event().await;
    assert!(first.to_string().contains("seen-by-query"), "{first}");

    let (status, body) = app
        .get_json(&format!(
            "/api/changes?topics=studies&since={since}&wait=0&position={p}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("seen-by-query"), "{body}");

    let (status, body) = app
        .get_json(&format!("/api/changes?view=v&topic=studies&wait=0&position={p}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("seen-by-query"), "{body}");
}
