//! Transports: the feed framed for clients. `session` is the WebSocket protocol (PROTOCOL §5)
//! over any message sink/stream; `sse` and `poll` are the fallbacks of PROTOCOL §6 for clients
//! that cannot hold a WebSocket. Each takes the [`Feed`](crate::feed::Feed), its own settings, who
//! the client is, and a permit it holds without knowing what it is; the HTTP side (upgrade,
//! admission, topic lists) is `http::streams`.

pub mod frames;
pub mod poll;
pub mod session;
pub mod sse;
