//! Bad input, abuse and slow clients: answered with error frames or the listed close codes,
//! never a panic, and never at another client's expense.

use std::time::Duration;

use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Seen, TestApp, PATIENCE};

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays_usable() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;

    ws.send_raw("{not json".into()).await;
    assert_eq!(ws.next_json().await["code"], "bad_request");
    ws.send(json!({"action": "dance", "id": "d"})).await;
    let v = ws.next_json().await;
    assert_eq!((v["code"].as_str(), v["id"].as_str()), (Some("bad_request"), Some("d")));
    ws.send(json!({"action": "subscribe"})).await;
    assert_eq!(ws.next_json().await["code"], "bad_request");
    ws.send(json!({"action": "subscribe", "topic": "nosuchtable"})).await;
    assert_eq!(ws.next_json().await["code"], "unknown_topic");
    ws.send(json!({"action": "subscribe", "topic": "studies:abc"})).await;
    assert_eq!(ws.next_json().await["code"], "unknown_topic");
    ws.send(json!({"action": "subscribe", "topic": "bad topic!"})).await;
    assert_eq!(ws.next_json().await["code"], "bad_request");
    ws.stream.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(ws.next_json().await["code"], "bad_request");

    ws.subscribe("studies").await;
    app.psql("insert into studies (label, title) values ('ok', 'OK')");
    assert_eq!(ws.next_event().await["data"]["label"], "ok");
}

#[tokio::test]
async fn a_frame_over_64_kib_closes_with_1009_and_others_are_unaffected() {
    let app = TestApp::spawn().await;
    let mut bystander = app.ws().await;
    bystander.subscribe("studies").await;
    let mut ws = app.ws().await;
    ws.send_raw(format!(r#"{{"action":"ping","pad":"{}"}}"#, "x".repeat(70 * 1024)))
        .await;
    assert!(matches!(ws.next_seen().await, Seen::Closed(Some(1009))));

    // Even one far over what the server reads whole.
    let mut ws = app.ws().await;
    let _ = ws.stream.send(Message::Text("y".repeat(4 << 20).into())).await;
    assert!(matches!(ws.next_seen().await, Seen::Closed(Some(1009) | None)));

    app.psql("insert into studies (label, title) values ('still', 'here')");
    assert_eq!(bystander.next_event().await["data"]["label"], "still");
}

#[tokio::test]
async fn a_burst_of_garbage_closes_with_1008_and_others_are_unaffected() {
    let app = TestApp::spawn().await;
    let mut bystander = app.ws().await;
    bystander.subscribe("studies").await;
    let mut ws = app.ws().await;
    for i in 0..200 {
        if ws
            .stream
            .send(Message::Text(format!("garbage {i}").into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut errors = 0;
    let code = loop {
        match ws.next_seen().await {
            Seen::Frame(v) => {
                assert_eq!(v["type"], "error");
                errors += 1;
            }
            Seen::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(1008));
    assert!(errors > 0, "errors are reported before the close");

    app.psql("insert into studies (label, title) values ('fine', 'Fine')");
    assert_eq!(bystander.next_event().await["data"]["label"], "fine");
}

#[tokio::test]
async fn too_many_subscriptions_are_refused_with_an_error_frame() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    let max = pgfeed::transport::session::SessionConfig::default().max_subscriptions;
    for i in 0..max {
        ws.subscribe(&format!("studies:{i}")).await;
    }
    ws.send(json!({"action": "subscribe", "topic": "studies:999999"})).await;
    assert_eq!(ws.next_json().await["code"], "too_many_subscriptions");
    ws.send(json!({"action": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_with_4008_and_others_get_every_event() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 's', 'S')");

    // A client whose receive buffer is tiny and which stops reading after subscribing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(app.addr).await.unwrap();
    let mut stuck = crate::support::ws_over(tcp, app.addr).await;
    stuck
        .stream
        .send(Message::Text(
            json!({"action": "subscribe", "topic": "messages"}).to_string().into(),
        ))
        .await
        .unwrap();
    // Subscribed before anything is written (then it stops reading): otherwise a slow subscribe
    // could start after the inserts, and there would be nothing for it to fall behind on.
    assert_eq!(stuck.next_json().await["type"], "subscribed");

    let mut healthy = app.ws().await;
    healthy.subscribe("messages").await;
    let rss_before = rss_kib();

    const N: usize = 20_000;
    for chunk in 0..10 {
        app.psql(&format!(
            "insert into messages (study_id, author, body) select 1, 'a', '{chunk}-' || g || repeat('.', 200) from generate_series(1, {}) g",
            N / 10
        ));
    }
    let got = healthy.events(N).await;
    assert_eq!(got.len(), N);
    eprintln!("[4008 test] the healthy client got all {N} events");

    // Now the stuck client reads: whatever it had buffered, then 4008.
    let code = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Seen::Closed(code) = stuck.next_seen().await {
                return code;
            }
        }
    })
    .await
    .expect("the stuck client was not closed");
    assert_eq!(code, Some(4008));
    // Memory stays bounded: the stuck client's backlog is not held for it.
    let growth = rss_kib().saturating_sub(rss_before);
    assert!(growth < 200 * 1024, "server memory grew by {growth} KiB");
}

/// This process's resident set (the server runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_peer_that_does_not_answer_pings_is_dropped() {
    let db = crate::support::TestDb::create().await;
    let app = TestApp::spawn_with(db, |c| c.ws_ping_interval = Duration::from_millis(200)).await;
    // A raw TCP client that completes the handshake and then never reads, so it never pongs.
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut ws = crate::support::ws_over(tcp, app.addr).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // By now the server pinged, got no pong (we did not read), and dropped us.
    let mut closed = false;
    for _ in 0..10 {
        match ws.next_seen_within(Duration::from_secs(2)).await {
            Some(Seen::Closed(_)) => {
                closed = true;
                break;
            }
            Some(Seen::Frame(_)) => continue,
            None => break,
        }
    }
    assert!(closed, "the silent peer was dropped");
}
