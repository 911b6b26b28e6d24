//! Operating it: metrics, and many servers on one database surviving the loss of one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::process::serve;
use crate::support::{TestApp, TestDb, PATIENCE};

#[tokio::test]
async fn metrics_count_connections_relayed_events_deliveries_and_requests() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    app.psql("insert into studies (label, title) values ('a', 'A'), ('b', 'B')");
    ws.events(2).await;
    let health = reqwest::get(format!("http://{}/healthz", app.addr)).await.unwrap();
    // README "Logs": every response carries its request's id.
    let id = health
        .headers()
        .get("x-request-id")
        .expect("x-request-id on the response");
    assert_eq!(id.to_str().unwrap().len(), 36, "a UUID: {id:?}");

    let metrics = app.metrics().await;
    let value = |series: &str| metrics.value(series);
    let text = &metrics.0;
    assert_eq!(value("pgfeed_connections{transport=\"ws\"}"), 1.0);
    assert_eq!(value("pgfeed_subscriptions{transport=\"ws\"}"), 1.0);
    assert_eq!(value("pgfeed_events_relayed_total"), 2.0);
    assert_eq!(value("pgfeed_deliveries_total{transport=\"ws\"}"), 2.0);
    assert!(value("pgfeed_commit_to_send_seconds_count") >= 1.0);
    assert!(value("pgfeed_last_relayed_seq") >= 1.0);
    assert!(text.contains("pgfeed_oldest_event_age_seconds"));
    assert!(value(r#"pgfeed_http_requests_total{method="GET",route="/healthz",status="200"}"#) >= 1.0);
    assert_eq!(
        value(r#"pgfeed_http_requests_total{method="GET",route="/ws",status="101"}"#),
        1.0
    );
    assert!(text.contains("pgfeed_listener_reconnects_total 0"));
}

/// A client that reconnects to the next server in `addrs` whenever its connection drops, resuming
/// from its last cursor, until it has `want` events. Returns the events' bodies in arrival order.
async fn resilient_client(
    addrs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    start: usize,
    want: usize,
    subscribed: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut turn = start;
    while got.len() < want {
        let addr = {
            let a = addrs.lock().unwrap();
            a[turn % a.len()].clone()
        };
        turn += 1;
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let sub = match &cursor {
            Some(c) => json!({"action": "subscribe", "topic": "messages", "since": c}),
            None => json!({"action": "subscribe", "topic": "messages"}),
        };
        if futures::SinkExt::send(&mut ws, Message::Text(sub.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            match v["type"].as_str() {
                Some("subscribed") => {
                    if cursor.is_none() {
                        subscribed.fetch_add(1, Ordering::SeqCst);
                        cursor = Some(v["cursor"].as_str().unwrap().to_owned());
                    }
                }
                Some("message_created") => {
                    got.push(v["data"]["body"].as_str().unwrap().to_owned());
                    cursor = Some(v["cursor"].as_str().unwrap().to_owned());
                    if got.len() == want {
                        break;
                    }
                }
                other => panic!("unexpected frame {other:?}: {v}"),
            }
        }
    }
    got
}

#[tokio::test]
async fn three_servers_one_killed_and_restarted_every_client_gets_every_event_once_in_order() {
    // Arrange: three real server processes on one database, six clients spread across them.
    let db = TestDb::create().await;
    db.psql("insert into studies (id, label, title) values (1, 's', 'S')");
    let env = [("DATABASE_URL", db.url.as_str())];
    let args = ["serve", "--bind", "127.0.0.1:0"];
    let (a, b, c) = tokio::join!(serve(&args, &env), serve(&args, &env), serve(&args, &env));
    let addrs = std::sync::Arc::new(std::sync::Mutex::new(vec![
        a.addr.clone(),
        b.addr.clone(),
        c.addr.clone(),
    ]));
    const N: usize = 300;
    let subscribed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..6)
        .map(|i| tokio::spawn(resilient_client(addrs.clone(), i, N, subscribed.clone())))
        .collect();
    // Every client is subscribed before the first row is written.
    tokio::time::timeout(PATIENCE, async {
        while subscribed.load(Ordering::SeqCst) < 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the clients did not subscribe");

    // Act: a psql writer; mid-way, server b is killed (SIGKILL), later a new one joins.
    let script: String = (0..N)
        .map(|i| {
            format!("insert into messages (study_id, author, body) values (1, 'w', '{i}');\nselect pg_sleep(0.005);\n")
        })
        .collect();
    let writer = db.psql_script(script);
    tokio::time::sleep(Duration::from_millis(600)).await;
    addrs.lock().unwrap().retain(|x| *x != b.addr);
    b.kill().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let d = serve(&args, &env).await;
    addrs.lock().unwrap().push(d.addr.clone());
    writer.await.unwrap();

    // Assert
    for client in clients {
        let got = tokio::time::timeout(PATIENCE, client)
            .await
            .expect("a client did not get every event")
            .unwrap();
        let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        assert_eq!(got, expected);
    }
    for s in [a, c, d] {
        assert!(s.terminate().await.success());
    }
}
