//! The server log, `dir/postgres.log`: private (0600), rotated once at start when large, and quoted
//! (its last lines) in every error about a server that failed, since that is where PostgreSQL says why.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};

pub(super) const LOG_FILE: &str = "postgres.log";
/// The log is rotated to `postgres.log.1` at start when bigger than this.
const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;
const LOG_TAIL_LINES: usize = 30;

/// An existing server log readable by others (made by an older version) becomes 0600.
pub(super) fn make_log_private(path: &Path) -> anyhow::Result<()> {
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

pub(super) fn rotated_log(path: &Path) -> PathBuf {
    path.with_extension("log.1")
}

pub(super) fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening the PostgreSQL log {}", path.display()))
}

pub(super) fn rotate_log(path: &Path) -> anyhow::Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.len() > LOG_ROTATE_BYTES => {
            let old = rotated_log(path);
            fs::rename(path, &old).with_context(|| format!("rotating {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The last lines written to the log since `offset`, formatted to append to an error message.
pub(super) fn log_tail(path: &Path, offset: u64) -> String {
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

#[cfg(test)]
mod tests {
    use crate::embedded::tests::{init_tracing, scratch_dir};
    use crate::embedded::Cluster;
    use std::fs;

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
}
