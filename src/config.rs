//! Command line and settings (README "Running it"). Every setting is a flag and an environment
//! variable; the flag wins. `--help` lists each with its variable and default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "pgfeed", version, args_conflicts_with_subcommands = true)]
#[command(about = "PostgreSQL as a live change feed over WebSocket, SSE and long-poll")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log format: `human` lines or one JSON object per line. Verbosity comes from RUST_LOG.
    #[arg(long, env = "PGFEED_LOG_FORMAT", default_value = "human", value_enum, global = true)]
    pub log_format: LogFormat,
    /// Settings for `serve`, also accepted without a subcommand (`pgfeed` = `pgfeed serve`).
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

// Parsed once at start: the size of `Serve`'s settings costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then the HTTP/WebSocket server (the default).
    Serve(ServeConfig),
    /// Apply the capture code and the schema migrations, then exit.
    Migrate(DbConfig),
    /// Exit 0 when the server at ADDR answers /healthz with 200 (for container health checks).
    Healthcheck {
        /// The server's address.
        #[arg(long, env = "PGFEED_BIND", default_value = "127.0.0.1:8080")]
        bind: String,
    },
    /// Print every event of some topics as one JSON line each, resuming by itself after a drop.
    Tail(TailConfig),
}

/// `pgfeed tail`: a client of a running server.
#[derive(Debug, Clone, Args)]
pub struct TailConfig {
    /// Topics to follow, e.g. `studies` `studies:42` (README "Subscribing: WebSocket `/ws`").
    #[arg(required = true, value_name = "TOPIC")]
    pub topics: Vec<String>,

    /// Start with every event after this cursor, instead of from now.
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<String>,

    /// The pgfeed server: http://HOST:PORT, or https://HOST behind a TLS-terminating proxy
    /// (certificates checked against the system's roots; SSL_CERT_FILE names a PEM file of others).
    #[arg(long, env = "PGFEED_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// JWT to present when the server has auth on.
    #[arg(long, env = "PGFEED_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Where the database is: a URL, or the embedded cluster under the data dir.
#[derive(Debug, Clone, Args)]
pub struct DbConfig {
    /// PostgreSQL URL. Without it, pgfeed runs a private cluster under --data-dir (embedded mode).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Embedded cluster and other local state.
    #[arg(long, env = "PGFEED_DATA_DIR", default_value = ".pgfeed")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub db: DbConfig,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "PGFEED_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Direct PostgreSQL URL for the LISTEN session, when --database-url goes through a
    /// transaction-pooling PgBouncer (which breaks LISTEN). Must reach the primary.
    #[arg(long, env = "PGFEED_LISTEN_DATABASE_URL", hide_env_values = true)]
    pub listen_database_url: Option<String>,

    /// HS256 secret for JWT auth. Without it there is no auth, and only loopback binds are allowed.
    #[arg(long, env = "PGFEED_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// How long events are kept for resume (e.g. 7d, 12h, 30m).
    #[arg(long, env = "PGFEED_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// Serve on a non-loopback address without --jwt-secret: anyone who can reach the port
    /// can read and write everything. For trusted networks only; logged loudly at start.
    /// Browsers are still kept out: the Host must be an IP address, a loopback name or the host of
    /// an --allowed-origins entry, and other sites' pages may not open streams or write.
    #[arg(long, env = "PGFEED_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Open WebSocket/SSE/long-poll connections allowed from one client address (an IPv6 /64
    /// counts as one; behind --trusted-proxies, the address they forward).
    #[arg(long, env = "PGFEED_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Open WebSocket/SSE/long-poll connections allowed in total.
    #[arg(long, env = "PGFEED_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Topics one connection may subscribe to.
    #[arg(long, env = "PGFEED_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,

    /// Client frames per second one WebSocket may send (bursts of twice that); excess frames are
    /// answered `rate_limited`, and persistent excess closes the connection with 1008.
    #[arg(long, env = "PGFEED_MAX_FRAMES_PER_SECOND", default_value_t = 100)]
    pub max_frames_per_second: u32,

    /// Comma-separated browser origins allowed to open WebSockets and SSE streams
    /// (e.g. https://admin.example.com), and given CORS headers (REST, SSE, long-poll) so their
    /// pages can read the answers. Empty: streams from any origin (without --jwt-secret: only
    /// from pages pgfeed serves itself), no CORS headers. Requests without Origin are allowed.
    #[arg(long, env = "PGFEED_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Largest accepted upload (e.g. 25MiB, 500KiB, 1GB).
    #[arg(long, env = "PGFEED_MAX_UPLOAD", default_value = "25MiB", value_parser = parse_size)]
    pub max_upload: u64,

    /// The longest a REST request (an upload included) may take before it is cut off with 503.
    #[arg(long, env = "PGFEED_REQUEST_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Time a client has to send a request's headers (slowloris protection), and also to send its
    /// first bytes after connecting; an HTTP/2 connection with no request open this long is closed.
    #[arg(long, env = "PGFEED_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Commits per second above which the listener stops waiting for NOTIFY wake-ups and polls
    /// the log instead (a read 1 ms after the previous one started); writers skip their NOTIFY
    /// while no listener waits.
    /// 0 polls as soon as anything commits.
    #[arg(long, env = "PGFEED_POLL_ABOVE", default_value_t = 1000)]
    pub poll_above: u32,

    /// How long a live view's first frame waits for its `count` before it goes out with
    /// `"count":null`, the count following in a delta (README "Live views").
    #[arg(long, env = "PGFEED_VIEW_COUNT_WAIT", default_value = "20ms", value_parser = humantime::parse_duration, hide = true)]
    pub view_count_wait: Duration,

    /// Interval of the server's WebSocket pings; a peer that misses one is dropped.
    #[arg(long, env = "PGFEED_WS_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, hide = true)]
    pub ws_ping_interval: Duration,

    /// With --jwt-secret: a token must carry this `aud` (audience) claim.
    #[arg(long, env = "PGFEED_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// With --jwt-secret: a token must carry this `iss` (issuer) claim.
    #[arg(long, env = "PGFEED_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// File uploads and downloads that may run at once; one more is answered 503 `busy`.
    #[arg(long, env = "PGFEED_MAX_TRANSFERS", default_value_t = 16,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_transfers: usize,

    /// The longest a download may wait for its client to take the next 256 KiB; a slower reader
    /// is cut off (its connection closed).
    #[arg(long, env = "PGFEED_TRANSFER_STALL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub transfer_stall_timeout: Duration,

    /// Messages and files one member token may post per minute (all at once, then one every
    /// 60/N s); more answer 429 `rate_limited` with Retry-After. Admins are not limited. 0: no limit.
    #[arg(long, env = "PGFEED_MAX_MEMBER_POSTS_PER_MINUTE", default_value_t = 60)]
    pub max_member_posts_per_minute: u32,

    /// Open TCP connections allowed in total; one more is closed at once. Keep it above
    /// --max-connections (each WebSocket or SSE stream over HTTP/1 is one) and below the open-file
    /// limit (raised to its hard limit at start).
    #[arg(long, env = "PGFEED_MAX_TCP_CONNECTIONS", default_value_t = 25_000)]
    pub max_tcp_connections: usize,

    /// Open TCP connections allowed from one client address (an IPv6 /64 counts as one address);
    /// one more is closed at once. Connections from --trusted-proxies count in the total only.
    #[arg(long, env = "PGFEED_MAX_TCP_CONNECTIONS_PER_IP", default_value_t = 512)]
    pub max_tcp_connections_per_ip: usize,

    /// Comma-separated reverse proxies (addresses or CIDR networks, e.g. 127.0.0.1,10.0.0.0/8)
    /// whose X-Forwarded-For / Forwarded headers name the client for per-client limits: the
    /// right-most address in them that is not a trusted proxy. Headers from other peers are
    /// ignored. Empty: every client is its socket's peer address.
    #[arg(long, env = "PGFEED_TRUSTED_PROXIES", default_value = "", hide_default_value = true)]
    pub trusted_proxies: crate::http::client::TrustedProxies,

    /// Largest snapshot a WebSocket subscribe or refresh may send (its JSON, e.g. 16MiB); a larger
    /// one is answered `too_large` (read it page by page through the REST API instead).
    #[arg(long, env = "PGFEED_MAX_SNAPSHOT", default_value = "16MiB", value_parser = parse_size)]
    pub max_snapshot: u64,

    /// Commits one log read of a resume (WebSocket `since`, SSE, long-poll) walks at most; a
    /// resume goes on read by read, so a quiet topic with an old cursor costs bounded reads.
    #[arg(long, env = "PGFEED_MAX_RESUME_SCAN", default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_resume_scan: i64,

    /// What the leader's watermark waits for before any server delivers a commit (README
    /// "Running many servers and failing over"): `local`, its commit on the primary; `standby`,
    /// also its flush on the standby (`--durable-standby`), so a failover to that standby costs
    /// no client a refresh, at the price of a standby round trip per batch, and of events
    /// waiting while that standby is away.
    #[arg(long, env = "PGFEED_DURABLE_WATERMARK", default_value = "local", value_enum)]
    pub durable_watermark: DurableWatermark,

    /// With `--durable-watermark standby`: the `application_name` of the standby in
    /// `pg_stat_replication` (its `cluster_name`, or `application_name` in its
    /// `primary_conninfo`). Without it, every standby connected must have flushed, and at least
    /// one must be connected.
    #[arg(long, env = "PGFEED_DURABLE_STANDBY", value_parser = parse_standby_name)]
    pub durable_standby: Option<String>,

    /// A hot standby of the database (PostgreSQL URL) to read the log, resumes, snapshots and
    /// live views from, up to the watermark it has replayed, so the primary's read load stays
    /// flat as servers are added (README "Running many servers and failing over"). While it is
    /// down or behind, this server reads from the primary. Writes, REST and the leader stay on
    /// the primary.
    #[arg(long, env = "PGFEED_REPLICA_URL", hide_env_values = true)]
    pub replica_url: Option<String>,
}

/// `--durable-watermark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurableWatermark {
    /// Deliver what is committed on the primary.
    Local,
    /// Deliver what the standby has flushed too.
    Standby,
}

/// A standby's `application_name`: what PostgreSQL keeps of one (`NAMEDATALEN - 1` bytes, printable ASCII).
fn parse_standby_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 63 || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("{s:?} is no standby name: 1 to 63 printable ASCII characters"));
    }
    Ok(s.to_owned())
}

impl ServeConfig {
    /// The settings `pgfeed serve` would run with given no flags (for tests and the benchmark).
    pub fn defaults() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeConfig,
        }
        // Parsing an empty command line with the declared defaults cannot fail.
        Only::try_parse_from(["pgfeed"])
            .map(|o| o.serve)
            .unwrap_or_else(|e| panic!("default settings: {e}"))
    }
}

/// `25MiB`, `500KiB`, `1GB`, `1048576`: a byte count with an optional binary or decimal unit.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 25MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("25MiB"), Ok(25 << 20));
        assert_eq!(parse_size("1kb"), Ok(1000));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn defaults_match_the_protocol() {
        let c = ServeConfig::defaults();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(c.retention, Duration::from_secs(7 * 86400));
        assert_eq!(c.max_upload, 25 << 20);
        assert_eq!(c.max_connections_per_ip, 256);
        assert!(c.max_tcp_connections > c.max_connections);
        assert!(c.max_tcp_connections_per_ip > c.max_connections_per_ip);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.durable_watermark, DurableWatermark::Local);
        assert_eq!(c.durable_standby, None);
        assert_eq!(c.replica_url, None);
    }

    #[test]
    fn the_durable_watermark_is_local_or_standby_and_a_standby_name_is_bounded() {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let c = Only::try_parse_from([
            "pgfeed",
            "--durable-watermark",
            "standby",
            "--durable-standby",
            "replica1",
        ])
        .unwrap();
        assert_eq!(c.serve.durable_watermark, DurableWatermark::Standby);
        assert_eq!(c.serve.durable_standby.as_deref(), Some("replica1"));
        assert!(Only::try_parse_from(["pgfeed", "--durable-watermark", "remote"]).is_err());
        let c = Only::try_parse_from(["pgfeed", "--replica-url", "postgres://r@standby/app"]).unwrap();
        assert_eq!(c.serve.replica_url.as_deref(), Some("postgres://r@standby/app"));
        let long = "x".repeat(64);
        for bad in ["", long.as_str(), "a\nb"] {
            assert!(
                Only::try_parse_from(["pgfeed", "--durable-standby", bad]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn trusted_proxies_parse_as_a_list_and_garbage_is_refused() {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let c = Only::try_parse_from(["pgfeed", "--trusted-proxies", "127.0.0.1, 10.0.0.0/8,fd00::/8,"]).unwrap();
        let listed: Vec<String> = c.serve.trusted_proxies.nets().iter().map(|n| n.to_string()).collect();
        assert_eq!(listed, ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
        let err = Only::try_parse_from(["pgfeed", "--trusted-proxies", "nginx"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("not an IP address"), "{err}");
    }
}
