//! The accept loop: axum's router on hyper-util connections, so that a client that sends its
//! headers slowly (slowloris) is cut off after `header_read_timeout` instead of pinning a
//! connection, and so that shutdown stops accepting, then lets open requests finish.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Time open HTTP requests get to finish after shutdown starts (sessions have their own).
const DRAIN: Duration = Duration::from_secs(5);

/// In every request's extensions: cancelling it closes the connection the request came on at
/// once, whatever hyper is doing with it. A download whose client stopped reading is cut off this
/// way (`files`): hyper stops polling a response body while the socket will not take more, so the
/// body itself cannot end it.
#[derive(Clone, Debug)]
pub struct CloseConnection(pub CancellationToken);

pub async fn serve(tcp: TcpListener, router: Router, header_read_timeout: Duration, shutdown: CancellationToken) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let close = CancellationToken::new();
        let close_req = CloseConnection(close.clone());
        let service = tower::service_fn(move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(remote));
            req.extensions_mut().insert(close_req.clone());
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let service = TowerToHyperService::new(service);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                // Dropping the connection closes its socket.
                _ = close.cancelled() => tracing::debug!("connection closed by its handler"),
            }
        });
    }
    drop(tcp);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::debug!("some HTTP connections were still open after {DRAIN:?}");
    }
}
