//! The accept loop: axum's router on hyper-util connections, with the limits no router can set
//! because they come before any request (README "Security: auth and limits"):
//!
//! - Open TCP connections are capped in total and per client address (`--max-tcp-connections`,
//!   `--max-tcp-connections-per-ip`); one over either cap is closed at once, before it costs a
//!   task. A trusted proxy's connections count in the total only.
//! - A connection must show within `header_read_timeout` which HTTP it speaks (its first bytes
//!   for HTTP/1, the whole 24-byte preface for HTTP/2), or it is closed: hyper-util waits for
//!   those bytes without a timer, so without this a silent socket would be held forever.
//! - HTTP/1 then gets hyper's own `header_read_timeout` for each request's headers (slowloris),
//!   the wait for the next request on a kept-alive connection included. HTTP/2 has no such
//!   timer, so an HTTP/2 connection with no request open for `header_read_timeout` (its first
//!   request included) is told to go away (GOAWAY) and closed.
//! - Shutdown stops accepting, then lets open requests finish for [`DRAIN`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::client::{ClientKey, TrustedProxies};
use super::limits::{ConnLimits, ConnPermit, Refused};

/// Time open HTTP requests get to finish after shutdown starts (sessions have their own).
const DRAIN: Duration = Duration::from_secs(5);

/// In every request's extensions: cancelling it closes the connection the request came on at
/// once, whatever hyper is doing with it. A download whose client stopped reading is cut off this
/// way (`files`): hyper stops polling a response body while the socket will not take more, so the
/// body itself cannot end it.
#[derive(Clone, Debug)]
pub struct CloseConnection(pub CancellationToken);

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The accept loop's settings (flags in `config.rs`).
pub struct Accept {
    /// Time for a connection's first bytes, HTTP/1 headers, and an idle HTTP/2 connection.
    pub header_read_timeout: Duration,
    /// Open TCP connections, per client and in total; each socket holds a permit until it closes.
    pub connections: Arc<ConnLimits>,
    /// Peers exempt from the per-client TCP cap (their clients are limited per request).
    pub trusted_proxies: Arc<TrustedProxies>,
}

pub async fn serve(tcp: TcpListener, router: Router, accept: Accept, shutdown: CancellationToken) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(accept.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    // Every connection task; shutdown waits for them (up to DRAIN) after telling each to finish.
    let connections = TaskTracker::new();
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
        let permit = if accept.trusted_proxies.contains(remote.ip()) {
            accept.connections.acquire_shared()
        } else {
            accept.connections.acquire(ClientKey::of(remote.ip()))
        };
        let permit = match permit {
            Ok(permit) => permit,
            Err(refused) => {
                // Closed before anything is read: the cheapest answer, and one that a client
                // opening sockets in a loop cannot make expensive.
                match refused {
                    Refused::PerIp(n) => tracing::debug!(%remote, "closing a connection over {n} from one client"),
                    Refused::Total(n) => tracing::debug!(%remote, "closing a connection over {n} in total"),
                }
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            Socket::new(stream, permit),
            remote,
            router.clone(),
            builder.clone(),
            accept.header_read_timeout,
            shutdown.clone(),
        ));
    }
    drop(tcp);
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait()).await.is_err() {
        tracing::debug!("some HTTP connections were still open after {DRAIN:?}");
    }
}

/// One connection, from its first byte to its close (or its hand-over to a WebSocket).
async fn connection(
    mut socket: Socket,
    remote: SocketAddr,
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let h2 = tokio::select! {
        _ = shutdown.cancelled() => return,
        version = tokio::time::timeout(timeout, socket.read_version()) => match version {
            Ok(Ok(Some(h2))) => h2,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "connection failed before a request"),
            Err(_) => return tracing::debug!(%remote, "no request within {timeout:?}; closing"),
        },
    };
    // Only HTTP/2 needs watching for idleness: hyper times HTTP/1's waits itself.
    let activity = h2.then(|| Arc::new(Activity::default()));
    let requests = activity.clone();
    let close = CancellationToken::new();
    let close_req = CloseConnection(close.clone());
    let service = tower::service_fn(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(remote));
        req.extensions_mut().insert(close_req.clone());
        // Held by the request, then by its response body, so a streaming response keeps its
        // connection busy for as long as it streams.
        let busy = requests.as_ref().map(|a| a.busy());
        let response = router.clone().oneshot(req.map(axum::body::Body::new));
        async move {
            let response = response.await?;
            Ok::<_, std::convert::Infallible>(match busy {
                Some(busy) => response.map(|body| axum::body::Body::new(Busy { body, _busy: busy })),
                None => response,
            })
        }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(socket), TowerToHyperService::new(service))
        .into_owned();
    tokio::pin!(conn);
    let idle = async {
        match &activity {
            Some(activity) => activity.idle_for(timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        // Dropping the connection closes its socket.
        _ = close.cancelled() => return tracing::debug!(%remote, "connection closed by its handler"),
        _ = shutdown.cancelled() => {}
        _ = idle => tracing::debug!(%remote, "HTTP/2 connection without a request for {timeout:?}; closing"),
    }
    conn.as_mut().graceful_shutdown();
    if let Ok(Err(e)) = tokio::time::timeout(DRAIN, conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A client's TCP socket, with the bytes read to tell its HTTP version put back in front, and
/// its slot in the TCP limits: the permit goes wherever the socket goes (into a WebSocket after
/// an upgrade) and is freed when the socket closes.
struct Socket {
    stream: TcpStream,
    /// Bytes already read, handed out again before the stream's own.
    head: [u8; 24],
    /// `head[start..end]` is yet to be read.
    start: u8,
    end: u8,
    _permit: ConnPermit,
}

impl Socket {
    fn new(stream: TcpStream, permit: ConnPermit) -> Socket {
        Socket {
            stream,
            head: [0; 24],
            start: 0,
            end: 0,
            _permit: permit,
        }
    }

    /// Reads until the version shows: `Some(true)` for the HTTP/2 preface, `Some(false)` as soon as
    /// the bytes cannot be one (HTTP/1), `None` if the peer closed first. Reads at most 24 bytes,
    /// all kept for hyper.
    async fn read_version(&mut self) -> io::Result<Option<bool>> {
        let mut n = 0;
        loop {
            let read = self.stream.read(&mut self.head[n..]).await?;
            if read == 0 {
                return Ok(None);
            }
            n += read;
            self.end = n as u8;
            if self.head[..n] != H2_PREFACE[..n] {
                return Ok(Some(false));
            }
            if n == H2_PREFACE.len() {
                return Ok(Some(true));
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start < this.end {
            let head = &this.head[usize::from(this.start)..usize::from(this.end)];
            let n = head.len().min(buf.remaining());
            buf.put_slice(&head[..n]);
            this.start += n as u8;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Requests open on one HTTP/2 connection, so that one with none for a while can be closed.
#[derive(Default)]
struct Activity {
    open: AtomicUsize,
    /// Requests ever started; an idle wait that saw one start begins again.
    started: AtomicU64,
    /// Woken when the last open request ends.
    quiet: Notify,
}

/// One open request; dropping it (with its response body) ends it.
struct Request(Arc<Activity>);

impl Activity {
    fn busy(self: &Arc<Self>) -> Request {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        Request(self.clone())
    }

    /// Returns once no request has been open for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            while self.open.load(Ordering::SeqCst) > 0 {
                self.quiet.notified().await;
            }
            let started = self.started.load(Ordering::SeqCst);
            tokio::time::sleep(timeout).await;
            if self.open.load(Ordering::SeqCst) == 0 && self.started.load(Ordering::SeqCst) == started {
                return;
            }
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            // A stored permit if nobody waits yet: the watcher's next check sees it at once.
            self.0.quiet.notify_one();
        }
    }
}

/// A response body that keeps its request open until it is done or dropped.
struct Busy {
    body: axum::body::Body,
    _busy: Request,
}

impl http_body::Body for Busy {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Raises the soft open-file limit to the hard one: each connection is a file, and the usual soft
/// default (1024) would make accepting fail long before the connection caps.
pub fn raise_file_limit(max_tcp_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!("open-file limit raised from {soft} to {hard}");
                hard
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not raise the open-file limit from {soft} to {hard}");
                soft
            }
        }
    } else {
        tracing::debug!("open-file limit {soft} (already the hard limit)");
        soft
    };
    if limit < max_tcp_connections as u64 {
        tracing::warn!(
            "the open-file limit ({limit}) is below --max-tcp-connections ({max_tcp_connections}): \
             accepting will fail before that cap; raise the hard limit (ulimit -n, LimitNOFILE=)"
        );
    }
}
