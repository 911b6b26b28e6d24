//! Attacks on connections themselves: sockets that never send a request, HTTP/2 connections that
//! never open a stream, floods of idle sockets from one client, and clients that dodge per-client
//! limits through a proxy's forwarding headers or a fresh IPv6 address.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{TestApp, TestDb, PATIENCE};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn quick_timeouts() -> TestApp {
    TestApp::spawn_with(TestDb::create().await, |c| {
        c.header_read_timeout = Duration::from_millis(300)
    })
    .await
}

/// Reads until the server closes the socket (EOF or reset); panics if it is still open after
/// [`PATIENCE`]. Returns what the server sent.
async fn closed_by_server(tcp: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept {what} open");
    seen
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// An HTTP/1.1 exchange on a fresh socket: the status line, or None if the server closed it.
async fn http1_status(tcp: &mut TcpStream, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("no answer and no close")
        .ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().filter(|l| !l.is_empty()).map(str::to_owned)
}

/// An h2c (prior knowledge) client on a fresh socket, its connection driven in the background;
/// the handle ends when the server closes the connection.
async fn h2_client(addr: SocketAddr) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<()>) {
    let (send, conn) = h2::client::handshake(connect(addr).await).await.expect("h2 handshake");
    let driven = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driven)
}

/// `n` connections the server has accepted and answered on, kept open (idle) for the caller.
/// Retries while sockets of an earlier client (the harness's health checks) still hold slots.
async fn held_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    tokio::time::timeout(PATIENCE, async {
        'again: loop {
            let mut held = Vec::new();
            for _ in 0..n {
                let mut tcp = connect(addr).await;
                let head = b"HEAD /client.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
                let mut answer = Vec::new();
                let mut buf = [0u8; 1024];
                let answered = tcp.write_all(head).await.is_ok()
                    && loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => break false,
                            Ok(k) => answer.extend_from_slice(&buf[..k]),
                        }
                        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                            break true;
                        }
                    };
                if !answered {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'again;
                }
                held.push(tcp);
            }
            return held;
        }
    })
    .await
    .expect("could not hold the connections the cap allows")
}

#[tokio::test]
async fn sockets_that_send_nothing_are_closed_after_the_header_timeout() {
    let app = quick_timeouts().await;
    let mut silent = Vec::new();
    for _ in 0..30 {
        silent.push(connect(app.addr).await);
    }
    for tcp in &mut silent {
        let sent = closed_by_server(tcp, "a silent socket").await;
        assert!(
            sent.is_empty(),
            "a silent socket was answered: {:?}",
            String::from_utf8_lossy(&sent)
        );
    }
}

#[tokio::test]
async fn partial_http2_prefaces_are_closed_after_the_header_timeout() {
    let app = quick_timeouts().await;
    let mut partial = Vec::new();
    for i in 0..20 {
        let mut tcp = connect(app.addr).await;
        // Every length that still could become the preface, the bare request line included.
        let n = [16, 1, 3, 18, 23][i % 5];
        tcp.write_all(&PREFACE[..n]).await.unwrap();
        partial.push(tcp);
    }
    for tcp in &mut partial {
        closed_by_server(tcp, "a partial HTTP/2 preface").await;
    }
}

#[tokio::test]
async fn an_http2_connection_that_never_sends_a_request_is_closed() {
    let app = quick_timeouts().await;
    // By hand: the preface and an empty SETTINGS frame, then silence (no SETTINGS ack, no PING ack).
    let mut raw = connect(app.addr).await;
    raw.write_all(PREFACE).await.unwrap();
    raw.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    closed_by_server(&mut raw, "an HTTP/2 connection without a request").await;

    // A well-behaved client library that answers everything but never opens a stream.
    let (_send, driven) = h2_client(app.addr).await;
    tokio::time::timeout(PATIENCE, driven)
        .await
        .expect("the server kept an idle HTTP/2 client connection open")
        .unwrap();
}

#[tokio::test]
async fn an_http2_connection_is_closed_once_idle_but_not_while_a_stream_is_open() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.header_read_timeout = Duration::from_millis(500)
    })
    .await;
    let (mut send, driven) = h2_client(app.addr).await;
    // `send` stays alive to the end: the client would close the connection itself without it.
    // A stream open for several times the timeout keeps the connection.
    let request = axum::http::Request::get(format!("http://{}/events?topics=studies", app.addr))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let mut events = response.await.expect("SSE over HTTP/2").into_body();
    let first = tokio::time::timeout(PATIENCE, events.data())
        .await
        .expect("no SSE bytes");
    assert!(first.is_some_and(|f| f.is_ok()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!driven.is_finished(), "the connection was closed under an open stream");
    // Closing the stream makes it idle; then it goes.
    drop(events);
    tokio::time::timeout(PATIENCE, driven)
        .await
        .expect("the server kept an idle HTTP/2 connection open")
        .unwrap();
}

#[tokio::test]
async fn http1_and_h2c_prior_knowledge_requests_still_work() {
    let app = TestApp::spawn().await;
    let status = reqwest::get(app.url("/client.js")).await.unwrap().status();
    assert_eq!(status, 200);
    let mut tcp = connect(app.addr).await;
    assert_eq!(
        http1_status(&mut tcp, "/client.js").await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    // Methods that start like the preface ("P…") are HTTP/1 too.
    let mut tcp = connect(app.addr).await;
    tcp.write_all(b"PRI").await.unwrap();
    tcp.write_all(b"NT /client.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    let (mut send, _driven) = h2_client(app.addr).await;
    for _ in 0..2 {
        let request = axum::http::Request::get(format!("http://{}/client.js", app.addr))
            .body(())
            .unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let response = tokio::time::timeout(PATIENCE, response).await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn one_client_cannot_hold_more_tcp_connections_than_its_cap() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_tcp_connections_per_ip = 3).await;
    let mut idle = held_connections(app.addr, 3).await;
    // The kernel completes the handshake; pgfeed closes the fourth at once, request or not.
    let mut fourth = connect(app.addr).await;
    assert_eq!(http1_status(&mut fourth, "/client.js").await, None);
    let mut fifth = connect(app.addr).await;
    closed_by_server(&mut fifth, "a connection over the per-client cap").await;

    // A closed idle socket frees its slot.
    drop(idle.pop());
    tokio::time::timeout(PATIENCE, async {
        loop {
            let mut tcp = connect(app.addr).await;
            if http1_status(&mut tcp, "/client.js").await.as_deref() == Some("HTTP/1.1 200 OK") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the freed slot was not reusable");
}

#[tokio::test]
async fn the_tcp_cap_in_total_holds_for_every_client() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.max_tcp_connections = 2;
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
    })
    .await;
    // Trusted proxies are exempt from the per-client cap, not from the total.
    let _held = held_connections(app.addr, 2).await;
    let mut third = connect(app.addr).await;
    assert_eq!(http1_status(&mut third, "/client.js").await, None);
}

/// Opens `GET /ws` with extra headers: the socket, or the refusal's status.
async fn ws_with(app: &TestApp, headers: &[(&'static str, &str)]) -> Result<impl Sized, u16> {
    let mut req = format!("ws://{}/ws", app.addr).into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().append(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

async fn behind_a_trusted_proxy() -> TestApp {
    TestApp::spawn_with(TestDb::create().await, |c| {
        c.max_connections_per_ip = 2;
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
    })
    .await
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let app = behind_a_trusted_proxy().await;
    let client = [("x-forwarded-for", "203.0.113.7")];
    let _a = ws_with(&app, &client).await.expect("first stream");
    // The proxy appends the peer it saw; what the client wrote to its left proves nothing.
    let _b = ws_with(&app, &[("x-forwarded-for", "198.51.100.1, 203.0.113.7")])
        .await
        .expect("second stream");
    assert_eq!(ws_with(&app, &client).await.err(), Some(429));
    assert_eq!(
        ws_with(&app, &[("x-forwarded-for", "198.51.100.2, 203.0.113.7")])
            .await
            .err(),
        Some(429),
        "a forged left-most hop dodged the limit"
    );
    // Another client behind the same proxy (whose own address is full by now) gets in.
    let _c = ws_with(&app, &[("x-forwarded-for", "203.0.113.8")])
        .await
        .expect("another client behind the proxy was refused");
    let _d = ws_with(&app, &[("x-forwarded-for", "203.0.113.8, 127.0.0.1")])
        .await
        .expect("a chain through a second trusted hop was refused");
}

#[tokio::test]
async fn forwarded_ipv6_clients_count_per_64() {
    let app = behind_a_trusted_proxy().await;
    let _a = ws_with(&app, &[("forwarded", r#"for="[2001:db8:cafe::17]:4711""#)])
        .await
        .expect("first stream");
    let _b = ws_with(&app, &[("forwarded", "for=\"[2001:db8:cafe::18]\";proto=http")])
        .await
        .expect("second stream");
    // A fresh address in the same /64 is the same client.
    assert_eq!(
        ws_with(&app, &[("forwarded", r#"for="[2001:db8:cafe:0:ffff::1]""#)])
            .await
            .err(),
        Some(429)
    );
    let _c = ws_with(&app, &[("forwarded", r#"for="[2001:db8:cafe:1::1]""#)])
        .await
        .expect("another /64 was refused");
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_connections_per_ip = 2).await;
    let _a = ws_with(&app, &[("x-forwarded-for", "203.0.113.1")])
        .await
        .expect("first stream");
    let _b = ws_with(&app, &[("forwarded", "for=203.0.113.2")])
        .await
        .expect("second stream");
    for spoof in [
        [("x-forwarded-for", "203.0.113.3")],
        [("forwarded", "for=203.0.113.4")],
        [("x-real-ip", "203.0.113.5")],
    ] {
        assert_eq!(
            ws_with(&app, &spoof).await.err(),
            Some(429),
            "{spoof:?} dodged the limit"
        );
    }
}

#[tokio::test]
async fn two_forwarding_headers_that_disagree_count_as_the_proxy() {
    let app = behind_a_trusted_proxy().await;
    // A proxy that sets X-Forwarded-For passes a client's own `Forwarded` through: the client
    // must not pick its key with it, nor claim another client's.
    let spoof = |n: &'static str| [("x-forwarded-for", "203.0.113.7"), ("forwarded", n)];
    let _a = ws_with(&app, &spoof("for=198.51.100.1")).await.expect("first stream");
    let _b = ws_with(&app, &spoof("for=198.51.100.2")).await.expect("second stream");
    assert_eq!(ws_with(&app, &spoof("for=198.51.100.3")).await.err(), Some(429));
    // The named client's own slots were untouched.
    let _c = ws_with(&app, &[("x-forwarded-for", "203.0.113.7")])
        .await
        .expect("the forwarded client was blamed for the spoofs");
}

#[tokio::test]
async fn limits_work_over_ipv6_loopback() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        return; // no IPv6 on this machine
    };
    drop(probe);
    let app = TestApp::spawn_with(TestDb::create().await, |c| {
        c.bind = "[::1]:0".parse().unwrap();
        c.max_tcp_connections_per_ip = 2;
    })
    .await;
    let _held = held_connections(app.addr, 2).await;
    let mut third = connect(app.addr).await;
    closed_by_server(&mut third, "a connection over the per-client cap on [::1]").await;
}
