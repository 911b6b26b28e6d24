//! bulk: what capture costs bulk statements (README "Performance", issue 19): a 100,000-row
//! `insert … select generate_series`, `update` and `delete` on a copy of `studies` tracked by
//! pgfeed, against the same statements on an identical copy without triggers.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::time::Instant;

use super::machine;
use crate::report::{self, verdict};
use crate::setup::{BenchDb, Server};
use crate::Args;

/// The two tables: the same definition (`studies`', with its indexes and its `bump_version`
/// trigger), one tracked.
const VARIANTS: [(&str, &str); 2] = [
    ("no trigger", "bench_bulk_plain"),
    ("pgfeed capture", "bench_bulk_tracked"),
];
/// The statements, in the order each round runs them on each table.
const STATEMENTS: [(&str, &str); 3] = [
    (
        "insert",
        "insert into {t} (label, title) select 'b' || i, 't' || i from generate_series(1, {n}) i",
    ),
    ("update", "update {t} set title = title || 'x'"),
    ("delete", "delete from {t}"),
];
/// Target: capture ≤ this × the statement without triggers.
const TARGET: f64 = 1.5;

/// bulk: per round, both tables in turn (which goes first alternates), each statement its own
/// transaction; medians over rounds, and the ratio per round.
pub(super) async fn bulk(args: &Args, db: &BenchDb, server: &Server) -> anyhow::Result<()> {
    let rows = args.rows.unwrap_or(100_000);
    let rounds = args.repeat.max(1);
    let conn = db.connect("pgfeed-bench").await?;
    for (_, table) in VARIANTS {
        conn.batch_execute(&format!(
            "drop table if exists {table};
             create table {table} (like studies including all);
             create trigger bump_version before update on {table} for each row execute function bump_version();"
        ))
        .await
        .with_context(|| format!("creating {table}"))?;
    }
    conn.batch_execute("select pgfeed.track('bench_bulk_tracked')")
        .await
        .context("tracking bench_bulk_tracked")?;
    // seconds[statement][variant] per round
    let mut secs = vec![vec![Vec::<f64>::new(); VARIANTS.len()]; STATEMENTS.len()];
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for v in order {
            let (variant, table) = VARIANTS[v];
            conn.batch_execute(&format!("vacuum analyze {table}")).await?;
            for (s, (name, sql)) in STATEMENTS.iter().enumerate() {
                let sql = sql.replace("{t}", table).replace("{n}", &rows.to_string());
                settle(server).await;
                let t0 = Instant::now();
                conn.batch_execute(&sql)
                    .await
                    .with_context(|| format!("{name} on {table}"))?;
                let took = t0.elapsed().as_secs_f64();
                eprintln!(
                    "pgfeed-bench: bulk round {}/{rounds}, {variant}: {name} of {rows} rows {took:.3} s",
                    round + 1
                );
                secs[s][v].push(took);
            }
        }
    }
    // pgfeed still reads and relays the last statements' events; let it finish before the next
    // scenario.
    settle(server).await;

    let mut table = Vec::new();
    let mut results = Vec::new();
    let mut ok = true;
    for (s, (name, _)) in STATEMENTS.iter().enumerate() {
        let (plain, capture) = (&secs[s][0], &secs[s][1]);
        let per_round: Vec<f64> = capture.iter().zip(plain).map(|(c, p)| c / p.max(1e-9)).collect();
        let ratio = report::median(&per_round);
        ok &= ratio <= TARGET;
        let (p, c) = (report::median(plain), report::median(capture));
        table.push((
            format!("{name} of {rows} rows"),
            format!(
                "no trigger {p:.3} s · capture {c:.3} s = {ratio:.2}× (rounds {})",
                per_round
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ));
        results.push(json!({
            "statement": name, "rows": rows, "no_trigger_s": report::round(p), "capture_s": report::round(c),
            "ratio": report::round(ratio), "ratio_rounds": per_round.iter().map(|r| report::round(*r)).collect::<Vec<_>>(),
        }));
    }
    table.push((
        "target".to_owned(),
        format!("capture ≤ {TARGET}× no trigger for each statement"),
    ));
    table.push(("verdict".to_owned(), verdict(ok).to_owned()));
    let out = json!({
        "scenario": "bulk", "rounds": rounds, "results": results,
        "machine": machine(db).await, "meets_target": ok,
    });
    report::print("bulk", &table, &out);
    for (_, t) in VARIANTS {
        conn.batch_execute(&format!("drop table if exists {t}")).await?;
    }
    Ok(())
}

/// Waits until the pgfeed process has been idle for a moment (at most 60 s), so that its reading
/// of the previous statement's events does not land on the next statement's time.
async fn settle(server: &Server) {
    let stop = Instant::now() + Duration::from_secs(60);
    let mut last = server.cpu_time();
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = server.cpu_time();
        if now.saturating_sub(last) < Duration::from_millis(5) {
            return;
        }
        last = now;
    }
}
