//! What the capture triggers (sql/capture.sql) record: tracked tables, time zones, writers
//! without rights on the pgfeed schema or with a hostile search_path, rolled-back work.

use std::time::Duration;

use crate::support::TestApp;

#[tokio::test]
async fn a_table_tracked_with_pgfeed_track_joins_the_feed() {
    let app = TestApp::spawn().await;
    app.psql(
        "create table audit.entries (sku text primary key, qty int)"
            .replace("audit.", "public.")
            .as_str(),
    );
    app.psql("create schema audit; create table audit.log (id int primary key, what text)");
    app.psql("select pgfeed.track('entries'); select pgfeed.track('audit.log')");
    let mut ws = app.ws().await;
    ws.subscribe("entries").await;
    ws.subscribe("audit.log:3").await;

    app.psql("insert into entries values ('x-1', 5)");
    app.psql("insert into audit.log values (3, 'hello')");
    let e = ws.next_event().await;
    assert_eq!(
        (e["type"].as_str(), e["topic"].as_str(), e["id"].as_str()),
        (Some("entries_created"), Some("entries"), Some("x-1"))
    );
    let l = ws.next_event().await;
    assert_eq!(
        (l["type"].as_str(), l["topic"].as_str(), l["table"].as_str()),
        (Some("log_created"), Some("audit.log:3"), Some("audit.log"))
    );

    app.psql("select pgfeed.untrack('entries')");
    app.psql("insert into entries values ('x-2', 1)");
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_table_dropped_and_created_again_can_be_tracked_again() {
    let app = TestApp::spawn().await;
    app.psql("create table gadgets (id int primary key); select pgfeed.track('gadgets')");
    app.psql("drop table gadgets");
    app.psql("create table gadgets (id int primary key, name text); select pgfeed.track('gadgets')");
    let mut ws = app.ws().await;
    ws.subscribe("gadgets").await;
    app.psql("insert into gadgets values (1, 'sprocket')");
    let e = ws.next_event().await;
    assert_eq!(
        (e["type"].as_str(), e["data"]["name"].as_str()),
        (Some("gadgets_created"), Some("sprocket"))
    );
}

#[tokio::test]
async fn capture_renders_timestamps_in_utc_and_leaves_the_writers_time_zone_alone() {
    let app = TestApp::spawn().await;
    app.psql("create table stamps (id int primary key, at timestamptz not null); select pgfeed.track('stamps')");
    let mut ws = app.ws().await;
    ws.subscribe("stamps").await;
    // The writer works in New York time; after its captured rows, in the same transaction and
    // after it, its zone is still New York.
    let zones = app.psql(
        "set timezone = 'America/New_York';
         begin;
         insert into stamps values (1, '2026-11-23 12:00:00+00');
         update stamps set at = at + interval '1 hour 30 minutes';
         create temp table seen as select current_setting('TimeZone') as zone;
         commit;
         insert into seen select current_setting('TimeZone');
         select string_agg(zone, ' ') from seen",
    );
    assert_eq!(zones, "America/New_York America/New_York");
    let events = ws.events(2).await;
    assert_eq!(events[0]["data"]["at"], "2026-11-23T12:00:00+00:00");
    assert_eq!(events[1]["data"]["at"], "2026-11-23T13:30:00+00:00");
}

#[tokio::test]
async fn a_writer_without_rights_on_the_pgfeed_schema_is_captured() {
    let app = TestApp::spawn().await;
    app.psql("create table tickets (id int primary key, what text); select pgfeed.track('tickets')");
    // A login of its own (roles are cluster-wide: named after this test's database), allowed to
    // write `tickets` and nothing in the pgfeed schema.
    let role = format!("w_{}", app.psql("select current_database()"));
    app.psql(&format!(
        "create role \"{role}\"; grant insert, update, delete, select on tickets to \"{role}\""
    ));
    assert_eq!(
        app.psql(&format!(
            "select has_schema_privilege('{role}', 'pgfeed', 'usage'), \
                    has_table_privilege('{role}', 'pgfeed.events', 'insert')"
        )),
        "f|f"
    );
    // Only the triggers (as their owner) draw or move commit rows; nobody else may call those.
    assert_eq!(
        app.psql(&format!(
            "select has_function_privilege('{role}', 'pgfeed.draw()', 'execute'), \
                    has_function_privilege('{role}', 'pgfeed.restamp()', 'execute')"
        )),
        "f|f"
    );
    let mut ws = app.ws().await;
    ws.subscribe("tickets").await;
    app.psql(&format!(
        "set role \"{role}\"; insert into tickets values (1, 'open'); update tickets set what = 'closed'"
    ));
    let events = ws.events(2).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e["type"].as_str(), e["data"]["what"].as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("tickets_created"), Some("open")),
            (Some("tickets_updated"), Some("closed"))
        ]
    );
    app.psql(&format!("drop owned by \"{role}\"; drop role \"{role}\""));
}

/// The capture trigger runs as its owner (security definer) without a `set search_path` clause,
/// so it must not resolve any name through the writer's search_path.
#[tokio::test]
async fn a_writers_search_path_cannot_redirect_the_capture_trigger() {
    let app = TestApp::spawn().await;
    app.psql("create table notes (id int primary key, body text); select pgfeed.track('notes')");
    // Operators and functions that shadow pg_catalog's for a session that puts `evil` first.
    app.psql(
        r#"create schema evil;
           create function evil.always(a text, b text) returns boolean language sql as 'select true';
           create operator evil.= (leftarg = text, rightarg = text, function = evil.always);
           create operator evil.<> (leftarg = text, rightarg = text, function = evil.always);
           create function evil.to_jsonb(anyelement) returns jsonb language sql as $$select '{"id": 0}'::jsonb$$;
           create function evil.current_setting(text) returns text language sql as $$select 'evil'$$;
           create function evil.strpos(text, text) returns int language sql as 'select 1';"#,
    );
    let mut ws = app.ws().await;
    ws.subscribe("notes").await;
    app.psql(
        "set search_path = evil, pg_catalog, public;
         insert into notes values (1, 'kept');
         update notes set body = 'changed' where id = 1;
         delete from notes where id = 1",
    );
    let events = ws.events(3).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e["type"].as_str(), e["id"].as_i64(), e["data"]["body"].as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("notes_created"), Some(1), Some("kept")),
            (Some("notes_updated"), Some(1), Some("changed")),
            (Some("notes_deleted"), Some(1), Some("changed")),
        ]
    );
    ws.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_rolled_back_transaction_produces_no_event() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;
    app.psql("begin; insert into studies (label, title) values ('gone', 'G'); rollback;");
    app.psql("insert into studies (label, title) values ('kept', 'K')");
    assert_eq!(ws.next_event().await["data"]["label"], "kept");
    ws.assert_quiet(Duration::from_millis(300)).await;
}
