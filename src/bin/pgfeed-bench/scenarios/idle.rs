//! idle: what a subscribed, silent connection costs the server.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{machine, subscribers, INSERT_STAMPED};
use crate::client::{self, now_us};
use crate::report::{self, verdict};
use crate::setup::{self, BenchDb, Server};

/// idle: many subscribed, silent connections; the server's RSS growth per connection.
pub(super) async fn idle(n: usize, db: &BenchDb, server: &Server) -> anyhow::Result<()> {
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
    let warm = subscribers(server, 1, &topic, 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib()?;
    eprintln!("pgfeed-bench: opening {n} idle connections on {topic}");
    let t0 = Instant::now();
    let sockets = subscribers(server, n, &topic, 256).await?;
    let opened = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib()?;
    let per_conn = (after.saturating_sub(before)) as f64 / n as f64;

    // Idle, not dead: one row reaches every one of them.
    let (target_tx, target_rx) = watch::channel(Some(1));
    let deadline = Instant::now() + Duration::from_secs(60);
    let receivers: Vec<_> = sockets
        .into_iter()
        .chain(warm)
        .map(|ws| tokio::spawn(client::receive(ws, target_rx.clone(), deadline)))
        .collect();
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
    let ok = per_conn <= 6.0 && reached == n + 1;
    let table = [
        (
            "connections".to_owned(),
            format!(
                "{n} idle, subscribed to {topic}, from 127.0.0.2…127.0.0.{}",
                2 + (n - 1) / 200
            ),
        ),
        ("opened in".to_owned(), format!("{:.2} s", opened.as_secs_f64())),
        ("pgfeed RSS".to_owned(), format!("{before} KiB → {after} KiB")),
        ("growth per connection".to_owned(), format!("{per_conn:.2} KiB")),
        (
            "one row then reached".to_owned(),
            format!(
                "{reached} of {} connections, the last after {:.1} ms",
                n + 1,
                (last - sent) as f64 / 1000.0
            ),
        ),
        ("target".to_owned(), "≤ 6 KiB per connection".to_owned()),
        ("verdict".to_owned(), verdict(ok).to_owned()),
    ];
    let out = json!({
        "scenario": "idle", "connections": n, "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_connection": report::round(per_conn), "reached": reached,
        "machine": machine(db).await, "meets_target": ok,
    });
    report::print("idle", &table, &out);
    Ok(())
}
