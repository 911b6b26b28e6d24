//! The bare-NOTIFY relay that `latency` measures pgfeed beside (issue 19): what a Node `ws`+`pg`
//! or FastAPI+asyncpg relay does, written with pgfeed's own stack (tokio-postgres for LISTEN,
//! axum's WebSocket, a tokio broadcast channel) so that the comparison is of designs, not of
//! languages.
//!
//! A row trigger `pg_notify('bench_relay', row_to_json(new)::text)` on a copy of `messages`
//! ([`TABLE`]), one LISTEN connection, and each notification's payload sent as it came, one text
//! frame, to every connected WebSocket, with pgfeed's socket settings (`TCP_NODELAY`, a 1 KiB
//! read buffer). Minimal on purpose, and so not a feed: no log, no cursor,
//! no resume, no ordering work (it sends in NOTIFY's order, which is commit order); a
//! notification lost while its connection is down is lost; a row past NOTIFY's 8000-byte payload
//! fails its writer's INSERT; any role that can connect can LISTEN on the channel and read every
//! row; a client more than [`BUFFER`] frames behind is closed.
//!
//! It runs on a runtime of its own, on threads named [`THREAD`], so that its CPU can be told
//! apart from the bench's clients' ([`Relay::cpu_time`]).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use futures::StreamExt;
use tokio::sync::broadcast::{self, error::RecvError};

/// The relay's copy of `messages`: the same columns, indexes and foreign key, no pgfeed capture.
pub const TABLE: &str = "bench_relay_messages";
const CHANNEL: &str = "bench_relay";
/// `application_name` of the relay's LISTEN session.
pub const LISTEN_APP: &str = "pgfeed-bench-relay";
/// Frames the channel holds for the slowest client, as pgfeed's topic buffer does; a client
/// further behind is closed with 4008 (it could not resume: the relay has no log).
const BUFFER: usize = 1024;
/// As pgfeed's WebSocket read buffer, so that the two spend alike per delivery on the socket.
const READ_BUFFER: usize = 1024;
/// The name of the relay's runtime threads (15 bytes at most: Linux truncates thread names).
const THREAD: &str = "bench-relay";
/// Worker threads: as many as pgfeed's runtime has on this machine (one per core).
fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Creates [`TABLE`] and its NOTIFY trigger (idempotent).
pub async fn install(db: &tokio_postgres::Client) -> anyhow::Result<()> {
    db.batch_execute(&format!(
        r#"
        create table if not exists {TABLE} (like messages including all);
        do $$ begin
            alter table {TABLE} add foreign key (study_id) references studies on delete cascade;
        exception when duplicate_object then null; end $$;
        create or replace function bench_relay_notify() returns trigger language plpgsql as $f$
        begin
            perform pg_notify('{CHANNEL}', row_to_json(new)::text);
            return null;
        end $f$;
        drop trigger if exists bench_relay_notify on {TABLE};
        create trigger bench_relay_notify after insert or update or delete on {TABLE}
            for each row execute function bench_relay_notify();
        "#
    ))
    .await
    .context("creating the bare-NOTIFY relay's table and trigger")
}

/// A running relay: its LISTEN session and its WebSocket endpoint `ws://{addr}/ws`.
pub struct Relay {
    pub addr: SocketAddr,
    /// Runs the listener and every socket; shut down in the background by [`Relay::stop`].
    runtime: tokio::runtime::Runtime,
}

impl Relay {
    /// Connects the LISTEN session to `url` and starts serving on 127.0.0.1, port 0.
    pub async fn start(url: &str) -> anyhow::Result<Relay> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers())
            .thread_name(THREAD)
            .enable_all()
            .build()
            .context("starting the relay's runtime")?;
        let mut config: tokio_postgres::Config = url.parse().context("parsing the database URL")?;
        config.application_name(LISTEN_APP);
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the relay")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, _) = broadcast::channel::<Utf8Bytes>(BUFFER);
        let listening = runtime
            .spawn(listen(config, tx.clone()))
            .await
            .context("the relay's listener task")??;
        runtime.spawn(async move {
            let app = Router::new().route("/ws", get(upgrade)).with_state(tx);
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                Err(e) => return eprintln!("pgfeed-bench: relay listener: {e}"),
            };
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("pgfeed-bench: relay server: {e}");
            }
        });
        runtime.spawn(listening);
        Ok(Relay { addr, runtime })
    }

    /// CPU time (user + system) the relay's threads have used so far.
    pub fn cpu_time(&self) -> Duration {
        threads_cpu_time(THREAD)
    }

    pub fn stop(self) {
        self.runtime.shutdown_background();
    }
}

/// LISTENs on [`CHANNEL`] and returns the future that relays each notification's payload into
/// `tx` until the connection ends.
async fn listen(
    config: tokio_postgres::Config,
    tx: broadcast::Sender<Utf8Bytes>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting the relay's LISTEN session")?;
    // The connection is driven from here on: the LISTEN below completes through it.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    // No receiver is no error: nobody is connected yet.
                    let _ = tx.send(Utf8Bytes::from(n.payload().to_owned()));
                }
                Ok(_) => {}
                Err(e) => return eprintln!("pgfeed-bench: the relay's LISTEN session failed: {e}"),
            }
        }
    });
    client
        .batch_execute(&format!("listen {CHANNEL}"))
        .await
        .context("LISTEN on the relay's channel")?;
    Ok(async move {
        // Keeps the client (and so the session) open while the connection is driven.
        let _client = client;
        let _ = driver.await;
    })
}

async fn upgrade(ws: WebSocketUpgrade, State(tx): State<broadcast::Sender<Utf8Bytes>>) -> Response {
    // Subscribed before the handshake answers: a client that has connected misses nothing after.
    let rx = tx.subscribe();
    // pgfeed's own read buffer (src/http/streams.rs): tungstenite zero-fills the buffer before
    // every read, and with the 128 KiB default that memset outweighed the relaying itself.
    ws.read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| forward(socket, rx))
}

/// One client: every payload, as a text frame, until it closes or falls behind.
async fn forward(mut socket: WebSocket, mut rx: broadcast::Receiver<Utf8Bytes>) {
    loop {
        tokio::select! {
            payload = rx.recv() => match payload {
                Ok(text) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    let close = CloseFrame { code: 4008, reason: Utf8Bytes::from_static("slow consumer") };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// CPU time (user + system) of this process's threads named `name` (from /proc/self/task).
fn threads_cpu_time(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
        .map(|t| crate::setup::cpu_time(&format!("self/task/{}", t.file_name().to_string_lossy())))
        .sum()
}
