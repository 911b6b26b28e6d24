//! Live views (PROTOCOL §9): the window's rows, then exact deltas, checked against PostgreSQL's
//! own SELECT after each step.
//!
//! The tests run the server on worker threads: psql, the outside writer, blocks the test's own
//! thread, and a window's read holds commits back for a moment, so a server sharing that thread
//! would wait for the writer that waits for it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{assert_rows, TestApp, ViewRows, WsClient};

/// The next frame of the connection, which must be a delta of `name`.
async fn delta(ws: &mut WsClient, v: &mut ViewRows, name: &str) -> Value {
    let frame = ws.next_json().await;
    assert_eq!(frame["type"], "view_delta", "{frame}");
    assert_eq!(frame["view"], name);
    v.apply(&frame);
    frame
}

fn seed(app: &TestApp, n: usize) {
    app.psql(&format!(
        "insert into studies (id, label, title, status) \
         select i, 'l' || i, 't' || lpad(i::text, 4, '0'), case when i % 2 = 0 then 'active' else 'draft' end \
         from generate_series(1, {n}) i"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_opens_with_its_rows_and_count_and_follows_an_external_writer_exactly() {
    let app = TestApp::spawn().await;
    seed(&app, 40);
    let mut ws = app.ws().await;
    let def = json!({"topic": "studies", "filter": {"status": "eq.active"}, "order": "title.desc", "limit": 5, "count": true});
    let mut v = ViewRows::default();
    v.apply(&ws.open_view("main", def).await);
    let filter = "status = 'active'";
    let order = r#"title collate "C" desc, id"#;
    assert_rows(&v, &app.oracle("studies", filter, order, 5), "opened");
    assert_eq!(v.count, Some(20));
    assert!(v.next.is_some(), "a page follows");

    // An insert that sorts first enters at 0; the last row overflows.
    app.psql("insert into studies (id, label, title, status) values (100, 'x', 'zzz', 'active')");
    let d = delta(&mut ws, &mut v, "main").await;
    let ops = d["ops"].as_array().unwrap();
    assert!(
        ops.iter()
            .any(|o| o["op"] == "enter" && o["why"] == "insert" && o["to"] == 0),
        "{d}"
    );
    assert!(ops.iter().any(|o| o["op"] == "exit" && o["why"] == "overflow"), "{d}");
    assert_eq!(v.count, Some(21));
    assert_rows(&v, &app.oracle("studies", filter, order, 5), "after the insert");

    // A row that stops matching leaves with `unmatch`, and the next one fills its slot.
    app.psql("update studies set status = 'closed' where id = 100");
    let d = delta(&mut ws, &mut v, "main").await;
    let ops = d["ops"].as_array().unwrap();
    assert!(
        ops.iter()
            .any(|o| o["op"] == "exit" && o["why"] == "unmatch" && o["key"] == "100"),
        "{d}"
    );
    assert!(ops.iter().any(|o| o["op"] == "enter" && o["why"] == "fill"), "{d}");
    assert_rows(&v, &app.oracle("studies", filter, order, 5), "after the unmatch");
    assert_eq!(v.count, Some(20));

    // A change below the window changes only the count; one outside the filter, nothing.
    app.psql("update studies set status = 'active' where id = 1");
    let d = delta(&mut ws, &mut v, "main").await;
    assert_eq!(d["ops"], json!([]), "{d}");
    assert_eq!(v.count, Some(21));
    app.psql("update studies set title = 'quiet' where id = 3");
    ws.assert_quiet(Duration::from_millis(300)).await;

    // A row moving within the window: one update with from and to.
    app.psql("update studies set title = 'zzzz' where id = 36");
    let d = delta(&mut ws, &mut v, "main").await;
    assert_eq!(d["ops"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["ops"][0]["op"], "update");
    assert_rows(&v, &app.oracle("studies", filter, order, 5), "after a move up");

    // A delete from the window: exit `delete`, fill from the buffer.
    app.psql("delete from studies where id = 36");
    let d = delta(&mut ws, &mut v, "main").await;
    assert!(d["ops"].as_array().unwrap().iter().any(|o| o["why"] == "delete"), "{d}");
    assert_rows(&v, &app.oracle("studies", filter, order, 5), "after a delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_past_the_buffer_reads_the_window_again_and_a_bulk_update_is_one_bounded_delta() {
    let app = TestApp::spawn().await;
    seed(&app, 300);
    let mut ws = app.ws().await;
    let mut v = ViewRows::default();
    v.apply(
        &ws.open_view(
            "w",
            json!({"topic": "studies", "order": "id", "limit": 10, "count": true}),
        )
        .await,
    );
    assert_eq!(v.ids(), (1..=10).collect::<Vec<_>>());

    // One commit deletes the window and its whole buffer: the window is read again.
    app.psql("delete from studies where id <= 25");
    let d = delta(&mut ws, &mut v, "w").await;
    assert!(d["ops"].as_array().unwrap().len() <= 20, "{d}");
    assert_eq!(v.ids(), (26..=35).collect::<Vec<_>>());
    assert_eq!(v.count, Some(275));

    // One statement over every row: one delta, at most 2 × limit operations.
    app.psql("update studies set title = title || '!'");
    let d = delta(&mut ws, &mut v, "w").await;
    assert!(d["ops"].as_array().unwrap().len() <= 20, "{d}");
    assert_rows(&v, &app.oracle("studies", "true", "id", 10), "after the bulk update");
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_their_next_token_and_nulls_and_ties_order_as_postgresql_orders_them() {
    let app = TestApp::spawn().await;
    app.psql(
        "create table items (id bigint primary key, score int, tag text); select pgfeed.track('items'); \
         insert into items select i, case when i % 5 = 0 then null else i % 3 end, case when i % 7 = 0 then null else 't' || (i % 4) end \
         from generate_series(1, 60) i",
    );
    let mut ws = app.ws().await;
    for (order, sql) in [
        ("score.desc", "score desc nulls first, id"),
        (
            "score.asc.nullsfirst,tag.desc",
            r#"score asc nulls first, tag collate "C" desc nulls first, id"#,
        ),
        ("tag", r#"tag collate "C" nulls last, id"#),
    ] {
        let mut first = ViewRows::default();
        first.apply(
            &ws.open_view("p1", json!({"topic": "items", "order": order, "limit": 7}))
                .await,
        );
        assert_rows(&first, &app.oracle("items", "true", sql, 7), order);
        let next = first.next.clone().expect("a next page");
        let mut second = ViewRows::default();
        second.apply(
            &ws.open_view(
                "p2",
                json!({"topic": "items", "order": order, "limit": 7, "after": next}),
            )
            .await,
        );
        let both = app.oracle("items", "true", sql, 14);
        assert_rows(&second, &both[7..], &format!("{order}, second page"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_by_name_and_the_connection_stays_usable() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    for (def, needle) in [
        (json!({"topic": "studies", "filter": {"nope": "eq.1"}}), "nope"),
        (json!({"topic": "studies", "filter": {"status": "like"}}), "status"),
        (json!({"topic": "studies", "filter": {"id": "eq.abc"}}), "id"),
        (json!({"topic": "studies", "filter": {"id": "between.1"}}), "between"),
        (json!({"topic": "studies", "order": "title.sideways"}), "sideways"),
        (json!({"topic": "studies", "limit": 1001}), "limit"),
        (json!({"topic": "studies", "limit": 0}), "limit"),
        (json!({"topic": "studies", "after": "garbage"}), "after"),
        (json!({"topic": "studies:1"}), "table"),
        (json!({"topic": "nope"}), "nope"),
    ] {
        let mut frame = json!({"action": "subscribe", "view": "v", "id": 7});
        for (k, v) in def.as_object().unwrap() {
            frame[k] = v.clone();
        }
        ws.send(frame).await;
        let answer = ws.next_json().await;
        assert_eq!(answer["type"], "error", "{def}: {answer}");
        assert_eq!(answer["id"], 7);
        assert!(answer["message"].as_str().unwrap().contains(needle), "{def}: {answer}");
    }
    let mut v = ViewRows::default();
    v.apply(&ws.open_view("ok", json!({"topic": "studies"})).await);
    ws.send(json!({"action": "unsubscribe", "view": "ok"})).await;
    assert_eq!(ws.next_json().await, json!({"type": "unsubscribed", "view": "ok"}));
}

/// Reads every connection's view frames until none has come for `quiet`.
async fn drain(conns: &mut [(WsClient, Vec<(String, ViewRows)>)], quiet: Duration) {
    loop {
        let mut any = false;
        for (ws, views) in conns.iter_mut() {
            while let Some(seen) = ws.next_seen_within(quiet).await {
                let crate::support::Seen::Frame(frame) = seen else {
                    panic!("closed: {seen:?}")
                };
                let name = frame["view"].as_str().expect("a view frame").to_owned();
                let (_, v) = views.iter_mut().find(|(n, _)| *n == name).expect("a known view");
                v.apply(&frame);
                any = true;
            }
        }
        if !any {
            return;
        }
    }
}

/// A small deterministic generator (xorshift), so a failure can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_of_every_window_ends_equal_to_postgresqls_select_under_concurrent_writers() {
    oracle_under_writers(TestApp::spawn().await).await;
}

/// The same with every count following its window's rows (a count slower than the wait, as over
/// a big table): the windows' counts are kept from changes since the count's own position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_that_follow_their_rows_end_equal_to_postgresqls_count_under_concurrent_writers() {
    let app = TestApp::spawn_with(crate::support::db::TestDb::create().await, |c| {
        c.view_count_wait = Duration::ZERO;
    })
    .await;
    oracle_under_writers(app).await;
}

/// A view whose count is slower than `--view-count-wait`: its rows go out with `"count":null`,
/// and the next frame, a delta of no operations, carries the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_count_follows_the_rows_in_a_delta_of_its_own() {
    let app = TestApp::spawn_with(crate::support::db::TestDb::create().await, |c| {
        c.view_count_wait = Duration::ZERO;
    })
    .await;
    seed(&app, 40);
    let mut ws = app.ws().await;
    let def = json!({"topic": "studies", "filter": {"status": "eq.active"}, "order": "title.desc", "limit": 5, "count": true});
    let mut v = ViewRows::default();
    let view = ws.open_view_raw("main", def.clone()).await;
    assert_eq!(view["type"], "view", "{view}");
    assert_eq!(view["count"], Value::Null, "{view}");
    v.apply(&view);
    assert_rows(
        &v,
        &app.oracle("studies", "status = 'active'", r#"title collate "C" desc, id"#, 5),
        "opened",
    );
    let d = delta(&mut ws, &mut v, "main").await;
    assert_eq!(d["ops"], json!([]), "{d}");
    assert_eq!(
        d["cursor"], view["cursor"],
        "the count is as of the rows' position: {d}"
    );
    assert_eq!(v.count, Some(20));
    // A second subscriber of the window gets the count with the rows.
    let mut other = app.ws().await;
    let view = other.open_view("again", def).await;
    assert_eq!(view["count"], 20, "{view}");
    // And changes count on from there.
    app.psql("update studies set status = 'active' where id = 1");
    delta(&mut ws, &mut v, "main").await;
    assert_eq!(v.count, Some(21));
    ws.assert_quiet(Duration::from_millis(300)).await;
    // A long-poll of a new window answers its view with the delta that brings the count.
    let (status, body) = app
        .get_json("/api/changes?view=p&topic=studies&filter.status=eq.draft&order=id&limit=3&count=true&wait=10")
        .await;
    assert_eq!(status, 200, "{body}");
    let mut p = ViewRows::default();
    for f in body["events"].as_array().unwrap() {
        p.apply(f);
    }
    assert_eq!(p.count, Some(app.count("studies", "status = 'draft'")), "{body}");
}

/// 6 definitions on 3 connections (shared windows), 3 psql writers, then every window and count
/// compared with PostgreSQL's.
async fn oracle_under_writers(app: TestApp) {
    let statuses = ["draft", "active", "closed", "archived"];
    app.psql(
        "insert into studies (id, label, title, status) \
         select i, 'l' || i, 't' || (i * 7919 % 1000), (array['draft','active','closed','archived'])[1 + i % 4] \
         from generate_series(1, 300) i",
    );
    let defs: Vec<(Value, &str, &str, usize)> = vec![
        (
            json!({"topic": "studies", "filter": {"status": "eq.active"}, "order": "updated_at.desc", "limit": 10, "count": true}),
            "status = 'active'",
            "updated_at desc, id",
            10,
        ),
        (
            json!({"topic": "studies", "filter": {"status": "in.(draft,closed)"}, "order": "title", "limit": 8}),
            "status in ('draft','closed')",
            r#"title collate "C", id"#,
            8,
        ),
        (
            json!({"topic": "studies", "order": "label.desc", "limit": 12, "count": true}),
            "true",
            r#"label collate "C" desc, id"#,
            12,
        ),
        (
            json!({"topic": "studies", "filter": {"title": "ilike.*3*"}, "order": "id", "limit": 5, "count": true}),
            "title ilike '%3%'",
            "id",
            5,
        ),
        (
            json!({"topic": "studies", "filter": {"label|title": "ilike.*7*"}, "order": "updated_at.desc", "limit": 7, "count": true}),
            "(label ilike '%7%' or title ilike '%7%')",
            "updated_at desc, id",
            7,
        ),
        (
            json!({"topic": "studies", "filter": {"status": "neq.archived", "version": "gte.2"}, "order": "version.desc,title", "limit": 6}),
            "status <> 'archived' and version >= 2",
            r#"version desc, title collate "C", id"#,
            6,
        ),
    ];
    // Three connections; each opens every definition (shared windows) under its own names.
    let mut conns = Vec::new();
    for c in 0..3 {
        let mut ws = app.ws().await;
        let mut views = Vec::new();
        for (i, (def, ..)) in defs.iter().enumerate() {
            let name = format!("c{c}v{i}");
            let mut v = ViewRows::default();
            v.apply(&ws.open_view(&name, def.clone()).await);
            views.push((name, v));
        }
        conns.push((ws, views));
    }
    // External writers: psql processes, single statements and transactions of several.
    let seed = 0x9e3779b97f4a7c15u64 ^ std::process::id() as u64;
    let mut rng = Rng(seed | 1);
    let mut writers = Vec::new();
    for w in 0..3 {
        // Writers that update overlapping rows in different orders may deadlock each other;
        // PostgreSQL then rolls one transaction back (no event), and its writer goes on.
        let mut script = String::from("\\set ON_ERROR_STOP 0\n");
        for n in 0..150 {
            let id = 1 + rng.below(320);
            let stmt = match rng.below(10) {
                0 => format!("insert into studies (label, title, status) values ('w{w}n{n}', 't{}', '{}') on conflict do nothing;", rng.below(1000), statuses[rng.below(4) as usize]),
                1 => format!("delete from studies where id = {id};"),
                2 => format!("update studies set status = '{}' where id between {id} and {};", statuses[rng.below(4) as usize], id + rng.below(30)),
                3 => format!("begin; update studies set title = 't{}' where id = {id}; update studies set status = 'active' where id = {}; commit;", rng.below(1000), 1 + rng.below(320)),
                4..=6 => format!("update studies set status = '{}' where id = {id};", statuses[rng.below(4) as usize]),
                _ => format!("update studies set title = 't{}' where id = {id};", rng.below(1000)),
            };
            script.push_str(&stmt);
            script.push('\n');
        }
        writers.push(app.db.psql_script(script));
    }
    for w in writers {
        w.await.expect("writer");
    }
    drain(&mut conns, Duration::from_millis(700)).await;
    for (_, views) in &conns {
        for ((name, v), (def, filter, order, limit)) in views.iter().zip(&defs) {
            assert_rows(
                v,
                &app.oracle("studies", filter, order, *limit),
                &format!("{name} (seed {seed})"),
            );
            let count = (def["count"] == true).then(|| app.count("studies", filter));
            assert_eq!(v.count, count, "{name}'s count (seed {seed})");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_resumed_with_its_cursor_after_a_disconnect_and_a_restart_is_exact() {
    let app = TestApp::spawn().await;
    seed(&app, 50);
    let def = json!({"topic": "studies", "filter": {"status": "eq.active"}, "order": "title.desc", "limit": 5, "count": true});
    let (filter, order) = ("status = 'active'", r#"title collate "C" desc, id"#);
    let mut ws = app.ws().await;
    let mut v = ViewRows::default();
    v.apply(&ws.open_view("main", def.clone()).await);
    ws.close().await;

    app.psql("update studies set status = 'closed' where id in (50, 48); insert into studies (id, label, title, status) values (51, 'n', 'zz', 'active')");
    let mut ws = app.ws().await;
    let mut resumed = def.clone();
    resumed["since"] = json!(v.cursor);
    v.apply(&ws.open_view("main", resumed).await);
    assert_rows(
        &v,
        &app.oracle("studies", filter, order, 5),
        "resumed after a disconnect",
    );
    assert_eq!(v.count, Some(app.count("studies", filter)));

    let app = app.restart().await;
    app.psql("update studies set status = 'active' where id = 50");
    let mut ws = app.ws().await;
    let mut resumed = def.clone();
    resumed["since"] = json!(v.cursor);
    v.apply(&ws.open_view("main", resumed).await);
    assert_rows(&v, &app.oracle("studies", filter, order, 5), "resumed after a restart");
    app.psql("update studies set title = 'zzz' where id = 2");
    delta(&mut ws, &mut v, "main").await;
    assert_rows(&v, &app.oracle("studies", filter, order, 5), "live after the restart");

    // A malformed cursor is refused; another log's is no error (the view comes whole).
    let mut bad = def.clone();
    bad["since"] = json!("garbage");
    bad["action"] = json!("subscribe");
    bad["view"] = json!("x");
    ws.send(bad).await;
    assert_eq!(ws.next_json().await["code"], "bad_request");
    let mut foreign = def.clone();
    foreign["since"] = json!("otherlog-5-1");
    ws.open_view("y", foreign).await;
}

/// A view resumed with a cursor that retention has pruned past (PROTOCOL §9 "Resume"): where a
/// topic answers `refresh_needed`, a view has nothing to refresh by hand; it comes whole, as of
/// now, and its deltas follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_resumed_with_a_cursor_retention_pruned_comes_whole_and_goes_on() {
    let app = TestApp::spawn_with(crate::support::db::TestDb::create().await, |c| {
        c.retention = Duration::from_secs(1);
    })
    .await;
    seed(&app, 30);
    let def =
        json!({"topic": "studies", "filter": {"status": "eq.active"}, "order": "title", "limit": 4, "count": true});
    let (filter, order) = ("status = 'active'", r#"title collate "C", id"#);
    let mut ws = app.ws().await;
    let mut v = ViewRows::default();
    v.apply(&ws.open_view("main", def.clone()).await);
    ws.close().await;
    app.psql("update studies set status = 'active' where id in (1, 2); delete from studies where id = 3");
    app.psql("update studies set title = '0 first' where status = 'active' and id = 2");
    app.wait_until_every_commit_is_pruned().await;

    let mut ws = app.ws().await;
    let mut resumed = def.clone();
    resumed["since"] = json!(v.cursor);
    let view = ws.open_view("main", resumed).await;
    assert_eq!(view["type"], "view", "{view}");
    v.apply(&view);
    assert_rows(&v, &app.oracle("studies", filter, order, 4), "resumed past retention");
    assert_eq!(v.count, Some(app.count("studies", filter)));
    app.psql("update studies set status = 'active' where id = 4");
    delta(&mut ws, &mut v, "main").await;
    assert_rows(&v, &app.oracle("studies", filter, order, 4), "live after it");
    assert_eq!(v.count, Some(app.count("studies", filter)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_views_only_windows_confined_to_its_studies_and_a_row_moved_away_leaves_without_its_data() {
    use crate::auth::{in_an_hour, secured, token};
    let app = secured().await;
    app.psql(
        "insert into studies (id, label, title) values (1, 'a', 'A'), (2, 'b', 'B'), (3, 'c', 'C'); \
         insert into messages (id, study_id, author, body) values (10, 1, 'x', 'hi'), (11, 1, 'y', 'yo'), (12, 3, 'z', 'secret')",
    );
    let member = token(json!({"role": "member", "studies": [1, 2], "exp": in_an_hour()}));
    let mut ws = app.ws_at(&format!("/ws?token={member}")).await;
    for def in [
        json!({"topic": "studies"}),
        json!({"topic": "studies", "filter": {"id": "in.(1,3)"}}),
        json!({"topic": "studies", "filter": {"id": "gt.0"}}),
        json!({"topic": "messages", "filter": {"author": "eq.x"}}),
        json!({"topic": "messages", "filter": {"study_id": "eq.3"}}),
        json!({"topic": "files"}),
    ] {
        let mut frame = json!({"action": "subscribe", "view": "v"});
        for (k, v) in def.as_object().unwrap() {
            frame[k] = v.clone();
        }
        ws.send(frame).await;
        let answer = ws.next_json().await;
        assert_eq!(answer["code"], "forbidden", "{def}: {answer}");
    }
    let mut studies = ViewRows::default();
    studies.apply(
        &ws.open_view("s", json!({"topic": "studies", "filter": {"id": "in.(1,2)"}}))
            .await,
    );
    assert_eq!(studies.ids(), [1, 2]);
    let mut msgs = ViewRows::default();
    msgs.apply(
        &ws.open_view(
            "m",
            json!({"topic": "messages", "filter": {"study_id": "eq.1"}, "order": "id.desc"}),
        )
        .await,
    );
    assert_eq!(msgs.ids(), [11, 10]);

    app.psql("update messages set study_id = 3 where id = 11");
    let d = delta(&mut ws, &mut msgs, "m").await;
    assert_eq!(
        d["ops"],
        json!([{"op": "exit", "key": "11", "from": 0, "why": "unmatch"}])
    );
    app.psql("update messages set body = 'still secret' where id = 11; update messages set study_id = 1 where id = 12");
    let d = delta(&mut ws, &mut msgs, "m").await;
    assert_eq!(d["ops"][0]["op"], "enter", "{d}");
    assert_eq!(msgs.ids(), [12, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_sse_and_long_poll_carry_the_same_frames_and_resume_whole() {
    let app = TestApp::spawn().await;
    seed(&app, 30);
    let (filter, order) = ("status = 'active'", r#"title collate "C" desc, id"#);
    let query = "view=main&topic=studies&filter.status=eq.active&order=title.desc&limit=4&count=true";

    // SSE: the view, then a delta, each with its cursor as the event id.
    let mut sse = app.sse(query, None).await;
    let first = sse.next().await.expect("a view");
    assert_eq!(first.event, "view");
    let mut v = ViewRows::default();
    v.apply(&first.json());
    assert_eq!(first.id.as_deref(), Some(v.cursor.as_str()));
    app.psql("update studies set status = 'draft' where id = 30");
    let d = sse.next().await.expect("a delta");
    assert_eq!(d.event, "view_delta");
    v.apply(&d.json());
    assert_rows(&v, &app.oracle("studies", filter, order, 4), "over SSE");
    // A reconnect with Last-Event-ID gets the view whole.
    drop(sse);
    app.psql("update studies set status = 'active' where id = 29");
    let mut sse = app.sse(query, Some(&v.cursor)).await;
    let again = sse.next().await.expect("a view");
    assert_eq!(again.event, "view");
    v.apply(&again.json());
    assert_rows(&v, &app.oracle("studies", filter, order, 4), "SSE resumed");

    // Long-poll: without since, the view at once; with it, what changed after it.
    let (status, body) = app.get_json(&format!("/api/changes?{query}")).await;
    assert_eq!(status, 200, "{body}");
    let mut p = ViewRows::default();
    for f in body["events"].as_array().unwrap() {
        p.apply(f);
    }
    assert_eq!(body["cursor"], json!(p.cursor));
    let poller = {
        let url = format!("/api/changes?{query}&since={}&wait=10", p.cursor);
        let app_url = app.url(&url);
        tokio::spawn(async move { reqwest::get(app_url).await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.psql("update studies set title = 'zzz' where id = 2");
    let body = poller.await.unwrap();
    let frames = body["events"].as_array().unwrap();
    assert!(!frames.is_empty(), "{body}");
    for f in frames {
        p.apply(f);
    }
    assert_rows(&p, &app.oracle("studies", filter, order, 4), "over long-poll");
    // Nothing new: an empty answer with the same cursor after `wait`.
    let (_, quiet) = app
        .get_json(&format!("/api/changes?{query}&since={}&wait=1", p.cursor))
        .await;
    assert_eq!(quiet, json!({"events": [], "cursor": p.cursor}));
    // Mistakes are 400s before anything waits.
    let (status, _) = app.get_json("/api/changes?view=x&topic=studies&filter.nope=eq.1").await;
    assert_eq!(status, 400);
    let (status, _) = app.get_json("/api/changes?view=x&topic=studies&bogus=1").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_past_its_bounds_is_refused_and_views_count_against_the_subscription_limit() {
    use crate::support::TestDb;
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_subscriptions = 2).await;
    let mut ws = app.ws().await;
    let many_filters: serde_json::Map<String, Value> = (0..17).map(|i| (format!("c{i}"), json!("eq.1"))).collect();
    let long_in = format!("in.({})", (0..101).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
    let long_order = [
        "id",
        "label",
        "title",
        "status",
        "version",
        "created_at",
        "updated_at",
        "description",
        "id",
    ]
    .join(",");
    for (frame, needle) in [
        (
            json!({"topic": "studies", "filter": many_filters}),
            "at most 16 filters",
        ),
        (
            json!({"topic": "studies", "filter": {"id": long_in}}),
            "in takes 1 to 100",
        ),
        (json!({"topic": "studies", "order": long_order}), "at most 8 order keys"),
        (
            json!({"topic": "studies", "filter": {"title": format!("eq.{}", "x".repeat(1025))}}),
            "over 1024 bytes",
        ),
        (
            json!({"topic": "studies", "filter": {"label|title|description|status|id": "ilike.*x*"}}),
            "at most 4 columns",
        ),
        (
            json!({"topic": "studies", "filter": {"label|version": "eq.1"}}),
            "differ in type",
        ),
        (json!({"topic": "studies", "view": ""}), "1 to 128"),
        (json!({"topic": "studies", "view": "v".repeat(129)}), "1 to 128"),
    ] {
        let mut f = json!({"action": "subscribe", "view": "v"});
        for (k, v) in frame.as_object().unwrap() {
            f[k] = v.clone();
        }
        ws.send(f).await;
        let answer = ws.next_json().await;
        assert_eq!(answer["code"], "bad_request", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(needle),
            "{needle}: {answer}"
        );
    }
    // Views and topics share --max-subscriptions; replacing a view takes no new slot.
    ws.open_view("a", json!({"topic": "studies"})).await;
    ws.open_view("b", json!({"topic": "studies", "order": "title"})).await;
    ws.open_view("b", json!({"topic": "studies", "order": "label"})).await;
    ws.send(json!({"action": "subscribe", "view": "c", "topic": "studies"}))
        .await;
    assert_eq!(ws.next_json().await["code"], "too_many_subscriptions");
    ws.send(json!({"action": "subscribe", "topic": "messages"})).await;
    assert_eq!(ws.next_json().await["code"], "too_many_subscriptions");

    // The query forms refuse what they cannot read, before anything waits.
    for q in [
        "view=x&topic=studies&count=maybe",
        "view=x&topic=studies&limit=ten",
        "view=x&topic=studies&order=id&order=label",
        "view=x&topic=studies&filter.title=eq.a&wait=1&bogus=2",
    ] {
        let (status, body) = app.get_json(&format!("/api/changes?{q}")).await;
        assert_eq!(status, 400, "{q}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_refused_an_unconfined_view_before_its_values_are_read() {
    use crate::auth::{in_an_hour, secured, token};
    let app = secured().await;
    let member = token(json!({"role": "member", "studies": [1], "exp": in_an_hour()}));
    let mut ws = app.ws_at(&format!("/ws?token={member}")).await;
    // A value PostgreSQL would refuse (`abc` for a bigint) is never read: the refusal is the rule's.
    for def in [
        json!({"topic": "studies", "filter": {"version": "eq.abc"}}),
        json!({"topic": "messages", "filter": {"study_id": "gt.abc"}}),
        json!({"topic": "pgfeed_secret_table", "filter": {"id": "eq.1"}}),
    ] {
        let mut f = json!({"action": "subscribe", "view": "v"});
        for (k, v) in def.as_object().unwrap() {
            f[k] = v.clone();
        }
        ws.send(f).await;
        let answer = ws.next_json().await;
        assert_eq!(answer["code"], "forbidden", "{def}: {answer}");
    }
    // Over SSE and long-poll the same rule, as a 403.
    let (status, _) = app
        .get_json(&format!(
            "/api/changes?view=v&topic=studies&filter.id=eq.2&token={member}"
        ))
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_takes_its_view_frames_is_closed_with_4008_and_its_view_resumes_whole() {
    use crate::support::{ws_over, Seen};
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let app = TestApp::spawn().await;
    seed(&app, 20);
    let def = json!({"topic": "studies", "order": "title.desc", "limit": 5});
    let (filter, order) = ("true", r#"title collate "C" desc, id"#);

    // A client whose receive buffer is tiny and which stops reading after its `view`.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = ws_over(socket.connect(app.addr).await.unwrap(), app.addr).await;
    let mut frame = json!({"action": "subscribe", "view": "main"});
    for (k, v) in def.as_object().unwrap() {
        frame[k] = v.clone();
    }
    stuck
        .stream
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let mut stuck_rows = ViewRows::default();
    stuck_rows.apply(&stuck.next_json().await);
    let mut healthy = app.ws().await;
    let mut v = ViewRows::default();
    v.apply(&healthy.open_view("main", def.clone()).await);

    // 3,000 commits by psql, each moving a 4 KB row to the top of the window: one delta of about
    // 4 KB each, past what the sockets buffer and the 1,024 view frames a connection may have
    // waiting.
    const COMMITS: usize = 3_000;
    let writer = app.db.psql_script(format!(
        "do $$ begin for i in 1..{COMMITS} loop \
           update studies set title = 'z' || lpad(i::text, 5, '0') || repeat('.', 4000) where id = 1 + i % 20; \
           commit; \
         end loop; end $$;"
    ));
    for _ in 0..COMMITS {
        delta(&mut healthy, &mut v, "main").await;
    }
    writer.await.expect("writer");
    assert_rows(&v, &app.oracle("studies", filter, order, 5), "the healthy client");

    // The stuck client reads now: what was buffered for it, then 4008.
    let code = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stuck.next_seen().await {
                Seen::Closed(code) => return code,
                Seen::Frame(f) => stuck_rows.apply(&f),
            }
        }
    })
    .await
    .expect("the stuck client was not closed");
    assert_eq!(code, Some(4008));
    assert!(
        stuck_rows.deltas < COMMITS,
        "it fell behind, so not every delta reached it"
    );

    // It resumes its view with its cursor: the view comes whole and exact.
    let mut ws = app.ws().await;
    let mut resumed = def.clone();
    resumed["since"] = json!(stuck_rows.cursor);
    stuck_rows.apply(&ws.open_view("main", resumed).await);
    assert_rows(
        &stuck_rows,
        &app.oracle("studies", filter, order, 5),
        "resumed after 4008",
    );
}
