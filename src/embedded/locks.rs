//! Lock files: `postmaster.pid` in the data dir and `.s.PGSQL.5432.lock` beside the socket. One left
//! by a crash (or naming a pid since reused by another process) is removed so the cluster starts;
//! one held by a live server on the same data dir is an error, never touched.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::socket::socket_name;
use super::POLL_INTERVAL;

/// How long to wait for a postmaster that is already shutting down on our data dir.
const STOPPING_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `pid` runs: one we may not signal counts, a zombie does not (it holds no lock any more).
pub(super) fn pid_alive(pid: i32) -> bool {
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
pub(super) fn postgres_on(pid: i32, pgdata: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => cwd == pgdata,
        Err(_) => is_postgres_process(pid),
    }
}

/// The pid on the first line of a postgres lock file, if it has one.
pub(super) fn lock_file_pid(path: &Path) -> anyhow::Result<Option<i32>> {
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

pub(super) fn postmaster_ready(pid_file: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(pid_file) else {
        return false;
    };
    let mut lines = text.lines();
    lines.next().map(str::trim) == Some(pid.to_string().as_str()) && lines.nth(6).map(str::trim) == Some("ready")
}

/// Removes a postmaster.pid whose process is gone (or is now something else: pids get reused after
/// a reboot). Fails if a postgres is really running on this data dir; waits for one that is stopping.
pub(super) fn clear_stale_postmaster_pid(pgdata: &Path) -> anyhow::Result<()> {
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
pub(super) fn clear_stale_socket_lock(socket_dir: &Path, pgdata: &Path) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::tests::{init_tracing, scratch_dir};
    use crate::embedded::Cluster;
    use sqlx::Connection;
    use std::process::Command;

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
}
