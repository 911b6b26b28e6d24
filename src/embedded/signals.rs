//! Stopping the postmaster: fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL, each
//! after its timeout, so a stuck server never keeps us from exiting. `stop` waits asynchronously;
//! the reaper thread behind `Drop` waits blocking, because a destructor cannot await.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::warn;

use super::POLL_INTERVAL;

const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn signal_child(child: &Child, signal: Signal) -> anyhow::Result<()> {
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
pub(super) async fn shutdown(child: &mut Child) -> anyhow::Result<ExitStatus> {
    signal_child(child, Signal::SIGINT)?;
    if let Some(status) = wait_exit(child, FAST_SHUTDOWN_TIMEOUT).await? {
        return Ok(status);
    }
    warn!("embedded PostgreSQL ignored fast shutdown for {FAST_SHUTDOWN_TIMEOUT:?}; sending SIGQUIT");
    abort(child).await
}

/// SIGQUIT (immediate shutdown), then SIGKILL.
pub(super) async fn abort(child: &mut Child) -> anyhow::Result<ExitStatus> {
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
pub(super) fn shutdown_blocking(child: &mut Child) -> anyhow::Result<ExitStatus> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::locks::pid_alive;
    use crate::embedded::tests::init_tracing;
    use crate::embedded::Cluster;

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
}
