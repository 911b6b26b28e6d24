//! Embedded PostgreSQL: a private cluster run from the machine's own PostgreSQL server binaries.
//!
//! What it promises:
//! - [`Cluster::start`] keeps its data in `dir/pgdata` (initialised once with `initdb`, UTF8, C locale,
//!   bootstrap superuser `postgres`, trust auth on the local socket only), so data survives restarts.
//!   The server log goes to `dir/postgres.log`, never to our stdout. `dir` is private (0700, owned
//!   by whoever runs the cluster) and the log is 0600; looser modes left by older versions are
//!   tightened at start.
//! - The server listens only on a Unix socket in a private (0700) directory, `dir/sock` or, when that
//!   path is too long or unusual for a socket, `/tmp/pgfeed-<hash of dir>`. No TCP port is opened
//!   (`listen_addresses=''`). [`Cluster::url`] gives a URL that works with sqlx 0.8 and tokio-postgres 0.7.
//! - A `postmaster.pid` left by a crash does not prevent starting; a live server on the same data dir
//!   is reported as an error instead of being touched.
//! - Run as root, the server runs as the data dir's owner, else as a dedicated `pgfeed` user, else
//!   as `postgres` (PostgreSQL refuses to run as root), with no supplementary groups; never as
//!   `nobody`, which other daemons share. Without such a user, start is refused with one line
//!   saying what to do.
//! - The postmaster runs in its own process group (a terminal's Ctrl-C reaches only us) and gets a
//!   signal from the kernel when our process dies, however it dies (`PR_SET_PDEATHSIG`): fast shutdown
//!   (SIGINT) for a persistent cluster, immediate shutdown (SIGQUIT) for an ephemeral one.
//! - [`Cluster::start_ephemeral`] makes a throwaway, non-durable cluster (fsync off) in a fresh
//!   `pgfeed-test-<pid>-…` temp dir; such dirs left by dead processes are removed by the next call.
//! - [`Cluster::stop`] does a fast shutdown and waits for it; dropping a running [`Cluster`] starts a
//!   fast shutdown and reaps the server on a background thread.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{geteuid, Gid, Pid, Uid, User};
use tracing::{debug, info, warn};

/// Nominal port: names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
const PORT: u16 = 5432;
/// The bootstrap superuser created by initdb and used in [`Cluster::url`].
const SUPERUSER: &str = "postgres";
/// Longest socket path the kernel accepts (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a postmaster that is already shutting down on our data dir.
const STOPPING_TIMEOUT: Duration = Duration::from_secs(30);
const EPHEMERAL_PREFIX: &str = "pgfeed-test-";
const LOG_FILE: &str = "postgres.log";
/// The log is rotated to `postgres.log.1` at start when bigger than this.
const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;
const LOG_TAIL_LINES: usize = 30;

/// Why an embedded cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No PostgreSQL server binaries (`initdb` and `postgres`) were found; `searched` lists where.
    #[error(
        "no PostgreSQL server binaries (initdb, postgres) found (searched: {searched}); install them \
         (e.g. `apt-get install postgresql`) or pass --database-url / set DATABASE_URL to use an existing server"
    )]
    NoBinaries { searched: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A running PostgreSQL cluster started by this process.
pub struct Cluster {
    /// The postmaster. Dropping the `Cluster` while this is `Some` sends it SIGINT (fast shutdown)
    /// and hands it to a background thread that reaps it (and removes an ephemeral cluster's dir).
    postmaster: Option<Child>,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    /// For an ephemeral cluster, its whole temp dir: removed by `stop`, by the reaper thread after
    /// a drop, or else by the next `start_ephemeral` once this process is gone.
    ephemeral_root: Option<PathBuf>,
}

/// The unprivileged account initdb and postgres run as when we are root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: Uid,
    gid: Gid,
}

/// Everything decided before the postmaster is launched.
struct Prepared {
    bindir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    run_as: Option<RunAs>,
    ephemeral: bool,
}

impl Cluster {
    /// Finds the server binaries (PATH, `pg_config --bindir`, /usr/lib/postgresql/*/bin, newest version first),
    /// runs initdb under `dir/pgdata` if it isn't initialised yet (superuser `postgres`, trust auth on the
    /// local socket, UTF8), starts `postgres` listening only on a Unix socket, waits until it accepts
    /// connections, and returns. A stale postmaster.pid left by a crash is removed; a postgres still
    /// running on this data dir is an error (after waiting up to 30 s if it is shutting down).
    pub async fn start(dir: &Path) -> Result<Cluster, EmbeddedError> {
        let dir = dir.to_path_buf();
        let prepared = tokio::task::spawn_blocking(move || prepare(&dir, false))
            .await
            .context("joining the embedded PostgreSQL setup task")??;
        Ok(launch(prepared, None).await?)
    }

    /// Like [`Cluster::start`], for throwaway test clusters: a fresh temp dir, no durability
    /// (fsync=off, full_page_writes=off, initdb --no-sync), max_connections=300, and the postmaster
    /// dies with the process that started it even if no destructor runs.
    pub async fn start_ephemeral() -> Result<Cluster, EmbeddedError> {
        let base = std::env::temp_dir();
        let root = tokio::task::spawn_blocking(move || {
            remove_stale_ephemeral_dirs(&base);
            create_ephemeral_dir(&base)
        })
        .await
        .context("joining the ephemeral PostgreSQL setup task")??;
        let prep_root = root.clone();
        let prepared = match tokio::task::spawn_blocking(move || prepare(&prep_root, true)).await {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(e)) => {
                remove_dir_logged(&root);
                return Err(e);
            }
            Err(e) => {
                remove_dir_logged(&root);
                return Err(anyhow!(e).context("joining the ephemeral PostgreSQL setup task").into());
            }
        };
        match launch(prepared, Some(root.clone())).await {
            Ok(cluster) => Ok(cluster),
            Err(e) => {
                remove_dir_logged(&root);
                Err(e.into())
            }
        }
    }

    /// A connection URL for `database`, connecting over the Unix socket as user `postgres`:
    /// `postgres://postgres@<percent-encoded socket dir>:5432/<percent-encoded database>`.
    /// Works with sqlx 0.8 (`PgConnectOptions::from_str`) and tokio-postgres 0.7 (`connect(url, NoTls)`).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@{}:{PORT}/{}",
            percent_encode(self.socket_dir.as_os_str().as_bytes()),
            percent_encode(database.as_bytes())
        )
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The cluster's data directory (`dir/pgdata`).
    pub fn data_dir(&self) -> &Path {
        &self.pgdata
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The postmaster's process id, while it has not been stopped.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// Fast shutdown (SIGINT to the postmaster), waiting up to 30 s for it to exit, then SIGQUIT
    /// (immediate shutdown) and up to 10 s more, then SIGKILL. An ephemeral cluster's dir is removed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.postmaster.take() else {
            return Ok(());
        };
        info!(data_dir = %self.pgdata.display(), "stopping embedded PostgreSQL");
        let status = shutdown(&mut child).await;
        remove_fallback_socket_dir(&self.socket_dir, &self.pgdata);
        if let Some(root) = self.ephemeral_root.take() {
            tokio::task::spawn_blocking(move || {
                fs::remove_dir_all(&root).with_context(|| format!("removing ephemeral cluster dir {}", root.display()))
            })
            .await
            .context("joining the cleanup task")??;
        }
        let status = status?;
        if !status.success() {
            bail!(
                "PostgreSQL exited with {status} on shutdown{}",
                log_tail(&self.log_path, 0)
            );
        }
        info!(data_dir = %self.pgdata.display(), "embedded PostgreSQL stopped");
        Ok(())
    }

    /// Waits until the postmaster reports "ready" in postmaster.pid and its socket accepts connections.
    async fn wait_ready(&mut self, log_offset: u64) -> anyhow::Result<()> {
        let socket = self.socket_dir.join(socket_name());
        let pid_file = self.pgdata.join("postmaster.pid");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self
                .postmaster
                .as_mut()
                .ok_or_else(|| anyhow!("postmaster already stopped"))?;
            if let Some(status) = child.try_wait().context("checking the postmaster")? {
                bail!(
                    "PostgreSQL exited during startup ({status}){}",
                    log_tail(&self.log_path, log_offset)
                );
            }
            let pid = child.id();
            if postmaster_ready(&pid_file, pid) && tokio::net::UnixStream::connect(&socket).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "PostgreSQL did not accept connections on {} within {READY_TIMEOUT:?}{}",
                    socket.display(),
                    log_tail(&self.log_path, log_offset)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let Some(mut child) = self.postmaster.take() else {
            return;
        };
        if let Err(e) = signal_child(&child, Signal::SIGINT) {
            warn!(error = %e, "could not signal embedded PostgreSQL to shut down");
        }
        let root = self.ephemeral_root.take();
        let (socket_dir, pgdata) = (self.socket_dir.clone(), self.pgdata.clone());
        // Reap on a thread so dropping never blocks; if the process exits first, the kernel's
        // parent-death signal and the next start_ephemeral finish the job.
        let reaper = std::thread::Builder::new()
            .name("pgfeed-pg-reaper".into())
            .spawn(move || {
                if let Err(e) = shutdown_blocking(&mut child) {
                    warn!(error = %e, "embedded PostgreSQL did not shut down cleanly");
                }
                remove_fallback_socket_dir(&socket_dir, &pgdata);
                if let Some(root) = root {
                    remove_dir_logged(&root);
                }
            });
        if let Err(e) = reaper {
            warn!(error = %e, "could not start a thread to reap embedded PostgreSQL");
        }
    }
}

/// Creates/checks directories, picks binaries and the run-as user, runs initdb if needed, and clears
/// stale lock files. Blocking.
fn prepare(dir: &Path, ephemeral: bool) -> Result<Prepared, EmbeddedError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(anyhow!(e)
                .context(format!("creating data dir {}", dir.display()))
                .into())
        }
    }
    let root = fs::canonicalize(dir).with_context(|| format!("resolving data dir {}", dir.display()))?;
    let pgdata = root.join("pgdata");
    let log_path = root.join(LOG_FILE);
    make_log_private(&log_path)?;
    make_log_private(&rotated_log(&log_path))?;

    let wanted_major = match fs::read_to_string(pgdata.join("PG_VERSION")) {
        Ok(v) => v.trim().parse::<u32>().ok(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(anyhow!(e)
                .context(format!("reading {}/PG_VERSION", pgdata.display()))
                .into())
        }
    };
    let bindir = choose_bindir(&default_search_path(), wanted_major)?;

    let run_as = if geteuid().is_root() {
        Some(cluster_user(&pgdata)?)
    } else {
        None
    };
    make_data_dir_private(&root, run_as.as_ref())?;
    if let Some(user) = &run_as {
        check_traversable(&root, user)?;
    }

    if !pgdata.join("PG_VERSION").exists() {
        initdb(&bindir, &root, &pgdata, &log_path, run_as.as_ref(), ephemeral)?;
    }
    let pgdata = fs::canonicalize(&pgdata).with_context(|| format!("resolving {}", pgdata.display()))?;
    clear_stale_postmaster_pid(&pgdata)?;
    rotate_log(&log_path)?;

    let socket_dir = choose_socket_dir(&root);
    ensure_private_dir(&socket_dir, run_as.as_ref())?;
    if let (Some(user), Some(parent)) = (&run_as, socket_dir.parent()) {
        check_traversable(parent, user)?;
    }
    clear_stale_socket_lock(&socket_dir, &pgdata)?;

    Ok(Prepared {
        bindir,
        pgdata,
        socket_dir,
        log_path,
        run_as,
        ephemeral,
    })
}

/// Runs initdb into a staging dir and renames it into place, so an interrupted initdb never leaves
/// a half-initialised `pgdata` behind.
fn initdb(
    bindir: &Path,
    root: &Path,
    pgdata: &Path,
    log_path: &Path,
    run_as: Option<&RunAs>,
    ephemeral: bool,
) -> anyhow::Result<()> {
    let staging = root.join("pgdata.initdb");
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing leftover {}", staging.display()))?;
    }
    ensure_private_dir(&staging, run_as)?;
    info!(data_dir = %pgdata.display(), bindir = %bindir.display(), "initialising embedded PostgreSQL cluster");
    let log = open_log(log_path)?;
    let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D").arg(&staging).args([
        "--username",
        SUPERUSER,
        "--auth-local=trust",
        "--auth-host=reject",
        "--encoding=UTF8",
        "--locale=C",
    ]);
    if ephemeral {
        cmd.arg("--no-sync");
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log)
        .current_dir(root);
    scrub_env(&mut cmd);
    if let Some(user) = run_as {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let status = cmd.status().context("running initdb")?;
    if !status.success() {
        bail!("initdb failed ({status}){}", log_tail(log_path, log_offset));
    }
    fs::rename(&staging, pgdata).with_context(|| format!("moving {} to {}", staging.display(), pgdata.display()))?;
    if !ephemeral {
        File::open(root)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", root.display()))?;
    }
    Ok(())
}

/// Spawns the postmaster and waits until it is ready.
async fn launch(p: Prepared, ephemeral_root: Option<PathBuf>) -> anyhow::Result<Cluster> {
    let log = open_log(&p.log_path)?;
    let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    info!(
        data_dir = %p.pgdata.display(),
        socket_dir = %p.socket_dir.display(),
        ephemeral = p.ephemeral,
        "starting embedded PostgreSQL"
    );
    let mut cmd = Command::new(p.bindir.join("postgres"));
    cmd.arg("-D")
        .arg(&p.pgdata)
        .arg("-p")
        .arg(PORT.to_string())
        .arg("-k")
        .arg(&p.socket_dir)
        .args(["-c", "listen_addresses="]);
    if p.ephemeral {
        cmd.args([
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
        ]);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log)
        .current_dir(&p.pgdata)
        .process_group(0);
    scrub_env(&mut cmd);
    if let Some(user) = &p.run_as {
        // std drops supplementary groups (setgroups(0)) when a uid is set by root.
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let death_signal = if p.ephemeral { Signal::SIGQUIT } else { Signal::SIGINT };
    let parent = std::process::id();
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid) and does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            set_parent_death_signal(death_signal)?;
            // If we died between fork and prctl, no signal will ever come: give up now.
            if std::os::unix::process::parent_id() != parent {
                return Err(io::Error::from_raw_os_error(Errno::ESRCH as i32));
            }
            Ok(())
        });
    }
    let child = spawn_on_pinned_thread(cmd).await.context("starting postgres")?;
    let mut cluster = Cluster {
        postmaster: Some(child),
        pgdata: p.pgdata,
        socket_dir: p.socket_dir,
        log_path: p.log_path,
        ephemeral_root,
    };
    if let Err(e) = cluster.wait_ready(log_offset).await {
        if let Some(mut child) = cluster.postmaster.take() {
            if let Err(kill_err) = abort(&mut child).await {
                warn!(error = %kill_err, "could not stop the failed PostgreSQL");
            }
        }
        // The caller removes an ephemeral dir; don't let Drop race it.
        cluster.ephemeral_root = None;
        return Err(e);
    }
    info!(
        data_dir = %cluster.pgdata.display(),
        pid = cluster.pid(),
        "embedded PostgreSQL is ready"
    );
    Ok(cluster)
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// A thread that lives as long as the process. PR_SET_PDEATHSIG fires when the *thread* that forked
/// the child exits, so children must not be forked by a tokio worker/blocking thread or a test's
/// thread, which come and go.
static SPAWNER: Mutex<Option<mpsc::Sender<SpawnJob>>> = Mutex::new(None);

async fn spawn_on_pinned_thread(mut cmd: Command) -> anyhow::Result<Child> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: SpawnJob = Box::new(move || {
        // The receiver only goes away if the caller was cancelled: shut the orphan down.
        if let Err(Ok(mut child)) = tx.send(cmd.spawn()) {
            let _ = signal_child(&child, Signal::SIGQUIT);
            let _ = child.wait();
        }
    });
    {
        let mut guard = SPAWNER.lock().map_err(|_| anyhow!("process spawner lock poisoned"))?;
        let sender = match guard.as_ref() {
            Some(sender) => sender.clone(),
            None => {
                let (sender, jobs) = mpsc::channel::<SpawnJob>();
                std::thread::Builder::new()
                    .name("pgfeed-pg-spawner".into())
                    .spawn(move || {
                        // Never ends: the sender lives in a static.
                        for job in jobs {
                            job();
                        }
                    })
                    .context("starting the process spawner thread")?;
                *guard = Some(sender.clone());
                sender
            }
        };
        sender
            .send(job)
            .map_err(|_| anyhow!("process spawner thread is gone"))?;
    }
    Ok(rx.await.context("process spawner thread is gone")??)
}

#[cfg(target_os = "linux")]
fn set_parent_death_signal(signal: Signal) -> io::Result<()> {
    use std::ffi::{c_int, c_ulong};
    unsafe extern "C" {
        fn prctl(option: c_int, arg2: c_ulong, ...) -> c_int;
    }
    const PR_SET_PDEATHSIG: c_int = 1;
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    let rc = unsafe { prctl(PR_SET_PDEATHSIG, signal as c_int as c_ulong) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Not Linux: no parent-death signal; the next `start_ephemeral` still cleans up the temp dir.
#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_signal: Signal) -> io::Result<()> {
    Ok(())
}

fn signal_child(child: &Child, signal: Signal) -> anyhow::Result<()> {
    let pid = i32::try_from(child.id()).context("postmaster pid out of range")?;
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow!(e).context(format!("sending {signal} to postgres (pid {pid})"))),
    }
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for postgres to exit")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn wait_exit_blocking(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for postgres to exit")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// SIGINT, then SIGQUIT, then SIGKILL, each after its timeout.
async fn shutdown(child: &mut Child) -> anyhow::Result<ExitStatus> {
    signal_child(child, Signal::SIGINT)?;
    if let Some(status) = wait_exit(child, FAST_SHUTDOWN_TIMEOUT).await? {
        return Ok(status);
    }
    warn!("embedded PostgreSQL ignored fast shutdown for {FAST_SHUTDOWN_TIMEOUT:?}; sending SIGQUIT");
    abort(child).await
}

/// SIGQUIT (immediate shutdown), then SIGKILL.
async fn abort(child: &mut Child) -> anyhow::Result<ExitStatus> {
    signal_child(child, Signal::SIGQUIT)?;
    if let Some(status) = wait_exit(child, QUIT_TIMEOUT).await? {
        return Ok(status);
    }
    signal_child(child, Signal::SIGKILL)?;
    wait_exit(child, QUIT_TIMEOUT)
        .await?
        .ok_or_else(|| anyhow!("postgres (pid {}) did not exit even after SIGKILL", child.id()))
}

/// Blocking version of [`shutdown`] for the reaper thread; SIGINT has already been sent.
fn shutdown_blocking(child: &mut Child) -> anyhow::Result<ExitStatus> {
    for (timeout, next) in [
        (FAST_SHUTDOWN_TIMEOUT, Signal::SIGQUIT),
        (QUIT_TIMEOUT, Signal::SIGKILL),
    ] {
        if let Some(status) = wait_exit_blocking(child, timeout)? {
            return Ok(status);
        }
        signal_child(child, next)?;
    }
    wait_exit_blocking(child, QUIT_TIMEOUT)?
        .ok_or_else(|| anyhow!("postgres (pid {}) did not exit even after SIGKILL", child.id()))
}

/// PATH, then `pg_config --bindir`, then the usual install locations, newest version first.
fn default_search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output() {
        if out.status.success() {
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !s.is_empty() {
                dirs.push(PathBuf::from(s));
            }
        }
    }
    for (pattern_dir, prefix, suffix) in [("/usr/lib/postgresql", "", "bin"), ("/usr", "pgsql-", "bin")] {
        let mut versioned: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(pattern_dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let version = parse_version(name.strip_prefix(prefix)?)?;
                        Some((version, e.path().join(suffix)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        versioned.sort_by(|a, b| b.0.cmp(&a.0));
        dirs.extend(versioned.into_iter().map(|(_, p)| p));
    }
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    dirs
}

/// "15" -> [15], "9.6" -> [9, 6].
fn parse_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|part| part.parse().ok()).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// The server binaries' directories among `search`, in order, resolved through symlinks
/// (e.g. /usr/local/bin/postgres -> /usr/lib/postgresql/15/bin) and without duplicates.
fn find_bindirs(search: &[PathBuf]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in search {
        let Ok(postgres) = fs::canonicalize(dir.join("postgres")) else {
            continue;
        };
        let Some(real_dir) = postgres.parent() else {
            continue;
        };
        if is_executable(&postgres) && is_executable(&real_dir.join("initdb")) && !found.iter().any(|f| f == real_dir) {
            found.push(real_dir.to_path_buf());
        }
    }
    found
}

/// The major version `bindir/postgres --version` reports.
fn server_major(bindir: &Path) -> Option<u32> {
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("(PostgreSQL)").nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The first bindir in `search`, or the first whose major version is `wanted_major` (an existing
/// data dir's PG_VERSION) when that is given.
fn choose_bindir(search: &[PathBuf], wanted_major: Option<u32>) -> Result<PathBuf, EmbeddedError> {
    let found = find_bindirs(search);
    let Some(first) = found.first() else {
        let searched = if search.is_empty() {
            "nowhere".to_string()
        } else {
            search
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        };
        return Err(EmbeddedError::NoBinaries { searched });
    };
    let Some(wanted) = wanted_major else {
        return Ok(first.clone());
    };
    let versions: Vec<(PathBuf, Option<u32>)> = found.iter().map(|d| (d.clone(), server_major(d))).collect();
    if let Some((dir, _)) = versions.iter().find(|(_, v)| *v == Some(wanted)) {
        return Ok(dir.clone());
    }
    if versions.iter().all(|(_, v)| v.is_none()) {
        return Ok(first.clone());
    }
    let have = versions
        .iter()
        .map(|(d, v)| match v {
            Some(v) => format!("{v} in {}", d.display()),
            None => format!("unknown version in {}", d.display()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(anyhow!(
        "the data dir was initialised by PostgreSQL {wanted}, but only these server binaries were found: {have}; \
         install PostgreSQL {wanted} (or dump and restore the data)"
    )
    .into())
}

/// Users the cluster may run as when we are root and no data dir exists yet, the most dedicated
/// first. Never `nobody`: files and processes of every daemon that runs as `nobody` could reach
/// the cluster's.
const CLUSTER_USERS: [&str; 2] = ["pgfeed", "postgres"];

/// Who runs the cluster when we are root: the existing data dir's owner, else the first of
/// [`CLUSTER_USERS`] that exists.
fn cluster_user(pgdata: &Path) -> anyhow::Result<RunAs> {
    match fs::symlink_metadata(pgdata) {
        Ok(meta) => {
            if meta.uid() == 0 {
                bail!(
                    "{} is owned by root, but PostgreSQL refuses to run as root; \
                     `chown -R postgres: {}` (or another unprivileged user) and start again",
                    pgdata.display(),
                    pgdata.display()
                );
            }
            let uid = Uid::from_raw(meta.uid());
            let user = User::from_uid(uid).context("looking up the data dir's owner")?;
            let nobody = User::from_name("nobody").context("looking up user nobody")?;
            if nobody.is_some_and(|n| n.uid == uid) {
                bail!(
                    "{} is owned by `nobody`, an account other daemons share; `chown -R postgres: {}` (or \
                     another dedicated user) and start again",
                    pgdata.display(),
                    pgdata.parent().unwrap_or(pgdata).display()
                );
            }
            Ok(match user {
                Some(u) => RunAs {
                    name: u.name,
                    uid,
                    gid: u.gid,
                },
                None => RunAs {
                    name: format!("uid {}", meta.uid()),
                    uid,
                    gid: Gid::from_raw(meta.gid()),
                },
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            for name in CLUSTER_USERS {
                if let Some(u) = User::from_name(name).with_context(|| format!("looking up user {name}"))? {
                    if u.uid.is_root() {
                        continue;
                    }
                    return Ok(RunAs {
                        name: u.name,
                        uid: u.uid,
                        gid: u.gid,
                    });
                }
            }
            bail!(
                "running as root, and there is no `pgfeed` or `postgres` user to run embedded PostgreSQL as \
                 (it refuses to run as root, and pgfeed will not use the shared `nobody`); create one \
                 (`useradd --system --user-group --no-create-home pgfeed`), run pgfeed as an unprivileged \
                 user, or pass --database-url"
            )
        }
        Err(e) => Err(anyhow!(e).context(format!("inspecting {}", pgdata.display()))),
    }
}

/// Every directory from `path` up to `/` must be searchable by `user` (owner, group or other bits;
/// supplementary groups are dropped, so only the primary group counts).
fn check_traversable(path: &Path, user: &RunAs) -> anyhow::Result<()> {
    for dir in path.ancestors() {
        let meta = fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
        let mode = meta.mode();
        let ok = if meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            bail!(
                "{} (mode {:o}) is not traversable by user {}, which embedded PostgreSQL runs as because \
                 PostgreSQL refuses to run as root; `chmod o+x {}` or choose a data dir outside it",
                dir.display(),
                mode & 0o7777,
                user.name,
                dir.display()
            );
        }
    }
    Ok(())
}

/// The data dir is the cluster user's (or ours) and 0700: the log, the socket and the data in it
/// are nobody else's business. A root-owned one (made by an older version, or by root just now)
/// is handed to the cluster user; one owned by a third account is refused, never taken over.
fn make_data_dir_private(root: &Path, run_as: Option<&RunAs>) -> anyhow::Result<()> {
    let meta = fs::metadata(root).with_context(|| format!("inspecting {}", root.display()))?;
    if !meta.is_dir() {
        bail!("data dir {} exists but is not a directory", root.display());
    }
    let me = geteuid();
    let want = run_as.map_or(me, |u| u.uid);
    if meta.uid() != want.as_raw() {
        match run_as {
            Some(user) if meta.uid() == me.as_raw() => {
                std::os::unix::fs::lchown(root, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .with_context(|| format!("handing {} to user {}", root.display(), user.name))?;
            }
            _ => bail!(
                "data dir {} is owned by uid {}, but the embedded cluster runs as uid {}; `chown -R {} {}` \
                 or choose another --data-dir",
                root.display(),
                meta.uid(),
                want,
                want,
                root.display()
            ),
        }
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", root.display()))?;
        if meta.mode() & 0o077 != 0 {
            info!(data_dir = %root.display(), "made the data dir private (mode 0700)");
        }
    }
    Ok(())
}

/// An existing server log readable by others (made by an older version) becomes 0600.
fn make_log_private(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && meta.mode() & 0o077 != 0 => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", path.display()))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!(e).context(format!("inspecting {}", path.display()))),
    }
}

fn rotated_log(path: &Path) -> PathBuf {
    path.with_extension("log.1")
}

/// Creates `path` as a 0700 dir owned by the cluster user (or us), or checks an existing one is a
/// real directory owned by them (it may be in world-writable /tmp).
fn ensure_private_dir(path: &Path, run_as: Option<&RunAs>) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        Err(e) => return Err(anyhow!(e).context(format!("inspecting {}", path.display()))),
    }
    let meta = fs::symlink_metadata(path).with_context(|| format!("inspecting {}", path.display()))?;
    if !meta.is_dir() {
        bail!("{} exists but is not a directory; remove it", path.display());
    }
    let me = geteuid();
    let want = run_as.map_or(me, |u| u.uid);
    if meta.uid() != want.as_raw() {
        match run_as {
            Some(user) if meta.uid() == me.as_raw() => {
                std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .with_context(|| format!("handing {} to user {}", path.display(), user.name))?;
            }
            _ => bail!(
                "{} is owned by uid {}, not uid {}; remove it and start again",
                path.display(),
                meta.uid(),
                want
            ),
        }
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    Ok(())
}

fn socket_name() -> String {
    format!(".s.PGSQL.{PORT}")
}

/// `root/sock` when its socket path fits and needs no quoting in postgres' directory list,
/// else `/tmp/pgfeed-<hash of root>`.
fn choose_socket_dir(root: &Path) -> PathBuf {
    let candidate = root.join("sock");
    let bytes = candidate.as_os_str().as_bytes();
    let simple = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
    if simple && bytes.len() + 1 + socket_name().len() <= MAX_SOCKET_PATH {
        return candidate;
    }
    PathBuf::from(format!("/tmp/pgfeed-{:016x}", fnv1a(root.as_os_str().as_bytes())))
}

/// FNV-1a, stable across Rust releases (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

fn is_postgres_process(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => matches!(comm.trim(), "postgres" | "postmaster"),
        // No /proc: assume the worst.
        Err(_) => true,
    }
}

/// Whether `pid` is a live postgres whose working directory is `pgdata` (postgres chdirs into it).
fn postgres_on(pid: i32, pgdata: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => cwd == pgdata,
        Err(_) => is_postgres_process(pid),
    }
}

/// The pid on the first line of a postgres lock file, if it has one.
fn lock_file_pid(path: &Path) -> anyhow::Result<Option<i32>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().next().and_then(|l| l.trim().parse().ok())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(e).context(format!("reading {}", path.display()))),
    }
}

fn postmaster_status(pid_file: &Path) -> Option<String> {
    let text = fs::read_to_string(pid_file).ok()?;
    text.lines().nth(7).map(|s| s.trim().to_string())
}

fn postmaster_ready(pid_file: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(pid_file) else {
        return false;
    };
    let mut lines = text.lines();
    lines.next().map(str::trim) == Some(pid.to_string().as_str()) && lines.nth(6).map(str::trim) == Some("ready")
}

/// Removes a postmaster.pid whose process is gone (or is now something else: pids get reused after
/// a reboot). Fails if a postgres is really running on this data dir; waits for one that is stopping.
fn clear_stale_postmaster_pid(pgdata: &Path) -> anyhow::Result<()> {
    let pid_file = pgdata.join("postmaster.pid");
    let deadline = Instant::now() + STOPPING_TIMEOUT;
    loop {
        let Some(pid) = lock_file_pid(&pid_file)? else {
            if pid_file.exists() {
                warn!(path = %pid_file.display(), "removing unreadable postmaster.pid");
                fs::remove_file(&pid_file).with_context(|| format!("removing {}", pid_file.display()))?;
            }
            return Ok(());
        };
        if !postgres_on(pid, pgdata) {
            warn!(path = %pid_file.display(), pid, "removing stale postmaster.pid left by a server that is gone");
            match fs::remove_file(&pid_file) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(anyhow!(e).context(format!("removing {}", pid_file.display()))),
            }
        }
        if postmaster_status(&pid_file).as_deref() == Some("stopping") && Instant::now() < deadline {
            debug!(pid, "waiting for a stopping PostgreSQL on the same data dir");
            std::thread::sleep(POLL_INTERVAL);
            continue;
        }
        bail!(
            "PostgreSQL (pid {pid}) is already running on {}; another pgfeed is probably using this data dir",
            pgdata.display()
        );
    }
}

/// Removes the socket and its lock file if the lock's owner is gone; fails if another server uses them.
fn clear_stale_socket_lock(socket_dir: &Path, pgdata: &Path) -> anyhow::Result<()> {
    let socket = socket_dir.join(socket_name());
    let lock = socket_dir.join(format!("{}.lock", socket_name()));
    if let Some(pid) = lock_file_pid(&lock)? {
        if postgres_on(pid, pgdata) {
            bail!("PostgreSQL (pid {pid}) is already running on {}", pgdata.display());
        }
        if pid_alive(pid) && is_postgres_process(pid) {
            bail!(
                "another PostgreSQL (pid {pid}) uses the socket {}; stop it or choose another data dir",
                socket.display()
            );
        }
    }
    for path in [&lock, &socket] {
        match fs::remove_file(path) {
            Ok(()) => debug!(path = %path.display(), "removed stale socket file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow!(e).context(format!("removing stale {}", path.display()))),
        }
    }
    Ok(())
}

fn scrub_env(cmd: &mut Command) {
    for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGOPTIONS", "PGCLIENTENCODING"] {
        cmd.env_remove(var);
    }
}

fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening the PostgreSQL log {}", path.display()))
}

fn rotate_log(path: &Path) -> anyhow::Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.len() > LOG_ROTATE_BYTES => {
            let old = rotated_log(path);
            fs::rename(path, &old).with_context(|| format!("rotating {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The last lines written to the log since `offset`, formatted to append to an error message.
fn log_tail(path: &Path, offset: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = offset.max(len.saturating_sub(16 * 1024)).min(len);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            if tail.trim().is_empty() {
                format!(" (nothing in {})", path.display())
            } else {
                format!("\n--- last lines of {} ---\n{tail}", path.display())
            }
        }
        Err(e) => format!(" (could not read {}: {e})", path.display()),
    }
}

/// `temp/pgfeed-test-<our pid>-<unique>`, mode 0700.
fn create_ephemeral_dir(base: &Path) -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{EPHEMERAL_PREFIX}{}-{nanos:08x}{n:x}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(anyhow!(e).context(format!("creating {}", path.display()))),
        }
    }
    bail!("could not create a fresh {EPHEMERAL_PREFIX}* dir in {}", base.display())
}

/// Removes `pgfeed-test-<pid>-*` dirs in `base` whose process is dead and whose postmaster is gone.
fn remove_stale_ephemeral_dirs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(EPHEMERAL_PREFIX)) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let path = entry.path();
        if owner == me || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if i32::try_from(owner).is_ok_and(pid_alive) {
            continue;
        }
        let pgdata = path.join("pgdata");
        let postmaster = lock_file_pid(&pgdata.join("postmaster.pid")).ok().flatten();
        let canonical = fs::canonicalize(&pgdata).unwrap_or(pgdata);
        if postmaster.is_some_and(|pid| postgres_on(pid, &canonical)) {
            continue;
        }
        debug!(path = %path.display(), "removing stale ephemeral PostgreSQL dir");
        remove_dir_logged(&path);
    }
}

/// Removes a `/tmp/pgfeed-<hash>` socket dir once the server is gone (it is empty by then);
/// a socket dir inside the data dir stays.
fn remove_fallback_socket_dir(socket_dir: &Path, pgdata: &Path) {
    if pgdata.parent().is_some_and(|root| socket_dir.starts_with(root)) {
        return;
    }
    if let Err(e) = fs::remove_dir(socket_dir) {
        debug!(path = %socket_dir.display(), error = %e, "could not remove socket dir");
    }
}

fn remove_dir_logged(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path) {
        if e.kind() != io::ErrorKind::NotFound {
            debug!(path = %path.display(), error = %e, "could not remove dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, Row};
    use std::io::BufRead;

    fn init_tracing() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgfeed-embedded-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn persistent_cluster_keeps_data_across_restarts() -> anyhow::Result<()> {
        init_tracing();
        let dir = scratch_dir("persist");
        let cluster = Cluster::start(&dir).await?;
        assert_eq!(cluster.socket_dir(), fs::canonicalize(&dir)?.join("sock"));
        // listen_addresses='': the 6th line of postmaster.pid (TCP listen address) is empty.
        let pid_file = fs::read_to_string(cluster.data_dir().join("postmaster.pid"))?;
        assert_eq!(pid_file.lines().nth(5).map(str::trim), Some(""));

        let mut conn = sqlx::PgConnection::connect(&cluster.url("postgres")).await?;
        sqlx::query("create table notes (id int primary key, body text not null)")
            .execute(&mut conn)
            .await?;
        sqlx::query("insert into notes (id, body) values (1, 'kept')")
            .execute(&mut conn)
            .await?;
        conn.close().await?;

        let second = Cluster::start(&dir).await;
        let err = second.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("already running"), "second start: {err}");

        cluster.stop().await?;
        assert!(!dir.join("pgdata/postmaster.pid").exists());

        let cluster = Cluster::start(&dir).await?;
        let mut conn = sqlx::PgConnection::connect(&cluster.url("postgres")).await?;
        let row = sqlx::query("select body from notes where id = 1")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!(row.try_get::<String, _>("body")?, "kept");
        conn.close().await?;
        cluster.stop().await?;
        assert!(fs::metadata(dir.join(LOG_FILE))?.len() > 0);
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn ephemeral_url_works_with_sqlx_and_tokio_postgres() -> anyhow::Result<()> {
        init_tracing();
        // Start on a thread that then exits (as each #[tokio::test]'s thread does): the postmaster
        // must outlive it, because it was forked by the long-lived spawner thread.
        let cluster = std::thread::spawn(|| -> anyhow::Result<Cluster> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(rt.block_on(Cluster::start_ephemeral())?)
        })
        .join()
        .map_err(|_| anyhow!("starter thread panicked"))??;
        let pid = cluster.pid().ok_or_else(|| anyhow!("no pid"))?;
        let root = cluster
            .ephemeral_root
            .clone()
            .ok_or_else(|| anyhow!("no ephemeral root"))?;

        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(async {
            // Give a (wrong) parent-death signal time to arrive before checking.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(pid_alive(pid as i32), "postmaster died with its starter thread");

            if geteuid().is_root() {
                let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.split_whitespace().collect::<Vec<_>>())
                        .unwrap_or_default()
                };
                assert!(field("Uid:").iter().all(|u| *u != "0"), "postgres runs as root");
                assert!(
                    field("Groups:").is_empty(),
                    "supplementary groups kept: {:?}",
                    field("Groups:")
                );
            }

            let db = "feed test-1/é";
            let mut admin = sqlx::PgConnection::connect(&cluster.url("postgres")).await?;
            sqlx::query(&format!("create database \"{db}\""))
                .execute(&mut admin)
                .await?;
            admin.close().await?;

            let url = cluster.url(db);
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            let (name, conns): (String, String) =
                sqlx::query_as("select current_database(), current_setting('max_connections')")
                    .fetch_one(&mut conn)
                    .await?;
            assert_eq!(name, db);
            assert_eq!(conns, "300");
            conn.close().await?;

            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            let task = tokio::spawn(connection);
            let row = client
                .query_one("select current_database(), current_user, current_setting('fsync')", &[])
                .await?;
            assert_eq!(row.try_get::<_, String>(0)?, db);
            assert_eq!(row.try_get::<_, String>(1)?, SUPERUSER);
            assert_eq!(row.try_get::<_, String>(2)?, "off");
            drop(client);
            task.await??;

            cluster.stop().await?;
            assert!(!root.exists(), "ephemeral dir not removed by stop");
            assert!(!pid_alive(pid as i32));
            anyhow::Ok(())
        })
    }

    #[tokio::test]
    async fn stale_lock_files_do_not_prevent_start() -> anyhow::Result<()> {
        init_tracing();
        // Long enough that the socket must go to /tmp/pgfeed-<hash>.
        let dir = scratch_dir(&format!("stale-{}", "x".repeat(100)));
        let cluster = Cluster::start(&dir).await?;
        assert!(cluster.socket_dir().to_string_lossy().starts_with("/tmp/pgfeed-"));
        let socket_dir = cluster.socket_dir().to_path_buf();
        let pgdata = cluster.data_dir().to_path_buf();
        cluster.stop().await?;

        assert!(!socket_dir.exists(), "fallback socket dir left behind");

        // A crash leaves postmaster.pid and the socket lock behind. Use a dead pid for one and a
        // live, non-postgres pid (ours, as after pid reuse) for the other.
        let mut dead = Command::new("true").spawn()?;
        dead.wait()?;
        let dead_pid = dead.id();
        fs::write(
            pgdata.join("postmaster.pid"),
            format!(
                "{dead_pid}\n{}\n1700000000\n5432\n/tmp\n\n  0 0\nready   \n",
                pgdata.display()
            ),
        )?;
        fs::create_dir_all(&socket_dir)?;
        fs::write(
            socket_dir.join(format!("{}.lock", socket_name())),
            format!("{}\n{}\n1700000000\n5432\n", std::process::id(), pgdata.display()),
        )?;

        let cluster = Cluster::start(&dir).await?;
        let mut conn = sqlx::PgConnection::connect(&cluster.url("postgres")).await?;
        let one: i32 = sqlx::query_scalar("select 1").fetch_one(&mut conn).await?;
        assert_eq!(one, 1);
        conn.close().await?;
        cluster.stop().await?;
        assert!(!socket_dir.exists(), "fallback socket dir left behind");
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[tokio::test]
    async fn failed_start_reports_the_log_tail() -> anyhow::Result<()> {
        init_tracing();
        let dir = scratch_dir("badconf");
        Cluster::start(&dir).await?.stop().await?;
        let conf = dir.join("pgdata/postgresql.conf");
        let mut text = fs::read_to_string(&conf)?;
        text.push_str("\nbogus_setting_for_test = 1\n");
        fs::write(&conf, text)?;
        let err = Cluster::start(&dir).await.err();
        fs::remove_dir_all(&dir)?;
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("exited during startup"), "{msg}");
        assert!(msg.contains("bogus_setting_for_test"), "{msg}");
        Ok(())
    }

    #[tokio::test]
    async fn dropping_a_cluster_shuts_it_down() -> anyhow::Result<()> {
        init_tracing();
        let cluster = Cluster::start_ephemeral().await?;
        let pid = cluster.pid().ok_or_else(|| anyhow!("no pid"))? as i32;
        let root = cluster
            .ephemeral_root
            .clone()
            .ok_or_else(|| anyhow!("no ephemeral root"))?;
        let started = Instant::now();
        drop(cluster);
        assert!(started.elapsed() < Duration::from_millis(500), "drop blocked");
        let deadline = Instant::now() + Duration::from_secs(15);
        while (pid_alive(pid) || root.exists()) && Instant::now() < deadline {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        assert!(!pid_alive(pid), "postmaster survived the drop");
        assert!(!root.exists(), "ephemeral dir survived the drop");
        Ok(())
    }

    #[test]
    fn no_binaries_is_one_clear_line() {
        let err = choose_bindir(&[], None).err();
        let Some(err @ EmbeddedError::NoBinaries { .. }) = err else {
            panic!("expected NoBinaries, got {err:?}");
        };
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("apt-get install postgresql"), "{msg}");
        assert!(msg.contains("--database-url"), "{msg}");

        let nowhere = [PathBuf::from("/nonexistent/bin")];
        assert!(matches!(
            choose_bindir(&nowhere, None),
            Err(EmbeddedError::NoBinaries { .. })
        ));
    }

    #[test]
    fn finder_resolves_symlinks_and_matches_versions() -> anyhow::Result<()> {
        let dirs = find_bindirs(&default_search_path());
        let Some(first) = dirs.first() else {
            return Ok(()); // no PostgreSQL on this machine: nothing to check
        };
        assert!(first.join("initdb").exists());
        let major = server_major(first).ok_or_else(|| anyhow!("no version from {}", first.display()))?;
        assert_eq!(&choose_bindir(&default_search_path(), Some(major))?, first);
        let err = choose_bindir(&default_search_path(), Some(7)).err();
        assert!(err.is_some_and(|e| e.to_string().contains("initialised by PostgreSQL 7")));
        Ok(())
    }

    #[test]
    fn url_percent_encodes_socket_and_database() {
        let cluster = Cluster {
            postmaster: None,
            pgdata: PathBuf::from("/d/pgdata"),
            socket_dir: PathBuf::from("/tmp/a b"),
            log_path: PathBuf::from("/d/postgres.log"),
            ephemeral_root: None,
        };
        assert_eq!(cluster.url("x/y"), "postgres://postgres@%2Ftmp%2Fa%20b:5432/x%2Fy");
    }

    #[tokio::test]
    async fn untraversable_parent_fails_clearly_as_root() -> anyhow::Result<()> {
        if !geteuid().is_root() {
            return Ok(());
        }
        let locked = scratch_dir("locked");
        fs::DirBuilder::new().mode(0o700).create(&locked)?;
        let err = Cluster::start(&locked.join("data")).await.err();
        fs::remove_dir_all(&locked)?;
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("not traversable"), "{msg}");
        Ok(())
    }

    /// Not a test by itself: the child process for `ephemeral_cluster_dies_with_its_process`.
    #[test]
    fn pdeathsig_helper() -> anyhow::Result<()> {
        if std::env::var_os("PGFEED_EMBEDDED_PDEATHSIG_HELPER").is_none() {
            return Ok(());
        }
        static CLUSTER: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let cluster = rt.block_on(Cluster::start_ephemeral())?;
        let cluster = CLUSTER.get_or_init(|| cluster);
        let root = cluster.ephemeral_root.clone().unwrap_or_default();
        println!("POSTMASTER {} {}", cluster.pid().unwrap_or_default(), root.display());
        std::thread::sleep(Duration::from_secs(60));
        Ok(())
    }

    fn children_of(pid: u32) -> Vec<i32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/stat")).ok().is_some_and(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string))
                        == Some(pid.to_string())
                })
            })
            .collect()
    }

    #[tokio::test]
    async fn ephemeral_cluster_dies_with_its_process() -> anyhow::Result<()> {
        init_tracing();
        let module = module_path!();
        let test_name = format!("{}::pdeathsig_helper", module.split_once("::").map_or(module, |m| m.1));
        let mut helper = Command::new(std::env::current_exe()?)
            .args([test_name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env("PGFEED_EMBEDDED_PDEATHSIG_HELPER", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = helper.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let line = tokio::task::spawn_blocking(move || {
            io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find_map(|l| Some(l.split_once("POSTMASTER ")?.1.to_string()))
        })
        .await?
        .ok_or_else(|| anyhow!("helper did not report its postmaster"))?;
        // libtest may print "test <name> ... " before it on the same line.
        let mut parts = line.split_whitespace();
        let pm: u32 = parts.next().unwrap_or_default().parse()?;
        let root = PathBuf::from(parts.next().unwrap_or_default());
        assert!(pm > 0 && root.exists());

        // Wait for the auxiliary processes (checkpointer, walwriter, ...) to be there.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut family = children_of(pm);
        while family.len() < 3 && Instant::now() < deadline {
            tokio::time::sleep(POLL_INTERVAL).await;
            family = children_of(pm);
        }
        assert!(family.len() >= 3, "postmaster children: {family:?}");
        family.push(pm as i32);

        helper.kill()?; // SIGKILL: no destructors, no atexit
        helper.wait()?;

        let deadline = Instant::now() + Duration::from_secs(15);
        while family.iter().any(|p| pid_alive(*p)) && Instant::now() < deadline {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let alive: Vec<_> = family.iter().filter(|p| pid_alive(**p)).collect();
        assert!(alive.is_empty(), "still alive after the parent died: {alive:?}");

        // The next start_ephemeral removes the dead process's dir.
        let cluster = Cluster::start_ephemeral().await?;
        assert!(!root.exists(), "stale {} not removed", root.display());
        cluster.stop().await?;
        Ok(())
    }
}
