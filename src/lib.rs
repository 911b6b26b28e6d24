//! pgfeed: PostgreSQL as a live change feed.
//!
//! The pipeline, in order:
//! - capture (`sql/capture.sql`): triggers append every change of a tracked table to a log,
//!   number each commit in commit order, and `NOTIFY pgfeed` as a wake-up;
//! - [`listener`]: one LISTEN session per server reads the log after its last position on every
//!   wake-up and (re)connect, and publishes each event once to the
//! - [`hub`]: topic → subscribers, one bounded queue per connection, a ring of recent events;
//! - [`feed`]: topics, cursors, snapshots, and resume joined to the live stream;
//! - [`transport`]: WebSocket sessions (and the fallbacks, and Socket.IO) that frame it for clients;
//!
//! beside [`db`] (the pool, migrations, queries) and [`http`] (router, REST, health).
//! [`app`] assembles them; [`tail`] is the command-line client; [`embedded`] runs a private PostgreSQL when no URL is given.

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod embedded;
pub mod event;
pub mod feed;
pub mod http;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod shutdown;
pub mod tail;
pub mod telemetry;
pub mod transport;
