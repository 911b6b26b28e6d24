//! Command line and settings (PROTOCOL §1). Every setting is a flag and an environment variable;
//! the flag wins. `--help` lists each with its variable and default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "pgfeed", version, args_conflicts_with_subcommands = true)]
#[command(about = "PostgreSQL as a live change feed over WebSocket, SSE and long-poll")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve`, also accepted without a subcommand (`pgfeed` = `pgfeed serve`).
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then the HTTP/WebSocket server (the default).
    Serve(ServeConfig),
    /// Apply the capture code and the schema migrations, then exit.
    Migrate(DbConfig),
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

    /// HS256 secret for JWT auth. Without it there is no auth, and only loopback binds are allowed.
    #[arg(long, env = "PGFEED_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// How long events are kept for resume (e.g. 7d, 12h, 30m).
    #[arg(long, env = "PGFEED_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// Open connections allowed from one IP address.
    #[arg(long, env = "PGFEED_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Largest accepted upload (e.g. 25MiB, 500KiB, 1GB).
    #[arg(long, env = "PGFEED_MAX_UPLOAD", default_value = "25MiB", value_parser = parse_size)]
    pub max_upload: u64,

    /// Interval of the server's WebSocket pings; a peer that misses one is dropped.
    #[arg(long, env = "PGFEED_WS_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, hide = true)]
    pub ws_ping_interval: Duration,
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
        Only::try_parse_from(["pgfeed"]).map(|o| o.serve).unwrap_or_else(|e| panic!("default settings: {e}"))
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
        other => return Err(format!("unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
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
    }
}
