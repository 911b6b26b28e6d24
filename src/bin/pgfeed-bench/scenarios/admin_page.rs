//! admin-page: the admin page (`GET /`) on a million studies, in headless Chromium. This sets up
//! the server the way `views` does and runs scripts/admin-page-bench.mjs against it, which
//! prints its own figures; `--hold` keeps the server up for a person or another script instead.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context};
use serde_json::json;

use super::{machine, views};
use crate::report;
use crate::setup::{BenchDb, Server};
use crate::Args;

pub(super) async fn admin_page(args: &Args, db: &BenchDb, server: &Server) -> anyhow::Result<()> {
    let n = args.rows.map_or(1_000_000, |r| r as i64);
    eprintln!("pgfeed-bench: loading {n} studies");
    let loaded = views::load(db, n).await?;
    let url = format!("http://{}", server.addr);
    if args.hold {
        println!("pgfeed at {url} on {n} studies");
        println!("DATABASE_URL={}", db.url);
        println!("node scripts/admin-page-bench.mjs {url} '{}'", db.url);
        println!("Ctrl-C stops it");
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let script = args
        .script
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/admin-page-bench.mjs")));
    let cpu0 = server.cpu_time();
    // The script prints its table and JSON line on stdout, its progress on stderr: both pass through.
    let status = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg(&db.url)
        .stdin(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running node {}", script.display()))?;
    let cpu = server.cpu_time().saturating_sub(cpu0);
    let peak = server.peak_rss_kib()?;
    let table = [
        (
            "studies".to_owned(),
            format!(
                "{n} (ids {}..={}), loaded in {:.1} s",
                loaded.first_id,
                loaded.last_id,
                loaded.took.as_secs_f64()
            ),
        ),
        (
            "pgfeed while the page ran".to_owned(),
            format!("{:.2} s CPU, peak RSS {} MiB", cpu.as_secs_f64(), peak / 1024),
        ),
    ];
    let out = json!({
        "scenario": "admin-page", "studies": n, "server_cpu_s": report::round(cpu.as_secs_f64()),
        "server_peak_rss_kib": peak, "machine": machine(db).await,
    });
    report::print("admin-page (server side)", &table, &out);
    if !status.success() {
        bail!("{} exited with {status}", script.display());
    }
    Ok(())
}
