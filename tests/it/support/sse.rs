//! A `text/event-stream` client for `GET /events`.

use std::time::Duration;

use serde_json::Value;

use super::{TestApp, PATIENCE};

impl TestApp {
    /// Opens `GET /events?{query}` with an optional `Last-Event-ID`; panics unless it is a 200 stream.
    pub async fn sse(&self, query: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = reqwest::Client::new().get(self.url(&format!("/events?{query}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("GET /events");
        assert_eq!(
            resp.status(),
            200,
            "GET /events?{query}: {}",
            resp.text().await.unwrap_or_default()
        );
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        SseClient {
            resp,
            buf: String::new(),
        }
    }
}

/// One Server-Sent Event as a client parses it.
#[derive(Debug, Clone, Default)]
pub struct SseMsg {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseMsg {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("bad JSON in SSE data {:?}: {e}", self.data))
    }
}

/// A minimal `text/event-stream` reader (comments are skipped, like a browser's EventSource).
pub struct SseClient {
    resp: reqwest::Response,
    buf: String,
}

impl SseClient {
    /// The next event, `None` when the stream ended, within `PATIENCE`.
    pub async fn next(&mut self) -> Option<SseMsg> {
        self.next_within(PATIENCE).await.expect("no SSE event in time")
    }

    /// `Some(None)`: the stream ended; `None`: nothing within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Option<SseMsg>> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let mut msg = SseMsg {
                        event: "message".into(),
                        ..SseMsg::default()
                    };
                    let mut data = Vec::new();
                    for line in block.lines() {
                        let (field, value) = line
                            .split_once(':')
                            .map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)))
                            .unwrap_or((line, ""));
                        match field {
                            "id" => msg.id = Some(value.to_owned()),
                            "event" => msg.event = value.to_owned(),
                            "data" => data.push(value.to_owned()),
                            _ => {}
                        }
                    }
                    if data.is_empty() {
                        continue; // a comment or a bare retry: not an event
                    }
                    msg.data = data.join("\n");
                    return Some(msg);
                }
                match self.resp.chunk().await {
                    Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                    Ok(None) | Err(_) => return None,
                }
            }
        })
        .await
        .ok()
    }

    /// The next event, which must be a change (its `id` is its cursor).
    pub async fn next_event(&mut self) -> Value {
        let msg = self
            .next()
            .await
            .expect("the SSE stream ended while an event was expected");
        let v = msg.json();
        assert!(v.get("op").is_some(), "expected a change event, got {msg:?}");
        assert_eq!(msg.id.as_deref(), v["cursor"].as_str(), "id: is the event's cursor");
        assert_eq!(msg.event, v["type"].as_str().unwrap(), "event: is the event's type");
        v
    }

    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_event().await);
        }
        out
    }

    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(seen) = self.next_within(wait).await {
            panic!("expected nothing, got {seen:?}");
        }
    }
}
