//! Where the Unix socket lives: inside the data dir when the path fits in `sun_path`, else in a
//! private `/tmp/pgfeed-<hash>` dir named after the data dir, so the same data dir always gets the
//! same socket and a stale lock there can be recognised.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::PORT;

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

pub(super) fn socket_name() -> String {
    format!(".s.PGSQL.{PORT}")
}

/// `root/sock` when its socket path fits and needs no quoting in postgres' directory list,
/// else `/tmp/pgfeed-<hash of root>`.
pub(super) fn choose_socket_dir(root: &Path) -> PathBuf {
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

/// Removes a `/tmp/pgfeed-<hash>` socket dir once the server is gone (it is empty by then);
/// a socket dir inside the data dir stays.
pub(super) fn remove_fallback_socket_dir(socket_dir: &Path, pgdata: &Path) {
    if pgdata.parent().is_some_and(|root| socket_dir.starts_with(root)) {
        return;
    }
    if let Err(e) = fs::remove_dir(socket_dir) {
        debug!(path = %socket_dir.display(), error = %e, "could not remove socket dir");
    }
}
