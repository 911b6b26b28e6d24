//! Random input against a real server (proptest-generated): client frames over the WebSocket and
//! query strings on the streaming and REST routes. Every answer must be a well-formed protocol
//! frame or a JSON error below 500, and the server must stay healthy.

use proptest::prelude::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

use crate::support::{Seen, TestApp};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        Just("studies".to_owned()),
        "(studies|messages|files):[0-9a-z-]{0,20}",
        "[a-f0-9]{0,12}-[0-9-]{0,20}-[0-9]{0,12}",
    ]
}

fn frame() -> impl Strategy<Value = String> {
    let action = prop_oneof![
        Just("subscribe"),
        Just("unsubscribe"),
        Just("refresh"),
        Just("ping"),
        Just("dance"),
        Just("")
    ];
    let value = prop_oneof![
        text().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        Just(json!([1, {"a": []}])),
    ];
    prop_oneof![
        (
            action,
            proptest::option::of(value.clone()),
            proptest::option::of(value.clone()),
            proptest::option::of(value)
        )
            .prop_map(|(action, topic, since, snapshot)| {
                let mut f = json!({"action": action, "id": 1});
                for (k, v) in [("topic", topic), ("since", since), ("snapshot", snapshot)] {
                    if let Some(v) = v {
                        f[k] = v;
                    }
                }
                f.to_string()
            }),
        "\\PC{0,100}",
        Just("{}".to_owned()),
        Just("null".to_owned()),
    ]
}

fn sample<S: Strategy>(runner: &mut TestRunner, s: &S) -> S::Value {
    s.new_tree(runner).expect("strategy").current()
}

#[tokio::test]
async fn random_client_frames_get_protocol_answers_and_never_hurt_the_server() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'a', 'A')");
    let mut runner = TestRunner::deterministic();
    let strategy = frame();
    for _ in 0..20 {
        // A fresh connection per batch, below the bad-frame budget that closes with 1008.
        let mut ws = app.ws().await;
        for _ in 0..15 {
            let f = sample(&mut runner, &strategy);
            ws.send_raw(f.clone()).await;
            // Each frame gets answers until the next ping's pong; none may be malformed.
            ws.send(json!({"action": "ping", "id": "sync"})).await;
            loop {
                match ws.next_seen().await {
                    Seen::Frame(v) if v["id"] == "sync" => break,
                    Seen::Frame(v) => {
                        let kind = v["type"]
                            .as_str()
                            .unwrap_or_else(|| panic!("no type in {v} (sent {f})"));
                        assert!(
                            [
                                "subscribed",
                                "unsubscribed",
                                "snapshot",
                                "pong",
                                "error",
                                "refresh_needed",
                                "study_created"
                            ]
                            .contains(&kind),
                            "unexpected {v} for {f}"
                        );
                        if kind == "error" {
                            let code = v["code"].as_str().unwrap();
                            assert_ne!(code, "unavailable", "a server-side failure for {f}: {v}");
                        }
                    }
                    Seen::Closed(code) => panic!("closed ({code:?}) after {f}"),
                }
            }
        }
    }
    app.wait_healthy().await;
}

#[tokio::test]
async fn random_query_strings_never_get_a_5xx() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'a', 'A')");
    let mut runner = TestRunner::deterministic();
    let param = text();
    for _ in 0..60 {
        let (topics, since, limit, wait) = (
            sample(&mut runner, &param),
            sample(&mut runner, &param),
            sample(&mut runner, &param),
            sample(&mut runner, &"[0-9]{0,1}|-?[0-9a-z]{0,6}"),
        );
        let enc = |s: &str| serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_owned();
        for path in [
            format!(
                "/api/changes?topics={}&since={}&limit={}&wait={}",
                enc(&topics),
                enc(&since),
                enc(&limit),
                enc(&wait)
            ),
            format!(
                "/api/studies?status={}&q={}&limit={}&after={}",
                enc(&topics),
                enc(&since),
                enc(&limit),
                enc(&wait)
            ),
            format!("/events?topics={}&since={}", enc(&topics), enc(&since)),
        ] {
            let resp = tokio::time::timeout(std::time::Duration::from_secs(15), reqwest::get(app.url(&path)))
                .await
                .expect("answer in time")
                .expect("answer");
            assert!(resp.status().as_u16() < 500, "{path} answered {}", resp.status());
        }
    }
}
