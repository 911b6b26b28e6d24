//! views: live views (PROTOCOL §9) on a million studies. Subscribers over many definitions while
//! writers move rows across filters and within orders; new subscriptions; one bulk UPDATE. Every
//! subscriber's window is compared with PostgreSQL's own SELECT after each phase.

mod definitions;
mod subscriber;
mod window;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::{stream, StreamExt};
use serde_json::json;
use tokio::time::Instant;

use super::{machine, CONNECT_CONCURRENCY};
use crate::client::now_us;
use crate::report::{self, verdict, Percentiles};
use crate::setup::{self, BenchDb, Server};
use crate::Args;
use definitions::{Definition, Rng};
use subscriber::{lock, wait_for_frame_after, wait_for_quiet, Activity, Subscriber};
use window::Window;

pub(super) use definitions::load;

/// Once every window equals PostgreSQL's, how long the scenario still listens for frames that
/// should not come (a second delta for one commit).
const QUIET: Duration = Duration::from_secs(2);
/// How long the windows may take to reach PostgreSQL's answer after the last write before the
/// scenario compares anyway (and reports the difference).
const SETTLE_PATIENCE: Duration = Duration::from_secs(120);
/// Updates per second in all, over `--writers` connections (PROTOCOL §9's live-table load).
const RATE: u32 = 1_000;
const DURATION: Duration = Duration::from_secs(30);
/// Subscriptions opened one after another on a table already served by 1,000 subscribers.
const NEW_SUBSCRIPTIONS: usize = 200;
/// Updates a writer may have sent and not yet seen acknowledged.
const IN_FLIGHT: usize = 16;
/// Rows of the bulk UPDATE.
const BULK_ROWS: i64 = 100_000;

pub(super) async fn views(args: &Args, db: &BenchDb, server: &Server) -> anyhow::Result<()> {
    let n_studies = args.rows.map_or(1_000_000, |r| r as i64);
    let n_subs = args.subscribers.unwrap_or(1_000);
    let rate = args.rate.unwrap_or(RATE);
    let duration = args.duration.unwrap_or(DURATION);

    eprintln!("pgfeed-bench: loading {n_studies} studies");
    let loaded = load(db, n_studies).await?;
    eprintln!("pgfeed-bench: loaded in {:.1} s", loaded.took.as_secs_f64());
    let rss_loaded = server.rss_kib()?;

    // a. Subscribers over the shared definitions, then writers.
    let shared = definitions::shared();
    let activity = Activity::new();
    eprintln!(
        "pgfeed-bench: subscribing {n_subs} views over {} definitions",
        shared.len()
    );
    let cpu0 = server.cpu_time();
    let t0 = Instant::now();
    let opened: Vec<anyhow::Result<(Subscriber, Duration)>> = stream::iter(0..n_subs)
        .map(|i| {
            let def = i % shared.len();
            subscriber::open(server.addr, i, def, &shared[def], activity.clone())
        })
        .buffered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let mut subs = Vec::with_capacity(n_subs);
    let mut first_views_us = Vec::with_capacity(n_subs);
    for r in opened {
        let (s, took) = r?;
        subs.push(s);
        first_views_us.push(took.as_micros() as u32);
    }
    let subscribe_all = t0.elapsed();
    let cpu_subscribe = server.cpu_time().saturating_sub(cpu0);
    let first_views = Percentiles::of(first_views_us);
    let rss_subscribed = server.rss_kib()?;

    // The writers aim half their updates at rows some window shows, so every window moves.
    let hot: Vec<i64> = {
        let mut ids: HashSet<i64> = HashSet::new();
        for s in &subs {
            ids.extend(lock(&s.state).window.rows.iter().map(|r| r.0));
        }
        ids.into_iter().collect()
    };
    eprintln!(
        "pgfeed-bench: {} writers, {rate} updates/s for {duration:?} ({} rows in windows)",
        args.writers,
        hot.len()
    );
    activity.measure_from_us.store(now_us(), Ordering::Relaxed);
    let cpu0 = server.cpu_time();
    let own0 = setup::cpu_time("self");
    let written = write(db, args.writers, rate, duration, hot, (loaded.first_id, loaded.last_id)).await?;
    activity.measure_until_us.store(now_us(), Ordering::Relaxed);
    // No writer runs from here on, so one SELECT per definition is the answer to wait for.
    let expected = definitions::expected_all(db, &shared).await?;
    let settled_after = settle(&subs, &expected, &activity, written.last_us).await;
    let cpu_live = server.cpu_time().saturating_sub(cpu0);
    let own_live = setup::cpu_time("self").saturating_sub(own0);
    let span_s = (written.last_us - written.first_us) as f64 / 1e6 + settled_after.as_secs_f64();
    let live_check = compare(&shared, &subs, expected, None);
    let latency = Percentiles::of(
        subs.iter()
            .flat_map(|s| std::mem::take(&mut lock(&s.state).latencies_us))
            .collect(),
    );
    let live_frames: u64 = subs.iter().map(|s| lock(&s.state).frames).sum();
    let rss_live = server.rss_kib()?;

    // b. New subscriptions, one after another: half to definitions already open, half new.
    let fresh = definitions::new();
    let mut all_defs = shared.clone();
    all_defs.extend(fresh.iter().cloned());
    eprintln!("pgfeed-bench: {NEW_SUBSCRIPTIONS} new subscriptions");
    let mut new_us = Vec::with_capacity(NEW_SUBSCRIPTIONS);
    let mut new_us_shared = Vec::new();
    // New definitions by count off / on: a count is a second read, over every matching row.
    let mut new_us_fresh = [Vec::new(), Vec::new()];
    for k in 0..NEW_SUBSCRIPTIONS {
        let def = if k % 2 == 0 {
            (k / 2 * 7) % shared.len()
        } else {
            shared.len() + (k / 2) % fresh.len()
        };
        let (s, took) = subscriber::open(server.addr, n_subs + k, def, &all_defs[def], activity.clone()).await?;
        new_us.push(took.as_micros() as u32);
        if def < shared.len() {
            new_us_shared.push(took.as_micros() as u32);
        } else {
            new_us_fresh[usize::from(all_defs[def].count)].push(took.as_micros() as u32);
        }
        subs.push(s);
    }
    let subscribe_new = Percentiles::of(new_us.clone());
    let subscribe_new_shared = Percentiles::of(new_us_shared);
    let subscribe_new_fresh = Percentiles::of(new_us_fresh.concat());
    let [fresh_no_count, fresh_count] = new_us_fresh.map(Percentiles::of);
    let expected = definitions::expected_all(db, &all_defs).await?;
    settle(&subs, &expected, &activity, now_us()).await;
    let before_bulk = compare(&all_defs, &subs, expected, None);

    // c. One UPDATE of 100,000 rows.
    for s in &subs {
        lock(&s.state).mark();
    }
    let bulk_last = (loaded.first_id + BULK_ROWS - 1).min(loaded.last_id);
    eprintln!("pgfeed-bench: updating studies {}..={bulk_last}", loaded.first_id);
    let conn = db.connect(setup::WRITER_APP).await?;
    let cpu0 = server.cpu_time();
    let started = now_us();
    let bulk_rows = conn
        .execute(
            "update studies set title = title || 'x' where id between $1 and $2",
            &[&loaded.first_id, &bulk_last],
        )
        .await
        .context("the bulk update")?;
    let acked = now_us();
    // PostgreSQL's answers are read once the deltas have come and gone quiet: 200 SELECTs, counts
    // over up to a million rows among them, take seconds of PostgreSQL's CPU, which the log reads
    // that bring the deltas would share on this box (the run before this wait: pages of the bulk
    // commit read in 300 ms instead of 15). Frames that come later are still waited for and
    // counted (`settle`); the figure is the last delta's arrival either way.
    wait_for_frame_after(&activity, acked, SETTLE_PATIENCE).await;
    wait_for_quiet(&activity, now_us(), QUIET, SETTLE_PATIENCE).await;
    let expected = definitions::expected_all(db, &all_defs).await?;
    let bulk_settled = settle(&subs, &expected, &activity, acked).await;
    let cpu_bulk = server.cpu_time().saturating_sub(cpu0);
    let after_bulk = compare(&all_defs, &subs, expected, Some(&before_bulk.expected));
    let bulk = after_bulk.bulk.as_ref().context("the bulk comparison")?;
    // None came: the figure is how long the scenario waited.
    let bulk_tail_ms = if bulk.last_delta_us > 0 {
        (bulk.last_delta_us - acked) as f64 / 1000.0
    } else {
        bulk_settled.as_secs_f64() * 1000.0
    };

    let cpu_total = server.cpu_time();
    let peak_rss = server.peak_rss_kib()?;
    let closed: BTreeMap<u16, usize> =
        subs.iter()
            .flat_map(|s| lock(&s.state).closes.clone())
            .fold(BTreeMap::new(), |mut m, c| {
                *m.entry(c).or_default() += 1;
                m
            });
    let gone = subs.iter().filter(|s| lock(&s.state).gone).count();
    let unexpected: Vec<String> = subs
        .iter()
        .flat_map(|s| lock(&s.state).unexpected.clone())
        .take(3)
        .collect();
    let totals = Totals::of(&subs);
    for s in &subs {
        s.task.abort();
    }

    let exact = live_check.mismatched == 0
        && before_bulk.mismatched == 0
        && after_bulk.mismatched == 0
        && totals.misfits == 0
        && totals.repeated_cursors == 0
        && closed.is_empty()
        && gone == 0;
    let live_ok = exact && latency.p99 <= 50.0;
    let subscribe_ok = subscribe_new.p99 <= 100.0;
    let bulk_ok = bulk.missing == 0 && bulk.extra == 0 && bulk.max_ops <= 100 && bulk_tail_ms <= 2000.0;
    let ok = live_ok && subscribe_ok && bulk_ok;

    let mut table = vec![
        (
            "studies".to_owned(),
            format!(
                "{n_studies} (ids {}..={}), loaded in {:.1} s{}",
                loaded.first_id,
                loaded.last_id,
                loaded.took.as_secs_f64(),
                if loaded.without_capture { " without capture" } else { "" }
            ),
        ),
        (
            "a. subscribers".to_owned(),
            format!(
                "{n_subs} over {} definitions (10 filters × 5 orders × count on/off, limit 50), opened in {:.1} s, 100 at a time; first `view` {}",
                shared.len(),
                subscribe_all.as_secs_f64(),
                first_views.text()
            ),
        ),
        (
            "a. updates".to_owned(),
            format!(
                "{} by {} writers in {:.1} s ({:.0}/s; {} changed a row; worst lag behind schedule {:?}); writer's commit (ack − updated_at) {}",
                written.updates,
                args.writers,
                (written.last_us - written.first_us) as f64 / 1e6,
                written.updates as f64 / ((written.last_us - written.first_us) as f64 / 1e6).max(1e-9),
                written.rows_changed,
                written.max_behind,
                written.commits.text()
            ),
        ),
        (
            "a. frames".to_owned(),
            format!(
                "{live_frames} view frames to {n_subs} subscribers ({:.0}/s); windows equal to SELECT {:.1} s after the last write",
                live_frames as f64 / span_s.max(1e-9),
                settled_after.as_secs_f64()
            ),
        ),
        ("a. latency (receipt − updated_at)".to_owned(), latency.text()),
        ("a. windows ≠ SELECT".to_owned(), live_check.text()),
        (
            "b. new subscription → `view`".to_owned(),
            format!(
                "{NEW_SUBSCRIPTIONS} in turn: {}; open definitions p50 {:.2} / p99 {:.2} ms, new ones p50 {:.2} / p99 {:.2} ms (without count {:.2} / {:.2}, with count {:.2} / {:.2})",
                subscribe_new.text(),
                subscribe_new_shared.p50,
                subscribe_new_shared.p99,
                subscribe_new_fresh.p50,
                subscribe_new_fresh.p99,
                fresh_no_count.p50,
                fresh_no_count.p99,
                fresh_count.p50,
                fresh_count.p99
            ),
        ),
        ("b. windows ≠ SELECT".to_owned(), before_bulk.text()),
        (
            "c. bulk UPDATE".to_owned(),
            format!(
                "{bulk_rows} rows in {:.2} s; {} of {} subscribers' windows changed",
                (acked - started) as f64 / 1e6,
                bulk.changed,
                subs.len()
            ),
        ),
        (
            "c. deltas".to_owned(),
            format!(
                "missing {} · more than one {} · whole `view` instead {} · most ops in one {} · commit ack → last view's delta {bulk_tail_ms:.1} ms; compared with SELECT (read once the deltas went quiet) {:.1} s after the ack",
                bulk.missing, bulk.extra, bulk.views, bulk.max_ops, bulk_settled.as_secs_f64()
            ),
        ),
        ("c. windows ≠ SELECT".to_owned(), after_bulk.text()),
        (
            "across all phases".to_owned(),
            format!(
                "ops that did not fit the window held {} · deltas over 2 × limit ops {} · two deltas with one cursor {} · `view` re-sent {}",
                totals.misfits, totals.oversized, totals.repeated_cursors, totals.views
            ),
        ),
        (
            "pgfeed CPU".to_owned(),
            format!(
                "{:.2} s subscribing, {:.2} s in a ({:.0}% of one core), {:.2} s in c; {:.2} s in all",
                cpu_subscribe.as_secs_f64(),
                cpu_live.as_secs_f64(),
                100.0 * cpu_live.as_secs_f64() / span_s.max(1e-9),
                cpu_bulk.as_secs_f64(),
                cpu_total.as_secs_f64()
            ),
        ),
        (
            "pgfeed RSS".to_owned(),
            format!(
                "{} MiB loaded, {} MiB subscribed, {} MiB after a, peak {} MiB",
                rss_loaded / 1024,
                rss_subscribed / 1024,
                rss_live / 1024,
                peak_rss / 1024
            ),
        ),
        (
            "bench (writers + clients) CPU in a".to_owned(),
            format!("{:.2} s", own_live.as_secs_f64()),
        ),
        (
            "connections closed by server".to_owned(),
            format!("{closed:?} by close code; each resumed with its last cursor, {gone} subscribers gave up"),
        ),
        ("unexpected frames".to_owned(), format!("{unexpected:?}")),
        (
            "target".to_owned(),
            "a: p99 ≤ 50 ms, none lost, every window = SELECT; b: p99 ≤ 100 ms; c: one delta per changed view, ≤ 100 ops, within 2 s".to_owned(),
        ),
        (
            "verdict".to_owned(),
            format!(
                "a {} · b {} · c {}",
                verdict(live_ok),
                verdict(subscribe_ok),
                verdict(bulk_ok)
            ),
        ),
    ];
    if closed.is_empty() {
        table.retain(|(k, _)| k != "connections closed by server");
    }
    if unexpected.is_empty() {
        table.retain(|(k, _)| k != "unexpected frames");
    }
    let out = json!({
        "scenario": "views", "studies": n_studies, "subscribers": n_subs, "definitions": shared.len(),
        "writers": args.writers, "updates": written.updates, "updates_per_s": report::round(written.updates as f64 / ((written.last_us - written.first_us) as f64 / 1e6).max(1e-9)),
        "first_view": first_views.json(), "frames": live_frames, "latency": latency.json(),
        "commit_latency": written.commits.json(),
        "settled_after_ms": settled_after.as_millis() as u64,
        "live": live_check.json(), "subscribe": subscribe_new.json(),
        "subscribe_open_definition": subscribe_new_shared.json(), "subscribe_new_definition": subscribe_new_fresh.json(),
        "subscribe_new_definition_count": fresh_count.json(), "subscribe_new_definition_no_count": fresh_no_count.json(),
        "before_bulk": before_bulk.json(), "after_bulk": after_bulk.json(),
        "bulk": {"rows": bulk_rows, "statement_ms": report::round((acked - started) as f64 / 1000.0), "changed": bulk.changed, "settled_ms": bulk_settled.as_millis() as u64,
                 "missing": bulk.missing, "extra": bulk.extra, "views": bulk.views, "max_ops": bulk.max_ops, "tail_ms": report::round(bulk_tail_ms)},
        "misfits": totals.misfits, "oversized": totals.oversized, "repeated_cursors": totals.repeated_cursors, "views_resent": totals.views,
        "server_cpu_s": {"subscribe": report::round(cpu_subscribe.as_secs_f64()), "live": report::round(cpu_live.as_secs_f64()),
                         "bulk": report::round(cpu_bulk.as_secs_f64()), "total": report::round(cpu_total.as_secs_f64())},
        "server_rss_kib": {"loaded": rss_loaded, "subscribed": rss_subscribed, "live": rss_live, "peak": peak_rss},
        "bench_cpu_s": report::round(own_live.as_secs_f64()), "closed": closed, "gave_up": gone,
        "machine": machine(db).await, "meets_target": ok,
    });
    report::print("views", &table, &out);
    Ok(())
}

/// Every subscriber's window against PostgreSQL's.
struct Check {
    expected: Vec<Window>,
    /// Subscribers whose rows (ids and versions, in order) differ from the SELECT's.
    mismatched: usize,
    /// Of those with count on: the count differs.
    miscounted: usize,
    subscribers: usize,
    /// One mismatch, for the report.
    example: Option<String>,
    /// With the windows before a bulk update: which subscribers got what since the mark.
    bulk: Option<BulkCheck>,
}

struct BulkCheck {
    /// Subscribers whose window (or count) the update changed.
    changed: usize,
    /// Of those, with no frame since the mark.
    missing: usize,
    /// Subscribers with more than one frame, or any frame though nothing changed.
    extra: usize,
    /// Subscribers answered with a whole `view`.
    views: usize,
    max_ops: usize,
    last_delta_us: i64,
}

impl Check {
    fn text(&self) -> String {
        format!(
            "{} of {} subscribers' rows differ, {} counts differ{}",
            self.mismatched,
            self.subscribers,
            self.miscounted,
            self.example
                .as_deref()
                .map(|e| format!("; e.g. {e}"))
                .unwrap_or_default()
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({"subscribers": self.subscribers, "mismatched": self.mismatched, "miscounted": self.miscounted, "example": self.example})
    }
}

/// Waits until every subscriber's window equals `expected` (at most [`SETTLE_PATIENCE`]), then
/// for [`QUIET`]; returns how long after `since_us` the windows were equal (or the wait gave up).
async fn settle(subs: &[Subscriber], expected: &[Window], activity: &Activity, since_us: i64) -> Duration {
    let deadline = Instant::now() + SETTLE_PATIENCE;
    let equal_at = loop {
        let all_equal = subs.iter().all(|s| {
            let state = lock(&s.state);
            let want = &expected[s.def];
            state.window.rows == want.rows && (want.count.is_none() || state.window.count == want.count)
        });
        if all_equal || Instant::now() >= deadline {
            break now_us();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_for_quiet(activity, equal_at, QUIET, SETTLE_PATIENCE).await;
    Duration::from_micros((equal_at - since_us).max(0) as u64)
}

fn compare(defs: &[Definition], subs: &[Subscriber], expected: Vec<Window>, before: Option<&[Window]>) -> Check {
    let mut check = Check {
        expected: Vec::new(),
        mismatched: 0,
        miscounted: 0,
        subscribers: subs.len(),
        example: None,
        bulk: before.map(|_| BulkCheck {
            changed: 0,
            missing: 0,
            extra: 0,
            views: 0,
            max_ops: 0,
            last_delta_us: 0,
        }),
    };
    for s in subs {
        let state = lock(&s.state);
        let want = &expected[s.def];
        if state.window.rows != want.rows {
            check.mismatched += 1;
            check.example.get_or_insert_with(|| {
                format!(
                    "{:?} holds {:?}…, SELECT gives {:?}…",
                    defs[s.def],
                    &state.window.rows[..state.window.rows.len().min(5)],
                    &want.rows[..want.rows.len().min(5)]
                )
            });
        }
        if want.count.is_some() && state.window.count != want.count {
            check.miscounted += 1;
        }
        if let (Some(bulk), Some(before)) = (check.bulk.as_mut(), before) {
            let changed = before[s.def] != *want;
            let got = state.since_mark;
            bulk.changed += usize::from(changed);
            bulk.missing += usize::from(changed && got.frames == 0);
            bulk.extra += usize::from(got.frames > 1 || (!changed && got.frames > 0));
            bulk.views += usize::from(got.views > 0);
            bulk.max_ops = bulk.max_ops.max(got.max_ops);
            bulk.last_delta_us = bulk.last_delta_us.max(got.last_at_us);
        }
    }
    check.expected = expected;
    check
}

/// Sums over every subscriber.
struct Totals {
    misfits: u64,
    oversized: u64,
    repeated_cursors: u64,
    views: u64,
}

impl Totals {
    fn of(subs: &[Subscriber]) -> Totals {
        let mut t = Totals {
            misfits: 0,
            oversized: 0,
            repeated_cursors: 0,
            views: 0,
        };
        for s in subs {
            let s = lock(&s.state);
            t.misfits += s.misfits;
            t.oversized += s.oversized;
            t.repeated_cursors += s.repeated_cursors;
            t.views += s.views;
            if let Some(m) = &s.first_misfit {
                eprintln!("pgfeed-bench: an op did not fit: {m}");
            }
            if let Some(r) = &s.first_repeat {
                eprintln!("pgfeed-bench: a delta repeated its cursor: {r}");
            }
        }
        t
    }
}

/// What the writers did.
struct Written {
    updates: u64,
    /// Updates that found their row (a uniformly drawn id may have been deleted by nobody, but
    /// another scenario's ids interleave).
    rows_changed: u64,
    first_us: i64,
    last_us: i64,
    max_behind: Duration,
    /// Per update: its acknowledgement − the `updated_at` its transaction stamped.
    commits: Percentiles,
}

/// `writers` connections doing `rate` 1-row autocommit updates per second in all, on a fixed
/// schedule, for `duration`: half on rows some window shows, half on any study in `span`.
async fn write(
    db: &BenchDb,
    writers: usize,
    rate: u32,
    duration: Duration,
    hot: Vec<i64>,
    span: (i64, i64),
) -> anyhow::Result<Written> {
    let clients = db.writers(writers).await?;
    let hot = Arc::new(hot);
    let first_us = now_us();
    let t0 = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, client)| {
            let hot = hot.clone();
            tokio::spawn(async move {
                let mut rng = Rng::new(0x5eed + k as u64);
                let mut statements = BTreeMap::new();
                for sql in definitions::UPDATES {
                    let returning = format!("{sql} returning (extract(epoch from updated_at) * 1000000)::bigint");
                    statements.insert(sql, client.prepare(&returning).await?);
                }
                let (mut updates, mut changed, mut last) = (0u64, 0u64, 0i64);
                let mut behind = Duration::ZERO;
                let mut commits_us = Vec::new();
                // Open loop: each update goes at its time without waiting for the ones before it
                // to be acknowledged (tokio-postgres pipelines them on the connection), up to
                // `IN_FLIGHT`; the rate is what the scenario imposes, not what one round trip
                // after another allows.
                let mut in_flight = futures::stream::FuturesUnordered::new();
                let mut acked = |row: Result<Option<tokio_postgres::Row>, tokio_postgres::Error>| {
                    let row = row?;
                    last = now_us();
                    updates += 1;
                    if let Some(row) = row {
                        changed += 1;
                        let stamp: i64 = row.get(0);
                        commits_us.push((last - stamp).clamp(0, i64::from(u32::MAX)) as u32);
                    }
                    anyhow::Ok(())
                };
                for i in 0.. {
                    let at = Duration::from_secs_f64((i * writers + k) as f64 / f64::from(rate));
                    if at >= duration {
                        break;
                    }
                    loop {
                        tokio::select! {
                            Some(row) = in_flight.next(), if !in_flight.is_empty() => acked(row)?,
                            _ = tokio::time::sleep_until(t0 + at), if in_flight.len() < IN_FLIGHT => break,
                        }
                    }
                    behind = behind.max(t0.elapsed().saturating_sub(at));
                    let id = if rng.below(2) == 0 && !hot.is_empty() {
                        hot[rng.below(hot.len() as u64) as usize]
                    } else {
                        span.0 + rng.below((span.1 - span.0 + 1) as u64) as i64
                    };
                    let (sql, value) = definitions::random_update(&mut rng);
                    let stmt = &statements[sql];
                    let client = &client;
                    in_flight.push(async move { client.query_opt(stmt, &[&id, &value]).await });
                }
                while let Some(row) = in_flight.next().await {
                    acked(row)?;
                }
                anyhow::Ok((updates, changed, last, behind, commits_us))
            })
        })
        .collect();
    let mut written = Written {
        updates: 0,
        rows_changed: 0,
        first_us,
        last_us: first_us,
        max_behind: Duration::ZERO,
        commits: Percentiles::default(),
    };
    let mut commits_us = Vec::new();
    for task in tasks {
        let (updates, changed, last, behind, commits) = task.await??;
        written.updates += updates;
        written.rows_changed += changed;
        written.last_us = written.last_us.max(last);
        written.max_behind = written.max_behind.max(behind);
        commits_us.extend(commits);
    }
    written.commits = Percentiles::of(commits_us);
    Ok(written)
}
