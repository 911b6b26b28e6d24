//! Failover (PROTOCOL.md §11, README "Running many servers and failing over"): a primary and a
//! streaming standby of the test's own, two pgfeed servers on them through a proxy that stands
//! for "the primary's address", WebSocket clients holding cursors, psql writers.
//!
//! Every scenario checks the one rule across every event any client saw: a cursor never names two
//! different events. Clients whose cursors lie before the divergence continue exactly; clients past
//! it are told `log_diverged`; nobody skips a row without being told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::SinkExt;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::support::replica::{Pair, STANDBY_NAME};
use crate::support::{Seen, TestApp, TestDb, WsClient, PATIENCE};

/// What one client saw: every event (cursor, label) and every refresh reason, in order.
#[derive(Debug, Default)]
pub(crate) struct Record {
    pub(crate) events: Vec<(String, String)>,
    pub(crate) refreshes: Vec<String>,
    /// Subscribed live again after a refresh: what is committed from now on reaches it.
    live_again: bool,
}

impl Record {
    pub(crate) fn labels(&self) -> Vec<&str> {
        self.events.iter().map(|(_, l)| l.as_str()).collect()
    }
}

/// A client of the `studies` topic that reconnects (to the servers in turn) with its last cursor
/// whenever its connection ends, takes a `refresh_needed` as a real client would (it notes it and
/// goes on live), and stops once it saw the row labelled `until`. Returns its last cursor.
async fn client(addrs: Vec<SocketAddr>, since: Option<String>, until: String, rec: Arc<Mutex<Record>>) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut since = since;
    let mut turn = 0;
    loop {
        assert!(Instant::now() < deadline, "a client never saw {until}: {rec:?}");
        let addr = addrs[turn % addrs.len()];
        turn += 1;
        let connected = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await;
        let Ok(Ok((stream, _))) = connected else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut ws = WsClient { stream };
        let subscribe = |since: &Option<String>| {
            let mut f = json!({"action": "subscribe", "topic": "studies"});
            if let Some(c) = since {
                f["since"] = json!(c);
            }
            Message::Text(f.to_string().into())
        };
        if ws.stream.send(subscribe(&since)).await.is_err() {
            continue;
        }
        loop {
            let Some(Seen::Frame(v)) = ws.next_seen_within(Duration::from_secs(30)).await else {
                break;
            };
            match v["type"].as_str() {
                Some("refresh_needed") => {
                    rec.lock()
                        .unwrap()
                        .refreshes
                        .push(v["reason"].as_str().unwrap_or("").to_owned());
                    since = None;
                    if ws.stream.send(subscribe(&since)).await.is_err() {
                        break;
                    }
                }
                Some("subscribed") => {
                    let mut rec = rec.lock().unwrap();
                    if since.is_none() && !rec.refreshes.is_empty() {
                        rec.live_again = true;
                    }
                }
                // A server still moving to the new generation, or its database away: again later.
                Some("error") => break,
                _ if v.get("op").is_some() => {
                    let cursor = v["cursor"].as_str().expect("a cursor").to_owned();
                    let label = v["data"]["label"].as_str().expect("a label").to_owned();
                    rec.lock().unwrap().events.push((cursor.clone(), label.clone()));
                    since = Some(cursor.clone());
                    if label == until {
                        return cursor;
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn spawn_client(
    addrs: &[SocketAddr],
    since: Option<String>,
    until: &str,
) -> (Arc<Mutex<Record>>, tokio::task::JoinHandle<String>) {
    let rec = Arc::new(Mutex::new(Record::default()));
    let task = tokio::spawn(client(addrs.to_vec(), since, until.to_owned(), rec.clone()));
    (rec, task)
}

/// Writes rows labelled `<prefix>-0` … `<prefix>-(n-1)`, one commit each, in order, through psql.
pub(crate) fn write(db: &TestDb, prefix: &str, n: usize) {
    // Explicit transactions: a multi-statement string is otherwise one transaction.
    let sql: String = (0..n)
        .map(|i| format!("begin; insert into studies (label, title) values ('{prefix}-{i}', 't'); commit;"))
        .collect();
    db.psql(&sql);
}

/// The labels of `prefix` rows, in order.
pub(crate) fn series(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Every cursor any client saw names one event only.
pub(crate) fn assert_one_event_per_cursor(records: &[&Arc<Mutex<Record>>]) {
    let mut named: HashMap<String, String> = HashMap::new();
    for rec in records {
        for (cursor, label) in &rec.lock().unwrap().events {
            if let Some(other) = named.insert(cursor.clone(), label.clone()) {
                assert_eq!(&other, label, "cursor {cursor} named two different events");
            }
        }
    }
}

/// Waits until the client has seen the row labelled `label`.
pub(crate) async fn wait_seen(rec: &Arc<Mutex<Record>>, label: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !rec.lock().unwrap().labels().contains(&label) {
        assert!(Instant::now() < deadline, "{label} not seen: {rec:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn two_nodes(pair: &Pair, tweak: impl Fn(&mut pgfeed::config::ServeConfig) + Copy) -> (TestApp, TestApp) {
    let a = TestApp::spawn_with(pair.db(), tweak).await;
    let b = TestApp::spawn_with(pair.db(), tweak).await;
    (a, b)
}

pub(crate) async fn health(app: &TestApp) -> Value {
    reqwest::get(app.url("/healthz"))
        .await
        .expect("GET /healthz")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn a_clean_switchover_loses_and_repeats_nothing_for_any_client() {
    let pair = Pair::start().await;
    let (a, b) = two_nodes(&pair, |_| {}).await;
    let addrs = [a.addr, b.addr];
    let db = pair.db();
    // Clients live on either server before anything is written.
    let clients: Vec<_> = (0..4)
        .map(|i| spawn_client(&addrs[i % 2..=i % 2], None, "end"))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    write(&db, "before", 20);
    for (rec, _) in &clients {
        wait_seen(rec, "before-19").await;
    }
    pair.wait_caught_up().await;
    pair.primary.stop("fast");
    pair.promote_standby().await;
    write(&db, "after", 20);
    db.psql("insert into studies (label, title) values ('end', 't')");
    let mut expected = series("before", 20);
    expected.extend(series("after", 20));
    expected.push("end".into());
    for (rec, task) in &clients {
        tokio::time::timeout(Duration::from_secs(60), async {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("clients finish");
        let rec = rec.lock().unwrap();
        assert!(rec.refreshes.is_empty(), "a clean switchover refreshes nobody: {rec:?}");
        assert_eq!(rec.labels(), expected, "every row once, in order");
    }
    assert_one_event_per_cursor(&clients.iter().map(|(r, _)| r).collect::<Vec<_>>());
    // The new primary's log is a new generation, and the servers say so.
    assert_eq!(pair.db().psql("select max(gen) from pgfeed.generations"), "2");
    let deadline = Instant::now() + PATIENCE;
    while health(&a).await["generation"] != 2 || health(&b).await["generation"] != 2 {
        assert!(Instant::now() < deadline, "the servers did not move to generation 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await;
    b.stop().await;
}

/// The lossy failover: the standby cut off, commits delivered from the primary, the primary
/// crashed, the standby promoted, writers go on. `durable` runs it with
/// `--durable-watermark standby`.
async fn lossy_failover(durable: bool) {
    let pair = Pair::start().await;
    let tweak = move |c: &mut pgfeed::config::ServeConfig| {
        if durable {
            c.durable_watermark = pgfeed::config::DurableWatermark::Standby;
            c.durable_standby = Some(STANDBY_NAME.into());
        }
    };
    let (a, b) = two_nodes(&pair, tweak).await;
    let addrs = [a.addr, b.addr];
    let db = pair.db();

    // Early clients: they read up to `pre-9`, go away holding their cursor, and come back after
    // the failover. Live clients stay through all of it, on either server.
    let early: Vec<_> = (0..2)
        .map(|i| spawn_client(&addrs[i % 2..=i % 2], None, "pre-9"))
        .collect();
    let live: Vec<_> = (0..2)
        .map(|i| spawn_client(&addrs[i % 2..=i % 2], None, "end"))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    write(&db, "pre", 10);
    let mut early_cursors = Vec::new();
    let mut early_records = Vec::new();
    for (rec, task) in early {
        early_cursors.push(task.await.expect("early client"));
        early_records.push(rec);
    }
    for (rec, _) in &live {
        wait_seen(rec, "pre-9").await;
    }
    // The standby has everything so far (the watermark covering pre-9 included), then is cut off.
    pair.wait_caught_up().await;
    pair.cut_standby_off().await;
    // More commits than the 32 seqs PostgreSQL WAL-logs ahead: the new primary hands some of
    // their seqs out again, to other commits.
    write(&db, "lost", 50);
    if durable {
        // Nothing the standby lacks is delivered; the leader says it waits.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (ha, hb) = (health(&a).await, health(&b).await);
            if ha["waiting_for_standby"] == true || hb["waiting_for_standby"] == true {
                break;
            }
            assert!(Instant::now() < deadline, "/healthz never said events wait: {ha} {hb}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (rec, _) in &live {
            assert!(
                !rec.lock().unwrap().labels().iter().any(|l| l.starts_with("lost")),
                "a commit the standby lacks was delivered"
            );
        }
    } else {
        for (rec, _) in &live {
            wait_seen(rec, "lost-49").await;
        }
    }
    // A crash: the primary's postmaster killed with SIGKILL (issue 18).
    pair.primary.kill().await;
    pair.promote_standby().await;
    if durable {
        // The new primary has no standby yet: events wait for one, as they should.
        pair.standby_for_new_primary().await;
    }
    write(&db, "post", 30);
    if !durable {
        // The live clients are told before the last row is written: after `log_diverged` they go
        // on live (a real client takes a snapshot), from whatever is newest by then.
        let deadline = Instant::now() + PATIENCE;
        while live.iter().any(|(rec, _)| !rec.lock().unwrap().live_again) {
            assert!(
                Instant::now() < deadline,
                "live clients were never told the log diverged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    db.psql("insert into studies (label, title) values ('end', 't')");

    // The early clients come back with their cursors: before the divergence, so they go on
    // exactly, with no refresh.
    let back: Vec<_> = early_cursors
        .into_iter()
        .enumerate()
        .map(|(i, c)| spawn_client(&addrs[(i + 1) % 2..=(i + 1) % 2], Some(c), "end"))
        .collect();
    let mut expected_after_pre = series("post", 30);
    expected_after_pre.push("end".into());
    for (rec, task) in &back {
        tokio::time::timeout(Duration::from_secs(60), async {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("returning clients finish");
        let rec = rec.lock().unwrap();
        assert!(
            rec.refreshes.is_empty(),
            "a cursor before the divergence goes on: {rec:?}"
        );
        assert_eq!(rec.labels(), expected_after_pre, "exactly the rows after it");
    }
    for (rec, task) in &live {
        tokio::time::timeout(Duration::from_secs(60), async {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("live clients finish");
        let rec = rec.lock().unwrap();
        let labels = rec.labels();
        if durable {
            assert!(
                rec.refreshes.is_empty(),
                "with a durable watermark nobody refreshes: {rec:?}"
            );
            let mut expected = series("pre", 10);
            expected.extend(expected_after_pre.iter().cloned());
            assert_eq!(labels, expected, "every surviving row once, none lost");
        } else {
            // They saw commits the new primary never got: told so, never silently skipped.
            assert_eq!(rec.refreshes, ["log_diverged"], "{rec:?}");
            let lost_at = labels.iter().position(|l| *l == "lost-49").expect("saw lost-49");
            assert_eq!(
                labels[..=lost_at].to_vec(),
                [series("pre", 10), series("lost", 50)].concat()
            );
            // The case that matters: the new primary gave some of those seqs to other commits.
            let lost_seqs: Vec<String> = rec.events[10..=lost_at]
                .iter()
                .map(|(c, _)| crate::support::position(&json!(c)).seq.to_string())
                .collect();
            let reused = pair.db().psql(&format!(
                "select count(*) from pgfeed.commits where txid <> '0' and seq in ({})",
                lost_seqs.join(",")
            ));
            assert_ne!(
                reused, "0",
                "the failover reissued none of the lost seqs: the test proves nothing"
            );
            // After the refresh they go on live: whatever they see is the new primary's, in order.
            let rest: Vec<&str> = labels[lost_at + 1..].to_vec();
            let all_after: Vec<String> = expected_after_pre.clone();
            let start = all_after
                .iter()
                .position(|l| l == rest[0])
                .expect("a row of the new primary");
            assert_eq!(rest, all_after[start..].iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
    let all: Vec<&Arc<Mutex<Record>>> = early_records
        .iter()
        .chain(back.iter().map(|(r, _)| r))
        .chain(live.iter().map(|(r, _)| r))
        .collect();
    assert_one_event_per_cursor(&all);
    if !durable {
        // On long-poll too: a cursor past the divergence is a 410 `log_diverged`, one before it
        // reads on; a generation this log never had is `cursor_unknown`.
        let cursor_of = |label: &str| {
            let rec = live[0].0.lock().unwrap();
            rec.events.iter().find(|(_, l)| l == label).expect(label).0.clone()
        };
        let diverged = cursor_of("lost-0");
        let good = cursor_of("pre-9");
        let (status, v) = a
            .get_json(&format!("/api/changes?topics=studies&since={diverged}&wait=0"))
            .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (410, Some("log_diverged")),
            "{v}"
        );
        let (status, v) = b
            .get_json(&format!("/api/changes?topics=studies&since={good}&wait=0"))
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["events"][0]["data"]["label"], "post-0", "{v}");
        let epoch = pair.db().psql("select epoch from pgfeed.meta");
        let (status, v) = a
            .get_json(&format!("/api/changes?topics=studies&since={epoch}g9-1-1&wait=0"))
            .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (410, Some("cursor_unknown")),
            "{v}"
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_lossy_failover_tells_clients_past_the_divergence_and_no_cursor_names_two_events() {
    lossy_failover(false).await;
}

#[tokio::test]
async fn with_a_durable_watermark_a_lossy_failover_costs_no_client_a_refresh() {
    lossy_failover(true).await;
}

#[tokio::test]
async fn killing_the_leader_moves_leadership_within_seconds_with_no_loss() {
    let db = TestDb::create().await;
    let a = TestApp::spawn_on(db.clone()).await;
    let b = TestApp::spawn_on(db.clone()).await;
    assert_eq!(health(&a).await["role"], "leader");
    assert_eq!(health(&b).await["role"], "follower");
    assert_eq!(
        db.psql(
            "select count(*) from pg_locks where locktype = 'advisory' and objid = 7133004 \
         and database = (select oid from pg_database where datname = current_database())"
        ),
        "1"
    );
    let (rec, task) = spawn_client(&[b.addr], None, "end");
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(&db, "one", 10);
    wait_seen(&rec, "one-9").await;
    let writer = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || write(&db, "two", 200))
    };
    a.stop().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while health(&b).await["role"] != "leader" {
        assert!(
            Instant::now() < deadline,
            "the follower did not take the lead within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let scrape = b.metrics().await;
    assert_eq!(scrape.value("pgfeed_leader"), 1.0);
    assert_eq!(scrape.value("pgfeed_generation"), 1.0);
    writer.await.expect("writer");
    db.psql("insert into studies (label, title) values ('end', 't')");
    let last = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the client saw everything")
        .expect("client");
    assert!(!last.is_empty());
    {
        let rec = rec.lock().unwrap();
        assert!(rec.refreshes.is_empty());
        let expected = [series("one", 10), series("two", 200), vec!["end".into()]].concat();
        assert_eq!(rec.labels(), expected);
    }
    b.stop().await;
}

#[tokio::test]
async fn a_server_given_both_hosts_follows_the_primary_through_a_switchover() {
    let pair = Pair::start().await;
    let url = pair.multi_host_url();
    let node = TestApp::spawn_with(pair.db(), |c| c.db.database_url = Some(url.clone())).await;
    let (rec, task) = spawn_client(&[node.addr], None, "end");
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(&pair.primary.db(), "before", 5);
    wait_seen(&rec, "before-4").await;
    pair.wait_caught_up().await;
    pair.primary.stop("fast");
    pair.standby.promote();
    let new_primary = pair.standby.db();
    write(&new_primary, "after", 5);
    new_primary.psql("insert into studies (label, title) values ('end', 't')");
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the client saw everything")
        .expect("client");
    {
        let rec = rec.lock().unwrap();
        assert!(rec.refreshes.is_empty(), "{rec:?}");
        let expected = [series("before", 5), series("after", 5), vec!["end".into()]].concat();
        assert_eq!(rec.labels(), expected);
    }
    // REST reads and writes go to the new primary too.
    let (status, _) = node.get_json("/api/studies?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(health(&node).await["generation"], 2);
    node.stop().await;
}

/// Both lags of a server's `/healthz`, which must be there while its database is.
async fn lag(app: &TestApp) -> (i64, i64) {
    let h = health(app).await;
    let seqs = h["lag_seqs"].as_i64().unwrap_or_else(|| panic!("no lag_seqs: {h}"));
    let ms = h["lag_ms"].as_i64().unwrap_or_else(|| panic!("no lag_ms: {h}"));
    (seqs, ms)
}

async fn wait_caught_up(app: &TestApp) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let l = lag(app).await;
        if l == (0, 0) {
            return;
        }
        assert!(Instant::now() < deadline, "the server never caught up: lag {l:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/healthz` and `/metrics` say how far each node is behind the log. The follower is held back
/// by a session that locks the watermark row (the leader cannot write it); the leader, with
/// `--durable-watermark local`, delivers first and is not held back (issue 18: deliver first,
/// watermark after).
#[tokio::test]
async fn each_node_says_how_far_behind_the_log_it_is_and_the_leader_delivers_before_its_watermark() {
    let db = TestDb::create().await;
    let a = TestApp::spawn_on(db.clone()).await;
    let b = TestApp::spawn_on(db.clone()).await;
    assert_eq!(health(&a).await["role"], "leader");
    assert_eq!(health(&b).await["role"], "follower");
    let (on_leader, leader_task) = spawn_client(&[a.addr], None, "held-4");
    let (on_follower, follower_task) = spawn_client(&[b.addr], None, "held-4");
    // Subscribed (live, without a cursor) before anything is written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    write(&db, "warm", 3);
    wait_seen(&on_leader, "warm-2").await;
    wait_seen(&on_follower, "warm-2").await;
    wait_caught_up(&a).await;
    wait_caught_up(&b).await;

    let (holder, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("a session of the test's own");
    let conn = tokio::spawn(conn);
    holder
        .batch_execute("begin; select * from pgfeed.watermark for update")
        .await
        .expect("locking the watermark row");
    write(&db, "held", 5);
    // The leader delivers them although it cannot write the watermark.
    wait_seen(&on_leader, "held-4").await;
    wait_caught_up(&a).await;
    // The follower cannot, and says how far behind it is.
    let (seqs, ms) = lag(&b).await;
    assert!(seqs >= 5, "five commits are not relayed: lag_seqs {seqs}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, ms_later) = lag(&b).await;
    assert!(ms_later > 0 && ms_later >= ms, "lag_ms {ms} then {ms_later}");
    let scrape = b.metrics().await;
    assert!(scrape.value("pgfeed_lag_seqs") >= 5.0);
    assert!(scrape.value("pgfeed_lag_seconds") > 0.0);
    assert!(
        !on_follower
            .lock()
            .unwrap()
            .labels()
            .iter()
            .any(|l| l.starts_with("held")),
        "the follower delivered past the watermark"
    );

    holder.batch_execute("commit").await.expect("releasing the row");
    drop(holder);
    let _ = conn.await;
    wait_seen(&on_follower, "held-4").await;
    wait_caught_up(&b).await;
    wait_caught_up(&a).await;
    let scrape = b.metrics().await;
    assert_eq!(
        (scrape.value("pgfeed_lag_seqs"), scrape.value("pgfeed_lag_seconds")),
        (0.0, 0.0)
    );
    for (rec, task) in [(on_leader, leader_task), (on_follower, follower_task)] {
        task.await.expect("client");
        let expected = [series("warm", 3), series("held", 5)].concat();
        assert_eq!(rec.lock().unwrap().labels(), expected);
    }
    a.stop().await;
    b.stop().await;
}
