//! Live views (PROTOCOL §9): the window's rows, then exact deltas, checked against PostgreSQL's
//! own SELECT after each step.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{assert_rows, TestApp, ViewRows, WsClient, PATIENCE};

/// Reads frames of view `name` until `done(rows)` or PATIENCE.
async fn until(ws: &mut WsClient, v: &mut ViewRows, name: &str, done: impl Fn(&ViewRows) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done(v) {
        let frame = tokio::time::timeout_at(deadline, ws.next_json())
            .await
            .unwrap_or_else(|_| panic!("view {name}: not there within {PATIENCE:?}: {v:?}"));
        if frame["view"] == name {
            v.apply(&frame);
        }
    }
}

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

#[tokio::test]
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
    assert!(ops.iter().any(|o| o["op"] == "enter" && o["why"] == "insert" && o["to"] == 0), "{d}");
    assert!(ops.iter().any(|o| o["op"] == "exit" && o["why"] == "overflow"), "{d}");
    assert_eq!(v.count, Some(21));
    assert_rows(&v, &app.oracle("studies", filter, order, 5), "after the insert");

    // A row that stops matching leaves with `unmatch`, and the next one fills its slot.
    app.psql("update studies set status = 'closed' where id = 100");
    let d = delta(&mut ws, &mut v, "main").await;
    let ops = d["ops"].as_array().unwrap();
    assert!(ops.iter().any(|o| o["op"] == "exit" && o["why"] == "unmatch" && o["key"] == "100"), "{d}");
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

#[tokio::test]
async fn deleting_past_the_buffer_reads_the_window_again_and_a_bulk_update_is_one_bounded_delta() {
    let app = TestApp::spawn().await;
    seed(&app, 300);
    let mut ws = app.ws().await;
    let mut v = ViewRows::default();
    v.apply(&ws.open_view("w", json!({"topic": "studies", "order": "id", "limit": 10, "count": true})).await);
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

#[tokio::test]
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
        ("score.asc.nullsfirst,tag.desc", r#"score asc nulls first, tag collate "C" desc nulls first, id"#),
        ("tag", r#"tag collate "C" nulls last, id"#),
    ] {
        let mut first = ViewRows::default();
        first.apply(&ws.open_view("p1", json!({"topic": "items", "order": order, "limit": 7})).await);
        assert_rows(&first, &app.oracle("items", "true", sql, 7), order);
        let next = first.next.clone().expect("a next page");
        let mut second = ViewRows::default();
        second.apply(&ws.open_view("p2", json!({"topic": "items", "order": order, "limit": 7, "after": next})).await);
        let both = app.oracle("items", "true", sql, 14);
        assert_rows(&second, &both[7..], &format!("{order}, second page"));
    }
}

#[tokio::test]
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
