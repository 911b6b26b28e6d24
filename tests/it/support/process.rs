//! The real `pgfeed` binary as a child process, for tests of what a person or an operator sees.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{WsClient, PATIENCE};

pub const BIN: &str = env!("CARGO_BIN_EXE_pgfeed");

/// A `pgfeed` process and what it has logged so far.
pub struct Running {
    pub addr: String,
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// `pgfeed ARGS` with a clean environment (no DATABASE_URL or PGFEED_* from the caller), waiting
/// for its `listening on http://ADDR` line.
pub async fn serve(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k == "DATABASE_URL" || k.starts_with("PGFEED_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "pgfeed=info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting pgfeed");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    tokio::spawn({
        let log = log.clone();
        async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(i) = line.find("listening on http://") {
                    if let Some(tx) = addr_tx.take() {
                        let rest = &line[i + "listening on http://".len()..];
                        let end = rest
                            .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
                            .unwrap_or(rest.len());
                        let _ = tx.send(rest[..end].to_owned());
                    }
                }
                log.lock().unwrap().push(line);
            }
        }
    });
    let addr = match tokio::time::timeout(Duration::from_secs(60), addr_rx).await {
        Ok(Ok(addr)) => addr,
        _ => panic!(
            "pgfeed did not start listening; its log:\n{}",
            log.lock().unwrap().join("\n")
        ),
    };
    Running { child, addr, log }
}

impl Running {
    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid") as i32;
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "pgfeed did not exit after SIGTERM; its log:\n{}",
                self.log.lock().unwrap().join("\n")
            ),
        }
    }

    /// SIGKILL: a crash, with no goodbye to anyone.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    pub async fn ws(&self) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", self.addr))
            .await
            .expect("ws connect");
        WsClient { stream }
    }

    pub fn log_line(&self, needle: &str) -> Option<String> {
        self.log.lock().unwrap().iter().find(|l| l.contains(needle)).cloned()
    }
}
