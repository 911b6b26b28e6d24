//! A primary and a streaming standby of its own for failover tests, behind a TCP proxy that
//! plays the part of the address clients use for "the primary" (a virtual IP, a DNS name, a
//! pgbouncer): pgfeed servers connect through it, and a failover points it at the new primary.
//!
//! Both clusters run as the `postgres` account (PostgreSQL refuses root) from the machine's
//! PostgreSQL binaries, on loopback ports of their own, never 5432.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::db::TestDb;
use super::PATIENCE;

/// The database pgfeed uses on the pair.
const DATABASE: &str = "pgfeed";
/// The standby's name in `pg_stat_replication` (its `cluster_name`).
pub const STANDBY_NAME: &str = "standby1";

fn bindir() -> PathBuf {
    let out = Command::new("pg_config").arg("--bindir").output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => PathBuf::from("/usr/lib/postgresql/15/bin"),
    }
}

/// Runs a PostgreSQL program as `postgres` when we are root; panics with its output on failure.
fn run_pg(program: &str, args: &[&str]) {
    let bin = bindir().join(program);
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One cluster of the pair.
pub struct Node {
    pub data: PathBuf,
    pub port: u16,
}

impl Node {
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// A handle for psql on this node directly.
    pub fn db(&self) -> TestDb {
        TestDb::external(DATABASE, self.url())
    }

    fn start(&self) {
        let log = self.data.with_extension("log");
        run_pg(
            "pg_ctl",
            &["-D", path(&self.data), "-l", path(&log), "-w", "-t", "60", "start"],
        );
    }

    /// Stops it: `fast` (a clean shutdown, which sends the standby all WAL first) or
    /// `immediate` (a crash: nothing more is sent).
    pub fn stop(&self, mode: &str) {
        run_pg("pg_ctl", &["-D", path(&self.data), "-m", mode, "-w", "stop"]);
    }

    /// Kills its postmaster with SIGKILL: a crash, as abrupt as a machine's (nothing more is sent
    /// to a standby; its backends exit as they notice their postmaster gone). Returns once the
    /// postmaster is gone.
    pub async fn kill(&self) {
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid")).expect("postmaster.pid");
        let pid: i32 = pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid on postmaster.pid's first line");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            .expect("SIGKILL the postmaster");
        wait_for(|| !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid)).await;
    }

    pub fn promote(&self) {
        run_pg("pg_ctl", &["-D", path(&self.data), "-w", "promote"]);
    }
}

/// Whether process `pid` has exited and waits to be reaped (state `Z` in /proc/<pid>/stat).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A primary, a standby streaming from it, and the proxy in front.
pub struct Pair {
    pub root: PathBuf,
    pub primary: Node,
    pub standby: Node,
    pub proxy: Proxy,
    /// Data dirs of standbys added later ([`Pair::standby_for_new_primary`]).
    extra: Mutex<Vec<PathBuf>>,
}

impl Pair {
    /// Starts both clusters, with the pgfeed database migrated and replicated.
    pub async fn start() -> Pair {
        let root = std::env::temp_dir().join(format!("pgfeed-failover-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).expect("test dir");
        if nix::unistd::geteuid().is_root() {
            let pg = nix::unistd::User::from_name("postgres")
                .expect("users")
                .expect("a postgres user");
            nix::unistd::chown(&root, Some(pg.uid), Some(pg.gid)).expect("chown");
        }
        let primary = Node {
            data: root.join("primary"),
            port: free_port(),
        };
        run_pg(
            "initdb",
            &["-D", path(&primary.data), "-U", "postgres", "-A", "trust", "--no-sync"],
        );
        append(
            &primary.data,
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\n\
                 max_connections = 100\nwal_sender_timeout = 5s\n",
                primary.port,
                root.display()
            ),
        );
        primary.start();
        let admin = TestDb::external(
            "postgres",
            format!("postgres://postgres@127.0.0.1:{}/postgres", primary.port),
        );
        admin.psql(&format!("create database {DATABASE}"));
        let pool = pgfeed::db::connect(&primary.url()).await.expect("pool");
        pgfeed::db::migrate(&pool).await.expect("migrating the primary");
        pool.close().await;

        let standby = standby_of(&primary, root.join("standby"));
        let proxy = Proxy::start(primary.port).await;
        let pair = Pair {
            root,
            primary,
            standby,
            proxy,
            extra: Mutex::new(Vec::new()),
        };
        pair.wait_streaming().await;
        pair
    }

    /// The URL pgfeed servers and writers use: the proxy's.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.proxy.port)
    }

    /// Both hosts in one URL, libpq style: whichever is the primary takes the connection.
    pub fn multi_host_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{DATABASE}?target_session_attrs=read-write",
            self.primary.port, self.standby.port
        )
    }

    /// psql through the proxy (the current primary).
    pub fn db(&self) -> Arc<TestDb> {
        Arc::new(TestDb::external(DATABASE, self.url()))
    }

    /// Waits until the standby streams from the primary.
    pub async fn wait_streaming(&self) {
        let db = self.primary.db();
        wait_for(|| db.psql("select count(*) from pg_stat_replication where state = 'streaming'") == "1").await;
    }

    /// Waits until the standby has replayed everything the primary wrote so far.
    pub async fn wait_caught_up(&self) {
        let lsn = self.primary.db().psql("select pg_current_wal_lsn()");
        let standby = self.standby.db();
        wait_for(|| standby.psql(&format!("select pg_last_wal_replay_lsn() >= '{lsn}'")) == "t").await;
    }

    /// Cuts the standby off: it stops receiving WAL (its `primary_conninfo` emptied and
    /// reloaded), as a network partition would, and keeps what it has.
    pub async fn cut_standby_off(&self) {
        append(&self.standby.data, "primary_conninfo = ''\n");
        self.standby.db().psql("select pg_reload_conf()");
        let db = self.primary.db();
        wait_for(|| db.psql("select count(*) from pg_stat_replication") == "0").await;
    }

    /// A new standby of the promoted one, under the same name: what an operator brings up after
    /// a failover (`--durable-watermark standby` waits for it).
    pub async fn standby_for_new_primary(&self) -> Node {
        let n = self.extra.lock().unwrap().len();
        let node = standby_of(&self.standby, self.root.join(format!("standby-{n}")));
        self.extra.lock().unwrap().push(node.data.clone());
        let db = self.standby.db();
        wait_for(|| db.psql("select count(*) from pg_stat_replication where state = 'streaming'") == "1").await;
        node
    }

    /// The failover: the standby promoted, the proxy pointed at it (its connections to the old
    /// primary cut).
    pub async fn promote_standby(&self) {
        self.standby.promote();
        self.proxy.point_at(self.standby.port);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let mut dirs = vec![self.primary.data.clone(), self.standby.data.clone()];
        dirs.extend(self.extra.lock().unwrap().drain(..));
        for data in dirs {
            if data.join("postmaster.pid").exists() {
                let _ = Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(bindir().join("pg_ctl"))
                    .args(["-D", path(&data), "-m", "immediate", "stop"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("failover test clusters kept in {}", self.root.display());
        }
    }
}

/// A streaming standby of `of` in `data`, started, named [`STANDBY_NAME`].
fn standby_of(of: &Node, data: PathBuf) -> Node {
    let node = Node {
        data,
        port: free_port(),
    };
    run_pg(
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &of.port.to_string(),
            "-U",
            "postgres",
            "-D",
            path(&node.data),
            "-R",
            "-X",
            "stream",
            // A spread checkpoint would make it wait minutes.
            "-c",
            "fast",
        ],
    );
    // A copy of a standby carries its settings; this one streams from `of`, whatever they were.
    append(
        &node.data,
        &format!(
            "port = {}\ncluster_name = '{STANDBY_NAME}'\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres'\n",
            node.port, of.port
        ),
    );
    node.start();
    node
}

fn append(data: &Path, lines: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.auto.conf"))
        .expect("postgresql.auto.conf");
    f.write_all(lines.as_bytes()).expect("writing the config");
}

async fn wait_for(mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clusters did not get there in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy to whichever port it points at; pointing it elsewhere cuts every connection it
/// carries, as a moved virtual IP does. It runs on a thread and runtime of its own, so that a
/// test blocked in psql (through the proxy) does not stall it.
pub struct Proxy {
    pub port: u16,
    target: Arc<AtomicU16>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let target = Arc::new(AtomicU16::new(target));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn({
            let (target, conns) = (target.clone(), conns.clone());
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("proxy listener");
                    let accept = async {
                        while let Ok((mut inbound, _)) = listener.accept().await {
                            let to = target.load(Ordering::SeqCst);
                            let task = tokio::spawn(async move {
                                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                            });
                            let mut conns = conns.lock().unwrap();
                            conns.retain(|c| !c.is_finished());
                            conns.push(task.abort_handle());
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stopped => {}
                    }
                });
            }
        });
        Proxy {
            port,
            target,
            conns,
            stop: Some(stop),
        }
    }

    pub fn point_at(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
