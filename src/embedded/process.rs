//! Launching the postmaster: in its own process group (a terminal's Ctrl-C reaches only us), with a
//! parent-death signal so it never outlives us, forked from one long-lived thread because that
//! signal follows the forking thread, not the process. Ready means "ready" in `postmaster.pid` and
//! a socket that accepts connections.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::locks::postmaster_ready;
use super::logs::{log_tail, open_log};
use super::signals::{abort, signal_child};
use super::socket::socket_name;
use super::{Cluster, Prepared, POLL_INTERVAL, PORT};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawns the postmaster and waits until it is ready.
pub(super) async fn launch(p: Prepared, ephemeral_root: Option<PathBuf>) -> anyhow::Result<Cluster> {
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

impl Cluster {
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

/// Settings a user's environment holds for their own psql (PGDATA, PGOPTIONS, …) are read by initdb
/// and postgres too: they must not redirect or reconfigure our cluster.
pub(super) fn scrub_env(cmd: &mut Command) {
    for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGOPTIONS", "PGCLIENTENCODING"] {
        cmd.env_remove(var);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::locks::pid_alive;
    use crate::embedded::tests::init_tracing;
    use crate::embedded::SUPERUSER;
    use nix::unistd::geteuid;
    use sqlx::Connection;
    use std::fs;
    use std::io::BufRead;

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
