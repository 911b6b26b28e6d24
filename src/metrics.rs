//! `GET /metrics` (README "Operating it"): Prometheus text, from `prometheus-client` (the
//! Prometheus project's own Rust client). Each server has its own registry — no global recorder —
//! and every histogram is a fixed set of bucket counters, so memory stays bounded however rarely it
//! is scraped.
//!
//! Hot-path rule: sessions count deliveries per socket flush, not per event, and observe the
//! commit-to-send lag once per flush (of the newest event written).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
    Poll,
    SocketIo,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::SocketIo => "socketio",
        }
    }
}

impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: Transport,
}

/// Where a read of a server with `--replica-url` went (`db::replica`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ReadOn {
    Standby,
    Primary,
}

impl EncodeLabelValue for ReadOn {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let on = match self {
            ReadOn::Standby => "standby",
            ReadOn::Primary => "primary",
        };
        EncodeLabelValue::encode(&on, encoder)
    }
}

/// What a read of a server with `--replica-url` was for.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ReadFor {
    /// The listener's read of the log (a page relayed to the hub).
    Log,
    /// A client's resume or long-poll page.
    Resume,
    /// A snapshot (`snapshot: true`).
    Snapshot,
    /// A live view's rows and count.
    View,
}

impl EncodeLabelValue for ReadFor {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let what = match self {
            ReadFor::Log => "log",
            ReadFor::Resume => "resume",
            ReadFor::Snapshot => "snapshot",
            ReadFor::View => "view",
        };
        EncodeLabelValue::encode(&what, encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabel {
    pub on: ReadOn,
    pub what: ReadFor,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// One of `http::observe::METHODS`, or `other`: never the client's own spelling.
    pub method: String,
    /// The route pattern (`/api/studies/{id}`), never the raw path: bounded cardinality.
    pub route: String,
    pub status: u16,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Family<TransportLabel, Gauge>,
    pub subscriptions: Family<TransportLabel, Gauge>,
    pub deliveries: Family<TransportLabel, Counter>,
    pub slow_consumer_closes: Family<TransportLabel, Counter>,
    pub events_relayed: Counter,
    pub commit_to_send: Histogram,
    pub listener_reconnects: Counter,
    pub listener_polling: Gauge,
    pub listener_polls: Counter,
    /// Wake-ups answered by reading the one commit they announced, by its seq.
    pub listener_commit_reads: Counter,
    pub last_relayed_seq: Gauge,
    /// 1 on the node that leads (settles and writes the watermark), 0 on followers.
    pub leader: Gauge,
    pub generation: Gauge,
    pub watermark_seq: Gauge,
    /// 1 while the leader waits for the durable standby to flush (`--durable-watermark standby`).
    pub watermark_waiting: Gauge,
    /// How far this server is behind the log (`db::watermark::lag`), set at scrape time.
    pub lag_seqs: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub log_events: Gauge,
    pub oldest_event_age: Gauge<f64, AtomicU64>,
    pub http_requests: Family<HttpLabels, Counter>,
    /// `--replica-url`: log reads, resumes, snapshots and view reads, by where they went.
    pub replica_reads: Family<ReadLabel, Counter>,
    /// `--replica-url`: 1 while reads may go to the standby, 0 while they go to the primary.
    pub replica_usable: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pgfeed");
        let m = Metrics {
            connections: Family::default(),
            subscriptions: Family::default(),
            deliveries: Family::default(),
            slow_consumer_closes: Family::default(),
            events_relayed: Counter::default(),
            // 1 ms … ~33 s
            commit_to_send: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            listener_reconnects: Counter::default(),
            listener_polling: Gauge::default(),
            listener_polls: Counter::default(),
            listener_commit_reads: Counter::default(),
            last_relayed_seq: Gauge::default(),
            leader: Gauge::default(),
            generation: Gauge::default(),
            watermark_seq: Gauge::default(),
            watermark_waiting: Gauge::default(),
            lag_seqs: Gauge::default(),
            lag_seconds: Gauge::default(),
            log_events: Gauge::default(),
            oldest_event_age: Gauge::default(),
            http_requests: Family::default(),
            replica_reads: Family::default(),
            replica_usable: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("connections", "Open client connections", m.connections.clone());
        registry.register("subscriptions", "Active topic subscriptions", m.subscriptions.clone());
        registry.register("deliveries", "Events written to clients", m.deliveries.clone());
        registry.register(
            "slow_consumer_closes",
            "Connections closed because their queue overflowed (4008)",
            m.slow_consumer_closes.clone(),
        );
        registry.register(
            "events_relayed",
            "Events read from the log and published",
            m.events_relayed.clone(),
        );
        registry.register(
            "commit_to_send_seconds",
            "Time from a change's commit to its write to a client socket",
            m.commit_to_send.clone(),
        );
        registry.register(
            "listener_reconnects",
            "Times the LISTEN connection was lost and re-established",
            m.listener_reconnects.clone(),
        );
        registry.register(
            "listener_polling",
            "1 while the listener polls the log under load (writers skip NOTIFY), 0 while it waits for wake-ups",
            m.listener_polling.clone(),
        );
        registry.register(
            "listener_polls",
            "Times the listener switched from wake-ups to polling",
            m.listener_polls.clone(),
        );
        registry.register(
            "listener_commit_reads",
            "Wake-ups answered by reading the one commit they announced, by its seq (the others read from the listener's position)",
            m.listener_commit_reads.clone(),
        );
        registry.register(
            "last_relayed_seq",
            "Commit seq of the newest relayed event",
            m.last_relayed_seq.clone(),
        );
        registry.register(
            "leader",
            "1 on the server that leads its database (settles the log, writes the watermark), else 0",
            m.leader.clone(),
        );
        registry.register(
            "generation",
            "The log generation this server serves (a new one after each failover)",
            m.generation.clone(),
        );
        registry.register(
            "watermark_seq",
            "The newest watermark this server knows: it delivers nothing past it",
            m.watermark_seq.clone(),
        );
        registry.register(
            "watermark_waiting",
            "1 while the leader waits for the durable standby to flush (--durable-watermark standby)",
            m.watermark_waiting.clone(),
        );
        registry.register(
            "lag_seqs",
            "The newest committed seq minus the one this server relayed last (0 when caught up)",
            m.lag_seqs.clone(),
        );
        registry.register(
            "lag_seconds",
            "How long ago the first commit this server has not relayed yet committed (0 when caught up)",
            m.lag_seconds.clone(),
        );
        registry.register("log_events", "Events kept in the log (estimate)", m.log_events.clone());
        registry.register(
            "oldest_event_age_seconds",
            "Age of the oldest commit kept in the log",
            m.oldest_event_age.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "replica_reads",
            "With --replica-url: log reads, resumes, snapshots and live view reads, by where they went",
            m.replica_reads.clone(),
        );
        registry.register(
            "replica_usable",
            "With --replica-url: 1 while reads go to the standby, 0 while it is down or behind",
            m.replica_usable.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a connection as open until the guard drops.
    pub fn connection(self: &std::sync::Arc<Self>, transport: Transport) -> ConnectionGuard {
        self.connections.get_or_create(&TransportLabel { transport }).inc();
        ConnectionGuard {
            metrics: self.clone(),
            transport,
            subscriptions: 0,
        }
    }
}

/// One open connection in the `connections` and `subscriptions` gauges; undone on drop.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: std::sync::Arc<Metrics>,
    transport: Transport,
    subscriptions: i64,
}

impl ConnectionGuard {
    fn label(&self) -> TransportLabel {
        TransportLabel {
            transport: self.transport,
        }
    }

    /// Records the connection's current number of subscriptions.
    pub fn set_subscriptions(&mut self, n: usize) {
        let n = n as i64;
        self.metrics
            .subscriptions
            .get_or_create(&self.label())
            .inc_by(n - self.subscriptions);
        self.subscriptions = n;
    }

    /// Records `n` events written in one flush, the newest committed at `committed_at`.
    pub fn delivered(&self, n: u64, committed_at: chrono::DateTime<chrono::Utc>) {
        self.metrics.deliveries.get_or_create(&self.label()).inc_by(n);
        let lag = (chrono::Utc::now() - committed_at)
            .num_microseconds()
            .unwrap_or(0)
            .max(0);
        self.metrics.commit_to_send.observe(lag as f64 / 1e6);
    }

    pub fn slow_consumer(&self) {
        self.metrics.slow_consumer_closes.get_or_create(&self.label()).inc();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.set_subscriptions(0);
        self.metrics.connections.get_or_create(&self.label()).dec();
    }
}
