//! The listener: wake-ups from writers, polling under load, lost connections, and several
//! servers on one database.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::support::{assert_in_log_order_and_each_writer_in_its_own, ids, Seen, TestApp, TestDb, PATIENCE};

/// `writers` psql processes at once, writer `w` committing one message per body in `bodies`
/// (author `w{w}`, study 1), each insert followed by `after` (more SQL, or ""); returns when all
/// have finished.
async fn write_burst(db: &TestDb, writers: usize, bodies: std::ops::Range<usize>, after: &str) {
    let running: Vec<_> = (0..writers)
        .map(|w| {
            let script: String = bodies
                .clone()
                .map(|n| format!("insert into messages (study_id, author, body) values (1, 'w{w}', '{n}');\n{after}"))
                .collect();
            db.psql_script(script)
        })
        .collect();
    for w in running {
        w.await.expect("writer");
    }
}

/// A LISTEN pgfeed session of the test's own: its notifications' payloads arrive on the channel.
async fn listen_to_pgfeed(url: &str) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("listening session");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("listen pgfeed").await.expect("LISTEN");
    (client, rx)
}

#[tokio::test]
async fn killing_the_listener_connections_while_a_writer_inserts_loses_and_doubles_nothing() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'x', 'X')");
    let mut ws = app.ws().await;
    ws.subscribe("messages").await;

    const N: usize = 600;
    let script: String = (0..N)
        .map(|i| {
            format!("insert into messages (study_id, author, body) values (1, 'w', '{i}');\nselect pg_sleep(0.002);\n")
        })
        .collect();
    let writer = app.db.psql_script(script);
    // Its LISTEN session and the connection it reads the log on, in turn, each once the listener
    // has reconnected after the previous kill.
    for session in [
        pgfeed::listener::APPLICATION_NAME,
        pgfeed::listener::READER_APPLICATION_NAME,
        pgfeed::listener::APPLICATION_NAME,
        pgfeed::listener::READER_APPLICATION_NAME,
    ] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let kill = format!(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = '{session}' and datname = current_database()"
        );
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while app.psql(&kill) != "1" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the listener's {session} session never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    writer.await.expect("writer");

    let events = ws.events(N).await;
    let bodies: Vec<i64> = events
        .iter()
        .map(|e| e["data"]["body"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(bodies, (0..N as i64).collect::<Vec<_>>());
    ws.assert_quiet(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn two_servers_on_one_database_relay_the_same_events_with_the_same_cursors() {
    let one = TestApp::spawn().await;
    let two = TestApp::spawn_on(one.db.clone()).await;
    let mut a = one.ws().await;
    a.subscribe("studies").await;
    let mut b = two.ws().await;
    b.subscribe("studies").await;

    one.psql("insert into studies (label, title) values ('a', 'A'), ('b', 'B')");
    let (ea, eb) = (a.events(2).await, b.events(2).await);
    assert_eq!(ea, eb, "same events, same cursors on both servers");

    // A REST write through server two reaches a client of server one.
    two.post("/api/studies", json!({"label": "via-two", "title": "T"}))
        .await
        .ok(201);
    assert_eq!(a.next_event().await["data"]["label"], "via-two");
    let via_two = b.next_event().await;
    assert_eq!(via_two["data"]["label"], "via-two");

    // A cursor from one server resumes on the other.
    b.close().await;
    one.psql("insert into studies (label, title) values ('c', 'C')");
    let mut b = two.ws().await;
    b.subscribe_since("studies", via_two["cursor"].as_str().unwrap()).await;
    assert_eq!(b.next_event().await["data"]["label"], "c");
}

/// Any role that can connect may LISTEN on any channel (PostgreSQL checks no right for it), so
/// whatever pgfeed's writers and leader notify is heard by roles that may read none of the rows.
/// The notifications must carry commit numbers only (README "How it works": a wake-up, not the
/// data); a wake-up that carried rows would hand every tracked row to every such role.
#[tokio::test]
async fn a_role_without_rights_that_listens_on_pgfeeds_channels_hears_commit_numbers_and_no_row() {
    use futures::StreamExt;
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 's', 'S')");
    let mut ws = app.ws().await;
    ws.subscribe("messages").await;
    // A role of its own (roles are cluster-wide: named after this test's database) that may read
    // nothing of pgfeed's, listening on every channel pgfeed notifies.
    let role = format!("l_{}", app.psql("select current_database()"));
    app.psql(&format!("create role \"{role}\""));
    let (session, mut connection) = tokio_postgres::connect(&app.db.url, tokio_postgres::NoTls)
        .await
        .expect("listening session");
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    session
        .batch_execute(&format!(
            "set role \"{role}\"; listen pgfeed; listen {}",
            pgfeed::listener::leader::WATERMARK_CHANNEL
        ))
        .await
        .expect("LISTEN needs no right");
    assert_eq!(
        app.psql(&format!(
            "select has_table_privilege('{role}', 'pgfeed.events', 'select'), \
                    has_table_privilege('{role}', 'messages', 'select')"
        )),
        "f|f"
    );

    // Act: rows with a recognisable body, through the feed to a subscriber.
    for n in 0..3 {
        app.psql(&format!(
            "insert into messages (study_id, author, body) values (1, 'w', 'private body {n}')"
        ));
        assert_eq!(ws.next_event().await["data"]["body"], format!("private body {n}"));
    }

    // Assert: the listening role heard wake-ups (the server was waiting for them), each a commit
    // number, and nothing of the rows.
    let mut payloads = Vec::new();
    while let Ok(Some((channel, payload))) = tokio::time::timeout(Duration::from_millis(500), heard.recv()).await {
        payloads.push((channel, payload));
    }
    assert!(
        payloads.iter().any(|(channel, _)| channel == "pgfeed"),
        "the role hears the wake-ups: {payloads:?}"
    );
    for (channel, payload) in &payloads {
        assert!(
            payload.parse::<i64>().is_ok(),
            "a commit number on {channel}, not {payload:?}"
        );
    }
    drop(session);
    app.psql(&format!("drop role \"{role}\""));
}

#[tokio::test]
async fn writers_notify_only_while_a_listener_waits_in_the_idle_set() {
    // No pgfeed server: the test's own session plays the listener.
    let db = TestDb::create().await;
    let (listener, mut wakes) = listen_to_pgfeed(&db.url).await;
    let idle = pgfeed::listener::IDLE_LOCK;
    let quiet = Duration::from_millis(300);

    // Listening, but not in the idle set (a polling listener): commits send no NOTIFY.
    db.psql("insert into studies (label, title) values ('a', 'A')");
    assert!(
        tokio::time::timeout(quiet, wakes.recv()).await.is_err(),
        "no wake-up while no listener waits"
    );

    // In the idle set: every commit wakes it, with its seq.
    listener
        .batch_execute(&format!("select pg_advisory_lock_shared({idle})"))
        .await
        .unwrap();
    db.psql("insert into studies (label, title) values ('b', 'B')");
    let seq = tokio::time::timeout(PATIENCE, wakes.recv())
        .await
        .expect("a wake-up")
        .unwrap();
    assert_eq!(seq, db.psql("select max(seq) from pgfeed.commits"));

    // Out of it again: silence.
    listener
        .batch_execute(&format!("select pg_advisory_unlock_shared({idle})"))
        .await
        .unwrap();
    db.psql("insert into studies (label, title) values ('c', 'C')");
    assert!(tokio::time::timeout(quiet, wakes.recv()).await.is_err());

    // A writer that found the set empty sent no NOTIFY, so a listener joining the set waits for
    // every commit in flight (`log::wait_for_commits_in_flight`) before its read, which then sees
    // it. The stamp runs early here (`set constraints all immediate`), leaving the transaction
    // open after it.
    let (writer, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    writer
        .batch_execute("begin; insert into studies (label, title) values ('d', 'D'); set constraints all immediate")
        .await
        .unwrap();
    listener
        .batch_execute(&format!("select pg_advisory_lock_shared({idle})"))
        .await
        .expect("joining the set does not wait");
    let blocked = listener
        .batch_execute("begin; set local lock_timeout = '300ms'; lock table pgfeed.commits in share mode")
        .await
        .expect_err("waiting for the commits in flight waits for the open writer");
    assert_eq!(
        blocked.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{blocked:?}"
    );
    listener.batch_execute("rollback").await.unwrap();
    writer.batch_execute("commit").await.unwrap();
    listener
        .batch_execute("begin; lock table pgfeed.commits in share mode; commit")
        .await
        .expect("nothing in flight once the writer committed");
    assert_eq!(
        db.psql("select count(*) from pgfeed.commits"),
        "4",
        "the writer's commit is visible to the read after that"
    );
    assert!(
        tokio::time::timeout(quiet, wakes.recv()).await.is_err(),
        "that commit sent no NOTIFY"
    );
}

#[tokio::test]
async fn a_polling_listener_relays_every_commit_once_in_order_and_goes_back_to_waiting() {
    // Polling whenever anything commits, so that each burst below switches the listener to
    // polling and each pause sends it back to waiting for wake-ups.
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.poll_above = 0).await;
    app.psql("insert into studies (id, label, title) values (1, 'load', 'Load')");
    let mut ws = app.ws().await;
    ws.subscribe("messages").await;

    // Act: 3 bursts of 3 psql writers × 300 single-row commits, 300 ms apart. Each writer sleeps
    // 1 ms after each commit, so that a burst outlasts the listener's 100 ms rate window
    // (unpaced, writers on the test cluster can finish a burst within one window).
    const BURSTS: usize = 3;
    const WRITERS: usize = 3;
    const ROWS: usize = 300;
    for b in 0..BURSTS {
        write_burst(&app.db, WRITERS, b * ROWS..(b + 1) * ROWS, "select pg_sleep(0.001);\n").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Assert: every commit once, in order, each writer's in its own order.
    let events = ws.events(BURSTS * WRITERS * ROWS).await;
    ws.assert_quiet(Duration::from_millis(300)).await;
    let got: HashSet<i64> = ids(&events).into_iter().collect();
    assert_eq!(got.len(), BURSTS * WRITERS * ROWS, "no duplicates");
    assert_in_log_order_and_each_writer_in_its_own(&events, WRITERS, BURSTS * ROWS);

    // It did poll, more than once (so it went back to waiting in between), and waits now.
    let metrics = app.metrics().await;
    assert!(
        metrics.value("pgfeed_listener_polls_total") >= 2.0,
        "the listener switched to polling in more than one burst:\n{}",
        metrics.0
    );
    assert_eq!(metrics.value("pgfeed_listener_polling"), 0.0, "waiting after the pause");

    // Waiting again: a lone commit notifies, and arrives well before the 5 s safety read.
    app.psql("insert into messages (study_id, author, body) values (1, 'late', 'x')");
    match ws.next_seen_within(Duration::from_secs(2)).await {
        Some(Seen::Frame(event)) => assert_eq!(event["data"]["author"], "late"),
        other => panic!("expected the late row at once, got {other:?}"),
    }
}

#[tokio::test]
async fn a_polling_server_and_a_waiting_one_on_one_database_relay_the_same_events() {
    // One server polls whenever anything commits, the other waits for wake-ups at this rate
    // (below its 1,000 commits/s): writers must keep notifying the waiting one while the other
    // polls, and both must relay every commit once, in the same order, with the same cursors.
    let polling = TestApp::spawn_with(TestDb::create().await, |c| c.poll_above = 0).await;
    let waiting = TestApp::spawn_on(polling.db.clone()).await;
    polling.psql("insert into studies (id, label, title) values (1, 'load', 'Load')");
    let mut a = polling.ws().await;
    a.subscribe("messages").await;
    let mut b = waiting.ws().await;
    b.subscribe("messages").await;

    const WRITERS: usize = 2;
    const ROWS: usize = 150;
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for burst in 0..2 {
        write_burst(
            &polling.db,
            WRITERS,
            burst * ROWS..(burst + 1) * ROWS,
            "select pg_sleep(0.002);\n",
        )
        .await;
        // The waiting server was woken by the burst's commits while the other polled, so it has
        // them at once, long before its next 5 s safety read.
        eb.extend(
            tokio::time::timeout(Duration::from_secs(2), b.events(WRITERS * ROWS))
                .await
                .expect("the waiting server relayed the burst at once (writers notified it)"),
        );
        ea.extend(a.events(WRITERS * ROWS).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    assert_eq!(ea, eb, "same events, same order, same cursors on both servers");
    let got: HashSet<i64> = ids(&ea).into_iter().collect();
    assert_eq!(got.len(), 2 * WRITERS * ROWS, "no duplicates");
    assert_in_log_order_and_each_writer_in_its_own(&ea, WRITERS, 2 * ROWS);
    a.assert_quiet(Duration::from_millis(300)).await;
    b.assert_quiet(Duration::from_millis(100)).await;
    assert!(
        polling.metrics().await.value("pgfeed_listener_polls_total") >= 1.0,
        "the first server polled"
    );
}

#[tokio::test]
async fn a_wake_up_for_the_next_commit_reads_it_by_seq_and_a_commit_past_a_page_is_read_page_by_page() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 'x', 'X')");
    let mut ws = app.ws().await;
    ws.subscribe("messages").await;
    // One commit first, so that the listener has surely settled into waiting for wake-ups.
    app.psql("insert into messages (study_id, author, body) values (1, 'warm', 'up')");
    ws.events(1).await;
    let before = app.metrics().await.value("pgfeed_listener_commit_reads_total");

    // Act: single-row commits, each relayed before the next is written.
    const ONE_BY_ONE: usize = 5;
    for i in 0..ONE_BY_ONE {
        app.psql(&format!(
            "insert into messages (study_id, author, body) values (1, 'one', '{i}')"
        ));
        let event = ws.events(1).await.remove(0);
        assert_eq!(event["data"]["body"], i.to_string());
    }
    // Assert: each wake-up announced the commit right after the hub's position, and that commit
    // was read alone, by its seq; all but one at most, which the listener's safety read (every
    // 5 s, reading from its position) may have taken first.
    let by_seq = app.metrics().await.value("pgfeed_listener_commit_reads_total") - before;
    assert!(
        by_seq >= (ONE_BY_ONE - 1) as f64,
        "{ONE_BY_ONE} commits, {by_seq} read by seq"
    );

    // Act: one commit of more than a page of events.
    const BIG: usize = 1500;
    app.psql(&format!(
        "insert into messages (study_id, author, body) select 1, 'big', g::text from generate_series(1, {BIG}) g"
    ));
    // Assert: it arrives whole and in order, read page by page (not by seq).
    let events = ws.events(BIG).await;
    let bodies: Vec<String> = events
        .iter()
        .map(|e| e["data"]["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(bodies, (1..=BIG).map(|i| i.to_string()).collect::<Vec<_>>());
    ws.assert_quiet(Duration::from_millis(200)).await;
    let after = app.metrics().await.value("pgfeed_listener_commit_reads_total") - before;
    assert_eq!(after, by_seq, "the big commit was not read by seq");
}
