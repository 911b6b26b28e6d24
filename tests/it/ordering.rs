//! The order of delivery: concurrent writers, and commits whose seqs become visible out of order.

use std::collections::HashSet;
use std::time::Duration;

use pgfeed::event::Position;
use serde_json::json;

use crate::support::{assert_in_log_order_and_each_writer_in_its_own, ids, labels, position, TestApp};

#[tokio::test]
async fn concurrent_writers_with_rollbacks_are_delivered_once_each_in_commit_order() {
    // Arrange: 4 psql writers × 500 rows: single-row commits, multi-row transactions, and
    // rolled-back transactions and savepoints whose rows must never appear.
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'load', 'Load')");
    let mut ws = app.ws().await;
    ws.subscribe("messages").await;

    const WRITERS: usize = 4;
    const ROWS: usize = 500;
    let scripts: Vec<String> = (0..WRITERS)
        .map(|w| {
            let mut sql = String::new();
            let mut n = 0;
            while n < ROWS {
                let row =
                    |n: usize| format!("insert into messages (study_id, author, body) values (1, 'w{w}', '{n}');\n");
                match n % 7 {
                    0 if n + 3 <= ROWS => {
                        sql += "begin;\n";
                        for k in 0..3 {
                            sql += &row(n + k);
                        }
                        sql += "commit;\n";
                        n += 3;
                    }
                    3 => {
                        sql += &format!("begin;\n{}rollback;\n", row(9_000_000 + n));
                        sql += &format!(
                            "begin;\n{}savepoint s;\n{}rollback to s;\ncommit;\n",
                            row(n),
                            row(9_000_000 + n)
                        );
                        n += 1;
                    }
                    _ => {
                        sql += &row(n);
                        n += 1;
                    }
                }
            }
            sql
        })
        .collect();

    // Act
    let writers: Vec<_> = scripts.into_iter().map(|s| app.db.psql_script(s)).collect();
    for w in writers {
        w.await.expect("writer");
    }

    // Assert: exactly the committed rows, each once, in strictly increasing log order, and every
    // writer's rows in the order that writer committed them.
    let events = ws.events(WRITERS * ROWS).await;
    ws.assert_quiet(Duration::from_millis(500)).await;
    let committed: HashSet<i64> = app
        .psql("select id from messages")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let got = ids(&events);
    assert_eq!(
        got.iter().copied().collect::<HashSet<_>>(),
        committed,
        "every committed row, nothing else"
    );
    assert_eq!(got.len(), committed.len(), "no duplicates");
    assert_in_log_order_and_each_writer_in_its_own(&events, WRITERS, ROWS);
}

// Commits are numbered at commit without holding other writers back, so commits made at the same
// moment may become visible out of seq order. The tests below hold one transaction open after its
// stamp (`set constraints all immediate` stamps at the end of the statement) to make that moment
// last as long as they need.

#[tokio::test]
async fn a_commit_made_while_an_earlier_seq_is_in_flight_waits_for_it_and_both_arrive_in_seq_order() {
    let app = TestApp::spawn().await;
    let mut early = app.ws().await;
    let before = early.subscribe("studies").await["cursor"].as_str().unwrap().to_owned();

    // Arrange: A stamps first and stays open; B commits after it.
    let a = app
        .db
        .stamped_open("insert into studies (label, title) values ('a', 'A');")
        .await;
    app.psql("insert into studies (label, title) values ('b', 'B')");

    // Assert: while A is in flight, B is not delivered, to live subscribers nor to one that
    // subscribes now (its cursor is before A's seq).
    early.assert_quiet(Duration::from_millis(500)).await;
    let mut late = app.ws().await;
    late.subscribe("studies").await;
    late.assert_quiet(Duration::from_millis(200)).await;
    // Nor to a long-poll from before both, which reads the log itself.
    let changes = format!("/api/changes?topics=studies&since={before}&wait=0");
    let (_, polled) = app.get_json(&changes).await;
    assert_eq!(polled["events"], json!([]), "{polled}");

    // Act: A commits. All get A, then B, in seq order.
    a.finish("commit;").await;
    for ws in [&mut early, &mut late] {
        let events = ws.events(2).await;
        assert_eq!(labels(&events), ["a", "b"]);
        assert!(position(&events[0]["cursor"]) < position(&events[1]["cursor"]));
    }
    let (_, polled) = app.get_json(&changes).await;
    assert_eq!(labels(polled["events"].as_array().unwrap()), ["a", "b"]);
}

#[tokio::test]
async fn a_change_made_after_an_early_stamp_moves_the_transaction_after_the_commits_it_followed() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (10, 'shared', 'Before')");
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;

    // A stamps early; B then changes row 10 and commits; A overwrites B's change and commits.
    let mut a = app
        .db
        .stamped_open("insert into studies (id, label, title) values (11, 'a', 'A');")
        .await;
    app.psql("update studies set title = 'B' where id = 10");
    a.run("update studies set title = 'A' where id = 10;").await;
    a.finish("commit;").await;

    // B's change comes first, then all of A's, so the last event of row 10 is its final state.
    let events = ws.events(3).await;
    let seen: Vec<(i64, &str)> = events
        .iter()
        .map(|e| (e["data"]["id"].as_i64().unwrap(), e["data"]["title"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [(10, "B"), (11, "A"), (10, "A")]);
    assert_eq!(app.psql("select title from studies where id = 10"), "A");
    let positions: Vec<Position> = events.iter().map(|e| position(&e["cursor"])).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // A's first seq was given up: it is marked as never committed, and nothing else came.
    assert_eq!(app.psql("select count(*) from pgfeed.commits where txid = '0'"), "1");
    ws.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn seqs_that_never_commit_are_marked_and_passed_and_a_writer_never_reuses_one() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    app.psql("insert into studies (label, title) values ('first', 'First')");
    ws.next_event().await;

    // A stamps, then rolls back; a seq drawn by a writer that never inserts its row (as if it
    // stalled there) is the other kind of hole.
    let a = app
        .db
        .stamped_open("insert into studies (label, title) values ('rolled back', 'R');")
        .await;
    a.finish("rollback;").await;
    let stalled = app.psql("select nextval('pgfeed.commit_seq')");
    app.psql("insert into studies (label, title) values ('after', 'After')");
    assert_eq!(ws.next_event().await["data"]["label"], "after");

    // The listener marked both holes (txid 0) before it passed them.
    let stalled: i64 = stalled.parse().unwrap();
    assert_eq!(
        app.psql("select string_agg(seq::text, ',' order by seq) from pgfeed.commits where txid = '0'"),
        format!("{},{stalled}", stalled - 1)
    );
    // A writer whose draw lands on a marked seq draws again (sequence set back to before the holes).
    app.psql(&format!("select setval('pgfeed.commit_seq', {})", stalled - 2));
    app.psql("insert into studies (label, title) values ('again', 'Again')");
    let again = ws.next_event().await;
    assert_eq!(again["data"]["label"], "again");
    assert_eq!(
        app.psql("select max(seq) from pgfeed.commits where txid <> '0'"),
        (stalled + 2).to_string(),
        "drawn past the holes and 'after'"
    );
    ws.assert_quiet(Duration::from_millis(200)).await;
}
