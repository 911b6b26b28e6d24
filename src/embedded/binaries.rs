//! Finding the server binaries: the machine's own `initdb` and `postgres`, of the major version an
//! existing data dir needs, so an upgrade of the packages never starts a server on data it cannot read.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::anyhow;

use super::EmbeddedError;

/// PATH, then `pg_config --bindir`, then the usual install locations, newest version first.
pub(super) fn default_search_path() -> Vec<PathBuf> {
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
pub(super) fn choose_bindir(search: &[PathBuf], wanted_major: Option<u32>) -> Result<PathBuf, EmbeddedError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
