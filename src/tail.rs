//! `pgfeed tail TOPIC... [--since C] [--url U] [--token T]` (README "Without a WebSocket"): a
//! client of the feed that prints every event as one JSON line on stdout, like `kubectl get -w`.
//!
//! It speaks the WebSocket protocol (README "Subscribing: WebSocket `/ws`") and keeps each topic's
//! cursor as events arrive, so after a dropped connection or a server restart it subscribes again
//! with `since` and prints every event once, in order, with nothing missing. It gives up, with one
//! line on stderr and a non-zero exit, only when it cannot reach the server at the start, when the
//! server refuses the token, or when a topic is refused.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::config::TailConfig;

/// Reconnect delays: doubling from the first to the last, so a restart is noticed quickly and a
/// server that stays down is not hammered.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the first connection may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Our pings, so a dead connection (no close, no reset) is noticed and resumed.
const PING_EVERY: Duration = Duration::from_secs(30);

/// Why a connection ended: some ends are final, the others are resumed.
enum End {
    /// Ctrl-C, or stdout closed (`pgfeed tail … | head`): exit 0.
    Done,
    /// Tell the user and exit non-zero.
    Fatal(anyhow::Error),
    /// The connection dropped: reconnect and resume.
    Dropped(String),
}

/// Runs until interrupted; `Err` is the one line to print before exiting non-zero.
pub async fn run(config: TailConfig, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let url = ws_url(&config.url)?;
    // Each topic's last cursor: where a reconnect resumes it. `None`: from now on.
    let mut cursors: HashMap<String, Option<String>> = config
        .topics
        .iter()
        .map(|t| (t.clone(), config.since.clone()))
        .collect();
    let mut connected_once = false;
    let mut backoff = BACKOFF_FIRST;
    tokio::pin!(stop);
    loop {
        let request = handshake(&url, config.token.as_deref())?;
        let attempt = tokio::select! {
            _ = &mut stop => return Ok(()),
            r = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)) => r,
        };
        let socket = match attempt {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(tungstenite::Error::Http(resp))) if matches!(resp.status().as_u16(), 401 | 403) => {
                bail!("{} refused the token (HTTP {})", config.url, resp.status())
            }
            Ok(Err(tungstenite::Error::Http(resp))) => {
                bail!(
                    "{} answered HTTP {} instead of a WebSocket: is it a pgfeed server?",
                    config.url,
                    resp.status()
                )
            }
            Ok(Err(e)) if !connected_once => bail!("cannot reach {}: {e}", config.url),
            Err(_) if !connected_once => bail!("cannot reach {}: no answer within {CONNECT_TIMEOUT:?}", config.url),
            Ok(Err(_)) | Err(_) => {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if connected_once {
            eprintln!("pgfeed: reconnected to {}; resuming", config.url);
        }
        connected_once = true;
        backoff = BACKOFF_FIRST;
        let end = tokio::select! {
            _ = &mut stop => End::Done,
            end = follow(socket, &mut cursors) => end,
        };
        match end {
            End::Done => return Ok(()),
            End::Fatal(e) => return Err(e),
            End::Dropped(why) => eprintln!("pgfeed: connection to {} lost ({why}); reconnecting", config.url),
        }
    }
}

/// `http://host:port` (or `ws://`) → `ws://host:port/ws`; `https://` (or `wss://`) →
/// `wss://…`, for a server behind a TLS-terminating proxy (certificates checked against the
/// system's roots; `SSL_CERT_FILE` names others).
fn ws_url(base: &str) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let (scheme, rest) = if let Some(rest) = base.strip_prefix("http://").or_else(|| base.strip_prefix("ws://")) {
        ("ws", rest)
    } else if let Some(rest) = base.strip_prefix("https://").or_else(|| base.strip_prefix("wss://")) {
        ("wss", rest)
    } else {
        bail!("{base}: the URL must look like http://HOST:PORT or https://HOST")
    };
    Ok(format!("{scheme}://{rest}/ws"))
}

/// The upgrade request, with the token as `Authorization: Bearer`: never in the URL, which proxies
/// and servers write to their access logs.
fn handshake(url: &str, token: Option<&str>) -> anyhow::Result<tungstenite::handshake::client::Request> {
    use tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow!("the token has characters an HTTP header cannot carry"))?;
        request
            .headers_mut()
            .insert(tungstenite::http::header::AUTHORIZATION, value);
    }
    Ok(request)
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Subscribes every topic from its cursor and prints events until the connection ends.
async fn follow(mut socket: Socket, cursors: &mut HashMap<String, Option<String>>) -> End {
    for (topic, since) in cursors.iter() {
        // The topic as the frame's id: an `error` answer echoes it, so we can say which topic failed.
        let mut frame = json!({"action": "subscribe", "topic": topic, "id": topic});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        if let Err(e) = socket.send(Message::Text(frame.to_string().into())).await {
            return End::Dropped(e.to_string());
        }
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut awaiting_pong = false;
    loop {
        let msg = tokio::select! {
            msg = socket.next() => msg,
            _ = ping.tick() => {
                if awaiting_pong {
                    return End::Dropped("no answer to a ping".into());
                }
                awaiting_pong = true;
                if let Err(e) = socket.send(Message::Text(json!({"action": "ping"}).to_string().into())).await {
                    return End::Dropped(e.to_string());
                }
                continue;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return match frame {
                    Some(f) if u16::from(f.code) == 1008 => {
                        End::Fatal(anyhow!("the server closed the connection: {}", f.reason))
                    }
                    // The token's `exp` passed: the same token would only be refused again.
                    Some(f) if u16::from(f.code) == 4001 => End::Fatal(anyhow!(
                        "the token expired; run again with a fresh --token and --since the last cursor printed"
                    )),
                    Some(f) => End::Dropped(format!("closed with {}: {}", u16::from(f.code), f.reason)),
                    None => End::Dropped("closed".into()),
                };
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return End::Dropped(e.to_string()),
            None => return End::Dropped("closed".into()),
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let topic = frame["topic"].as_str().unwrap_or_default().to_owned();
        match frame["type"].as_str().unwrap_or_default() {
            "subscribed" => {
                if let (Some(slot), Some(c)) = (cursors.get_mut(&topic), frame["cursor"].as_str()) {
                    *slot = Some(c.to_owned());
                }
            }
            "pong" => awaiting_pong = false,
            "refresh_needed" => {
                // Events were lost to retention (or the cursor is another log's): say so on stdout,
                // where the events go, and on stderr; then follow the topic from now on.
                eprintln!(
                    "pgfeed: {topic}: {}: events were missed; continuing from now",
                    frame["reason"]
                );
                if let Err(end) = print_line(&text) {
                    return end;
                }
                cursors.insert(topic.clone(), None);
                let frame = json!({"action": "subscribe", "topic": topic, "id": topic});
                if let Err(e) = socket.send(Message::Text(frame.to_string().into())).await {
                    return End::Dropped(e.to_string());
                }
            }
            "error" => {
                let about = frame["id"].as_str().map(|t| format!("{t}: ")).unwrap_or_default();
                return End::Fatal(anyhow!(
                    "{about}{} ({})",
                    frame["message"].as_str().unwrap_or("refused"),
                    frame["code"]
                ));
            }
            _ if frame.get("op").is_some() => {
                if let Err(end) = print_line(&text) {
                    return end;
                }
                if let (Some(slot), Some(c)) = (cursors.get_mut(&topic), frame["cursor"].as_str()) {
                    *slot = Some(c.to_owned());
                }
            }
            _ => {}
        }
    }
}

/// One JSON line on stdout, flushed at once (tail is read by people and pipes alike).
fn print_line(text: &str) -> Result<(), End> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(End::Done),
        Err(e) => Err(End::Fatal(anyhow::Error::new(e).context("writing to stdout"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_the_websocket_endpoint() {
        assert_eq!(ws_url("http://127.0.0.1:8080").unwrap(), "ws://127.0.0.1:8080/ws");
        assert_eq!(ws_url("http://h:1/").unwrap(), "ws://h:1/ws");
        assert_eq!(ws_url("https://h.example/").unwrap(), "wss://h.example/ws");
        assert_eq!(ws_url("wss://h:8443").unwrap(), "wss://h:8443/ws");
        assert!(ws_url("h:1").is_err());
        assert!(ws_url("ftp://h").is_err());
    }

    #[test]
    fn the_token_goes_in_the_authorization_header_never_the_url() {
        let request = handshake("ws://h:1/ws", Some("a.b+c")).unwrap();
        assert_eq!(request.uri().to_string(), "ws://h:1/ws");
        assert_eq!(request.headers()["authorization"], "Bearer a.b+c");
        assert!(handshake("ws://h:1/ws", None)
            .unwrap()
            .headers()
            .get("authorization")
            .is_none());
        assert!(handshake("ws://h:1/ws", Some("a\nb")).is_err());
    }
}
