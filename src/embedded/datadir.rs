//! The data dir and who owns it: `dir` is created 0700 and kept so, belonging to the user the
//! cluster runs as (a dedicated account when we are root, since PostgreSQL refuses root), and
//! `dir/pgdata` is made by initdb as that user. Ephemeral clusters get a fresh temp dir each, and
//! the dirs of dead processes are swept by the next one.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use nix::unistd::{geteuid, Gid, Uid, User};
use tracing::{debug, info};

use super::locks::{lock_file_pid, pid_alive, postgres_on};
use super::logs::{log_tail, open_log};
use super::process::scrub_env;
use super::SUPERUSER;

const EPHEMERAL_PREFIX: &str = "pgfeed-test-";

/// The unprivileged account initdb and postgres run as when we are root.
#[derive(Debug, Clone)]
pub(super) struct RunAs {
    pub(super) name: String,
    pub(super) uid: Uid,
    pub(super) gid: Gid,
}

/// Users the cluster may run as when we are root and no data dir exists yet, the most dedicated
/// first. Never `nobody`: files and processes of every daemon that runs as `nobody` could reach
/// the cluster's.
const CLUSTER_USERS: [&str; 2] = ["pgfeed", "postgres"];

/// Who runs the cluster when we are root: the existing data dir's owner, else the first of
/// [`CLUSTER_USERS`] that exists.
pub(super) fn cluster_user(pgdata: &Path) -> anyhow::Result<RunAs> {
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
pub(super) fn check_traversable(path: &Path, user: &RunAs) -> anyhow::Result<()> {
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
pub(super) fn make_data_dir_private(root: &Path, run_as: Option<&RunAs>) -> anyhow::Result<()> {
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

/// Creates `path` as a 0700 dir owned by the cluster user (or us), or checks an existing one is a
/// real directory owned by them (it may be in world-writable /tmp).
pub(super) fn ensure_private_dir(path: &Path, run_as: Option<&RunAs>) -> anyhow::Result<()> {
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

/// Runs initdb into a staging dir and renames it into place, so an interrupted initdb never leaves
/// a half-initialised `pgdata` behind.
pub(super) fn initdb(
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

/// `temp/pgfeed-test-<our pid>-<unique>`, mode 0700.
pub(super) fn create_ephemeral_dir(base: &Path) -> anyhow::Result<PathBuf> {
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
pub(super) fn remove_stale_ephemeral_dirs(base: &Path) {
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

pub(super) fn remove_dir_logged(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path) {
        if e.kind() != io::ErrorKind::NotFound {
            debug!(path = %path.display(), error = %e, "could not remove dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::embedded::tests::scratch_dir;
    use crate::embedded::Cluster;
    use nix::unistd::geteuid;
    use std::fs;
    use std::os::unix::fs::DirBuilderExt;

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
}
