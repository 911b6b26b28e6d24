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

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is *called*, not when
/// the future is first polled, so a signal that comes right after start-up is not lost to the
/// default action (which would kill the process without a clean shutdown).
#[cfg(unix)]
pub fn signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        let (mut interrupt, mut terminate) = match (interrupt, terminate) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGINT/SIGTERM");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
pub fn signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
