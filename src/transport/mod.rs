//! Transports: the feed framed for clients. `session` is the WebSocket protocol (PROTOCOL §5)
//! over any message sink/stream; `ws` upgrades HTTP requests into sessions.

pub mod session;
pub mod ws;
