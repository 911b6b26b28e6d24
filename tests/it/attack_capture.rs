//! Attacks on the capture trigger (issue 15, items 11 and 13): code a table owner hooks into the
//! rendering of rows to JSON, and rows that change study.

use std::process::Stdio;

use serde_json::{json, Value};

use crate::auth::{in_an_hour, token, SECRET};
use crate::support::{TestApp, TestDb};

/// Runs `sql` through a real psql session logged in as `role`: (success, stdout, stderr).
fn psql_as(db: &TestDb, role: &str, sql: &str) -> (bool, String, String) {
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url, "the test server's URL names its user");
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .expect("running psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An ordinary login (roles are cluster-wide: named after the test's database) that owns the
/// tracked table `mallory_t`, tracked by a superuser.
fn mallory(app: &TestApp) -> String {
    let role = format!("mallory_{}", app.psql("select current_database()"));
    app.psql(&format!(
        "create role \"{role}\" login; grant create on schema public to \"{role}\"; \
         create table mallory_t (id int primary key); alter table mallory_t owner to \"{role}\"; \
         select pgfeed.track('mallory_t')"
    ));
    role
}

fn is_superuser(app: &TestApp, role: &str) -> bool {
    app.psql(&format!("select rolsuper from pg_roles where rolname = '{role}'")) == "t"
}

fn forget(app: &TestApp, role: &str) {
    app.psql(&format!("drop owned by \"{role}\" cascade; drop role \"{role}\""));
}

/// An enum (not a composite: `to_jsonb` looks for a cast to json only for base types) with a
/// cast to json whose function runs `body` (plpgsql) first.
fn hooked_type(body: &str) -> String {
    format!(
        "create type mood as enum ('calm'); \
         create function evil(mood) returns json language plpgsql as $f$ begin {body} return '\"calm\"'::json; end $f$; \
         create cast (mood as json) with function evil(mood); \
         alter table mallory_t add column m mood;"
    )
}

// Item 11, as reported: a role that owns a tracked table made itself SUPERUSER with one INSERT,
// its cast to json run by the security-definer capture trigger as the trigger's owner (on the old
// code `rolsuper` turned true here; checked by hand on PostgreSQL 15). Now the cast runs as
// `pgfeed_capture`, which may do nothing: the insert is captured, the role stays what it was.
#[tokio::test]
async fn a_table_owner_cannot_become_superuser_through_a_cast_run_by_the_capture_trigger() {
    let app = TestApp::spawn().await;
    let role = mallory(&app);
    let mut ws = app.ws().await;
    ws.subscribe("mallory_t").await;
    let escalate = "begin execute format('alter role %I superuser', session_user); \
                    exception when others then raise notice 'evil ran as %: %', current_user, sqlerrm; end;";
    let (ok, _, stderr) = psql_as(
        &app.db,
        &role,
        &format!("{} insert into mallory_t values (1, 'calm')", hooked_type(escalate)),
    );
    assert!(ok, "mallory's insert: {stderr}");
    assert!(stderr.contains("evil ran as pgfeed_capture"), "{stderr}");
    assert!(!is_superuser(&app, &role));
    let event = ws.next_event().await;
    assert_eq!(
        (event["type"].as_str(), event["data"]["m"].as_str()),
        (Some("mallory_t_created"), Some("calm"))
    );

    // Without the handler the failed ALTER fails the insert: harmlessly, and nothing is logged.
    let (ok, _, _) = psql_as(
        &app.db,
        &role,
        "create or replace function evil(mood) returns json language plpgsql as $f$ begin \
         execute format('alter role %I superuser', session_user); return '\"calm\"'::json; end $f$; \
         insert into mallory_t values (2, 'calm')",
    );
    assert!(!ok, "the cast's failure fails the insert");
    assert!(!is_superuser(&app, &role));
    assert_eq!(app.psql("select count(*) from mallory_t"), "1");
    forget(&app, &role);
}

// Variants: what else the hooked code could try as `pgfeed_capture`. It runs read-only, so it can
// neither drop the capture's own function (`drop owned by`: every tracked write would fail until
// pgfeed restarts) nor write anything; it may not touch the pgfeed schema (forged events); and a
// snapshot, which renders rows too, runs it as `pgfeed_capture` as well, not as pgfeed's role.
#[tokio::test]
async fn code_in_a_cast_to_json_can_change_nothing_from_capture_or_snapshot() {
    let app = TestApp::spawn().await;
    let role = mallory(&app);
    let attempts = "begin execute 'drop owned by pgfeed_capture'; \
                    exception when others then raise notice 'drop: % as %', sqlerrm, current_user; end; \
                    begin insert into pgfeed.events values ('1', 1, 'x', 'x', 'x', '1', '{}', '{}'); \
                    exception when others then raise notice 'forge: %', sqlerrm; end; \
                    begin execute format('alter role %I superuser', session_user); \
                    exception when others then raise notice 'escalate: % as %', sqlerrm, current_user; end;";
    let (ok, _, stderr) = psql_as(
        &app.db,
        &role,
        &format!("{} insert into mallory_t values (1, 'calm')", hooked_type(attempts)),
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("drop: cannot execute DROP OWNED in a read-only transaction as pgfeed_capture"),
        "{stderr}"
    );
    assert!(stderr.contains("forge: permission denied"), "{stderr}");
    assert!(
        stderr.contains("escalate:") && stderr.contains("as pgfeed_capture"),
        "{stderr}"
    );
    assert_eq!(
        app.psql("select count(*) from pg_proc where proname = 'serialize' and pronamespace = 'pgfeed'::regnamespace"),
        "1"
    );

    // A snapshot of mallory's table renders the row with her cast: as pgfeed_capture.
    let mut ws = app.ws().await;
    ws.subscribe_with(json!({"action": "subscribe", "topic": "mallory_t", "snapshot": true}))
        .await;
    let snapshot = ws.next_json().await;
    assert_eq!(snapshot["data"][0]["m"], "calm", "{snapshot}");
    assert!(!is_superuser(&app, &role));

    // The writer's transaction is read-write again after the row was rendered; writes go on.
    let (ok, _, stderr) = psql_as(
        &app.db,
        &role,
        "begin; insert into mallory_t values (2, 'calm'); update mallory_t set id = 3 where id = 2; commit",
    );
    assert!(ok, "{stderr}");
    let seen: Vec<_> = ws
        .events(2)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["mallory_t_created", "mallory_t_updated"]);

    // No pgfeed function is hers to call, even were she given the schema.
    app.psql(&format!("grant usage on schema pgfeed to \"{role}\""));
    assert_eq!(
        app.psql(&format!(
            "select string_agg(proname, ',') from pg_proc where pronamespace = 'pgfeed'::regnamespace \
             and has_function_privilege('{role}', oid, 'execute')"
        )),
        ""
    );
    let (ok, _, stderr) = psql_as(&app.db, &role, "select pgfeed.track('mallory_t')");
    assert!(!ok && stderr.contains("permission denied"), "{stderr}");
    forget(&app, &role);
}

// The same code met by bulk statements, whose rows are rendered by `pgfeed.serialize_bulk`
// (PostgreSQL's `to_jsonb` behind a security-definer wrapper when a superuser installed it): it
// runs as `pgfeed_capture`, read-only, for the new rows and for the rows as they were, and the
// statements are logged whole.
#[tokio::test]
async fn code_in_a_cast_to_json_met_by_a_bulk_statement_runs_as_pgfeed_capture_read_only() {
    let app = TestApp::spawn().await;
    let role = mallory(&app);
    let attempts = "begin execute 'drop owned by pgfeed_capture'; \
                    exception when others then raise notice 'drop: % as %', sqlerrm, current_user; end; \
                    begin execute format('alter role %I superuser', session_user); \
                    exception when others then raise notice 'escalate: % as %', sqlerrm, current_user; end;";
    let (ok, _, stderr) = psql_as(
        &app.db,
        &role,
        &format!(
            "{} insert into mallory_t select i, 'calm' from generate_series(1, 3) i",
            hooked_type(attempts)
        ),
    );
    assert!(ok, "{stderr}");
    assert_every_rendering_powerless(&stderr, 3);
    let (ok, _, stderr) = psql_as(&app.db, &role, "update mallory_t set id = id where id <= 2");
    assert!(ok, "{stderr}");
    // Each updated row twice: as it is and as it was.
    assert_every_rendering_powerless(&stderr, 4);
    assert!(!is_superuser(&app, &role));
    assert_eq!(
        app.psql(
            "select count(*) from pg_proc where proname in ('serialize', 'serialize_bulk') \
             and pronamespace = 'pgfeed'::regnamespace"
        ),
        "2"
    );
    assert_eq!(
        app.psql(
            "select string_agg(e.op || ':' || e.row_id || ':' || (e.data->>'m'), ' ' order by c.seq, e.pos) \
             from pgfeed.events e join pgfeed.commits c on c.txid = e.txid where e.tbl = 'mallory_t'"
        ),
        "insert:1:calm insert:2:calm insert:3:calm update:1:calm update:2:calm"
    );
    forget(&app, &role);
}

/// The hooked code ran at least `renderings` times (the 1-row road's look at a statement's first
/// row renders it once more), each time as `pgfeed_capture`, read-only.
fn assert_every_rendering_powerless(stderr: &str, renderings: usize) {
    let runs = stderr.matches("drop: ").count();
    assert!(runs >= renderings, "{stderr}");
    assert_eq!(
        stderr
            .matches("drop: cannot execute DROP OWNED in a read-only transaction as pgfeed_capture")
            .count(),
        runs,
        "{stderr}"
    );
    assert_eq!(stderr.matches("escalate: ").count(), runs, "{stderr}");
    assert_eq!(stderr.matches(" as pgfeed_capture").count(), 2 * runs, "{stderr}");
}

/// Studies 1 and 2, message 10 and file 20 in study 1.
fn rooms(app: &TestApp) {
    app.psql(
        "insert into studies (id, label, title) values (1, 'one', 'One'), (2, 'two', 'Two'); \
         insert into messages (id, study_id, author, body) values (10, 1, 'ana', 'hi'); \
         insert into files (id, study_id, name, content_type, size_bytes, sha256) \
         values (20, 1, 'a.txt', 'text/plain', 1, 'x')",
    );
}

fn member(studies: &[i64]) -> String {
    token(json!({"role": "member", "studies": studies, "exp": in_an_hour()}))
}

/// (topic, type, id, study_id of data) of each event.
fn seen(events: &[Value]) -> Vec<(String, String, i64, i64)> {
    events
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
                e["id"].as_i64().unwrap(),
                e["data"]["study_id"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn row(topic: &str, kind: &str, id: i64, study: i64) -> (String, String, i64, i64) {
    (topic.to_owned(), kind.to_owned(), id, study)
}

/// The move, what follows it (updates of the moved rows, which study 1's member must not see),
/// and a marker message in study 1 that it must see next.
const MOVE: &str = "update messages set study_id = 2 where id = 10; update files set study_id = 2 where id = 20";
const AFTER: &str =
    "update messages set body = 'secret' where id = 10; update files set name = 'secret.txt' where id = 20; \
                     insert into messages (id, study_id, author, body) values (11, 1, 'ana', 'marker')";

// Item 13: rights follow the row. A message and a file moved to study 2 by an outside writer
// leave study 1's room and study 1's member's row subscriptions as `…_deleted` with the row as
// it was, and nothing of them follows; study 2's room gets them as `…_created`; an admin on the
// tables sees the updates they are. On the old code the member got `message_updated` with the
// new row on `messages:10` and every later update of it.
#[tokio::test]
async fn a_row_moved_to_another_study_leaves_the_old_room_and_its_members_row_subscriptions() {
    let app = crate::auth::secured().await;
    rooms(&app);
    let mut one = app.ws_at(&format!("/ws?token={}", member(&[1]))).await;
    let before = one.subscribe("studies:1").await["cursor"].as_str().unwrap().to_owned();
    one.subscribe("messages:10").await;
    one.subscribe("files:20").await;
    let mut two = app.ws_at(&format!("/ws?token={}", member(&[2]))).await;
    two.subscribe("studies:2").await;
    let admin = token(json!({"role": "admin", "exp": in_an_hour()}));
    let mut adm = app.ws_at(&format!("/ws?token={admin}")).await;
    adm.subscribe("messages").await;
    adm.subscribe("messages:10").await;
    adm.subscribe("files").await;

    app.psql(MOVE);
    app.psql(AFTER);

    let live = one.events(5).await;
    assert_eq!(
        seen(&live),
        [
            row("messages:10", "message_deleted", 10, 1),
            row("studies:1", "message_deleted", 10, 1),
            row("files:20", "file_deleted", 20, 1),
            row("studies:1", "file_deleted", 20, 1),
            row("studies:1", "message_created", 11, 1),
        ]
    );
    assert_eq!(live[0]["data"]["body"], "hi", "the row as it was");
    assert_eq!(live[0]["op"], "delete");
    assert_eq!(
        seen(&two.events(4).await),
        [
            row("studies:2", "message_created", 10, 2),
            row("studies:2", "file_created", 20, 2),
            row("studies:2", "message_updated", 10, 2),
            row("studies:2", "file_updated", 20, 2),
        ]
    );
    assert_eq!(
        seen(&adm.events(6).await),
        [
            row("messages", "message_updated", 10, 2),
            row("messages:10", "message_updated", 10, 2),
            row("files", "file_updated", 20, 2),
            row("messages", "message_updated", 10, 2),
            row("messages:10", "message_updated", 10, 2),
            row("files", "file_updated", 20, 2),
        ]
    );

    // Resumed on another server (its ring is empty: the backlog is read from the log), study 1's
    // room gets exactly the frames the live stream got.
    let other = TestApp::spawn_with(app.db.clone(), |c| c.jwt_secret = Some(SECRET.into())).await;
    let mut again = other.ws_at(&format!("/ws?token={}", member(&[1]))).await;
    again.subscribe_since("studies:1", &before).await;
    let resumed = again.events(3).await;
    let live_room: Vec<_> = live.iter().filter(|e| e["topic"] == "studies:1").cloned().collect();
    assert_eq!(resumed, live_room);
    // And the same through this server's ring.
    let mut ring = app.ws_at(&format!("/ws?token={}", member(&[1]))).await;
    ring.subscribe_since("studies:1", &before).await;
    assert_eq!(ring.events(3).await, live_room);

    // The row is study 2's now: study 1's member may no longer subscribe to it.
    again
        .send(json!({"action": "subscribe", "topic": "messages:10", "since": before}))
        .await;
    let refused = again.next_json().await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // Moved back, the row enters study 1 again: `…_created`, and its updates follow again.
    app.psql("update messages set study_id = 1 where id = 10; update messages set body = 'back' where id = 10");
    let back = one.events(4).await;
    assert_eq!(
        seen(&back),
        [
            row("messages:10", "message_created", 10, 1),
            row("studies:1", "message_created", 10, 1),
            row("messages:10", "message_updated", 10, 1),
            row("studies:1", "message_updated", 10, 1),
        ]
    );
    assert_eq!(back[0]["data"]["body"], "secret", "the row as it is");
}

// The same promise on the one-cursor streams: SSE and long-poll deliver each event once, on the
// first of its topics the stream holds (the row's, then its rooms), judged as on the WebSocket. A
// stream that holds the row's topic when the row leaves gets the exit there; afterwards the row is
// outside the member's studies, and naming it is refused (403 forbidden), as for any such row.
#[tokio::test]
async fn sse_and_long_poll_members_see_a_moved_row_leave_and_nothing_after() {
    let app = crate::auth::secured().await;
    rooms(&app);
    let m = member(&[1]);
    let (_, start) = app
        .get_json(&format!("/api/changes?topics=studies:1,messages:10&token={m}"))
        .await;
    let before = start["cursor"].as_str().unwrap().to_owned();
    // Opened (and authorized) before the move; it streams everything after `before`.
    let mut sse = app
        .sse(&format!("topics=studies:1,messages:10&since={before}&token={m}"), None)
        .await;
    assert_eq!(sse.next().await.expect("subscribed").event, "subscribed");
    app.psql(MOVE);
    app.psql(AFTER);

    // `next_event` also checks that SSE's `event:` line is the frame's type (`message_deleted`).
    let streamed = sse.events(3).await;
    assert_eq!(
        seen(&streamed),
        [
            row("messages:10", "message_deleted", 10, 1),
            row("studies:1", "file_deleted", 20, 1),
            row("studies:1", "message_created", 11, 1),
        ]
    );
    assert_eq!(streamed[0]["data"]["body"], "hi", "the row as it was");

    // Long-poll reads the log: study 1's room from before the move.
    let (status, polled) = app
        .get_json(&format!(
            "/api/changes?topics=studies:1&since={before}&wait=0&token={m}"
        ))
        .await;
    assert_eq!(status, 200, "{polled}");
    let polled = polled["events"].as_array().unwrap().clone();
    assert_eq!(
        seen(&polled),
        [
            row("studies:1", "message_deleted", 10, 1),
            row("studies:1", "file_deleted", 20, 1),
            row("studies:1", "message_created", 11, 1),
        ]
    );
    assert_eq!(polled[1..], streamed[1..], "the same frames on both");
    let (status, _) = app
        .get_json(&format!(
            "/api/changes?topics=studies:1,messages:10&since={before}&wait=0&token={m}"
        ))
        .await;
    assert_eq!(status, 403);

    // Study 2's member on its room: the entries, then the updates.
    let (_, got) = app
        .get_json(&format!(
            "/api/changes?topics=studies:2&since={before}&wait=0&token={}",
            member(&[2])
        ))
        .await;
    assert_eq!(
        seen(got["events"].as_array().unwrap()),
        [
            row("studies:2", "message_created", 10, 2),
            row("studies:2", "file_created", 20, 2),
            row("studies:2", "message_updated", 10, 2),
            row("studies:2", "file_updated", 20, 2),
        ]
    );
}
