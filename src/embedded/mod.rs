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
//!
//! This file holds the [`Cluster`] API and the order of the steps; each concern has its own private
//! module: `binaries` finds `initdb` and `postgres`, `datadir` makes the data dir (and the ephemeral
//! temp dirs) private and picks the user the cluster runs as, `process` launches the postmaster,
//! `signals` stops it, `locks` tells a stale lock file from a live server, `socket` places the Unix
//! socket, `logs` keeps the server log.

mod binaries;
mod datadir;
mod locks;
mod logs;
mod process;
mod signals;
mod socket;

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::Signal;
use nix::unistd::geteuid;
use tracing::{info, warn};

use self::binaries::{choose_bindir, default_search_path};
use self::datadir::{
    check_traversable, cluster_user, create_ephemeral_dir, ensure_private_dir, initdb, make_data_dir_private,
    remove_dir_logged, remove_stale_ephemeral_dirs, RunAs,
};
use self::locks::{clear_stale_postmaster_pid, clear_stale_socket_lock};
use self::logs::{log_tail, make_log_private, rotate_log, rotated_log, LOG_FILE};
use self::process::launch;
use self::signals::{shutdown, shutdown_blocking, signal_child};
use self::socket::{choose_socket_dir, remove_fallback_socket_dir};

/// Nominal port: names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
const PORT: u16 = 5432;
/// The bootstrap superuser created by initdb and used in [`Cluster::url`].
const SUPERUSER: &str = "postgres";
/// How often waits for the postmaster (ready, exited, done stopping) look again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

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

/// Every byte but RFC 3986's unreserved ones, so a socket path can stand as the URL's host and any
/// database name as its path.
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

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, Row};

    pub(super) fn init_tracing() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }

    pub(super) fn scratch_dir(name: &str) -> PathBuf {
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
}
