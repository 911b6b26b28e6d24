//! The test harness: one PostgreSQL per test binary, one database per test, real servers on
//! port 0, real WebSocket clients, and psql as the outside writer.
//!
//! The cluster is the embedded-mode code (`Cluster::start_ephemeral`), unless `DATABASE_URL`
//! names a server to use instead. A template database is migrated once; each test clones it,
//! gets its own log epoch, and drops its database when it passes (a failed test's is kept).

pub mod app;
pub mod browser;
pub mod db;
pub mod events;
pub mod process;
pub mod replica;
pub mod rest;
pub mod sse;
pub mod views;
pub mod ws;

use std::time::Duration;

pub use app::TestApp;
pub use db::TestDb;
pub use events::{assert_in_log_order_and_each_writer_in_its_own, ids, labels, position};
pub use views::{assert_rows, ViewRows};
pub use ws::{ws_over, Seen, WsClient};

/// How long a test waits for something it expects before failing with a clear message.
pub const PATIENCE: Duration = Duration::from_secs(20);
