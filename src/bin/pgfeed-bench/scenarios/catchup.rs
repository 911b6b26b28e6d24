//! catchup: resuming from far behind, then going live on the same subscription.

use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{machine, INSERT_STAMPED};
use crate::client::{self, now_us, Tally, Ws};
use crate::report::{self, lost_and_doubled, verdict};
use crate::setup::{self, BenchDb, Server};
use crate::Args;

/// catchup: one client resumes from a cursor `rows` events behind, then stays live.
pub(super) async fn catchup(rows: usize, args: &Args, db: &BenchDb, server: &Server) -> anyhow::Result<()> {
    let setup_conn = db.connect("pgfeed-bench").await?;
    let study = setup::new_study(&setup_conn).await?;
    let mut probe = client::connect(server.addr, 0).await?;
    let since = client::subscribe(&mut probe, "messages", None).await?;
    drop(probe);

    // Fill the log: transactions of 100 rows from the writers, so the replay crosses many commits.
    eprintln!("pgfeed-bench: writing {rows} rows to resume over");
    const PER_TX: usize = 100;
    let clients = db.writers(args.writers).await?;
    let txs = rows.div_ceil(PER_TX);
    let fills: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            let w = args.writers;
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for t in (k..txs).step_by(w) {
                    let count = PER_TX.min(rows - t * PER_TX) as i32;
                    let got = c
                        .query(
                            "insert into messages (study_id, author, body) select $1, 'fill', g::text from generate_series(1, $2) g returning id",
                            &[&study, &count],
                        )
                        .await?;
                    ids.extend(got.iter().map(|r| r.get::<_, i64>(0)));
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let mut expected = Vec::with_capacity(rows);
    for f in fills {
        expected.extend(f.await??);
    }
    expected.sort_unstable();

    let mut ws = client::connect(server.addr, 1).await?;
    eprintln!("pgfeed-bench: replaying {rows} events");
    let t0 = Instant::now();
    client::subscribe(&mut ws, "messages", Some(&since)).await?;
    let (target_tx, target_rx) = watch::channel(Some(rows));
    let deadline = Instant::now() + Duration::from_secs(300);
    let tally = read_into(&mut ws, target_rx, deadline).await;
    let replay = t0.elapsed();
    let per_s = tally.ids.len() as f64 / replay.as_secs_f64();
    let (lost, doubled) = lost_and_doubled(&expected, &tally.ids);

    // Then live: one more row arrives on the same subscription.
    let live_sent = now_us();
    setup_conn.execute(INSERT_STAMPED, &[&study, &"live"]).await?;
    target_tx.send_replace(Some(1));
    let live = read_into(&mut ws, target_tx.subscribe(), Instant::now() + Duration::from_secs(30)).await;
    let live_ms = (live.last_at_us - live_sent) as f64 / 1000.0;
    let went_live = live.ids.len() == 1;

    let ok = lost == 0 && doubled == 0 && tally.out_of_order == 0 && per_s >= 100_000.0 && went_live;
    let table = [
        (
            "behind by".to_owned(),
            format!("{rows} events ({txs} commits of {PER_TX} rows)"),
        ),
        (
            "replayed".to_owned(),
            format!(
                "{} events in {:.3} s: {per_s:.0} events/s",
                tally.ids.len(),
                replay.as_secs_f64()
            ),
        ),
        (
            "lost / doubled / out of order".to_owned(),
            format!("{lost} / {doubled} / {}", tally.out_of_order),
        ),
        (
            "then live".to_owned(),
            if went_live {
                format!("a new row arrived {live_ms:.1} ms after its INSERT was sent")
            } else {
                "the live row did not arrive".to_owned()
            },
        ),
        (
            "target".to_owned(),
            "≥ 100,000 events/s, in order, then live".to_owned(),
        ),
        ("verdict".to_owned(), verdict(ok).to_owned()),
    ];
    let out = json!({
        "scenario": "catchup", "behind": rows, "replayed": tally.ids.len(),
        "seconds": report::round(replay.as_secs_f64()), "events_per_s": per_s.round(),
        "lost": lost, "doubled": doubled, "out_of_order": tally.out_of_order,
        "live": went_live, "live_ms": report::round(live_ms),
        "machine": machine(db).await, "meets_target": ok,
    });
    report::print("catchup", &table, &out);
    Ok(())
}

/// `client::receive` on a borrowed socket: reads until `target` events.
async fn read_into(ws: &mut Ws, target: watch::Receiver<Option<usize>>, deadline: Instant) -> Tally {
    client::receive_on(ws, target, deadline).await
}
