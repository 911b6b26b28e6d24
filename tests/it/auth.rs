//! README "Security: auth and limits" and the limits: nobody gets in where they don't belong, no client hurts others.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Seen, TestApp, TestDb};

pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

pub fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn in_an_hour() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

pub async fn secured() -> TestApp {
    TestApp::spawn_with(TestDb::create().await, |c| c.jwt_secret = Some(SECRET.into())).await
}

/// The HTTP status of a refused WebSocket upgrade (panics if it was accepted).
async fn refused_status(app: &TestApp, query: &str, origin: Option<&str>) -> u16 {
    let mut req = format!("ws://{}/ws{query}", app.addr).into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => panic!("the upgrade was accepted"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn the_upgrade_is_refused_without_a_valid_token() {
    let app = secured().await;
    assert_eq!(refused_status(&app, "", None).await, 401);
    let expired = token(json!({"role": "admin", "exp": 1_000_000}));
    assert_eq!(refused_status(&app, &format!("?token={expired}"), None).await, 401);
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"role": "admin", "exp": in_an_hour()}),
        &EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    assert_eq!(refused_status(&app, &format!("?token={forged}"), None).await, 401);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(json!({"role": "admin", "exp": in_an_hour()}).to_string())
    );
    assert_eq!(refused_status(&app, &format!("?token={none}"), None).await, 401);

    let admin = token(json!({"role": "admin", "exp": in_an_hour()}));
    let mut ws = app.ws_at(&format!("/ws?token={admin}")).await;
    ws.subscribe("studies").await;
}

#[tokio::test]
async fn a_member_subscribes_only_to_its_studies_rooms_and_rows() {
    let app = secured().await;
    app.psql("insert into studies (id, label, title) values (1, 'mine', 'M'), (2, 'theirs', 'T')");
    app.psql("insert into messages (id, study_id, author, body) values (10, 1, 'a', 'm'), (20, 2, 'b', 't')");
    app.psql(
        "insert into files (id, study_id, name, content_type, size_bytes, sha256) values (30, 2, 'f', 'x', 0, '')",
    );
    let member = token(json!({"role": "member", "studies": [1], "exp": in_an_hour()}));
    let mut ws = app.ws_at(&format!("/ws?token={member}")).await;

    ws.subscribe("studies:1").await;
    ws.subscribe("messages:10").await;
    for topic in [
        "studies",
        "messages",
        "files",
        "studies:2",
        "messages:20",
        "files:30",
        "messages:999",
    ] {
        ws.send(json!({"action": "subscribe", "topic": topic})).await;
        let v = ws.next_json().await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("forbidden")),
            "{topic}: {v}"
        );
    }
    app.psql("insert into messages (study_id, author, body) values (2, 'b', 'secret'), (1, 'a', 'visible')");
    let ev = ws.next_event().await;
    assert_eq!(ev["data"]["body"], "visible");
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn connections_over_the_per_ip_limit_are_refused_with_429() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_connections_per_ip = 2).await;
    let _a = app.ws().await;
    let b = app.ws().await;
    assert_eq!(refused_status(&app, "", None).await, 429);
    b.close().await;
    // The slot is freed when a connection ends.
    tokio::time::timeout(crate::support::PATIENCE, async {
        loop {
            if tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the freed slot was not reusable");
}

#[tokio::test]
async fn frames_over_the_rate_limit_get_rate_limited_and_persistent_excess_closes_1008() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_frames_per_second = 5).await;
    let mut ws = app.ws().await;
    for _ in 0..15 {
        ws.send(json!({"action": "ping"})).await;
    }
    let mut kinds = Vec::new();
    for _ in 0..15 {
        let v = ws.next_json().await;
        kinds.push(
            v.get("code")
                .and_then(Value::as_str)
                .unwrap_or(v["type"].as_str().unwrap())
                .to_owned(),
        );
    }
    assert_eq!(
        kinds.iter().filter(|k| *k == "pong").count(),
        10,
        "a burst of twice the rate passes: {kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| *k == "rate_limited").count(), 5);

    for _ in 0..100 {
        if futures::SinkExt::send(
            &mut ws.stream,
            tokio_tungstenite::tungstenite::Message::Text(r#"{"action":"ping"}"#.into()),
        )
        .await
        .is_err()
        {
            break;
        }
    }
    let code = loop {
        match ws.next_seen().await {
            Seen::Frame(_) => continue,
            Seen::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(1008));
}

#[tokio::test]
async fn websocket_origins_outside_the_allow_list_are_refused() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.allowed_origins = vec!["https://admin.example".into()]
    })
    .await;
    assert_eq!(refused_status(&app, "", Some("https://evil.example")).await, 403);
    let mut req = format!("ws://{}/ws", app.addr).into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://admin.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    // Non-browser clients send no Origin and are let in.
    let _ = app.ws().await;
}

/// A browser's CORS preflight from `origin` for `method` with `headers`: asserts it is answered for
/// that origin and returns (allowed methods, allowed headers), lower-cased.
async fn preflight(app: &TestApp, origin: &str, path: &str, method: &str, headers: &str) -> (String, String) {
    let reply = app
        .request(reqwest::Method::OPTIONS, path, |r| {
            r.header("origin", origin)
                .header("access-control-request-method", method)
                .header("access-control-request-headers", headers)
        })
        .await;
    assert!(
        reply.status.is_success(),
        "preflight of {method} {path} answered {}",
        reply.status
    );
    assert_eq!(reply.header("access-control-allow-origin"), Some(origin));
    let lower = |name: &str| reply.header(name).unwrap_or("").to_lowercase();
    (
        lower("access-control-allow-methods"),
        lower("access-control-allow-headers"),
    )
}

#[tokio::test]
async fn listed_origins_get_cors_headers_and_answered_preflights_others_get_none() {
    const ORIGIN: &str = "https://admin.example";
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.allowed_origins = vec![ORIGIN.into()]).await;
    let from = |origin: &'static str| move |r: reqwest::RequestBuilder| r.header("origin", origin);

    // client.js's long-poll fallback, from a page on a listed origin: readable there.
    let poll = app
        .request(reqwest::Method::GET, "/api/changes?topics=studies&wait=0", from(ORIGIN))
        .await;
    assert_eq!(poll.status, 200);
    assert_eq!(poll.header("access-control-allow-origin"), Some(ORIGIN));

    // Its SSE fallback sends a bearer header, so the browser asks first, without credentials.
    let (_, headers) = preflight(
        &app,
        ORIGIN,
        "/events?topics=studies",
        "GET",
        "authorization,last-event-id",
    )
    .await;
    assert!(
        headers.contains("authorization") && headers.contains("last-event-id"),
        "{headers}"
    );

    // REST: a conditional PATCH is preflighted too, and what it answers in headers must be readable.
    let (methods, headers) = preflight(&app, ORIGIN, "/api/studies/1", "PATCH", "content-type,if-match").await;
    assert!(methods.contains("patch"), "{methods}");
    assert!(
        headers.contains("content-type") && headers.contains("if-match"),
        "{headers}"
    );
    let created = app
        .request(reqwest::Method::POST, "/api/studies", |r| {
            from(ORIGIN)(r).json(&json!({"label": "CORS-1", "title": "t"}))
        })
        .await;
    assert_eq!(created.status, 201);
    let exposed = created
        .header("access-control-expose-headers")
        .unwrap_or("")
        .to_lowercase();
    for name in ["etag", "location", "x-request-id"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }

    // Any other origin: no CORS headers, so its pages cannot read the answers.
    let other = app
        .request(
            reqwest::Method::GET,
            "/api/changes?topics=studies&wait=0",
            from("https://evil.example"),
        )
        .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn without_an_origin_list_no_cors_headers_are_sent() {
    let app = TestApp::spawn().await;
    let reply = app
        .request(reqwest::Method::GET, "/api/studies", |r| {
            r.header("origin", "https://admin.example")
        })
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn a_client_that_sends_headers_slowly_is_cut_off() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.header_read_timeout = Duration::from_millis(500)
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a slow-header connection open");
}

#[tokio::test]
async fn tokens_are_also_accepted_as_a_bearer_header() {
    let app = secured().await;
    let mut req = format!("ws://{}/ws", app.addr).into_client_request().unwrap();
    let admin = token(json!({"role": "admin", "exp": in_an_hour()}));
    req.headers_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(req).await.expect("bearer accepted");
    let mut ws = crate::support::WsClient { stream };
    ws.subscribe("studies").await;
}

// ---- REST (README "Security: auth and limits": 401 without a valid token, 403 for what a member may not do) ----

async fn as_token(app: &TestApp, method: reqwest::Method, path: &str, token: Option<&str>) -> u16 {
    app.request(method, path, |r| match token {
        Some(t) => r.bearer_auth(t).json(&json!({"author": "m", "body": "hello"})),
        None => r,
    })
    .await
    .status
    .as_u16()
}

#[tokio::test]
async fn rest_answers_401_without_a_valid_token_and_lets_public_routes_through() {
    let app = secured().await;
    app.get("/api/studies").await.assert_error(401, "unauthorized");
    let expired = token(json!({"role": "admin", "exp": 1_000_000}));
    assert_eq!(
        as_token(&app, reqwest::Method::GET, "/api/studies", Some(&expired)).await,
        401
    );
    assert_eq!(app.get("/metrics").await.status, 401);
    app.get("/api/openapi.json").await.ok(200);
    app.get("/healthz").await.ok(200);
    let admin = token(json!({"role": "admin", "exp": in_an_hour()}));
    assert_eq!(
        as_token(&app, reqwest::Method::GET, "/api/studies", Some(&admin)).await,
        200
    );
    assert_eq!(
        as_token(&app, reqwest::Method::GET, "/metrics", Some(&admin)).await,
        200
    );
    // ?token= works for REST too (e.g. a download link).
    app.get(&format!("/api/studies?token={admin}")).await.ok(200);
}

#[tokio::test]
async fn a_member_reads_and_posts_to_its_studies_and_gets_403_everywhere_else() {
    use reqwest::Method;
    let app = secured().await;
    app.psql("insert into studies (id, label, title) values (1, 'mine', 'M'), (2, 'theirs', 'T')");
    app.psql("insert into messages (id, study_id, author, body) values (10, 1, 'a', 'm'), (20, 2, 'b', 't')");
    app.psql(
        "insert into files (id, study_id, name, content_type, size_bytes, sha256) values (30, 2, 'f', 'x', 0, '')",
    );
    app.psql("insert into file_contents (file_id, content) values (30, '')");
    let m = token(json!({"role": "member", "studies": [1], "exp": in_an_hour()}));
    let m = Some(m.as_str());

    for (method, path, want) in [
        (Method::GET, "/api/studies/1", 200),
        (Method::GET, "/api/studies/1/messages", 200),
        (Method::POST, "/api/studies/1/messages", 201),
        (Method::GET, "/api/studies/1/files", 200),
        (Method::GET, "/api/studies", 403),
        (Method::POST, "/api/studies", 403),
        (Method::GET, "/api/studies/2", 403),
        (Method::GET, "/api/studies/2/messages", 403),
        (Method::POST, "/api/studies/2/messages", 403),
        (Method::PATCH, "/api/studies/1", 403),
        (Method::DELETE, "/api/studies/1", 403),
        (Method::PATCH, "/api/messages/10", 403),
        (Method::DELETE, "/api/messages/10", 403),
        (Method::GET, "/api/files/30", 403),
        (Method::GET, "/api/files/30/content", 403),
        (Method::DELETE, "/api/files/30", 403),
        (Method::GET, "/metrics", 403),
    ] {
        assert_eq!(as_token(&app, method.clone(), path, m).await, want, "{method} {path}");
    }
    // A member's post is an event like any other.
    assert_eq!(app.psql("select count(*) from messages where study_id = 1"), "2");
}

#[tokio::test]
async fn sse_and_long_poll_check_tokens_and_topics_too() {
    let app = secured().await;
    app.psql("insert into studies (id, label, title) values (1, 'mine', 'M'), (2, 'theirs', 'T')");
    assert_eq!(app.get("/events?topics=studies").await.status, 401);
    assert_eq!(app.get("/api/changes?topics=studies").await.status, 401);
    let m = token(json!({"role": "member", "studies": [1], "exp": in_an_hour()}));
    app.get(&format!("/api/changes?topics=studies:2&token={m}"))
        .await
        .assert_error(403, "forbidden");
    app.get(&format!("/events?topics=studies&token={m}"))
        .await
        .assert_error(403, "forbidden");
    app.get(&format!("/api/changes?topics=studies:1&token={m}"))
        .await
        .ok(200);
}

#[tokio::test]
async fn tail_exits_with_one_line_when_the_token_is_refused() {
    let app = secured().await;
    let out = tokio::process::Command::new(crate::support::process::BIN)
        .args(["tail", "studies", "--url", &app.url(""), "--token", "not-a-jwt"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("401") || err.to_lowercase().contains("token"), "{err}");
}

#[tokio::test]
async fn connections_over_the_total_limit_are_refused_with_429() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_connections = 1).await;
    let _only = app.ws().await;
    app.get("/api/changes?topics=studies")
        .await
        .assert_error(429, "too_many_connections");
    assert_eq!(refused_status(&app, "", None).await, 429);
}

#[tokio::test]
async fn an_oversized_json_body_is_refused_with_413() {
    let app = TestApp::spawn().await;
    let big = json!({"label": "x", "title": "y".repeat(3 << 20)});
    app.post("/api/studies", big)
        .await
        .assert_error(413, "payload_too_large");
}

#[tokio::test]
async fn a_rest_request_whose_body_never_finishes_is_cut_off_with_503() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.request_timeout = Duration::from_millis(500)
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(
        b"POST /api/studies HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"la",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"timeout""#), "{answer}");
}

#[tokio::test]
async fn the_listener_uses_listen_database_url_when_given() {
    // A listener pointed at a database that does not exist never comes up, though REST works:
    // proof that the setting is what the LISTEN session uses.
    let db = TestDb::create().await;
    let wrong = db.url.replace(&db.name, "no_such_database");
    let mut cfg = pgfeed::config::ServeConfig::defaults();
    cfg.listen_database_url = Some(wrong);
    let shutdown = pgfeed::shutdown::Shutdown::new();
    cfg.db.database_url = Some(db.url.clone());
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    let app = pgfeed::app::App::build(cfg, shutdown.clone()).await.unwrap();
    let addr = app.addr();
    let handle = tokio::spawn(app.run_until_stopped());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert_eq!(health.status(), 503);
    let body: Value = health.json().await.unwrap();
    assert_eq!(
        (body["database"].as_bool(), body["listener"].as_bool()),
        (Some(true), Some(false))
    );
    shutdown.token.cancel();
    let _ = handle.await;

    // And pointed at the right one, everything flows.
    let app = TestApp::spawn_with(db.clone(), |c| c.listen_database_url = Some(db.url.clone())).await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    app.psql("insert into studies (label, title) values ('l', 'L')");
    assert_eq!(ws.next_event().await["data"]["label"], "l");
}
