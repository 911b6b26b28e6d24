//! Attacks on the HTTP edge, each against a live server: ids spelled so the guard and the handler
//! disagree, invented methods that grow the metrics, web pages that reach a server without a
//! secret (cross-site streams and writes, DNS rebinding), request ids that write into logs, and a
//! member posting in a loop.

use reqwest::{Method, RequestBuilder};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::auth::{in_an_hour, token, SECRET};
use crate::support::rest::Reply;
use crate::support::{TestApp, TestDb, PATIENCE};

fn member_of(studies: &[i64]) -> String {
    token(json!({"role": "member", "studies": studies, "exp": in_an_hour()}))
}

fn admin() -> String {
    token(json!({"role": "admin", "exp": in_an_hour()}))
}

/// Study 1 (the member's) and study 2 (another's), each with a message and a file whose bytes
/// say whose they are: message 10 and file 11 in study 1, message 20 and file 30 in study 2.
fn two_studies(app: &TestApp) {
    app.psql("insert into studies (id, label, title) values (1, 'mine', 'Mine'), (2, 'theirs', 'Theirs')");
    app.psql("insert into messages (id, study_id, author, body) values (10, 1, 'a', 'mine'), (20, 2, 'b', 'secret')");
    app.psql(
        "insert into files (id, study_id, name, content_type, size_bytes, sha256)
         values (11, 1, 'm.txt', 'text/plain', 4, ''), (30, 2, 's.txt', 'text/plain', 6, '');
         insert into file_contents (file_id, content) values (11, 'mine'), (30, 'secret')",
    );
    // Rows posted later get ids past these.
    app.psql(
        "select setval(pg_get_serial_sequence(t, 'id'), 100) from unnest(array['studies', 'messages', 'files']) t",
    );
}

/// What study 2 holds, as psql sees it: unchanged after every attack.
fn study_2(app: &TestApp) -> String {
    app.psql(
        "select (select title from studies where id = 2) || ' ' ||
                (select count(*) from messages where study_id = 2) || ' ' ||
                (select count(*) from files where study_id = 2)",
    )
}

fn multipart(name: &str, bytes: &[u8]) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(bytes.to_vec())
        .file_name(name.to_owned())
        .mime_str("text/plain")
        .expect("mime");
    reqwest::multipart::Form::new().part("file", part)
}

async fn as_member(app: &TestApp, member: &str, method: Method, path: &str) -> Reply {
    let member = member.to_owned();
    let body_of = method.clone();
    app.request(method, path, move |r| {
        let r = r.bearer_auth(member);
        match body_of {
            Method::POST if path.ends_with("/files") => r.multipart(multipart("x.txt", b"written")),
            Method::POST => r.json(&json!({"author": "m", "body": "written"})),
            Method::PATCH if path.starts_with("/api/studies/") => r.json(&json!({"title": "owned"})),
            Method::PATCH => r.json(&json!({"body": "owned"})),
            _ => r,
        }
    })
    .await
}

// ---- 1. ids judged exactly as the handler reads them ----

#[tokio::test]
async fn a_member_cannot_reach_another_study_through_percent_encoded_ids() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.jwt_secret = Some(SECRET.into())).await;
    two_studies(&app);
    let before = study_2(&app);
    let member = member_of(&[1]);

    for (method, path) in [
        (Method::GET, "/api/studies/%32"),
        (Method::GET, "/api/studies/%32/messages"),
        (Method::POST, "/api/studies/%32/messages"),
        (Method::GET, "/api/studies/%32/files"),
        (Method::POST, "/api/studies/%32/files"),
        (Method::GET, "/api/files/%33%30"),
        (Method::GET, "/api/files/%33%30/content"),
        (Method::GET, "/api/studies/%2B2"),
        (Method::POST, "/api/studies/%2B2/messages"),
        (Method::POST, "/api/studies/%2b2/files"),
        (Method::GET, "/api/files/%2B30/content"),
        (Method::GET, "/api/studies/+2"),
        (Method::GET, "/api/studies/002/messages"),
        (Method::GET, "/api/files/030/content"),
    ] {
        let reply = as_member(&app, &member, method.clone(), path).await;
        reply.assert_error(403, "forbidden");
    }
    // An id the handler could not read is refused, not passed through.
    for path in [
        "/api/studies/%ZZ",
        "/api/studies/%FF",
        "/api/studies/2%20",
        "/api/studies/18446744073709551618/messages",
        "/api/files/%2532/content",
    ] {
        as_member(&app, &member, Method::GET, path)
            .await
            .assert_error(400, "bad_request");
    }
    assert_eq!(study_2(&app), before, "study 2 was written");

    // The member's own study, however spelled, is still its own.
    assert_eq!(
        as_member(&app, &member, Method::GET, "/api/studies/%31").await.ok(200)["id"],
        1
    );
    let created = as_member(&app, &member, Method::POST, "/api/studies/%2B1/messages")
        .await
        .ok(201);
    assert_eq!(created["study_id"], 1);
    let bytes = as_member(&app, &member, Method::GET, "/api/files/%31%31/content").await;
    assert_eq!((bytes.status.as_u16(), &bytes.bytes[..]), (200, &b"mine"[..]));
}

/// splitmix64: a seeded generator, so a failure names the seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// `n` spelled one of the ways a URL can spell it: percent-encoded digits (either case), a sign,
/// leading zeros, an overflow that wraps to it, padding, other number syntaxes.
fn spell(rng: &mut Rng, n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let sign = if n < 0 { "-" } else { "" };
    let encode = |rng: &mut Rng, s: &str| -> String {
        s.chars()
            .map(|c| match rng.below(3) {
                0 => c.to_string(),
                1 => format!("%{:02X}", c as u32),
                _ => format!("%{:02x}", c as u32),
            })
            .collect()
    };
    let zeros = "0".repeat(rng.below(4));
    match rng.below(14) {
        0 => format!("{sign}{digits}"),
        1 => format!("{sign}{}{digits}", "0".repeat(1 + rng.below(20))),
        2 => format!("{}{sign}{digits}", rng.pick(&["+", "%2B", "%2b"])),
        3 => encode(rng, &format!("{sign}{digits}")),
        4 => encode(rng, &format!("+{zeros}{sign}{digits}")),
        // Wraps to n in 64 bits, but is no i64.
        5 => ((n as i128) + (1i128 << 64) * (1 + rng.below(3) as i128)).to_string(),
        6 => format!(
            "{sign}{digits}{}",
            rng.pick(&["%20", "%09", "%00", "%2F", "/", ".0", "e0", "%2E0"])
        ),
        7 => format!(
            "{}{sign}{digits}",
            rng.pick(&["%20", "%09", "%00", " ", "%2D", "--", "%2B%2B"])
        ),
        8 => format!("0x{n:x}"),
        9 => format!("%25{:02X}{}", digits.as_bytes()[0], &digits[1..]),
        10 => format!("%EF%BC%9{}", digits.as_bytes()[0] - b'0'), // a fullwidth first digit
        11 => "9223372036854775808".to_owned(),
        12 => format!("-{digits}"),
        _ => encode(rng, &format!("{zeros}{digits}")),
    }
}

#[tokio::test]
async fn random_id_spellings_on_every_route_never_reach_another_study() {
    // Unlimited posts: this test is about ids, not rates.
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.jwt_secret = Some(SECRET.into());
        c.max_member_posts_per_minute = 0;
    })
    .await;
    two_studies(&app);
    let before = study_2(&app);
    let member = member_of(&[1]);
    let seed = uuid::Uuid::new_v4().as_u64_pair().0;
    let mut rng = Rng(seed);

    // (method, route with `{}` for the id, whether a member may use it at all)
    let routes: &[(Method, &str, bool)] = &[
        (Method::GET, "/api/studies/{}", true),
        (Method::GET, "/api/studies/{}/messages", true),
        (Method::POST, "/api/studies/{}/messages", true),
        (Method::GET, "/api/studies/{}/files", true),
        (Method::POST, "/api/studies/{}/files", true),
        (Method::GET, "/api/files/{}", true),
        (Method::GET, "/api/files/{}/content", true),
        (Method::PATCH, "/api/studies/{}", false),
        (Method::DELETE, "/api/studies/{}", false),
        (Method::PATCH, "/api/messages/{}", false),
        (Method::DELETE, "/api/messages/{}", false),
        (Method::DELETE, "/api/files/{}", false),
    ];
    let targets = [1, 2, 10, 11, 20, 30, 0, -2, 3, i64::MAX, i64::MIN];
    let mut own = 0;
    for _ in 0..400 {
        let (method, route, member_route) = rng.pick(routes).clone();
        let target = *rng.pick(&targets);
        let id = spell(&mut rng, target);
        let path = route.replace("{}", &id);
        let reply = as_member(&app, &member, method.clone(), &path).await;
        let status = reply.status.as_u16();
        let what = format!("{method} {path} (seed {seed}) answered {status}");
        assert!(status < 500, "{what}: {}", String::from_utf8_lossy(&reply.bytes));
        if !reply.status.is_success() {
            continue;
        }
        own += 1;
        assert!(member_route, "{what}");
        let body = || reply.json();
        if route.ends_with("/content") {
            // File 11's, or one the member uploaded to study 1 earlier in this run.
            assert!([&b"mine"[..], b"written"].contains(&&reply.bytes[..]), "{what}");
        } else if route == "/api/studies/{}" {
            assert_eq!(body()["id"], 1, "{what}");
        } else if method == Method::GET && route.starts_with("/api/studies/") {
            let items = body()["items"].as_array().cloned().unwrap_or_default();
            assert!(items.iter().all(|i| i["study_id"] == 1), "{what}: {items:?}");
        } else {
            assert_eq!(body()["study_id"], 1, "{what}");
        }
    }
    assert_eq!(study_2(&app), before, "study 2 was written (seed {seed})");
    assert!(own > 0, "no spelling of the member's own ids got through (seed {seed})");
}

// ---- 2. every metrics label bounded ----

#[tokio::test]
async fn invented_methods_and_paths_do_not_grow_the_metrics() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.jwt_secret = Some(SECRET.into())).await;
    let mut rng = Rng(uuid::Uuid::new_v4().as_u64_pair().0);
    for i in 0..300 {
        let method: String = (0..8192 - rng.below(1024))
            .map(|_| (b'A' + rng.below(26) as u8) as char)
            .collect();
        let path = match i % 3 {
            0 => "/".to_owned(),
            1 => "/api/studies".to_owned(),
            _ => format!("/no/such/{}", rng.next()),
        };
        let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
            .await
            .expect("an answer")
            .ok();
        assert!(
            answer.starts_with(b"HTTP/1.1 4"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    let scrape = app.request(Method::GET, "/metrics", |r| r.bearer_auth(admin())).await;
    assert_eq!(scrape.status, 200);
    let text = String::from_utf8_lossy(&scrape.bytes);
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pgfeed_http_requests_total{"))
        .collect();
    assert!(series.len() <= 20, "{} series:\n{}", series.len(), series.join("\n"));
    assert!(text.len() < 64 << 10, "/metrics is {} bytes", text.len());
    for line in &series {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|m| m.split('"').next())
            .unwrap_or("");
        assert!(
            ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"].contains(&method),
            "{line}"
        );
        assert!(line.len() < 200, "{line}");
    }
    assert!(series.iter().any(|l| l.contains("method=\"other\"")), "{text}");
}

// ---- 3. without a secret: this machine only, and no other site ----

/// The status a WebSocket upgrade got: 101 when accepted.
async fn upgrade_status(app: &TestApp, host: Option<&str>, origin: Option<&str>) -> u16 {
    let mut req = format!("ws://{}/ws", app.addr).into_client_request().unwrap();
    if let Some(h) = host {
        req.headers_mut().insert("host", h.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn with_origin(origin: &str) -> impl FnOnce(RequestBuilder) -> RequestBuilder + '_ {
    move |r| r.header("origin", origin)
}

#[tokio::test]
async fn without_a_secret_a_cross_site_websocket_is_refused() {
    let app = TestApp::spawn().await;
    let port = app.addr.port();
    for evil in [
        "https://evil.example",
        "null",
        &format!("http://localhost:{}", port + 1),
    ] {
        assert_eq!(upgrade_status(&app, None, Some(evil)).await, 403, "{evil}");
    }
    // SSE and long-poll are streams too.
    for path in ["/events?topics=studies", "/api/changes?topics=studies&wait=0"] {
        app.request(Method::GET, path, with_origin("https://evil.example"))
            .await
            .assert_error(403, "forbidden");
    }
    // The admin page's own origin, by any loopback name, and clients that send no Origin.
    for own in [format!("http://127.0.0.1:{port}"), format!("http://localhost:{port}")] {
        assert_eq!(upgrade_status(&app, None, Some(&own)).await, 101, "{own}");
    }
    assert_eq!(upgrade_status(&app, None, None).await, 101);
    app.request(
        Method::GET,
        "/api/changes?topics=studies&wait=0",
        with_origin(&format!("http://127.0.0.1:{port}")),
    )
    .await
    .ok(200);
}

#[tokio::test]
async fn without_a_secret_a_cross_site_post_writes_nothing() {
    let app = TestApp::spawn().await;
    app.rest_study("s1").await;
    let evil = "https://evil.example";

    // A `no-cors` multipart form post, as any page can send it.
    let upload = app
        .request(Method::POST, "/api/studies/1/files", |r| {
            r.header("origin", evil).multipart(multipart("x.txt", b"planted"))
        })
        .await;
    upload.assert_error(403, "forbidden");
    app.request(Method::POST, "/api/studies/1/messages", |r| {
        r.header("origin", evil)
            .json(&json!({"author": "evil", "body": "planted"}))
    })
    .await
    .assert_error(403, "forbidden");
    app.request(Method::DELETE, "/api/studies/1", with_origin(evil))
        .await
        .assert_error(403, "forbidden");
    assert_eq!(
        app.psql("select (select count(*) from studies) || ' ' || (select count(*) from files) || ' ' || (select count(*) from messages)"),
        "1 0 0"
    );

    // The same requests from the admin page's own origin are writes as usual.
    let own = format!("http://127.0.0.1:{}", app.addr.port());
    app.request(Method::POST, "/api/studies/1/files", |r| {
        r.header("origin", &own).multipart(multipart("x.txt", b"mine"))
    })
    .await
    .ok(201);
    // A read from another site goes through: without CORS headers its page cannot see it.
    let read = app.request(Method::GET, "/api/studies", with_origin(evil)).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn without_a_secret_a_rebound_host_is_refused_on_every_route() {
    let app = TestApp::spawn().await;
    app.rest_study("s1").await;
    let port = app.addr.port();
    let rebound = format!("evil.example:{port}");
    for path in [
        "/api/studies",
        "/api/studies/1",
        "/api/files/1/content",
        "/",
        "/client.js",
        "/admin.js",
        "/metrics",
        "/events?topics=studies",
        "/api/changes?topics=studies&wait=0",
        "/no/such/route",
    ] {
        app.request(Method::GET, path, |r| r.header("host", &rebound))
            .await
            .assert_error(403, "forbidden");
    }
    // Its page is same-origin with itself: a matching Origin does not help it.
    app.request(Method::POST, "/api/studies", |r| {
        r.header("host", &rebound)
            .header("origin", format!("http://{rebound}"))
            .json(&json!({"label": "planted", "title": "t"}))
    })
    .await
    .assert_error(403, "forbidden");
    assert_eq!(upgrade_status(&app, Some(&rebound), None).await, 403);
    assert_eq!(
        upgrade_status(&app, Some(&rebound), Some(&format!("http://{rebound}"))).await,
        403
    );
    assert_eq!(app.psql("select count(*) from studies"), "1");

    for host in [
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.1".to_owned(),
        "app.localhost".to_owned(),
    ] {
        let reply = app
            .request(Method::GET, "/api/studies", |r| r.header("host", &host))
            .await;
        assert_eq!(reply.status, 200, "{host}");
    }
    assert_eq!(
        upgrade_status(&app, Some(&format!("localhost:{port}")), None).await,
        101
    );
}

#[tokio::test]
async fn listed_origins_may_write_and_name_the_host_without_a_secret() {
    const LISTED: &str = "http://admin.example:8080";
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.allowed_origins = vec![LISTED.into()]).await;
    app.request(Method::POST, "/api/studies", |r| {
        r.header("origin", LISTED).json(&json!({"label": "ok", "title": "t"}))
    })
    .await
    .ok(201);
    assert_eq!(upgrade_status(&app, None, Some(LISTED)).await, 101);
    assert_eq!(upgrade_status(&app, None, Some("https://evil.example")).await, 403);
    // A proxy that keeps the listed name as Host.
    let reply = app
        .request(Method::GET, "/api/studies/1", |r| {
            r.header("host", "admin.example:8080")
        })
        .await;
    assert_eq!(reply.status, 200);
    let other = app
        .request(Method::GET, "/api/studies/1", |r| {
            r.header("host", "admin.example:9999")
        })
        .await;
    other.assert_error(403, "forbidden");
}

#[tokio::test]
async fn insecure_no_auth_answers_addresses_but_not_rebound_names_or_other_sites() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.insecure_no_auth = true).await;
    let port = app.addr.port();
    let address = format!("192.0.2.7:{port}");
    let reply = app
        .request(Method::GET, "/api/studies", |r| r.header("host", &address))
        .await;
    assert_eq!(reply.status, 200);
    app.request(Method::GET, "/api/studies", |r| {
        r.header("host", format!("rebound.example:{port}"))
    })
    .await
    .assert_error(403, "forbidden");
    let post = |origin: String| {
        let address = address.clone();
        move |r: RequestBuilder| {
            r.header("host", address)
                .header("origin", origin)
                .json(&json!({"label": format!("l{}", uuid::Uuid::new_v4()), "title": "t"}))
        }
    };
    app.request(Method::POST, "/api/studies", post("https://evil.example".into()))
        .await
        .assert_error(403, "forbidden");
    app.request(Method::POST, "/api/studies", post(format!("http://{address}")))
        .await
        .ok(201);
}

#[tokio::test]
async fn with_a_secret_the_token_protects_and_any_host_is_answered() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.jwt_secret = Some(SECRET.into())).await;
    let reply = app
        .request(Method::GET, "/api/studies", |r| {
            r.header("host", "pgfeed.example.com").bearer_auth(admin())
        })
        .await;
    assert_eq!(reply.status, 200);
    app.request(Method::GET, "/api/studies", |r| r.header("host", "pgfeed.example.com"))
        .await
        .assert_error(401, "unauthorized");
}

// ---- 4. a client's X-Request-Id only if short and plain ----

#[tokio::test]
async fn only_a_short_plain_request_id_is_kept() {
    let app = TestApp::spawn().await;
    let id_of = |reply: &Reply| reply.header("x-request-id").unwrap_or("").to_owned();
    let sent = |value: reqwest::header::HeaderValue| move |r: RequestBuilder| r.header("x-request-id", value);

    let plain = "req-42_a.B";
    let reply = app.request(Method::GET, "/healthz", sent(plain.parse().unwrap())).await;
    assert_eq!(id_of(&reply), plain);
    let longest = "a".repeat(64);
    let reply = app
        .request(Method::GET, "/healthz", sent(longest.parse().unwrap()))
        .await;
    assert_eq!(id_of(&reply), longest);

    for bad in [
        "a".repeat(65),
        "x".repeat(4000),
        "a b".to_owned(),
        "<script>alert(1)</script>".to_owned(),
        "id\" injected=\"1".to_owned(),
        "a\tb".to_owned(),
        "%0d%0aSet-Cookie:x".to_owned(),
    ] {
        let reply = app.request(Method::GET, "/healthz", sent(bad.parse().unwrap())).await;
        let id = id_of(&reply);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{bad:?} answered with id {id:?}");
    }
    let obs_text = reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
    let id = id_of(&app.request(Method::GET, "/healthz", sent(obs_text)).await);
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id:?}");
    // Two ids: neither is trusted.
    let two = app
        .request(Method::GET, "/healthz", |r| {
            r.header("x-request-id", "a").header("x-request-id", "b")
        })
        .await;
    assert!(uuid::Uuid::parse_str(&id_of(&two)).is_ok(), "{:?}", id_of(&two));
    // None: a fresh one.
    assert!(uuid::Uuid::parse_str(&id_of(&app.get("/healthz").await)).is_ok());
}

// ---- 5. a member's posts are rate limited ----

#[tokio::test]
async fn a_member_posting_in_a_loop_is_rate_limited_and_an_admin_is_not() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.jwt_secret = Some(SECRET.into());
        c.max_member_posts_per_minute = 5;
    })
    .await;
    two_studies(&app);
    let member = member_of(&[1]);
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(as_member(&app, &member, Method::POST, "/api/studies/1/messages").await);
    }
    let statuses: Vec<u16> = answers.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [201, 201, 201, 201, 201, 429, 429, 429]);
    let refused = answers[5].assert_error(429, "rate_limited");
    let retry: u64 = answers[5]
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {refused}"));
    assert!((1..=60).contains(&retry), "{retry}");
    // Uploads share the budget, whichever way the token is sent; reads are not limited.
    as_member(&app, &member, Method::POST, "/api/studies/1/files")
        .await
        .assert_error(429, "rate_limited");
    app.request(Method::POST, &format!("/api/studies/1/messages?token={member}"), |r| {
        r.json(&json!({"author": "m", "body": "again"}))
    })
    .await
    .assert_error(429, "rate_limited");
    as_member(&app, &member, Method::GET, "/api/studies/1/messages")
        .await
        .ok(200);

    // Another member's token has a budget of its own; an admin has none.
    let other = token(json!({"role": "member", "studies": [1], "exp": in_an_hour() + 1}));
    as_member(&app, &other, Method::POST, "/api/studies/1/messages")
        .await
        .ok(201);
    let admin = admin();
    for _ in 0..20 {
        as_member(&app, &admin, Method::POST, "/api/studies/1/messages")
            .await
            .ok(201);
    }
    assert_eq!(
        app.psql("select count(*) from messages where study_id = 1"),
        (1 + 5 + 1 + 20).to_string()
    );
}
