//! The headless-Chromium drivers in tests/browser/ (playwright-core on Debian's chromium).

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

/// Where the node drivers and their `node_modules` live.
pub const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");

/// `node <script>` in tests/browser, talking over stdin/stdout, after checking that Chromium and
/// playwright-core are installed (failing with the command that installs them, never skipping).
pub fn node_driver(script: &str) -> Command {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install -y chromium"
    );
    assert!(
        Path::new(DIR).join("node_modules/playwright-core").exists(),
        "playwright-core is missing: npm ci --prefix tests/browser"
    );
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .current_dir(DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}
