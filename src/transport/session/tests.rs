//! The protocol rules of one connection, driven over in-memory channels: no socket, no database
//! (nothing here subscribes, so the feed's pool is never used).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::{Sink, Stream, StreamExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::event::{Epoch, Position};
use crate::hub::Hub;
use crate::metrics::{Metrics, Transport};

/// The server's end of an in-memory WebSocket.
struct Pipe {
    /// To the test's [`Client`]; a client that dropped its end makes every write fail.
    to_client: UnboundedSender<Message>,
    /// From the test's [`Client`]; its drop is the client leaving.
    from_client: UnboundedReceiver<Result<Message, axum::Error>>,
}

impl Sink<Message> for Pipe {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), axum::Error> {
        self.to_client.unbounded_send(msg).map_err(axum::Error::new)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl Stream for Pipe {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.from_client).poll_next(cx)
    }
}

/// The test's end: frames in and out, and the server's shutdown signal.
struct Client {
    tx: UnboundedSender<Result<Message, axum::Error>>,
    rx: UnboundedReceiver<Message>,
    shutdown: CancellationToken,
}

impl Client {
    /// Starts a session over a pipe, with a feed whose pool never connects.
    fn connect(config: SessionConfig, expires: Option<u64>) -> Client {
        let (to_client, rx) = unbounded();
        let (tx, from_client) = unbounded();
        let pool = sqlx::PgPool::connect_lazy("postgres://invalid").expect("a lazy pool is only a URL");
        let hub = Arc::new(Hub::new(Epoch::new("e"), Position::default()));
        let connection = Connection {
            feed: Feed::unloaded(pool, hub),
            initial: Initial {
                expires,
                ..Initial::default()
            },
            config,
            access: Access::Admin,
            metrics: Arc::new(Metrics::new()).connection(Transport::Ws),
            held: (),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(run(Pipe { to_client, from_client }, connection, shutdown.clone()));
        Client { tx, rx, shutdown }
    }

    fn send(&self, frame: impl Into<String>) {
        let text: String = frame.into();
        self.tx
            .unbounded_send(Ok(Message::Text(text.into())))
            .expect("the session reads until it closes");
    }

    async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(5), self.rx.next())
            .await
            .expect("the server answered within 5 s")
            .expect("the server did not drop the connection without a Close frame")
    }

    async fn next_json(&mut self) -> Value {
        match self.next().await {
            Message::Text(text) => serde_json::from_str(&text).expect("frames are JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The code of the Close frame the server sends next.
    async fn close_code(&mut self) -> u16 {
        match self.next().await {
            Message::Close(Some(frame)) => frame.code,
            other => panic!("expected a Close frame, got {other:?}"),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs()
}

#[tokio::test]
async fn ping_is_answered_with_pong_echoing_its_id() {
    let mut client = Client::connect(SessionConfig::default(), None);

    client.send(r#"{"action":"ping","id":{"n":7}}"#);

    assert_eq!(client.next_json().await, json!({"type": "pong", "id": {"n": 7}}));
}

#[tokio::test]
async fn an_unknown_action_is_a_bad_request_and_the_connection_stays_usable() {
    let mut client = Client::connect(SessionConfig::default(), None);

    client.send(r#"{"action":"dance","id":1}"#);
    let answer = client.next_json().await;
    client.send(r#"{"action":"ping"}"#);

    assert_eq!(answer["type"], "error");
    assert_eq!(answer["code"], "bad_request");
    assert_eq!(answer["id"], 1);
    assert_eq!(client.next_json().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn a_binary_frame_is_a_bad_request() {
    let mut client = Client::connect(SessionConfig::default(), None);

    client
        .tx
        .unbounded_send(Ok(Message::Binary(vec![1, 2].into())))
        .unwrap();

    let answer = client.next_json().await;
    assert_eq!(
        (&answer["type"], &answer["code"]),
        (&json!("error"), &json!("bad_request"))
    );
}

#[tokio::test]
async fn frames_over_the_rate_are_refused_and_persistent_abuse_is_closed_with_1008() {
    // One frame per second, bursts of two; more than five refused in the window is abuse.
    let config = SessionConfig {
        max_frames_per_second: 1,
        ..SessionConfig::default()
    };
    let mut client = Client::connect(config, None);

    // Queued at once, so the bucket has no time to refill between them.
    for _ in 0..8 {
        client.send(r#"{"action":"ping"}"#);
    }

    for _ in 0..2 {
        assert_eq!(client.next_json().await["type"], "pong");
    }
    for _ in 0..5 {
        let answer = client.next_json().await;
        assert_eq!(
            (&answer["type"], &answer["code"]),
            (&json!("error"), &json!("rate_limited"))
        );
    }
    assert_eq!(client.close_code().await, close::POLICY);
}

#[tokio::test]
async fn bad_frames_past_the_error_budget_close_with_1008() {
    let mut client = Client::connect(SessionConfig::default(), None);

    for _ in 0..21 {
        client.send("not json");
    }

    for _ in 0..20 {
        let answer = client.next_json().await;
        assert_eq!(
            (&answer["type"], &answer["code"]),
            (&json!("error"), &json!("bad_request"))
        );
    }
    assert_eq!(client.close_code().await, close::POLICY);
}

#[tokio::test]
async fn a_frame_over_64_kib_closes_with_1009() {
    let mut client = Client::connect(SessionConfig::default(), None);

    client.send(format!(
        r#"{{"action":"ping","pad":"{}"}}"#,
        "x".repeat(MAX_CLIENT_FRAME)
    ));

    assert_eq!(client.close_code().await, close::TOO_BIG);
}

#[tokio::test]
async fn an_expired_token_closes_with_4001_at_once() {
    let mut client = Client::connect(SessionConfig::default(), Some(unix_now() - 10));

    assert_eq!(client.close_code().await, close::TOKEN_EXPIRED);
}

#[tokio::test]
async fn a_token_that_expires_later_serves_until_then_and_closes_with_4001() {
    let mut client = Client::connect(SessionConfig::default(), Some(unix_now() + 2));

    client.send(r#"{"action":"ping"}"#);

    assert_eq!(client.next_json().await, json!({"type": "pong"}));
    assert_eq!(client.close_code().await, close::TOKEN_EXPIRED);
}

#[tokio::test]
async fn shutdown_closes_with_1001() {
    let mut client = Client::connect(SessionConfig::default(), None);
    client.send(r#"{"action":"ping"}"#);
    assert_eq!(client.next_json().await, json!({"type": "pong"}));

    client.shutdown.cancel();

    assert_eq!(client.close_code().await, close::GOING_AWAY);
}
