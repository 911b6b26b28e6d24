//! idle: what a subscribed, silent connection costs the server.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{machine, subscribers, INSERT_STAMPED};
use crate::client::{self, now_us, Transport};
use crate::report::{self, verdict};
use crate::setup::{self, BenchDb, Server};
use crate::Args;

/// How long the connections sit idle, by default, before RSS is read and one row wakes them.
const IDLE_FOR: Duration = Duration::from_secs(2);

/// idle: many subscribed, silent connections; the server's RSS growth and CPU per connection.
pub(super) async fn idle(n: usize, args: &Args, db: &BenchDb, server: &Server) -> anyhow::Result<()> {
    let transport = args.transport;
    let idle_for = args.duration.unwrap_or(IDLE_FOR);
    let limit = setup::file_limit() as usize;
    if limit < n + 256 {
        bail!(
            "the open-file limit is {limit}; `idle` with {n} connections needs {}",
            n + 256
        );
    }
    let setup_conn = db.connect("pgfeed-bench").await?;
    let study = setup::new_study(&setup_conn).await?;
    let topic = format!("studies:{study}");
    // One connection first, so lazily built state (pools, caches) is in the baseline, not the growth.
    let warm = subscribers(server, transport, 1, &topic, 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib()?;
    eprintln!(
        "pgfeed-bench: opening {n} idle connections on {topic} ({})",
        transport.label()
    );
    let t0 = Instant::now();
    let sockets = subscribers(server, transport, n, &topic, 256).await?;
    let opened = t0.elapsed();
    // Read from now on, with no target yet: a socket left unread would miss its heartbeats
    // (Engine.IO's every 25 s, the session's own), and be closed during a long --duration.
    let (target_tx, target_rx) = watch::channel(None);
    let deadline = Instant::now() + idle_for + Duration::from_secs(60);
    let receivers: Vec<_> = sockets
        .into_iter()
        .chain(warm)
        .map(|sub| tokio::spawn(client::receive(sub, target_rx.clone(), deadline)))
        .collect();
    let cpu0 = server.cpu_time();
    tokio::time::sleep(idle_for).await;
    let cpu = server.cpu_time().saturating_sub(cpu0);
    let after = server.rss_kib()?;
    let per_conn = (after.saturating_sub(before)) as f64 / n as f64;
    // CPU per connection per second idle, in µs.
    let cpu_per_conn_us = cpu.as_secs_f64() * 1e6 / idle_for.as_secs_f64().max(1e-9) / (n + 1) as f64;

    // Idle, not dead: one row reaches every one of them.
    target_tx.send_replace(Some(1));
    let sent = now_us();
    setup_conn
        .execute(INSERT_STAMPED, &[&study, &"idle"])
        .await
        .context("inserting the wake-up row")?;
    let mut reached = 0;
    let mut last = sent;
    for r in receivers {
        let t = r.await?;
        if !t.ids.is_empty() {
            reached += 1;
            last = last.max(t.last_at_us);
        }
    }
    drop(target_tx);
    // Socket.IO is the compatibility path: its only target is that the row reaches every socket.
    let (ok, target) = match transport {
        Transport::Ws => (per_conn <= 6.0 && reached == n + 1, "≤ 6 KiB per connection"),
        Transport::Socketio => (
            reached == n + 1,
            "every connection reached (Socket.IO: no memory target)",
        ),
    };
    let table = [
        (
            "connections".to_owned(),
            format!(
                "{n} idle, subscribed to {topic}, from 127.0.0.2…127.0.0.{}, over {}",
                2 + (n - 1) / 200,
                transport.label()
            ),
        ),
        ("opened in".to_owned(), format!("{:.2} s", opened.as_secs_f64())),
        ("pgfeed RSS".to_owned(), format!("{before} KiB → {after} KiB")),
        ("growth per connection".to_owned(), format!("{per_conn:.2} KiB")),
        (
            "pgfeed CPU while idle".to_owned(),
            format!(
                "{:.2} s in {:.1} s ({:.2} µs per connection per second)",
                cpu.as_secs_f64(),
                idle_for.as_secs_f64(),
                cpu_per_conn_us
            ),
        ),
        (
            "one row then reached".to_owned(),
            format!(
                "{reached} of {} connections, the last after {:.1} ms",
                n + 1,
                (last - sent) as f64 / 1000.0
            ),
        ),
        ("target".to_owned(), target.to_owned()),
        ("verdict".to_owned(), verdict(ok).to_owned()),
    ];
    let out = json!({
        "scenario": "idle", "transport": transport.name(), "connections": n, "rss_before_kib": before,
        "rss_after_kib": after, "kib_per_connection": report::round(per_conn), "idle_s": idle_for.as_secs_f64(),
        "server_cpu_s": report::round(cpu.as_secs_f64()), "cpu_us_per_connection_per_s": report::round(cpu_per_conn_us),
        "reached": reached,
        "machine": machine(db).await, "meets_target": ok,
    });
    let title = match transport {
        Transport::Ws => "idle",
        Transport::Socketio => "idle (socket.io)",
    };
    report::print(title, &table, &out);
    Ok(())
}
