//! The bench's PostgreSQL, the `pgfeed` child it measures, and writer connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use pgfeed::embedded::Cluster;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `application_name` of the bench's writers, to pick them out in `pg_stat_activity`.
pub const WRITER_APP: &str = "pgfeed-bench-writer";
const BENCH_DATABASE: &str = "pgfeed_bench";
/// `max_connections` of the bench's private cluster.
const MAX_CONNECTIONS: u32 = 400;
/// How long `pgfeed serve` may take to say `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Raises the soft open-file limit to the hard one (the `idle` scenario holds 10,000 sockets on each
/// side); the `pgfeed` child inherits it.
pub fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            eprintln!("pgfeed-bench: could not raise the open-file limit: {e}");
        }
    }
}

pub fn file_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft)
}

/// The database every scenario uses: `--database-url`, or a private durable cluster.
pub struct BenchDb {
    pub url: String,
    /// The private cluster and its temp dir, removed by [`BenchDb::close`].
    cluster: Option<(Cluster, PathBuf)>,
}

impl BenchDb {
    pub async fn open(url: Option<&str>) -> anyhow::Result<BenchDb> {
        if let Some(url) = url {
            return Ok(BenchDb {
                url: url.to_owned(),
                cluster: None,
            });
        }
        // Durable on purpose (fsync on, `Cluster::start`, not the tests' fsync-off cluster): the
        // writer cost is mostly commit flushes, and a bench without them would flatter everyone.
        let dir = std::env::temp_dir().join(format!("pgfeed-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        eprintln!("pgfeed-bench: starting a private PostgreSQL in {}", dir.display());
        let cluster = Cluster::start(&dir).await?;
        let (admin, conn) = tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
            .await
            .context("connecting to the private cluster")?;
        tokio::spawn(conn);
        // Room for `nodes`: 8 servers, each with its pool, listener and log reader, beside the
        // writers (the default 100 is not enough); it takes a restart.
        admin
            .batch_execute(&format!("create database {BENCH_DATABASE}"))
            .await
            .context("creating the bench database")?;
        admin
            .batch_execute(&format!("alter system set max_connections = {MAX_CONNECTIONS}"))
            .await
            .context("raising max_connections")?;
        drop(admin);
        cluster.stop().await?;
        let cluster = Cluster::start(&dir).await?;
        Ok(BenchDb {
            url: cluster.url(BENCH_DATABASE),
            cluster: Some((cluster, dir)),
        })
    }

    pub async fn close(self) -> anyhow::Result<()> {
        if let Some((cluster, dir)) = self.cluster {
            cluster.stop().await?;
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    /// A plain connection, for setup and sampling.
    pub async fn connect(&self, application_name: &str) -> anyhow::Result<tokio_postgres::Client> {
        let mut config: tokio_postgres::Config = self.url.parse().context("parsing the database URL")?;
        config.application_name(application_name);
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting to PostgreSQL")?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("pgfeed-bench: a database connection failed: {e}");
            }
        });
        Ok(client)
    }

    /// `n` writer connections, each separate from pgfeed's.
    pub async fn writers(&self, n: usize) -> anyhow::Result<Vec<tokio_postgres::Client>> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(self.connect(WRITER_APP).await?);
        }
        Ok(all)
    }

    /// A database of its own beside the bench's (named after it, with `suffix`), created afresh,
    /// and its URL: the `nodes` scenario gives each pgfeed build one (each installs its own
    /// capture code). [`BenchDb::drop_sibling`] removes it.
    pub async fn sibling(&self, suffix: &str) -> anyhow::Result<(String, String)> {
        let admin = self.connect("pgfeed-bench").await?;
        let here: String = admin.query_one("select current_database()", &[]).await?.get(0);
        let name = format!("{here}_{suffix}");
        anyhow::ensure!(name.len() <= 63, "database name {name} is too long");
        for sql in ["drop database if exists {} with (force)", "create database {}"] {
            admin
                .batch_execute(&sql.replace("{}", &quote_ident(&name)))
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
        let url = with_database(&self.url, &name)?;
        Ok((name, url))
    }

    pub async fn drop_sibling(&self, name: &str) -> anyhow::Result<()> {
        let admin = self.connect("pgfeed-bench").await?;
        admin
            .batch_execute(&format!("drop database if exists {} with (force)", quote_ident(name)))
            .await
            .with_context(|| format!("dropping database {name}"))
    }

    /// The postmaster's pid, when PostgreSQL runs on this machine (the parent of a backend of ours).
    pub async fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let c = self.connect("pgfeed-bench").await?;
        let backend: i32 = c.query_one("select pg_backend_pid()", &[]).await?.get(0);
        let stat = std::fs::read_to_string(format!("/proc/{backend}/stat"))
            .context("PostgreSQL does not run on this machine (no /proc entry for its backend)")?;
        proc_stat_field(&stat, 4)
            .and_then(|p| u32::try_from(p).ok())
            .context("no parent pid in /proc/<backend>/stat")
    }

    /// The PostgreSQL server version, for the report.
    pub async fn version(&self) -> anyhow::Result<String> {
        let c = self.connect("pgfeed-bench").await?;
        Ok(c.query_one("select current_setting('server_version')", &[])
            .await?
            .get(0))
    }
}

/// A running `pgfeed serve`, stopped with SIGTERM by [`Server::stop`] (or killed when dropped).
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    data_dir: PathBuf,
}

impl Server {
    pub async fn start(binary: &std::path::Path, db: &BenchDb) -> anyhow::Result<Server> {
        Server::start_on(binary, &db.url).await
    }

    /// A server on database `url` (the `nodes` scenario runs several at once, each with a data
    /// dir of its own).
    pub async fn start_on(binary: &std::path::Path, url: &str) -> anyhow::Result<Server> {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data_dir = std::env::temp_dir().join(format!("pgfeed-bench-data-{}-{n}", std::process::id()));
        let verbose = std::env::var("PGFEED_BENCH_LOG").ok();
        let mut child = Command::new(binary)
            .args(["serve", "--bind", "127.0.0.1:0", "--database-url", url, "--data-dir"])
            .arg(&data_dir)
            .env("NO_COLOR", "1")
            // PGFEED_BENCH_LOG: the server's RUST_LOG, for finding where time goes; its lines are
            // then passed on whole.
            .env("RUST_LOG", verbose.as_deref().unwrap_or("pgfeed=info"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("pgfeed's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = listening_addr(&line) {
                    return Ok(addr);
                }
                if line.contains("ERROR") || line.starts_with("pgfeed:") {
                    eprintln!("pgfeed: {line}");
                }
            }
            bail!("pgfeed exited before it was listening")
        })
        .await
        .context("pgfeed did not start listening in time")??;
        // Keep draining its log (a full pipe would stall the server); pass on what is not routine.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if verbose.is_some() || line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("pgfeed: {line}");
                }
            }
        });
        Ok(Server { addr, child, data_dir })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether `GET /healthz` answers 200 (database and listener up), by a bare HTTP/1.0 request.
    pub async fn healthy(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let check = async {
            let mut tcp = tokio::net::TcpStream::connect(self.addr).await?;
            tcp.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await?;
            let mut head = [0u8; 12];
            tcp.read_exact(&mut head).await?;
            anyhow::Ok(head.ends_with(b"200"))
        };
        matches!(tokio::time::timeout(Duration::from_secs(5), check).await, Ok(Ok(true)))
    }

    /// The server's resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory the server has had so far (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let pid = self.pid().context("pgfeed has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/<pid>/status"))
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        self.pid().map_or(Duration::ZERO, |pid| cpu_time(&pid.to_string()))
    }

    /// One series' value from the server's `GET /metrics` (the bench runs it without
    /// `--jwt-secret`, so unauthenticated); `None` when it cannot be read.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
            .await
            .ok()?
            .ok()?;
        text.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(name, _)| *name == series)
            .and_then(|(_, v)| v.trim().parse().ok())
    }

    /// SIGTERM, then wait for a graceful exit (sessions closed with 1001).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!("pgfeed-bench: pgfeed exited with {status}");
                }
            }
            Err(_) => {
                eprintln!("pgfeed-bench: pgfeed did not stop within 30 s; killing it");
                self.child.kill().await?;
            }
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        Ok(())
    }
}

/// `ADDR` from a log line containing `listening on http://ADDR`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on http://")? + "listening on http://".len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == '\x1b')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The `pgfeed` binary: `--pgfeed`, else next to this executable.
pub fn pgfeed_binary(given: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let candidate = me.with_file_name("pgfeed");
    if !candidate.exists() {
        bail!(
            "no pgfeed binary at {} — build it first (`cargo build --release`) or pass --pgfeed",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// A fresh study for one scenario: its room topic is `studies:<id>`.
pub async fn new_study(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    let label = format!("bench-{}", uuid::Uuid::new_v4());
    let row = db
        .query_one(
            "insert into studies (label, title) values ($1, 'pgfeed-bench') returning id",
            &[&label],
        )
        .await
        .context("creating the bench study")?;
    Ok(row.get(0))
}

/// `name` as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `url` (`postgres://…/DB?…`) naming database `name` instead (percent-encoded as needed).
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let authority = url.find("://").context("a postgres:// URL")? + 3;
    let path = url[authority..].find('/').map_or(url.len(), |i| authority + i);
    let query = url[path..].find('?').map_or("", |i| &url[path + i..]);
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    Ok(format!("{}/{encoded}{query}", &url[..path]))
}

/// Field `n` (1-based, proc(5)) of a /proc/<pid>/stat line, for the numeric fields after the
/// parenthesised command name.
pub fn proc_stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// CPU time (user + system) used so far by process `pid` (`"self"` for the bench itself).
pub fn cpu_time(pid: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // utime and stime are fields 14 and 15 (proc(5)).
    let field = |n: usize| proc_stat_field(&stat, n).unwrap_or(0);
    ticks(field(14) + field(15))
}

/// Clock ticks (`CLK_TCK`) as a duration.
pub fn ticks(ticks: u64) -> Duration {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_millis(ticks * 1000 / hz.max(1))
}

/// CPU used so far by the client backends of each role (`(role, application_name)` pairs), per
/// backend pid (read from /proc: only when PostgreSQL runs on this machine; otherwise empty).
pub async fn backend_cpu(
    conn: &tokio_postgres::Client,
    roles: &[(&'static str, &str)],
) -> std::collections::BTreeMap<(&'static str, i32), Duration> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(rows) = conn
        .query(
            "select pid, application_name from pg_stat_activity where backend_type = 'client backend'",
            &[],
        )
        .await
    else {
        return out;
    };
    for row in rows {
        let (pid, app): (i32, String) = (row.get(0), row.get(1));
        if let Some((role, _)) = roles.iter().find(|(_, a)| *a == app) {
            out.insert((*role, pid), cpu_time(&pid.to_string()));
        }
    }
    out
}

/// The CPU a PostgreSQL cluster on this machine has used so far, from /proc: its postmaster's
/// own, its children's that exited (added to its cutime + cstime when it reaps them), and each
/// live child's, so the difference of two readings is all the cluster used in between.
pub struct ClusterCpu {
    pub postmaster: Duration,
    pub reaped: Duration,
    /// Each live child's utime + stime, by pid.
    pub children: std::collections::BTreeMap<u32, Duration>,
}

impl ClusterCpu {
    /// The cluster whose postmaster is `postmaster` ([`BenchDb::postmaster_pid`]), now.
    pub fn read(postmaster: u32) -> ClusterCpu {
        let field = |stat: &str, n: usize| proc_stat_field(stat, n).unwrap_or(0);
        let own = std::fs::read_to_string(format!("/proc/{postmaster}/stat")).unwrap_or_default();
        let mut children = std::collections::BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                if field(&stat, 4) == u64::from(postmaster) {
                    children.insert(pid, ticks(field(&stat, 14) + field(&stat, 15)));
                }
            }
        }
        ClusterCpu {
            postmaster: ticks(field(&own, 14) + field(&own, 15)),
            reaped: ticks(field(&own, 16) + field(&own, 17)),
            children,
        }
    }

    pub fn total(&self) -> Duration {
        self.postmaster + self.reaped + self.children.values().sum::<Duration>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sibling_url_names_the_other_database_and_keeps_the_rest() {
        assert_eq!(
            with_database(
                "postgres://postgres@%2Ftmp%2Fx%2Fsock:5432/pgfeed_bench",
                "pgfeed_bench_nodes_after"
            )
            .unwrap(),
            "postgres://postgres@%2Ftmp%2Fx%2Fsock:5432/pgfeed_bench_nodes_after"
        );
        assert_eq!(
            with_database("postgres://me:pw@db:5433/scratch?sslmode=disable", "a b").unwrap(),
            "postgres://me:pw@db:5433/a%20b?sslmode=disable"
        );
        assert_eq!(with_database("postgres://db", "x").unwrap(), "postgres://db/x");
        assert!(with_database("not a url", "x").is_err());
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        // A command name with spaces and parentheses, as a process may have.
        let stat = "42 (post gres: (x)) S 7 42 42 0 -1 4194560 100 0 0 0 250 30 5 6 20 0";
        assert_eq!(proc_stat_field(stat, 4), Some(7));
        assert_eq!(proc_stat_field(stat, 14), Some(250));
        assert_eq!(proc_stat_field(stat, 15), Some(30));
        assert_eq!(proc_stat_field(stat, 17), Some(6));
        assert_eq!(proc_stat_field(stat, 2), None);
        assert_eq!(proc_stat_field("garbage", 4), None);
    }
}
