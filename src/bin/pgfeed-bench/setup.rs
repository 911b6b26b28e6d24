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
        admin
            .batch_execute(&format!("create database {BENCH_DATABASE}"))
            .await
            .context("creating the bench database")?;
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
        let data_dir = std::env::temp_dir().join(format!("pgfeed-bench-data-{}", std::process::id()));
        let verbose = std::env::var("PGFEED_BENCH_LOG").ok();
        let mut child = Command::new(binary)
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--database-url",
                &db.url,
                "--data-dir",
            ])
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

/// CPU time (user + system) used so far by process `pid` (`"self"` for the bench itself).
pub fn cpu_time(pid: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name start at field 3 (state); utime and stime
    // are fields 14 and 15 (proc(5)).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(14) + field(15);
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

/// The CPU of a PostgreSQL cluster on this machine: its postmaster and every process it started,
/// those that exited included (their time is added to the postmaster's children's time when it
/// reaps them), so the difference of two readings is all the cluster used in between.
pub struct ClusterCpu {
    postmaster: u32,
}

impl ClusterCpu {
    /// The cluster `db` is connected to, when it runs on this machine (its backend's parent in
    /// /proc); `None` for a remote one.
    pub async fn find(db: &tokio_postgres::Client) -> Option<ClusterCpu> {
        let backend: i32 = db.query_one("select pg_backend_pid()", &[]).await.ok()?.get(0);
        let stat = ProcStat::read(&backend.to_string())?;
        ProcStat::read(&stat.ppid.to_string())?;
        Some(ClusterCpu { postmaster: stat.ppid })
    }

    /// CPU time (user + system) used so far by the postmaster and its children, living or reaped.
    pub fn total(&self) -> Duration {
        let Some(postmaster) = ProcStat::read(&self.postmaster.to_string()) else {
            return Duration::ZERO;
        };
        let mut ticks = postmaster.ticks + postmaster.children_ticks;
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let name = p.file_name();
                let name = name.to_string_lossy();
                if !name.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Some(s) = ProcStat::read(&name).filter(|s| s.ppid == self.postmaster) {
                    ticks += s.ticks + s.children_ticks;
                }
            }
        }
        ticks_to_duration(ticks)
    }
}

/// The fields of /proc/<pid>/stat the bench reads.
struct ProcStat {
    ppid: u32,
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// cutime + cstime: reaped children's, in clock ticks.
    children_ticks: u64,
}

impl ProcStat {
    fn read(pid: &str) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name start at field 3 (state) (proc(5)).
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3).and_then(|x| x.parse::<u64>().ok());
        Some(ProcStat {
            ppid: u32::try_from(field(4)?).ok()?,
            ticks: field(14)? + field(15)?,
            children_ticks: field(16)? + field(17)?,
        })
    }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz.max(1))
}
