//! Live views without a WebSocket (README "Live views"): one view per SSE stream or long-poll
//! request, defined by query parameters (`view`, `topic`, `filter.<column>`, `order`, `limit`,
//! `after`, `count`, `since`), with the same `view` and `view_delta` frames as on the WebSocket.

use std::time::Duration;

use axum::http::header;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Access;
use crate::feed::views::{FrameKind, Request, ViewItem, ViewSink, Views};
use crate::feed::{Feed, FeedError};
use crate::metrics::{Metrics, Transport};
use crate::shutdown::Shutdown;
use crate::transport::frames;

/// View frames one stream or poll may have waiting; past it an SSE stream ends (the client
/// reconnects with `Last-Event-ID` and gets the view whole), as a WebSocket closes with 4008.
const QUEUE: usize = 256;
/// How long one SSE event may wait for a client that does not read.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// A view asked for in a query string: its name and definition, when the query has `view`.
/// Repeated or unknown parameters are the client's mistake.
pub fn from_query(raw: Option<&str>) -> Result<Option<(String, Request)>, FeedError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| FeedError::BadRequest(format!("query: {e}")))?;
    let Some(name) = pairs.iter().find(|(k, _)| k == "view").map(|(_, v)| v.clone()) else {
        return Ok(None);
    };
    let mut req = Request::default();
    let mut seen = std::collections::HashSet::new();
    for (k, v) in pairs {
        if !seen.insert(k.clone()) {
            return Err(FeedError::BadRequest(format!("{k:?} given twice")));
        }
        match k.as_str() {
            // `position`: read your writes, which `http::position` waits for before the route.
            "view" | "since" | "token" | "wait" | "position" => {}
            "topic" => req.topic = v,
            "order" => req.order = Some(v),
            "after" => req.after = Some(v).filter(|a| !a.is_empty()),
            "limit" => {
                req.limit = Some(
                    v.parse()
                        .map_err(|_| FeedError::BadRequest(format!("limit must be a whole number, not {v:?}")))?,
                )
            }
            "count" => {
                req.count = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" | "" => false,
                    _ => return Err(FeedError::BadRequest(format!("count is true or false, not {v:?}"))),
                }
            }
            _ => match k.strip_prefix("filter.") {
                Some(column) => {
                    req.filter.insert(column.to_owned(), v);
                }
                None => return Err(FeedError::BadRequest(format!("unknown parameter {k:?} for a view"))),
            },
        }
    }
    if name.is_empty() || name.len() > 128 {
        return Err(FeedError::BadRequest("a view's name is 1 to 128 bytes".into()));
    }
    Ok(Some((name, req)))
}

/// A subscription of one stream or poll, ended when this is dropped.
struct Subscribed {
    views: Views,
    sub: u64,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.views.unsubscribe(self.sub);
    }
}

async fn subscribe(
    feed: &Feed,
    req: &Request,
    since: Option<&str>,
    access: &Access,
) -> Result<(Subscribed, mpsc::Receiver<ViewItem>, CancellationToken), FeedError> {
    let views = feed.views()?.clone();
    let (tx, rx) = mpsc::channel(QUEUE);
    let overflow = CancellationToken::new();
    let sink = ViewSink {
        tx,
        overflow: overflow.clone(),
    };
    let sub = views.subscribe(req, since, access, sink).await?;
    Ok((Subscribed { views, sub }, rx, overflow))
}

/// `GET /events?view=…`: the view's `view` frame, then its deltas, as SSE events whose `id:` is
/// the frame's cursor. A reconnect (`Last-Event-ID`) gets the view whole again.
#[allow(clippy::too_many_arguments)]
pub async fn sse<H: Send + 'static>(
    feed: Feed,
    (name, req): (String, Request),
    since: Option<&str>,
    (access, expires): (Access, Option<u64>),
    metrics: &std::sync::Arc<Metrics>,
    permit: H,
    shutdown: &Shutdown,
) -> Result<Response, FeedError> {
    let (subscribed, mut rx, overflow) = subscribe(&feed, &req, since, &access).await?;
    let token = shutdown.token.clone();
    let (events_tx, events_rx) = mpsc::channel::<SseEvent>(16);
    let mut guard = metrics.connection(Transport::Sse);
    let task_token = token.clone();
    shutdown.tracker.spawn(async move {
        let _held = (subscribed, permit);
        guard.set_subscriptions(1);
        let expiry = crate::auth::expiry(expires);
        tokio::pin!(expiry);
        loop {
            let item = tokio::select! {
                biased;
                _ = task_token.cancelled() => return,
                _ = &mut expiry => return,
                _ = overflow.cancelled() => {
                    guard.slow_consumer();
                    return;
                }
                _ = events_tx.closed() => return,
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => return,
                },
            };
            let event = match item {
                ViewItem::Frame(_, frame) => SseEvent::default()
                    .id(frame.cursor.clone())
                    .event(frame.kind.as_str())
                    .data(frame.text(&name)),
                ViewItem::Failed(_, message) => {
                    let data = frames::text(&frames::Error::new("unavailable", message, None));
                    let _ = events_tx
                        .send(SseEvent::default().event("error").data(data.as_str()))
                        .await;
                    return;
                }
            };
            match tokio::time::timeout(WRITE_STALL, events_tx.send(event)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    });
    Ok(crate::transport::sse::response(events_rx, token))
}

/// How long a poll without `since` waits for its view (and a count that follows it).
const FIRST_VIEW_WAIT: Duration = Duration::from_secs(10);

/// `GET /api/changes?view=…`: `{"events":[…],"cursor":"…"}` with the view's frames after `since`.
/// Without `since`, the `view` at once. With it, a `view` when the window changed after it (a
/// whole view is always a valid answer), else the deltas after it that come within `wait`; frames
/// at or before `since` are skipped, so a poll answered by another server never repeats one. A
/// `view` whose count follows is answered with that count's delta too (if it comes within `wait`).
pub async fn poll(
    feed: &Feed,
    (name, req): (String, Request),
    since: Option<&str>,
    wait: Duration,
    (access, expires): (&Access, Option<u64>),
    shutdown: &CancellationToken,
) -> Result<Response, FeedError> {
    let since = match since.filter(|s| !s.is_empty()) {
        None => None,
        Some(c) => match feed.hub.epoch().parse_cursor(c) {
            Ok(crate::event::CursorCheck::Ours(at)) => Some(at),
            // Another log's, or another generation's: the view's whole state is sent again.
            Ok(crate::event::CursorCheck::Foreign | crate::event::CursorCheck::Other { .. }) => None,
            Err(_) => return Err(FeedError::BadRequest(format!("malformed cursor {c:?}"))),
        },
    };
    let (_subscribed, mut rx, overflow) = subscribe(feed, &req, None, access).await?;
    // Without `since` the answer is the view, whatever `wait` says (a new window's first read
    // takes a moment, and this poll's end would drop the window).
    let deadline = match since {
        None => Instant::now() + wait.max(FIRST_VIEW_WAIT),
        Some(_) => Instant::now() + wait,
    };
    let expiry = crate::auth::expiry(expires);
    tokio::pin!(expiry);
    let mut frames: Vec<String> = Vec::new();
    let mut cursor = since.map(|at| feed.cursor(at));
    let mut count_coming = false;
    loop {
        // Once something is in hand, take only what is already queued, then answer.
        let patience = if frames.is_empty() || count_coming {
            deadline
        } else {
            Instant::now()
        };
        let item = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            _ = &mut expiry => None,
            _ = overflow.cancelled() => None,
            _ = tokio::time::sleep_until(patience) => None,
            item = rx.recv() => item,
        };
        let Some(item) = item else { break };
        match item {
            ViewItem::Frame(_, frame) => {
                if since.is_some_and(|s| frame.at <= s) {
                    continue;
                }
                if frame.kind == FrameKind::View {
                    frames.clear();
                }
                count_coming = frame.count_coming;
                frames.push(frame.text(&name));
                cursor = Some(frame.cursor.clone());
            }
            ViewItem::Failed(_, message) => return Err(FeedError::Busy(message)),
        }
    }
    let mut body = String::from(r#"{"events":["#);
    body.push_str(&frames.join(","));
    body.push_str(r#"],"cursor":"#);
    body.push_str(&serde_json::to_string(&cursor).expect("a string"));
    body.push('}');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
