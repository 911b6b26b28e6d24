//! Socket.IO (PROTOCOL §10, README "Socket.IO"): the WebSocket session's protocol spoken over a
//! socketioxide socket, for code already written against socket.io-client or python-socketio.
//!
//! Why a bridge and not a second session: every guarantee of `/ws` (subscribe by cursor without
//! gap or repeat, snapshots joined to the stream, views, the bounded queue and its 4008, the
//! token's `exp` and its 4001, subscription, frame-rate and bad-frame budgets) lives in
//! [`session`]. [`Bridge`] makes one socket look like the `Sink + Stream` of WebSocket messages a
//! session runs over, and translates at the edge:
//!
//! - a client event `emit(name, {…}, ack)` becomes the frame `{"action": name, …, "id": N}`, `N`
//!   standing for the ack it is owed; the session's answer carrying `id: N` is sent as that ack
//!   (`subscribed` → `{cursor, topic}`, `error` → `{error: {code, message}}`, …);
//! - every other frame is emitted under its `type` with the frame's JSON as the one argument:
//!   change events (`message_created`, …), `snapshot`, `refresh_needed`, `view`, `view_delta`,
//!   and `error` for an error no ack waits for;
//! - a Close frame becomes a `closing` event `{code, reason}` and a namespace disconnect (a
//!   server-side disconnect: socket.io-client does not reconnect by itself, the client calls
//!   `connect()` and subscribes again with its last cursor as `since`).
//!
//! Order: socketioxide runs each event handler as its own task, so handlers could see events out
//! of order. Client events are therefore queued by an extractor ([`Inbound`]), which socketioxide
//! calls synchronously, in arrival order, before it spawns anything.
//!
//! Bounds: socketioxide's per-socket packet buffer is small and an emit into a full one fails
//! (there is no way to wait for room). The bridge keeps at most one session message's packets
//! when the buffer is full and tells the session to wait (as a full TCP socket would), retrying
//! with a short backoff; meanwhile live events pile up in the session's own bounded queue, which
//! overflows into a 4008 exactly as on `/ws`. Client events wait in a queue of [`INBOUND`]; an
//! event that finds it full is refused with `rate_limited`. Acks owed are at most [`MAX_ACKS`].

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures::{Sink, Stream};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value as Json};
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, TryData};
use socketioxide::handler::{FromConnectParts, FromMessageParts, Value};
use socketioxide::socket::Socket;
use socketioxide::{SendError, SocketError};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::transport::session::{self, Connection, MAX_CLIENT_FRAME};

/// Client events one socket may have waiting for its session.
pub const INBOUND: usize = 64;
/// Acks one socket may be owed at once (events waiting, and views waiting for their first frame).
pub const MAX_ACKS: usize = 256;
/// The event that tells a client why the server is about to disconnect it.
pub const CLOSING: &str = "closing";
/// The longest wait between two tries of an emit that found the socket's buffer full.
const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// How long a socket whose buffer stays full is tried for its disconnect after its session ended:
/// past that, engine.io's own heartbeat (which cannot queue its ping either) has closed it.
const DISCONNECT_TRIES: u32 = 600;

/// A socket of the default namespace, as socketioxide hands it over.
pub type SioSocket = Arc<Socket<LocalAdapter>>;

/// The socket itself (a `SocketRef` hides it) in a connect handler or middleware: the bridge
/// builds acks for it.
pub struct SocketArc(pub SioSocket);

impl FromConnectParts<LocalAdapter> for SocketArc {
    type Error = Infallible;
    fn from_connect_parts(s: &SioSocket, _: &Option<Value>) -> Result<Self, Infallible> {
        Ok(SocketArc(s.clone()))
    }
}

/// What a socket's event handlers and its bridge share, kept in the socket's extensions. It holds
/// no pointer to the socket (that would be a cycle through the extensions).
#[derive(Clone)]
struct Link(Arc<LinkInner>);

struct LinkInner {
    /// Client events as session frames, in arrival order.
    frames: mpsc::Sender<Message>,
    /// Acks owed, by the id their frame carries.
    acks: Mutex<Acks>,
    /// Cancelled when the socket disconnects: the session's stream ends.
    gone: CancellationToken,
    /// The client sent events faster than even their refusals could be sent: its session ends
    /// and the socket is disconnected (as `/ws` closes a persistent abuser with 1008).
    overrun: AtomicBool,
}

#[derive(Default)]
struct Acks {
    next: u64,
    /// Ack ids the client is owed, by frame id; with the view name for a view's subscribe, which
    /// is answered by the view's first frame rather than by a frame carrying the id.
    owed: BTreeMap<u64, (i64, Option<String>)>,
}

impl Link {
    fn acks(&self) -> std::sync::MutexGuard<'_, Acks> {
        self.0.acks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A client event, queued as a session frame by the extraction itself (see the module doc).
pub struct Inbound;

impl FromMessageParts<LocalAdapter> for Inbound {
    type Error = Infallible;
    fn from_message_parts(s: &SioSocket, v: &mut Value, ack: &Option<i64>) -> Result<Self, Infallible> {
        if let Some(link) = s.extensions.get::<Link>() {
            receive(&link, s, v, *ack);
        }
        Ok(Inbound)
    }
}

/// Turns one client event into the session frame it stands for, or refuses it at once.
fn receive(link: &Link, s: &SioSocket, v: &mut Value, ack: Option<i64>) {
    let refuse = |code: &str, message: &str| {
        if let Some(ack) = ack {
            let answer = json!({"error": {"code": code, "message": message}});
            if let Err(SendError::Socket(SocketError::InternalChannelFull)) = send_ack(s, ack, &answer) {
                link.0.overrun.store(true, Ordering::Relaxed);
                link.0.gone.cancel();
            }
        }
    };
    // The ack recorded for this event, to undo if the event cannot be queued.
    let mut recorded = None;
    let text = match v.as_str() {
        // The session closes a connection over the frame limit, as it closes a WebSocket with 1009.
        Some(t) if t.len() > MAX_CLIENT_FRAME => t.to_string(),
        _ => {
            let name = match Event::from_message_parts(s, v, &ack) {
                Ok(Event(name)) => name,
                Err(_) => return refuse("bad_request", "an event needs a name"),
            };
            let TryData(data) = TryData::<Json>::from_message_parts(s, v, &ack).unwrap_or_else(|e| match e {});
            let mut frame = match data {
                Ok(Json::Object(map)) => map,
                // Not an object: the session answers that the frame lacks what it needs.
                Ok(other) => [("args".to_owned(), other)].into_iter().collect(),
                Err(_) => Default::default(),
            };
            frame.insert("action".into(), Json::String(name));
            if let Some(ack) = ack {
                let mut acks = link.acks();
                if acks.owed.len() >= MAX_ACKS {
                    drop(acks);
                    return refuse("rate_limited", "too many requests waiting for an answer; slow down");
                }
                acks.next += 1;
                let id = acks.next;
                let view = match (frame.get("action"), frame.get("view")) {
                    (Some(Json::String(a)), Some(Json::String(v))) if a == "subscribe" => Some(v.clone()),
                    _ => None,
                };
                acks.owed.insert(id, (ack, view));
                recorded = Some(id);
                frame.insert("id".into(), Json::from(id));
            } else {
                frame.remove("id");
            }
            Json::Object(frame).to_string()
        }
    };
    if link.0.frames.try_send(Message::Text(text.into())).is_err() {
        // Undo the ack just recorded: it is answered here.
        if let Some(id) = recorded {
            link.acks().owed.remove(&id);
        }
        refuse("rate_limited", "too many events waiting; slow down");
    }
}

fn send_ack(s: &SioSocket, ack: i64, data: &Json) -> Result<(), SendError> {
    let sender = AckSender::from_message_parts(s, &mut Value::Bytes(Default::default()), &Some(ack))
        .unwrap_or_else(|e| match e {});
    sender.send(data)
}

/// The receiving half of a prepared socket's events, until its session takes it.
#[derive(Clone)]
struct Waiting(Arc<Mutex<Option<mpsc::Receiver<Message>>>>);

/// Readies a socket that is being let in (from its connect middleware, before socketioxide tells
/// the client it is connected): its events are queued from the first one on, though its session
/// starts only in the connect handler, which socketioxide runs as a task of its own.
pub fn prepare(socket: &SioSocket) {
    let (tx, rx) = mpsc::channel(INBOUND);
    let link = Link(Arc::new(LinkInner {
        frames: tx,
        acks: Mutex::default(),
        gone: CancellationToken::new(),
        overrun: AtomicBool::new(false),
    }));
    socket.extensions.insert(link.clone());
    socket.extensions.insert(Waiting(Arc::new(Mutex::new(Some(rx)))));
    let gone = link.0.gone.clone();
    socket.on_disconnect(move || async move { gone.cancel() });
    socket.on_fallback(|_: Inbound| async {});
}

/// Runs a prepared, connected socket's session: the future the connect handler spawns (and
/// tracks for shutdown). `None` for a socket [`prepare`] never saw.
pub fn attach<H: Send>(
    socket: SioSocket,
    conn: Connection<H>,
    shutdown: CancellationToken,
) -> Option<impl std::future::Future<Output = ()> + Send> {
    let link = socket.extensions.get::<Link>()?;
    let rx = socket
        .extensions
        .remove::<Waiting>()?
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()?;
    if !socket.connected() {
        link.0.gone.cancel();
    }
    let bridge = Bridge {
        gone: Box::pin(link.0.gone.clone().cancelled_owned()),
        socket,
        link,
        rx,
        pong: false,
        blocked: VecDeque::new(),
        retry: None,
        backoff: Duration::from_millis(1),
        disconnected: false,
    };
    Some(session::run(bridge, conn, shutdown))
}

/// What the bridge does with one session message, once the socket's buffer has room.
#[derive(Debug)]
enum Out {
    Emit(String, Box<RawValue>),
    Ack(i64, Json),
    Disconnect,
}

/// One socket as a session's `Sink + Stream` of WebSocket messages (see the module doc).
struct Bridge {
    socket: SioSocket,
    /// Shared with the socket's handlers: the acks owed, and whether the socket is gone.
    link: Link,
    /// Client events as session frames, in arrival order.
    rx: mpsc::Receiver<Message>,
    /// Ready once the socket disconnected: the session's stream ends.
    gone: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The session pinged: its pong is due (engine.io has its own heartbeat; the session's is
    /// answered here).
    pong: bool,
    /// Packets of the last message that found the socket's buffer full, in order.
    blocked: VecDeque<Out>,
    /// When to try the socket's buffer again, while it is full.
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The next wait for room: doubled per full try up to [`MAX_BACKOFF`], reset once all is sent.
    backoff: Duration,
    /// The session's Close went out as a namespace disconnect.
    disconnected: bool,
}

/// The fields of a session frame the bridge reads; the rest passes through untouched.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    /// Ours on an answer; on a change event, the row's key, whatever JSON that is.
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    cursor: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    topic: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    view: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    reason: Option<std::borrow::Cow<'a, str>>,
}

impl Head<'_> {
    /// The id of the client frame this answers (ids are ours: see [`receive`]).
    fn answers(&self) -> Option<u64> {
        self.id?.get().parse().ok()
    }
}

fn broken(e: impl std::fmt::Display) -> axum::Error {
    axum::Error::new(std::io::Error::other(e.to_string()))
}

impl Bridge {
    /// The ack owed for frame `id`, if the client asked for one.
    fn owed(&self, id: Option<u64>) -> Option<i64> {
        self.link.acks().owed.remove(&id?).map(|(ack, _)| ack)
    }

    /// What one session message becomes on the socket.
    fn translate(&mut self, msg: Message) -> Result<(), axum::Error> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(_) => {
                self.pong = true;
                return Ok(());
            }
            Message::Close(frame) => {
                let (code, reason) = frame.map_or((1000, String::new()), |CloseFrame { code, reason }| {
                    (code, reason.as_str().to_owned())
                });
                let data =
                    RawValue::from_string(json!({"code": code, "reason": reason}).to_string()).map_err(broken)?;
                self.blocked.push_back(Out::Emit(CLOSING.into(), data));
                self.blocked.push_back(Out::Disconnect);
                return Ok(());
            }
            Message::Pong(_) | Message::Binary(_) => return Ok(()),
        };
        let head: Head = serde_json::from_str(text.as_str()).map_err(broken)?;
        let raw = |text: &str| RawValue::from_string(text.to_owned()).map_err(broken);
        match head.kind.as_ref() {
            "subscribed" => {
                if let Some(ack) = self.owed(head.answers()) {
                    self.blocked
                        .push_back(Out::Ack(ack, json!({"cursor": head.cursor, "topic": head.topic})));
                }
            }
            "unsubscribed" => {
                if let Some(ack) = self.owed(head.answers()) {
                    let answer = match &head.view {
                        Some(view) => json!({"view": view}),
                        None => json!({"topic": head.topic}),
                    };
                    self.blocked.push_back(Out::Ack(ack, answer));
                }
            }
            "pong" => {
                if let Some(ack) = self.owed(head.answers()) {
                    self.blocked.push_back(Out::Ack(ack, json!({})));
                }
            }
            "error" => {
                let error = json!({"code": head.code, "message": head.message});
                // A frame refused for the rate is answered without its id: it is the oldest one
                // still waiting that is not a view's (the session answers frames in order).
                let owed = match head.answers() {
                    Some(id) => self.owed(Some(id)),
                    None if head.code.as_deref() == Some("rate_limited") => {
                        let mut acks = self.link.acks();
                        let first = acks
                            .owed
                            .iter()
                            .find(|(_, (_, view))| view.is_none())
                            .map(|(id, _)| *id);
                        first.and_then(|id| acks.owed.remove(&id)).map(|(ack, _)| ack)
                    }
                    // A view that failed before its first frame is answered with its name
                    // (`session::views`): the subscribe waiting for that frame gets the error.
                    None => {
                        let message = head.message.as_deref().unwrap_or_default();
                        let mut acks = self.link.acks();
                        let first = acks
                            .owed
                            .iter()
                            .find(|(_, (_, view))| {
                                view.as_ref()
                                    .is_some_and(|v| message.starts_with(&format!("view {v:?}: ")))
                            })
                            .map(|(id, _)| *id);
                        first.and_then(|id| acks.owed.remove(&id)).map(|(ack, _)| ack)
                    }
                };
                match owed {
                    Some(ack) => self.blocked.push_back(Out::Ack(ack, json!({"error": error}))),
                    None => {
                        let frame = json!({"type": "error", "code": head.code, "message": head.message});
                        self.blocked
                            .push_back(Out::Emit("error".into(), raw(&frame.to_string())?));
                    }
                }
            }
            "refresh_needed" => {
                let frame = json!({"type": "refresh_needed", "topic": head.topic, "reason": head.reason});
                if let Some(ack) = self.owed(head.answers()) {
                    let message = format!(
                        "{}: subscribe again with snapshot: true (or without since)",
                        head.reason.as_deref().unwrap_or("cursor_unknown")
                    );
                    let error = json!({"code": "refresh_needed", "message": message, "reason": head.reason});
                    self.blocked.push_back(Out::Ack(ack, json!({"error": error})));
                }
                self.blocked
                    .push_back(Out::Emit("refresh_needed".into(), raw(&frame.to_string())?));
            }
            "snapshot" => {
                let ack = self.owed(head.answers());
                if let Some(ack) = ack {
                    // A refresh: its snapshot is its answer.
                    self.blocked
                        .push_back(Out::Ack(ack, json!({"cursor": head.cursor, "topic": head.topic})));
                }
                // Our id goes, the client's frame comes: it is the snapshot's last field.
                let body = match head.answers() {
                    Some(id) => match text.as_str().strip_suffix(&format!(",\"id\":{id}}}")) {
                        Some(rest) => format!("{rest}}}"),
                        None => text.as_str().to_owned(),
                    },
                    None => text.as_str().to_owned(),
                };
                let data = RawValue::from_string(body).map_err(broken)?;
                self.blocked.push_back(Out::Emit("snapshot".into(), data));
            }
            "view" => {
                if let Some(name) = &head.view {
                    let mut acks = self.link.acks();
                    let id = acks
                        .owed
                        .iter()
                        .find(|(_, (_, view))| view.as_deref() == Some(name.as_ref()))
                        .map(|(id, _)| *id);
                    if let Some((ack, _)) = id.and_then(|id| acks.owed.remove(&id)) {
                        drop(acks);
                        self.blocked
                            .push_back(Out::Ack(ack, json!({"cursor": head.cursor, "view": name})));
                    }
                }
                self.blocked.push_back(Out::Emit("view".into(), raw(text.as_str())?));
            }
            kind => {
                let kind = kind.to_owned();
                self.blocked.push_back(Out::Emit(kind, raw(text.as_str())?));
            }
        }
        Ok(())
    }

    /// Sends what is blocked, in order, until the socket's buffer is full (`Pending`, with a
    /// timer to try again) or nothing is left.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        loop {
            if let Some(retry) = &mut self.retry {
                if retry.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.retry = None;
            }
            let Some(out) = self.blocked.front() else {
                self.backoff = Duration::from_millis(1);
                return Poll::Ready(Ok(()));
            };
            let sent = match out {
                Out::Emit(event, data) => self.socket.emit(event, data),
                Out::Ack(ack, data) => send_ack(&self.socket, *ack, data),
                Out::Disconnect => {
                    self.disconnected = true;
                    self.socket.clone().disconnect().map_err(SendError::Socket)
                }
            };
            match sent {
                Ok(()) => {
                    self.blocked.pop_front();
                }
                Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                    if matches!(out, Out::Disconnect) {
                        self.disconnected = false;
                    }
                    self.retry = Some(Box::pin(tokio::time::sleep(self.backoff)));
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
                Err(SendError::Socket(SocketError::Closed)) if matches!(out, Out::Disconnect) => {
                    self.blocked.pop_front();
                }
                Err(e) => return Poll::Ready(Err(broken(e))),
            }
        }
    }
}

impl Sink<Message> for Bridge {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        self.get_mut().drain(cx)
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), axum::Error> {
        self.get_mut().translate(msg)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        self.get_mut().drain(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        self.get_mut().drain(cx)
    }
}

impl Stream for Bridge {
    type Item = Result<Message, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.gone.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if std::mem::take(&mut this.pong) {
            return Poll::Ready(Some(Ok(Message::Pong(Default::default()))));
        }
        this.rx.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Drop for Bridge {
    /// A session that ended without its Close going out (the client stalled, or the socket
    /// broke) still disconnects the socket, so no socket stays connected without a session. When
    /// the socket's buffer is full, the disconnect is tried again for a while.
    fn drop(&mut self) {
        self.link.acks().owed.clear();
        if self.disconnected || !self.socket.connected() {
            return;
        }
        if self.link.0.overrun.load(Ordering::Relaxed) {
            let why = json!({"code": session::close::POLICY, "reason": "too many events at once"});
            self.socket.emit(CLOSING, &why).ok();
        }
        let socket = self.socket.clone();
        if let Err(SocketError::InternalChannelFull) = socket.clone().disconnect() {
            tokio::spawn(async move {
                for _ in 0..DISCONNECT_TRIES {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if !socket.connected() || socket.clone().disconnect().is_ok() {
                        return;
                    }
                }
            });
        }
    }
}
