//! WebSocket subscribers: real sockets to the real server, from 127.0.0.2… source addresses.

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
    let (ws, _) = tokio_tungstenite::client_async_with_config(format!("ws://{server}/ws"), stream, Some(config))
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

/// Reads events until the count published on `target` is reached, the server closes, or
/// `deadline` passes.
pub async fn receive(mut ws: Ws, target: watch::Receiver<Option<usize>>, deadline: Instant) -> Tally {
    let tally = receive_on(&mut ws, target, deadline).await;
    let _ = ws.close(None).await;
    tally
}

/// [`receive`] on a socket that stays open afterwards.
pub async fn receive_on(ws: &mut Ws, mut target: watch::Receiver<Option<usize>>, deadline: Instant) -> Tally {
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
                Some(Ok(Message::Text(t))) => match parse_event(t.as_str()) {
                    Some(seen) => {
                        let at = now_us();
                        if (seen.seq, seen.pos) <= last {
                            tally.out_of_order += 1;
                        }
                        last = (seen.seq, seen.pos);
                        tally.ids.push(seen.id);
                        if let Some(stamp) = seen.stamp_us {
                            tally.latencies_us.push((at - stamp).clamp(0, u32::MAX as i64) as u32);
                        }
                        if let Some(c) = seen.committed_us {
                            tally.relay_us.push((at - c).clamp(0, u32::MAX as i64) as u32);
                        }
                        tally.last_at_us = at;
                    }
                    None => tally.other += 1,
                },
                Some(Ok(Message::Close(frame))) => {
                    tally.closed = Some(frame.map_or(1005, |f| f.code.into()));
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
}
