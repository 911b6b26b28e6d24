//! `pgfeed-bench --transport socketio` as the lead runs it, briefly: its hand-spoken Socket.IO
//! subscribers must see every row once and in order, or its figures mean nothing; and `latency`
//! with its bare-NOTIFY relay beside pgfeed, whose rows must all arrive too. Only the counts are
//! asserted, never a timing.

use serde_json::Value;
use tokio::process::Command;

use crate::support::process::BIN;
use crate::support::TestDb;

const BENCH: &str = env!("CARGO_BIN_EXE_pgfeed-bench");

/// Runs the bench on `db` over Socket.IO and returns the JSON line its scenario printed last.
async fn bench(db: &TestDb, args: &[&str]) -> Value {
    bench_over(db, "socketio", args).await
}

/// Runs the bench on `db` over `transport` and returns the JSON line its scenario printed last.
async fn bench_over(db: &TestDb, transport: &str, args: &[&str]) -> Value {
    let out = Command::new(BENCH)
        .args(args)
        .args(["--transport", transport, "--database-url", &db.url, "--pgfeed", BIN])
        .env_remove("DATABASE_URL")
        .kill_on_drop(true)
        .output()
        .await
        .expect("running pgfeed-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgfeed-bench {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in:\n{stdout}"));
    serde_json::from_str(line).expect("the bench's JSON line")
}

#[tokio::test]
async fn bench_socketio_subscribers_receive_every_row_once_and_in_order() {
    let db = TestDb::create().await;
    let r = bench(
        &db,
        &[
            "latency",
            "--duration",
            "1s",
            "--rate",
            "40",
            "--subscribers",
            "3",
            "--writers",
            "2",
        ],
    )
    .await;
    assert_eq!(r["transport"], "socketio");
    assert!(r["rows"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["deliveries"], r["expected"], "{r}");
    assert_eq!(
        (&r["lost"], &r["doubled"], &r["out_of_order"], &r["short_subscribers"]),
        (&0.into(), &0.into(), &0.into(), &0.into()),
        "{r}"
    );
    assert_eq!(r["meets_target"], true, "{r}");
}

#[tokio::test]
async fn bench_latency_runs_pgfeed_and_the_bare_relay_in_turn_and_both_deliver_every_row() {
    let db = TestDb::create().await;
    let r = bench_over(
        &db,
        "ws",
        &[
            "latency",
            // 2 passes of 2 s each at 200 rows/s: CPU is read in clock ticks (10 ms), and 400
            // rows take each variant's writers several.
            "--duration",
            "4s",
            "--repeat",
            "2",
            "--rate",
            "200",
            "--subscribers",
            "3",
            "--writers",
            "2",
        ],
    )
    .await;
    let relay = &r["bare_relay"];
    assert!(
        r["rows"].as_u64().unwrap() > 0 && relay["rows"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(r["deliveries"], r["expected"], "{r}");
    assert_eq!(relay["deliveries"], relay["expected"], "{r}");
    assert_eq!(
        (
            &r["lost"],
            &r["doubled"],
            &r["out_of_order"],
            &relay["lost"],
            &relay["doubled"]
        ),
        (&0.into(), &0.into(), &0.into(), &0.into(), &0.into()),
        "{r}"
    );
    assert_eq!(r["p50_per_pass_ms"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(relay["p50_per_pass_ms"].as_array().map(Vec::len), Some(2), "{r}");
    // pgfeed's own count of wake-ups read by seq was scraped from its /metrics.
    assert!(r["commit_reads"].as_f64().is_some(), "{r}");
    // The test cluster runs on this machine, so its CPU is read, and each variant's writers used some.
    for v in [&r, relay] {
        assert!(v["pg_cpu_us_per_row"].as_f64().unwrap() > 0.0, "{r}");
        assert!(v["pg_cpu_us_per_row_by_role"]["writers"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[tokio::test]
async fn bench_socketio_idle_sockets_are_all_woken_by_one_row() {
    let db = TestDb::create().await;
    let r = bench(&db, &["idle", "--subscribers", "5", "--duration", "1s"]).await;
    assert_eq!((&r["transport"], &r["reached"]), (&"socketio".into(), &6.into()), "{r}");
}

#[tokio::test]
async fn bench_refuses_socketio_for_a_scenario_that_speaks_ws_only() {
    let out = Command::new(BENCH)
        .args([
            "catchup",
            "--transport",
            "socketio",
            "--database-url",
            "postgres://unused.invalid/x",
        ])
        .output()
        .await
        .expect("running pgfeed-bench");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--transport socketio applies to latency"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pgfeed-bench nodes`, briefly, with this build as both "before" and "after": its figures mean
/// something only if every subscriber on every server got every row once, in order, and it
/// leaves none of the databases it made behind.
#[tokio::test]
async fn bench_nodes_checks_every_subscriber_on_every_server_and_cleans_up() {
    let db = TestDb::create().await;
    let r = bench_over(
        &db,
        "ws",
        &[
            "nodes",
            "--nodes",
            "1,2",
            "--duration",
            "1s",
            "--rate",
            "40",
            "--subscribers",
            "2",
            "--writers",
            "2",
            "--repeat",
            "1",
            "--pgfeed-before",
            BIN,
        ],
    )
    .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{r}");
    for (row, servers) in results.iter().zip([1, 2]) {
        assert_eq!(row["servers"], servers, "{r}");
        for build in ["before", "after"] {
            let b = &row[build];
            assert!(b["commits"][0].as_u64().unwrap() > 0, "{r}");
            assert!(
                b["pg_us_per_commit"].as_f64().unwrap() > 0.0,
                "PostgreSQL's CPU was read: {r}"
            );
            assert_eq!(
                (&b["lost"], &b["doubled"], &b["out_of_order"], &b["short_subscribers"]),
                (&0.into(), &0.into(), &0.into(), &0.into()),
                "{r}"
            );
        }
        assert!(row["after_vs_before"].as_f64().is_some(), "{r}");
    }
    assert_eq!(r["meets_target"], true, "{r}");
    let left = db.psql(&format!(
        "select count(*) from pg_database where datname like '{}\\_nodes\\_%'",
        db.name
    ));
    assert_eq!(left, "0", "the bench's databases are dropped");
}

#[tokio::test]
async fn bench_refuses_server_counts_out_of_bounds() {
    for args in [
        &["nodes", "--nodes", "0"][..],
        &["nodes", "--nodes", "1,33"],
        &["writers", "--followers", "17"],
        &["nodes", "--nodes", "many"],
    ] {
        let out = Command::new(BENCH)
            .args(args)
            .args(["--database-url", "postgres://unused.invalid/x"])
            .output()
            .await
            .expect("running pgfeed-bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains("--nodes takes server counts from 1 to 32") || stderr.contains("invalid value"),
            "{args:?}: {stderr}"
        );
    }
}
