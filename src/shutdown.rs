//! Shutdown: tell every long-lived task, then wait for them (Tokio's shutdown guide).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the server waits for sessions and background tasks after telling them to stop.
pub const GRACE: Duration = Duration::from_secs(10);

/// Shared by every long-lived task: the token tells them to stop, the tracker counts them.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled once, when the server stops; every session and background task watches it.
    pub token: CancellationToken,
    /// Every session and background task is spawned through it, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
