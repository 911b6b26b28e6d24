//! A view subscriber: one WebSocket, one view, a task that applies every frame to its window and
//! records what the scenario reports (latency, misfits, frames since a mark).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::definitions::Definition;
use super::window::{Frame, Window};
use crate::client::{self, now_us, Ws};

/// How long a subscribe may take to answer before the scenario gives up on it.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Times a subscriber reconnects and resumes (PROTOCOL §9 "Resume") after the server closed its
/// connection; past that it stays closed and its window is compared as it was.
const MAX_RESUMES: usize = 10;

/// What every subscriber task shares with the scenario.
#[derive(Debug)]
pub struct Activity {
    /// When any subscriber last received a view frame (µs since the epoch): the scenario waits
    /// for this to stand still before it compares windows with PostgreSQL.
    pub last_frame_us: AtomicI64,
    /// Rows written with `updated_at` in `[measure_from_us, measure_until_us]` give latencies;
    /// others (the bulk update, the load) do not.
    pub measure_from_us: AtomicI64,
    pub measure_until_us: AtomicI64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            last_frame_us: AtomicI64::new(0),
            measure_from_us: AtomicI64::new(i64::MAX),
            measure_until_us: AtomicI64::new(i64::MAX),
        })
    }
}

/// Frames since the scenario last called [`State::mark`].
#[derive(Debug, Default, Clone, Copy)]
pub struct SinceMark {
    pub frames: u32,
    /// `view` frames among them (a whole window instead of ops).
    pub views: u32,
    pub max_ops: usize,
    pub last_at_us: i64,
}

/// One subscriber's record.
#[derive(Debug, Default)]
pub struct State {
    pub window: Window,
    /// `view` and `view_delta` frames after the subscribe's answer.
    pub frames: u64,
    /// `view` frames after the subscribe's answer: the server re-sent the whole window.
    pub views: u64,
    pub misfits: u64,
    pub first_misfit: Option<String>,
    /// Deltas with more than 2 × limit ops.
    pub oversized: u64,
    /// Deltas whose cursor equals the previous frame's: two deltas for one commit.
    pub repeated_cursors: u64,
    /// The first such delta, and what came before it (for the report).
    pub first_repeat: Option<String>,
    /// What the last frame was: its type, ops and count (for [`State::first_repeat`]).
    last_frame: String,
    /// `error` frames, and frames of a type the bench does not know.
    pub unexpected: Vec<String>,
    /// Receipt − `updated_at` of each row a delta carries that its commit wrote (µs).
    pub latencies_us: Vec<u32>,
    /// Close codes, each time the server closed the connection (1006: it dropped without one).
    pub closes: Vec<u16>,
    /// Set when the subscriber gave up: the connection is closed and was not resumed.
    pub gone: bool,
    pub since_mark: SinceMark,
    last_cursor: Option<String>,
    /// The last `view` came with `"count":null`: its count follows in a delta of no ops at the
    /// cursor of the frame before it, which is not a second delta for one commit.
    count_coming: bool,
}

impl State {
    pub fn mark(&mut self) {
        self.since_mark = SinceMark::default();
    }
}

pub struct Subscriber {
    pub def: usize,
    pub state: Arc<Mutex<State>>,
    /// The task reading the socket; aborting it drops the connection.
    pub task: JoinHandle<()>,
}

/// Connects subscriber number `index`, subscribes view `v` of `def`, waits for its `view`, and
/// leaves a task applying what follows. Returns it with the time from sending the subscribe to
/// receiving the `view`.
pub async fn open(
    server: SocketAddr,
    index: usize,
    def_index: usize,
    def: &Definition,
    activity: Arc<Activity>,
) -> anyhow::Result<(Subscriber, Duration)> {
    let mut ws = client::connect(server, index).await?;
    let frame = def.subscribe_frame("v");
    let t0 = Instant::now();
    ws.send(Message::text(frame.to_string())).await?;
    let text = tokio::time::timeout(SUBSCRIBE_TIMEOUT, first_view(&mut ws))
        .await
        .with_context(|| format!("no `view` within {SUBSCRIBE_TIMEOUT:?} for {frame}"))?
        .with_context(|| format!("subscribing {frame}"))?;
    let took = t0.elapsed();
    let first: Frame = serde_json::from_str(&text)?;
    let mut state = State::default();
    state
        .window
        .replace(first.rows.as_deref().unwrap_or_default(), first.count);
    state.last_cursor = first.cursor.map(Cow::into_owned);
    state.count_coming = def.count && first.count.is_none();
    let state = Arc::new(Mutex::new(state));
    let task = tokio::spawn(run(
        ws,
        Resume { server, index, frame },
        state.clone(),
        activity,
        def.limit,
    ));
    Ok((
        Subscriber {
            def: def_index,
            state,
            task,
        },
        took,
    ))
}

/// The text of the `view` that answers a subscribe.
async fn first_view(ws: &mut Ws) -> anyhow::Result<String> {
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let frame: Frame = serde_json::from_str(text.as_str()).with_context(|| format!("reading {text}"))?;
        match &*frame.kind {
            "view" => return Ok(text.as_str().to_owned()),
            "error" => bail!("answered {text}"),
            // Whatever else may precede the window (an acknowledgement) is not the answer.
            _ => {}
        }
    }
    bail!("connection closed before `view`")
}

/// What a subscriber needs to open its view again.
struct Resume {
    server: SocketAddr,
    index: usize,
    frame: serde_json::Value,
}

/// Applies frames until the connection ends; then reconnects and subscribes again with the last
/// cursor, as a client does after a 4008 (PROTOCOL §9 "Resume"), and goes on.
async fn run(mut ws: Ws, resume: Resume, state: Arc<Mutex<State>>, activity: Arc<Activity>, limit: usize) {
    loop {
        let code = receive(&mut ws, &state, &activity, limit).await;
        let mut frame = resume.frame.clone();
        {
            let mut s = lock(&state);
            s.closes.push(code);
            if s.closes.len() > MAX_RESUMES {
                s.gone = true;
                return;
            }
            frame["since"] = s.last_cursor.clone().into();
        }
        let reopened = async {
            let mut ws = client::connect(resume.server, resume.index).await?;
            ws.send(Message::text(frame.to_string())).await?;
            anyhow::Ok(ws)
        };
        match reopened.await {
            Ok(w) => ws = w,
            Err(e) => {
                let mut s = lock(&state);
                s.unexpected.push(format!("resuming failed: {e:#}"));
                s.gone = true;
                return;
            }
        }
    }
}

/// Applies frames until the connection ends; returns its close code.
async fn receive(ws: &mut Ws, state: &Mutex<State>, activity: &Activity, limit: usize) -> u16 {
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(frame)) => return frame.map_or(1005, |f| f.code.into()),
            Ok(_) => continue,
            Err(_) => break,
        };
        let at = now_us();
        let frame: Frame = match serde_json::from_str(text.as_str()) {
            Ok(f) => f,
            Err(e) => {
                lock(state).unexpected.push(format!("unreadable frame ({e}): {text}"));
                continue;
            }
        };
        let mut s = lock(state);
        match &*frame.kind {
            "view" => {
                s.views += 1;
                s.since_mark.views += 1;
                s.window.replace(frame.rows.as_deref().unwrap_or_default(), frame.count);
                s.count_coming = frame.count.is_none() && s.window.count.is_some();
            }
            "view_delta" => {
                let ops = frame.ops.as_deref().unwrap_or_default();
                if ops.len() > 2 * limit {
                    s.oversized += 1;
                }
                // (A delta of the view's first commits may come before the count does.)
                let count_came = s.count_coming && ops.is_empty() && frame.count.is_some();
                if frame.count.is_some() {
                    s.count_coming = false;
                }
                if frame.cursor.is_some() && frame.cursor.as_deref() == s.last_cursor.as_deref() && !count_came {
                    s.repeated_cursors += 1;
                    if s.first_repeat.is_none() {
                        s.first_repeat = Some(format!(
                            "{} ops, count {:?}, after {} (closes so far {:?})",
                            ops.len(),
                            frame.count,
                            s.last_frame,
                            s.closes
                        ));
                    }
                }
                // Latency is of changes: a row an op moves without a change of its own (it shifts
                // up past an exit, say) comes with the version the subscriber has, and its
                // `updated_at` may be minutes old.
                let changed: Vec<bool> = ops
                    .iter()
                    .map(|op| {
                        op.written_row()
                            .is_some_and(|row| !s.window.rows.iter().any(|&(id, v)| (id, v) == (row.id, row.version)))
                    })
                    .collect();
                let (misfits, first) = s.window.apply(ops, frame.count, limit);
                s.misfits += misfits as u64;
                if s.first_misfit.is_none() {
                    s.first_misfit = first;
                }
                let from = activity.measure_from_us.load(Ordering::Relaxed);
                let until = activity.measure_until_us.load(Ordering::Relaxed);
                for row in ops
                    .iter()
                    .zip(&changed)
                    .filter(|(_, c)| **c)
                    .filter_map(|(op, _)| op.written_row())
                {
                    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&row.updated_at) {
                        let written = t.timestamp_micros();
                        if (from..=until).contains(&written) {
                            s.latencies_us.push((at - written).clamp(0, i64::from(u32::MAX)) as u32);
                        }
                    }
                }
                s.since_mark.max_ops = s.since_mark.max_ops.max(ops.len());
            }
            "pong" => continue,
            _ => {
                s.unexpected.push(text.to_string());
                continue;
            }
        }
        s.last_frame = format!(
            "{} of {} ops, count {:?}",
            frame.kind,
            frame.ops.as_ref().map_or(0, Vec::len),
            frame.count
        );
        if frame.cursor.is_some() {
            s.last_cursor = frame.cursor.map(Cow::into_owned);
        }
        s.frames += 1;
        s.since_mark.frames += 1;
        s.since_mark.last_at_us = at;
        drop(s);
        activity.last_frame_us.fetch_max(at, Ordering::Relaxed);
    }
    1006
}

/// The scenario reads a state only between frames, and a subscriber task never panics while it
/// holds the lock, so a poisoned lock still holds a whole record.
pub fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until no subscriber has received a frame for `quiet` since `since_us`, at most `patience`.
/// Waits until some subscriber receives a frame after `since_us` (at most `patience`).
pub async fn wait_for_frame_after(activity: &Activity, since_us: i64, patience: Duration) {
    let deadline = Instant::now() + patience;
    while activity.last_frame_us.load(Ordering::Relaxed) <= since_us && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_for_quiet(activity: &Activity, since_us: i64, quiet: Duration, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let last = activity.last_frame_us.load(Ordering::Relaxed).max(since_us);
        if now_us() - last >= quiet.as_micros() as i64 || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
