//! A real WebSocket client, with the assertions tests need.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{TestApp, PATIENCE};

impl TestApp {
    pub async fn ws(&self) -> WsClient {
        self.ws_at("/ws").await
    }

    pub async fn ws_at(&self, path: &str) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{}{}", self.addr, path))
            .await
            .expect("ws connect");
        WsClient { stream }
    }
}

/// A real WebSocket client, with the assertions tests need.
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// A WebSocket handshake over a socket the test set up itself.
pub async fn ws_over(tcp: TcpStream, addr: SocketAddr) -> WsClient {
    let (stream, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(tcp))
        .await
        .expect("ws handshake");
    WsClient { stream }
}

/// What a client saw next.
#[derive(Debug)]
pub enum Seen {
    Frame(Value),
    Closed(Option<u16>),
}

impl WsClient {
    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, text: String) {
        self.stream.send(Message::Text(text.into())).await.expect("ws send");
    }

    /// The next JSON frame or the close, within `PATIENCE`.
    pub async fn next_seen(&mut self) -> Seen {
        self.next_seen_within(PATIENCE)
            .await
            .expect("no frame from the server in time")
    }

    pub async fn next_seen_within(&mut self, wait: Duration) -> Option<Seen> {
        tokio::time::timeout(wait, async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Seen::Frame(serde_json::from_str(&t).expect("server sent bad JSON"))
                    }
                    Some(Ok(Message::Close(frame))) => return Seen::Closed(frame.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Seen::Closed(None),
                }
            }
        })
        .await
        .ok()
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next_seen().await {
            Seen::Frame(v) => v,
            Seen::Closed(code) => panic!("connection closed ({code:?}) while a frame was expected"),
        }
    }

    /// The next frame that is a change event (has a `cursor` and an `op`).
    pub async fn next_event(&mut self) -> Value {
        let v = self.next_json().await;
        assert!(v.get("op").is_some(), "expected an event, got {v}");
        v
    }

    /// Subscribes and returns the `subscribed` answer.
    pub async fn subscribe(&mut self, topic: &str) -> Value {
        self.subscribe_with(json!({"action": "subscribe", "topic": topic}))
            .await
    }

    pub async fn subscribe_since(&mut self, topic: &str, since: &str) -> Value {
        self.subscribe_with(json!({"action": "subscribe", "topic": topic, "since": since}))
            .await
    }

    pub async fn subscribe_with(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        let v = self.next_json().await;
        assert_eq!(v["type"], "subscribed", "expected subscribed, got {v}");
        v
    }

    /// Collects `n` events, failing if they do not come within `PATIENCE`.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_event().await);
        }
        out
    }

    /// Asserts that nothing arrives for `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(seen) = self.next_seen_within(wait).await {
            panic!("expected nothing, got {seen:?}");
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .stream
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}
