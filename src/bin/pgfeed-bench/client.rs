//! Subscribers: real sockets to the real server, from 127.0.0.2… source addresses, speaking
//! pgfeed's own protocol on `/ws` or Socket.IO on `/socket.io/` ([`Transport`]).
//!
//! Socket.IO is spoken here by hand, over the same tokio-tungstenite socket, rather than through a
//! Socket.IO client crate: the few packets the bench needs (Engine.IO 4 open `0{…}`, ping `2` and
//! pong `3`; Socket.IO 5 connect `40`, event `42[…]`, ack `43<id>[…]`, disconnect `41`) are a
//! prefix each, the client then costs what the `/ws` one costs (the figures are the server's, not
//! a client library's), and events are read with the same no-parse [`parse_event`]. Only the
//! WebSocket transport is spoken: HTTP long-polling is not measured.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Which protocol the subscribers speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// pgfeed's own protocol on `/ws`.
    #[default]
    Ws,
    /// Socket.IO 5 over Engine.IO 4's WebSocket transport on `/socket.io/` (README "Socket.IO").
    Socketio,
}

impl Transport {
    /// Its `--transport` value, for the JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Socketio => "socketio",
        }
    }

    /// How the tables name it.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Ws => "WebSocket /ws",
            Transport::Socketio => "Socket.IO (Engine.IO 4 over WebSocket)",
        }
    }
}

/// A subscriber's socket and the protocol it speaks on it.
pub struct Sub {
    pub ws: Ws,
    pub transport: Transport,
}

/// Connections per loopback source address: below the planned per-IP limit (256 by default), so
/// every scenario stays valid once that limit exists. All of 127.0.0.0/8 is loopback on Linux.
const PER_SOURCE: usize = 200;

/// Microseconds since the Unix epoch, the clock the writers' timestamps use (same machine).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Opens subscriber number `index`'s WebSocket to `/ws`, from 127.0.0.(2 + index / 200).
pub async fn connect(server: SocketAddr, index: usize) -> anyhow::Result<Ws> {
    open(server, index, "/ws").await
}

/// Opens subscriber number `index` over `transport`; a Socket.IO one has joined the default
/// namespace when this returns.
pub async fn connect_over(server: SocketAddr, index: usize, transport: Transport) -> anyhow::Result<Sub> {
    let ws = match transport {
        Transport::Ws => connect(server, index).await?,
        Transport::Socketio => {
            let mut ws = open(server, index, "/socket.io/?EIO=4&transport=websocket").await?;
            sio_join(&mut ws).await?;
            ws
        }
    };
    Ok(Sub { ws, transport })
}

/// Subscribes `sub` to `topic` and waits for the answer; returns its cursor.
pub async fn subscribe_over(sub: &mut Sub, topic: &str) -> anyhow::Result<String> {
    match sub.transport {
        Transport::Ws => subscribe(&mut sub.ws, topic, None).await,
        Transport::Socketio => sio_subscribe(&mut sub.ws, topic).await,
    }
}

/// A WebSocket to `path` (and query) on `server`, from subscriber `index`'s source address.
async fn open(server: SocketAddr, index: usize, path: &str) -> anyhow::Result<Ws> {
    let third = 2 + index / PER_SOURCE;
    if third > 254 * 256 {
        bail!("too many subscribers for the loopback source addresses");
    }
    let source = Ipv4Addr::new(127, 0, (third / 256) as u8, (third % 256) as u8);
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .with_context(|| format!("binding {source}"))?;
    let stream = socket.connect(server).await.context("connecting to pgfeed")?;
    stream.set_nodelay(true)?;
    // Small, because tungstenite zero-fills the read buffer before each read, and 10,000 of them
    // live in this process during `idle`.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(format!("ws://{server}{path}"), stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// Sends a subscribe frame and waits for `subscribed`; returns its cursor.
pub async fn subscribe(ws: &mut Ws, topic: &str, since: Option<&str>) -> anyhow::Result<String> {
    let mut frame = json!({"action": "subscribe", "topic": topic});
    if let Some(since) = since {
        frame["since"] = since.into();
    }
    ws.send(Message::text(frame.to_string())).await?;
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                match v["type"].as_str() {
                    Some("subscribed") => return Ok(v["cursor"].as_str().unwrap_or_default().to_owned()),
                    Some("error" | "refresh_needed") => bail!("subscribe to {topic} answered {v}"),
                    _ => {}
                }
            }
        }
        bail!("connection closed before `subscribed`")
    })
    .await
    .context("no `subscribed` within 30 s")??;
    Ok(answer)
}

/// What the bench reads from an event frame: its place in the log, the row id, and the writer's
/// timestamp (the row's `body`, microseconds since the epoch).
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub seq: i64,
    pub pos: i32,
    pub id: i64,
    pub stamp_us: Option<i64>,
    /// The commit stamp's `committed_at` (µs since the epoch).
    pub committed_us: Option<i64>,
}

/// Reads the few fields the bench needs from an event frame without a full JSON parse: the client
/// shares the machine's two cores with the server, and parsing 200,000 frames a second into
/// `serde_json::Value`s would measure the client. The frame layout is pgfeed's own (event.rs).
pub fn parse_event(text: &str) -> Option<Seen> {
    let cursor = string_after(text, "\"cursor\":\"")?;
    let mut parts = cursor.rsplitn(3, '-');
    let pos = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let id = number_after(text, ",\"id\":")?;
    let stamp_us = text
        .find("\"body\":")
        .and_then(|i| string_after(text[i + 7..].trim_start(), "\""))
        .and_then(|b| b.parse().ok());
    let committed_us = string_after(text, "\"committed_at\":\"")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_micros());
    Some(Seen {
        seq,
        pos,
        id,
        stamp_us,
        committed_us,
    })
}

fn string_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let start = text.find(prefix)? + prefix.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

fn number_after(text: &str, prefix: &str) -> Option<i64> {
    let start = text.find(prefix)? + prefix.len();
    let rest = &text[start..];
    let len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..len].parse().ok()
}

/// What one subscriber received.
#[derive(Debug, Default)]
pub struct Tally {
    /// Row ids, in arrival order.
    pub ids: Vec<i64>,
    /// Receive time − writer timestamp, in µs, for frames that carry one.
    pub latencies_us: Vec<u32>,
    /// Receive time − the event's `committed_at`, in µs: the relay's part of the latency.
    pub relay_us: Vec<u32>,
    /// Frames whose (seq, pos) was not after the previous frame's.
    pub out_of_order: u64,
    /// When the last event arrived (µs since the epoch).
    pub last_at_us: i64,
    /// A close frame's code, if the server closed the connection.
    pub closed: Option<u16>,
    /// Frames that were not events.
    pub other: u64,
}

/// Waits for Engine.IO's open packet, then joins the default namespace (no `auth`: the bench's
/// server runs without `--jwt-secret`).
async fn sio_join(ws: &mut Ws) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = next_text(ws).await?;
            match packet(&text) {
                Packet::Open => ws.send(Message::text("40")).await?,
                Packet::Ping => ws.send(Message::text("3")).await?,
                Packet::Connected => return Ok(()),
                Packet::Refused(why) => bail!("Socket.IO connect refused: {why}"),
                Packet::Gone => bail!("disconnected before joining the namespace"),
                _ => {}
            }
        }
    })
    .await
    .context("not connected to the Socket.IO namespace within 30 s")?
}

/// `emit("subscribe", {topic}, ack)`, waiting for the ack; returns its cursor.
async fn sio_subscribe(ws: &mut Ws, topic: &str) -> anyhow::Result<String> {
    // The one ack this socket asks for: its id is 0.
    let emit = format!("420{}", json!(["subscribe", {"topic": topic}]));
    ws.send(Message::text(emit)).await?;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = next_text(ws).await?;
            match packet(&text) {
                Packet::Ping => ws.send(Message::text("3")).await?,
                Packet::Ack(0, args) => {
                    let v: serde_json::Value = serde_json::from_str(args)?;
                    match v[0]["cursor"].as_str() {
                        Some(cursor) if v[0]["error"].is_null() => return Ok(cursor.to_owned()),
                        _ => bail!("subscribe to {topic} answered {v}"),
                    }
                }
                Packet::Event("closing", why) => bail!("closed before the ack: {why}"),
                Packet::Gone => bail!("disconnected before the ack"),
                _ => {}
            }
        }
    })
    .await
    .context("no subscribe ack within 30 s")?
}

/// The next text message, skipping WebSocket control frames.
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(t) => return Ok(t.as_str().to_owned()),
            Message::Close(frame) => bail!("the server closed the WebSocket: {frame:?}"),
            _ => {}
        }
    }
    bail!("connection closed")
}

/// One Engine.IO 4 / Socket.IO 5 packet of the default namespace, as far as the bench reads it.
#[derive(Debug, PartialEq, Eq)]
enum Packet<'a> {
    /// Engine.IO open `0{sid, pingInterval, …}`.
    Open,
    /// Engine.IO ping `2`: unanswered, the server closes the connection after its ping timeout.
    Ping,
    /// Socket.IO connect `40{sid}`: the namespace is joined.
    Connected,
    /// Socket.IO connect error `44{message}`.
    Refused(&'a str),
    /// Socket.IO event `42["name",data]`: its name, and the rest after the name (`,data]`).
    Event(&'a str, &'a str),
    /// Socket.IO ack `43<id>[args]`: its id and its arguments array.
    Ack(u64, &'a str),
    /// Engine.IO close `1` or Socket.IO disconnect `41`.
    Gone,
    Other,
}

fn packet(text: &str) -> Packet<'_> {
    match text.as_bytes() {
        [b'0', ..] => Packet::Open,
        [b'1'] | [b'4', b'1', ..] => Packet::Gone,
        [b'2'] => Packet::Ping,
        [b'4', b'0', ..] => Packet::Connected,
        [b'4', b'4', ..] => Packet::Refused(&text[2..]),
        // Event names are pgfeed's types and `closing`: plain words, never an escaped quote.
        [b'4', b'2', ..] => text[2..]
            .strip_prefix("[\"")
            .and_then(|rest| rest.find('"').map(|end| Packet::Event(&rest[..end], &rest[end + 1..])))
            .unwrap_or(Packet::Other),
        [b'4', b'3', ..] => {
            let rest = &text[2..];
            let digits = rest.find('[').unwrap_or(rest.len());
            rest[..digits]
                .parse()
                .map_or(Packet::Other, |id| Packet::Ack(id, &rest[digits..]))
        }
        _ => Packet::Other,
    }
}

/// Reads events until the count published on `target` is reached, the server closes, or
/// `deadline` passes; then closes the socket.
pub async fn receive(mut sub: Sub, target: watch::Receiver<Option<usize>>, deadline: Instant) -> Tally {
    let tally = receive_frames(&mut sub.ws, Speaker::Pgfeed(sub.transport), target, deadline).await;
    let _ = sub.ws.close(None).await;
    tally
}

/// [`receive`] on a socket that stays open afterwards (the next pass reads on it).
pub async fn receive_pass(sub: &mut Sub, target: watch::Receiver<Option<usize>>, deadline: Instant) -> Tally {
    receive_frames(&mut sub.ws, Speaker::Pgfeed(sub.transport), target, deadline).await
}

/// [`receive`] on a `/ws` socket that stays open afterwards.
pub async fn receive_on(ws: &mut Ws, target: watch::Receiver<Option<usize>>, deadline: Instant) -> Tally {
    receive_frames(ws, Speaker::Pgfeed(Transport::Ws), target, deadline).await
}

/// Who is on the other end of a socket the bench reads.
#[derive(Debug, Clone, Copy)]
enum Speaker {
    Pgfeed(Transport),
    /// The bare-NOTIFY relay (`relay.rs`): rows as `row_to_json` wrote them, in no promised order.
    Relay,
}

async fn receive_frames(
    ws: &mut Ws,
    speaker: Speaker,
    mut target: watch::Receiver<Option<usize>>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut last = (i64::MIN, i32::MIN);
    loop {
        if let Some(n) = *target.borrow() {
            if tally.ids.len() >= n {
                break;
            }
        }
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let event = match speaker {
                        Speaker::Relay => {
                            match parse_relay(t.as_str()) {
                                Some((id, stamp_us)) => tally.record_unordered(id, stamp_us, None),
                                None => tally.other += 1,
                            }
                            continue;
                        }
                        Speaker::Pgfeed(Transport::Ws) => Some(t.as_str()),
                        Speaker::Pgfeed(Transport::Socketio) => match packet(t.as_str()) {
                            // Before the namespace disconnect, the `/ws` close code.
                            Packet::Event("closing", why) => {
                                tally.closed = Some(number_after(why, "\"code\":").map_or(1005, |c| c as u16));
                                continue;
                            }
                            Packet::Event(_, data) => Some(data),
                            Packet::Ping => {
                                if ws.send(Message::text("3")).await.is_err() {
                                    tally.closed.get_or_insert(1006);
                                    break;
                                }
                                continue;
                            }
                            Packet::Gone => {
                                tally.closed.get_or_insert(1005);
                                break;
                            }
                            _ => None,
                        },
                    };
                    match event.and_then(parse_event) {
                        Some(seen) => tally.record(seen, &mut last),
                        None => tally.other += 1,
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    tally.closed.get_or_insert(frame.map_or(1005, |f| f.code.into()));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    tally.closed.get_or_insert(1006);
                    break;
                }
            },
            changed = target.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    tally
}

/// Opens subscriber number `index`'s WebSocket to the bare-NOTIFY relay (`relay.rs`), from the
/// same source addresses as [`connect`].
pub async fn connect_relay(relay: SocketAddr, index: usize) -> anyhow::Result<Ws> {
    open(relay, index, "/ws").await
}

/// The row id and the writer's timestamp from a bare relay's frame: `row_to_json` of a
/// `messages` row, `{"id":7,"study_id":…,"body":"1700000000123456",…}`.
pub fn parse_relay(text: &str) -> Option<(i64, Option<i64>)> {
    let id = number_after(text, "{\"id\":")?;
    let stamp_us = string_after(text, "\"body\":\"").and_then(|b| b.parse().ok());
    Some((id, stamp_us))
}

/// What one relay subscriber received, until the count published on `target`, a close, or
/// `deadline`. The relay promises no order, so none is checked.
pub async fn receive_relay(ws: &mut Ws, target: watch::Receiver<Option<usize>>, deadline: Instant) -> Tally {
    receive_frames(ws, Speaker::Relay, target, deadline).await
}

impl Tally {
    /// Counts one event; `last` is the (seq, pos) of the one before.
    fn record(&mut self, seen: Seen, last: &mut (i64, i32)) {
        if (seen.seq, seen.pos) <= *last {
            self.out_of_order += 1;
        }
        *last = (seen.seq, seen.pos);
        self.record_unordered(seen.id, seen.stamp_us, seen.committed_us);
    }

    /// A row received now: its id, and its latencies from the writer's stamp and the commit.
    fn record_unordered(&mut self, id: i64, stamp_us: Option<i64>, committed_us: Option<i64>) {
        let at = now_us();
        self.ids.push(id);
        if let Some(stamp) = stamp_us {
            self.latencies_us.push((at - stamp).clamp(0, u32::MAX as i64) as u32);
        }
        if let Some(c) = committed_us {
            self.relay_us.push((at - c).clamp(0, u32::MAX as i64) as u32);
        }
        self.last_at_us = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_frame_yields_its_position_id_and_stamp() {
        let frame = r#"{"type":"message_created","topic":"messages","cursor":"ab12-41-3","table":"messages","op":"insert","id":7,"data":{"id": 7, "body": "1700000000123456", "author": "w1"},"committed_at":"2023-11-14T22:13:20.123457Z"}"#;
        let seen = parse_event(frame).unwrap();
        assert_eq!(
            (seen.seq, seen.pos, seen.id, seen.stamp_us),
            (41, 3, 7, Some(1_700_000_000_123_456))
        );
        assert_eq!(seen.committed_us, Some(1_700_000_000_123_457));
        assert!(parse_event(r#"{"type":"pong"}"#).is_none());
    }

    #[test]
    fn a_relay_frame_yields_its_row_id_and_stamp() {
        let frame = r#"{"id":7,"study_id":3,"author":"w1","body":"1700000000123456","version":1}"#;
        assert_eq!(parse_relay(frame), Some((7, Some(1_700_000_000_123_456))));
        assert_eq!(parse_relay(r#"{"type":"pong"}"#), None);
    }

    #[test]
    fn socketio_packets_are_told_apart_by_their_prefix() {
        assert_eq!(packet(r#"0{"sid":"x","pingInterval":25000}"#), Packet::Open);
        assert_eq!(packet("2"), Packet::Ping);
        assert_eq!(packet(r#"40{"sid":"y"}"#), Packet::Connected);
        assert_eq!(
            packet(r#"44{"message":"unauthorized: no token"}"#),
            Packet::Refused(r#"{"message":"unauthorized: no token"}"#)
        );
        assert_eq!(
            packet(r#"430[{"cursor":"c","topic":"t"}]"#),
            Packet::Ack(0, r#"[{"cursor":"c","topic":"t"}]"#)
        );
        assert_eq!(packet("41"), Packet::Gone);
        assert_eq!(packet("1"), Packet::Gone);
        assert_eq!(packet("3"), Packet::Other);
        let frame = r#"42["message_created",{"type":"message_created","cursor":"ab12-41-3","id":7,"data":{"id":7,"body":"1700000000123456"}}]"#;
        let Packet::Event(name, data) = packet(frame) else {
            panic!("not an event: {frame}");
        };
        assert_eq!(name, "message_created");
        let seen = parse_event(data).unwrap();
        assert_eq!(
            (seen.seq, seen.pos, seen.id, seen.stamp_us),
            (41, 3, 7, Some(1_700_000_000_123_456))
        );
    }
}
