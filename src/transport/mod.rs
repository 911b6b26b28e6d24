//! Transports: the feed framed for clients. `session` is the WebSocket protocol (PROTOCOL §5)
//! over any message sink/stream; `ws` upgrades HTTP requests into sessions; `sse` and `poll` are
//! the fallbacks of PROTOCOL §6 for clients that cannot hold a WebSocket.

pub mod poll;
pub mod session;
pub mod sse;
pub mod ws;
