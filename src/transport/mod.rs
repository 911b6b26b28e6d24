//! Transports: the feed framed for clients. `session` is the WebSocket protocol (README
//! "Subscribing: WebSocket `/ws`") over any message sink/stream; `sse` and `poll` are the fallbacks
//! (README "Without a WebSocket") for clients
//! that cannot hold a WebSocket; `socketio` runs sessions over Socket.IO sockets (README
//! "Socket.IO"). Each takes the [`Feed`](crate::feed::Feed), its own settings, who
//! the client is, and a permit it holds without knowing what it is; the HTTP side (upgrade,
//! admission, topic lists) is `http::streams` (and `http::socketio`).

pub mod frames;
pub mod poll;
pub mod session;
pub mod socketio;
pub mod sse;
pub mod views;
