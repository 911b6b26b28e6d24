//! Attacks on the streams (issue 15, items 5, 6, 7, 10 and part of 16): topic lists that cost
//! the server per name, snapshots that exhaust memory and the commit barrier, row keys spelled so
//! that they match nothing, resumes that walk the whole log, streams that outlive their token, and
//! event types that break SSE framing.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::auth::{in_an_hour, token, SECRET};
use crate::support::{Seen, TestApp, TestDb, WsClient, PATIENCE};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The refusal of a WebSocket upgrade: its status and JSON body (panics if it was accepted).
async fn refused_upgrade(app: &TestApp, query: &str) -> (u16, Value) {
    let req = format!("ws://{}/ws?{query}", app.addr).into_client_request().unwrap();
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.body().clone().unwrap_or_default();
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        }
        Ok(_) => panic!("the upgrade with {} bytes of query was accepted", query.len()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let resp = reqwest::get(app.url(path)).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Item 5: `/ws?topics=` with thousands of names is refused before the upgrade, with nothing
/// done per name; the limit is `--max-subscriptions`, repeats counted.
#[tokio::test]
async fn a_websocket_topic_list_over_the_limit_is_refused_before_the_upgrade() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_subscriptions = 3).await;
    let flood: Vec<String> = (0..5000).map(|i| format!("nosuch{i}")).collect();
    let (status, body) = refused_upgrade(&app, &format!("topics={}", flood.join(","))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("too_many_subscriptions"))
    );

    // Four names over a limit of three, repeats included, are refused too; three are not.
    let (status, body) = refused_upgrade(&app, "topics=studies,studies,files,files").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("too_many_subscriptions"))
    );
    let mut ws = app.ws_at("/ws?topics=studies,files,studies").await;
    let mut subscribed: Vec<String> = Vec::new();
    for _ in 0..2 {
        let v = ws.next_json().await;
        assert_eq!(v["type"], "subscribed", "{v}");
        subscribed.push(v["topic"].as_str().unwrap().to_owned());
    }
    assert_eq!(subscribed, ["studies", "files"], "each topic once, in order");
    ws.assert_quiet(Duration::from_millis(200)).await;
}

/// Item 6: SSE and long-poll count names before deduping, stop counting at the limit, and honour
/// `--max-subscriptions`.
#[tokio::test]
async fn sse_and_long_poll_refuse_lists_over_max_subscriptions_counting_repeats() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_subscriptions = 2).await;
    // 17,000 names (short ones: a URI's length is capped at 64 KiB), all the same and unknown.
    let repeats = vec!["x"; 17_000].join(",");
    for path in [
        format!("/events?topics={repeats}"),
        format!("/api/changes?topics={repeats}"),
        "/events?topics=studies,studies,studies".to_owned(),
        "/api/changes?topics=studies,files,messages".to_owned(),
    ] {
        let (status, body) = get(&app, &path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("too_many_subscriptions")),
            "{}",
            &path[..path.len().min(60)]
        );
    }
    // Within the limit both still work.
    let (status, body) = get(&app, "/api/changes?topics=studies,files").await;
    assert_eq!(status, 200, "{body}");
    let mut sse = app.sse("topics=studies,studies", None).await;
    assert_eq!(sse.next().await.expect("stream").event, "subscribed");
}

/// Item 7: `studies:01`, `messages:+1`, `studies: 1` name row 1 for authorization but match no
/// logged topic; they are unknown topics on every transport.
#[tokio::test]
async fn non_canonical_row_keys_are_unknown_topics_on_every_transport() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.jwt_secret = Some(SECRET.into())).await;
    app.psql("insert into studies (id, label, title) overriding system value values (1, 'a', 'A')");
    app.psql("insert into messages (id, study_id, author, body) overriding system value values (1, 1, 'x', 'hi')");
    let member = token(json!({"role": "member", "studies": [1], "exp": in_an_hour()}));
    let mut ws = app.ws_at(&format!("/ws?token={member}")).await;
    for topic in [
        "studies:01",
        "studies:+1",
        "messages:01",
        "messages:+1",
        "studies:-0",
        "studies: 1",
    ] {
        ws.send(json!({"action": "subscribe", "topic": topic, "since": null}))
            .await;
        let v = ws.next_json().await;
        assert_eq!(v["code"], "unknown_topic", "{topic}: {v}");
        let q = format!("topics={}&token={member}", urlencode(topic));
        for path in [format!("/events?{q}"), format!("/api/changes?{q}")] {
            let (status, body) = get(&app, &path).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (404, Some("unknown_topic")),
                "{path}"
            );
        }
    }
    ws.subscribe("studies:1").await;
    ws.subscribe("messages:1").await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Item 7: a snapshot over `--max-snapshot` is refused (`too_large`, pointing at REST paging),
/// on subscribe and on refresh, and the connection and the subscription go on.
#[tokio::test]
async fn a_snapshot_over_the_limit_is_refused_and_the_connection_goes_on() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_snapshot = 4096).await;
    app.psql("insert into studies (id, label, title) overriding system value values (1, 'small', 'S')");
    app.psql(&format!(
        "insert into studies (id, label, title, description) overriding system value values (2, 'big', 'B', '{}')",
        "x".repeat(5000)
    ));
    let mut ws = app.ws().await;
    for topic in ["studies", "studies:2"] {
        ws.send(json!({"action": "subscribe", "topic": topic, "snapshot": true, "id": topic}))
            .await;
        let v = ws.next_json().await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("too_large")),
            "{v}"
        );
        assert!(v["message"].as_str().unwrap().contains("REST"), "{v}");
    }
    // A small room is sent; once it grows past the limit, a refresh is refused and the stream
    // goes on.
    ws.send(json!({"action": "subscribe", "topic": "studies:1", "snapshot": true}))
        .await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    let snap = ws.next_json().await;
    assert_eq!(
        (snap["type"].as_str(), snap["data"]["study"]["label"].as_str()),
        (Some("snapshot"), Some("small"))
    );
    app.psql(&format!(
        "update studies set description = '{}' where id = 1",
        "y".repeat(5000)
    ));
    assert_eq!(ws.next_event().await["type"], "study_updated");
    ws.send(json!({"action": "refresh", "topic": "studies:1"})).await;
    assert_eq!(ws.next_json().await["code"], "too_large");
    app.psql("update studies set title = 'S2' where id = 1");
    assert_eq!(ws.next_event().await["data"]["title"], "S2");
    ws.send(json!({"action": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
}

/// Item 7: `refresh` in a loop (each one takes the snapshot barrier, which holds writers' commits)
/// is budgeted per connection: past a burst, `rate_limited`.
#[tokio::test]
async fn snapshots_past_the_connections_budget_are_rate_limited() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (label, title) values ('a', 'A')");
    let mut ws = app.ws().await;
    ws.send(json!({"action": "subscribe", "topic": "studies", "snapshot": true}))
        .await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    assert_eq!(ws.next_json().await["type"], "snapshot");
    for _ in 0..30 {
        ws.send(json!({"action": "refresh", "topic": "studies"})).await;
    }
    let (mut snapshots, mut limited) = (0, 0);
    for _ in 0..30 {
        let v = ws.next_json().await;
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("snapshot"), _) => snapshots += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(limited > 0 && snapshots > 0, "{snapshots} snapshots, {limited} refused");
    // The connection stays usable.
    app.psql("insert into studies (label, title) values ('b', 'B')");
    assert_eq!(ws.next_event().await["data"]["label"], "b");
}

/// Item 10: at `exp` the WebSocket is closed with 4001; a fresh token and the last cursor get
/// everything committed meanwhile.
#[tokio::test]
async fn a_websocket_is_closed_with_4001_at_exp_and_resumes_with_a_fresh_token() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.jwt_secret = Some(SECRET.into())).await;
    let short = token(json!({"role": "admin", "exp": now() + 3}));
    let mut ws = app.ws_at(&format!("/ws?token={short}")).await;
    let cursor = ws.subscribe("studies").await["cursor"].as_str().unwrap().to_owned();
    app.psql("insert into studies (label, title) values ('before', 'B')");
    let last = loop {
        match ws.next_seen_within(Duration::from_secs(10)).await {
            Some(Seen::Closed(code)) => break code,
            // `before`, unless the machine is so slow that the token expired first.
            Some(Seen::Frame(v)) => assert_eq!(v["data"]["label"], "before", "{v}"),
            None => panic!("the connection outlived its token"),
        }
    };
    assert_eq!(last, Some(4001));
    app.psql("insert into studies (label, title) values ('meanwhile', 'M')");

    let fresh = token(json!({"role": "admin", "exp": in_an_hour()}));
    let mut ws = app.ws_at(&format!("/ws?token={fresh}")).await;
    ws.subscribe_since("studies", &cursor).await;
    let labels: Vec<Value> = ws.events(2).await.iter().map(|e| e["data"]["label"].clone()).collect();
    assert_eq!(labels, [json!("before"), json!("meanwhile")]);
}

/// Item 10: at `exp` an SSE stream ends, and a long-poll's wait is cut; a fresh token and the last
/// id get what was committed meanwhile.
#[tokio::test]
async fn an_sse_stream_ends_at_exp_and_a_long_poll_stops_waiting() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.jwt_secret = Some(SECRET.into())).await;
    let short = token(json!({"role": "admin", "exp": now() + 3}));
    let mut sse = app.sse(&format!("topics=studies&token={short}"), None).await;
    let opened = sse.next().await.expect("subscribed");
    let mut last_id = opened.id.clone().expect("an id");
    let poll = {
        let url = app.url(&format!(
            "/api/changes?topics=studies&since={last_id}&wait=60&token={short}"
        ));
        tokio::spawn(async move { reqwest::get(url).await.expect("GET").status().as_u16() })
    };
    app.psql("insert into studies (label, title) values ('before', 'B')");
    let mut labels = Vec::new();
    let ended = loop {
        match sse.next_within(Duration::from_secs(10)).await {
            Some(Some(msg)) => {
                labels.push(msg.json()["data"]["label"].clone());
                last_id = msg.id.expect("an id");
            }
            Some(None) => break true,
            None => break false,
        }
    };
    assert!(ended, "the SSE stream outlived its token");
    // The poll waiting meanwhile answered with the event.
    assert_eq!(tokio::time::timeout(PATIENCE, poll).await.expect("poll").unwrap(), 200);
    app.psql("insert into studies (label, title) values ('meanwhile', 'M')");

    let fresh = token(json!({"role": "admin", "exp": in_an_hour()}));
    let mut sse = app.sse(&format!("topics=studies&token={fresh}"), Some(&last_id)).await;
    sse.next().await.expect("subscribed");
    while labels.len() < 2 {
        labels.push(sse.next_event().await["data"]["label"].clone());
    }
    assert_eq!(
        labels,
        [json!("before"), json!("meanwhile")],
        "each event once, in order"
    );
}

#[tokio::test]
async fn a_long_poll_waits_no_longer_than_its_token() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.jwt_secret = Some(SECRET.into())).await;
    let admin = token(json!({"role": "admin", "exp": in_an_hour()}));
    let (_, head) = get(&app, &format!("/api/changes?topics=studies&token={admin}")).await;
    let short = token(json!({"role": "admin", "exp": now() + 3}));
    let url = app.url(&format!(
        "/api/changes?topics=studies&since={}&wait=60&token={short}",
        head["cursor"].as_str().unwrap()
    ));
    // Without the cut it would wait 60 s; PATIENCE is 20 s.
    let answer = tokio::time::timeout(PATIENCE, reqwest::get(url))
        .await
        .expect("the poll outlived its token")
        .expect("GET");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["cursor"], head["cursor"]);
}

/// Item 7: a resume of a quiet topic from an old cursor walks the log in bounded reads (here 7
/// commits each) and still returns exactly the topic's events, on every transport.
#[tokio::test]
async fn a_resume_of_a_quiet_topic_over_many_commits_reads_in_bounded_steps_and_misses_nothing() {
    let db = TestDb::create().await;
    let app = TestApp::spawn_with(db.clone(), |c| c.max_resume_scan = 7).await;
    app.psql(
        "insert into studies (id, label, title) overriding system value values (1, 'quiet', 'Q'), (2, 'busy', 'B')",
    );
    let mut ws = app.ws().await;
    let cursor = ws.subscribe("studies:1").await["cursor"].as_str().unwrap().to_owned();
    ws.close().await;
    app.psql(
        "do $$ begin for i in 1..100 loop update studies set title = 't' || i where id = 2; commit; end loop; end $$",
    );
    app.psql("update studies set title = 'Q2' where id = 1");
    app.psql(
        "do $$ begin for i in 1..30 loop update studies set title = 'u' || i where id = 2; commit; end loop; end $$",
    );
    // A new server: its memory ring is empty, so every resume reads the log.
    app.stop().await;
    let app = TestApp::spawn_with(db, |c| c.max_resume_scan = 7).await;

    let mut ws = app.ws().await;
    ws.subscribe_since("studies:1", &cursor).await;
    let e = ws.next_event().await;
    assert_eq!(
        (e["topic"].as_str(), e["data"]["title"].as_str()),
        (Some("studies:1"), Some("Q2"))
    );
    ws.assert_quiet(Duration::from_millis(300)).await;
    app.psql("update studies set title = 'Q3' where id = 1");
    assert_eq!(ws.next_event().await["data"]["title"], "Q3");

    let mut sse = app.sse("topics=studies:1,files", Some(&cursor)).await;
    sse.next().await.expect("subscribed");
    let titles: Vec<Value> = sse.events(2).await.iter().map(|e| e["data"]["title"].clone()).collect();
    assert_eq!(titles, [json!("Q2"), json!("Q3")]);

    // Long-poll: an answer may end where a bounded read found something; polling on from each
    // answer's cursor gets everything, and the cursor comes to rest at the log's end.
    let mut since = cursor.clone();
    let mut titles = Vec::new();
    for polls in 0.. {
        assert!(polls < 100, "the long-poll cursor never came to rest");
        let (status, body) = get(&app, &format!("/api/changes?topics=studies:1&since={since}&wait=0")).await;
        assert_eq!(status, 200, "{body}");
        titles.extend(
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["data"]["title"].clone()),
        );
        let next = body["cursor"].as_str().unwrap().to_owned();
        if next == since {
            break;
        }
        since = next;
    }
    assert_eq!(titles, [json!("Q2"), json!("Q3")]);
    // With a wait, one request reads on through the bounded reads until it finds an event.
    let (_, body) = get(&app, &format!("/api/changes?topics=studies:1&since={cursor}&wait=5")).await;
    assert_eq!(body["events"][0]["data"]["title"], "Q2");
}

/// Item 16 (part): an event type with a line break (a tracked table named `a<LF>b`) must not
/// panic the SSE stream: the `event:` field is made safe and `data:` carries the exact type.
#[tokio::test]
async fn an_event_type_with_a_line_break_is_sent_safely_on_sse() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) overriding system value values (1, 'a', 'A')");
    app.psql(
        "create table \"a\nb\" (id int primary key, study_id bigint); \
         select pgfeed.track_as('\"a\nb\"', 'ab', E'a\\nb', 'study_id', 'studies')",
    );
    let mut sse = app.sse("topics=ab,studies:1", None).await;
    sse.next().await.expect("subscribed");
    app.psql("insert into \"a\nb\" values (1, 1)");
    app.psql("update studies set title = 'after' where id = 1");
    let msg = sse.next().await.expect("the stream survived");
    assert_eq!(msg.event, "a_b_created");
    assert_eq!(msg.json()["type"], "a\nb_created");
    assert_eq!(sse.next_event().await["data"]["title"], "after");

    // The WebSocket carries the same events, JSON-escaped.
    let mut ws: WsClient = app.ws().await;
    ws.subscribe("ab").await;
    app.psql("insert into \"a\nb\" values (2, 1)");
    assert_eq!(ws.next_event().await["type"], "a\nb_created");
}

/// Item 10, the client side: web/client.js (as the server serves it, run by node over SSE) asks
/// its token function for a fresh token when the stream ends at `exp`, and resumes from its cursor:
/// every event once, in order.
#[tokio::test]
async fn client_js_asks_for_a_fresh_token_when_the_stream_ends_at_exp_and_resumes() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let app = TestApp::spawn_with(TestDb::create().await, |c| c.jwt_secret = Some(SECRET.into())).await;
    let dir = std::env::temp_dir().join(format!("pgfeed-client-{}-{}", std::process::id(), app.addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let client = reqwest::get(app.url("/client.js")).await.unwrap().text().await.unwrap();
    std::fs::write(dir.join("client.mjs"), client).unwrap();
    std::fs::write(
        dir.join("driver.mjs"),
        r#"import { connect } from "./client.mjs";
const [base, first, second] = process.argv.slice(2);
let asked = 0;
const say = (v) => console.log(JSON.stringify(v));
connect({
  url: base,
  topics: ["studies"],
  transports: ["sse"],
  backoffMin: 50,
  token: async () => { asked += 1; say({ asked }); return asked === 1 ? first : second; },
  onEvent: (e) => say({ label: e.data.label }),
  onStatus: (s) => say({ status: s }),
});
"#,
    )
    .unwrap();
    let first = token(json!({"role": "admin", "exp": now() + 5}));
    let second = token(json!({"role": "admin", "exp": in_an_hour()}));
    let mut child = tokio::process::Command::new("node")
        .arg("driver.mjs")
        .arg(app.url(""))
        .args([&first, &second])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is missing: apt-get install -y nodejs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("nothing from the client in time")
            .unwrap()
            .expect("the client exited");
        serde_json::from_str(&line).unwrap()
    };
    let mut until = async |want: Value| loop {
        if next().await == want {
            return;
        }
    };
    until(json!({"status": "fallback"})).await;
    app.psql("insert into studies (label, title) values ('before', 'B')");
    until(json!({"label": "before"})).await;
    // The server ends the stream at `exp`; the client asks for a fresh token before it reconnects.
    until(json!({"asked": 2})).await;
    app.psql("insert into studies (label, title) values ('meanwhile', 'M')");
    let mut labels = Vec::new();
    while labels.is_empty() {
        if let Some(l) = next().await.get("label") {
            labels.push(l.clone());
        }
    }
    assert_eq!(labels, [json!("meanwhile")], "each event once");
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 5: unknown topics share a rate-limited reload of the tracked tables, and still a table
/// tracked a moment before a subscribe is found (the miss waits for a reload that started after it).
#[tokio::test]
async fn unknown_topics_share_reloads_yet_a_table_tracked_just_now_is_found() {
    let app = TestApp::spawn().await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(app.ws().await);
    }
    // A burst of misses from several connections: every one is answered.
    for (i, ws) in clients.iter_mut().enumerate() {
        for j in 0..3 {
            ws.send(json!({"action": "subscribe", "topic": format!("nosuch{i}x{j}")}))
                .await;
        }
    }
    for ws in &mut clients {
        for _ in 0..3 {
            assert_eq!(ws.next_json().await["code"], "unknown_topic");
        }
    }
    let ws = &mut clients[0];
    ws.send(json!({"action": "subscribe", "topic": "gizmos"})).await;
    assert_eq!(ws.next_json().await["code"], "unknown_topic");
    app.psql("create table gizmos (id int primary key); select pgfeed.track('gizmos')");
    ws.subscribe("gizmos").await;
    app.psql("insert into gizmos values (1)");
    assert_eq!(ws.next_event().await["type"], "gizmos_created");
}

/// Item 10, the admin page: a member's token expires while the page is open; the page asks for a
/// fresh one, keeps its view, and the feed resumes from its cursor (the change made meanwhile
/// shows). Runs tests/browser/admin-test.mjs (scenario `expiry`) in headless Chromium.
#[tokio::test]
async fn the_admin_page_asks_for_a_fresh_token_at_exp_and_resumes() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.jwt_secret = Some(SECRET.into())).await;
    let short = token(json!({"role": "member", "studies": [1], "exp": now() + 10}));
    let fresh = token(json!({"role": "member", "studies": [1], "exp": in_an_hour()}));
    let summary = crate::admin::run_with(
        app,
        "expiry",
        &[("ADMIN_TEST_SHORT_TOKEN", short), ("ADMIN_TEST_MEMBER_TOKEN", fresh)],
    )
    .await;
    eprintln!("admin expiry: {summary}");
}
