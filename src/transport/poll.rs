//! `GET /api/changes`: the feed by long-polling (README "Without a WebSocket"), for scripts and
//! environments that can only make plain requests. Stateless: each request reads the log after its
//! `since`, and the answer's `cursor` is the `since` of the next request, so nothing is lost or
//! repeated between requests, whichever server answers them.
//!
//! An event published on several of the requested topics appears once, on the first of its topics
//! that was asked for (as on SSE; [`crate::feed::first_delivery`]), because one cursor covers them all.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Access;
use crate::feed::{Feed, FeedError};
use crate::hub::{Hub, Outbox};

/// Events per answer unless `limit` says otherwise, and the most it may ask for.
pub const DEFAULT_LIMIT: i64 = 500;
pub const MAX_LIMIT: i64 = 1000;
/// Seconds to wait for a change unless `wait` says otherwise, and the most it may ask for.
pub const DEFAULT_WAIT: u64 = 25;
pub const MAX_WAIT: u64 = 60;
/// Wake-ups a waiting poll may have queued. It only needs one: it re-reads the log on waking.
const WAKE_QUEUE: usize = 16;

/// How much one poll answers and how long it waits for a change: the request's `limit` and
/// `wait`, defaulted and capped.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    limit: i64,
    wait: Duration,
}

impl Window {
    pub fn new(limit: Option<u64>, wait: Option<u64>) -> Window {
        Window {
            limit: limit.unwrap_or(DEFAULT_LIMIT as u64).clamp(1, MAX_LIMIT as u64) as i64,
            wait: Duration::from_secs(wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT)),
        }
    }

    pub fn wait(&self) -> Duration {
        self.wait
    }
}

/// `{"events":[…],"cursor":"…"}`; each event is its pre-serialized frame, byte for byte the
/// same as on the WebSocket and SSE.
pub struct Answer {
    events: Vec<Utf8Bytes>,
    cursor: String,
}

impl IntoResponse for Answer {
    /// Written out by hand: the frames are JSON already (serialized once per topic by
    /// `Event::from_row`), so they are copied in as they are, not parsed again per poller.
    fn into_response(self) -> Response {
        let frames: usize = self.events.iter().map(|f| f.as_str().len() + 1).sum();
        let mut body = String::with_capacity(frames + self.cursor.len() + 32);
        body.push_str(r#"{"events":["#);
        for (i, frame) in self.events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(frame.as_str());
        }
        body.push_str(r#"],"cursor":"#);
        // A cursor is ASCII without quotes or backslashes, but encode it as any string.
        body.push_str(&serde_json::Value::from(self.cursor).to_string());
        body.push('}');
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// The changes on `topics` (checked already: they exist and `access` may read them) after
/// `since`, waiting up to the window's `wait` for one; without `since`, the cursor to start from.
/// A wait ends early, with the cursor so far, at the token's `exp` or on shutdown.
pub async fn changes(
    feed: &Feed,
    topics: &[String],
    since: Option<&str>,
    window: Window,
    (access, expires): (&Access, Option<u64>),
    shutdown: &CancellationToken,
) -> Result<Answer, FeedError> {
    let Window { limit, wait } = window;
    let Some(since) = since.filter(|s| !s.is_empty()) else {
        // Without `since`: where to start from, at once.
        return Ok(Answer {
            events: Vec::new(),
            cursor: feed.cursor(feed.head().await?),
        });
    };
    let mut since = feed.parse_cursor(since).await?;
    let deadline = Instant::now() + wait;
    // A wait never outlasts the token, so its rights never outlive it; the answer at `exp` is the
    // cursor so far.
    let expiry = crate::auth::expiry(expires);
    tokio::pin!(expiry);
    loop {
        // Register for wake-ups *before* reading: a change committed after the read is then
        // published to this outbox, and one committed before it is in the read.
        let (outbox, mut wake_rx) = Outbox::new(WAKE_QUEUE);
        let _registered = Registered::new(&feed.hub, topics, &outbox);
        let (mut events, next, more) = feed.changes(topics, since, limit).await?;
        let read_some = !events.is_empty();
        // Rights follow the row: a member's row topics see a row leave its studies as an exit.
        events.retain_mut(|d| crate::feed::access::admit(access, d));
        if events.is_empty() && (more || read_some) && Instant::now() < deadline && !shutdown.is_cancelled() {
            // The read stopped at its scan bound, or found only what this token may not see:
            // read on from there at once (each read is bounded, and the task yields at each one).
            since = next;
            continue;
        }
        let expired = expiry.deadline() <= Instant::now();
        if !events.is_empty() || Instant::now() >= deadline || shutdown.is_cancelled() || expired {
            let events = events.iter().map(|d| d.frame().clone()).collect();
            return Ok(Answer {
                events,
                cursor: feed.cursor(next),
            });
        }
        tokio::select! {
            _ = wake_rx.recv() => {}
            _ = outbox.overflowed_wait() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = &mut expiry => {}
            // Shutdown answers at once with nothing new, so graceful shutdown is not held up.
            _ = shutdown.cancelled() => {}
        }
    }
}

/// An outbox registered under some topics for as long as this lives.
struct Registered<'a> {
    hub: &'a Hub,
    topics: &'a [String],
    outbox: &'a Outbox,
}

impl<'a> Registered<'a> {
    fn new(hub: &'a Hub, topics: &'a [String], outbox: &'a Outbox) -> Self {
        for topic in topics {
            hub.subscribe(topic, outbox, None);
        }
        Registered { hub, topics, outbox }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        for topic in self.topics {
            self.hub.unsubscribe(topic, self.outbox);
        }
    }
}
