//! Statement-level capture (sql/capture.sql, `pgfeed.capture` on transition tables): what bulk
//! statements by outside writers (psql) leave in the log, checked in the log itself (the truth
//! every reader serves) and, where it matters, at a subscriber.

use std::time::Duration;

use crate::support::{TestApp, TestDb};

/// The events of the newest commit, one line each: `pos|type|row_id|topics|moved_from|old?|before?`.
fn newest_commit(app: &TestApp) -> Vec<String> {
    newest_commit_in(&app.db)
}

fn newest_commit_in(db: &TestDb) -> Vec<String> {
    let out = db.psql(
        "select e.pos || '|' || e.type || '|' || e.row_id::text || '|' || e.topics::text || '|' ||
                coalesce(e.moved_from, '-') || '|' || (e.old is not null) || '|' || (e.before is not null)
         from pgfeed.events e join pgfeed.commits c on c.txid = e.txid
         where c.seq = (select max(seq) from pgfeed.commits)
         order by e.pos",
    );
    out.lines().map(str::to_owned).collect()
}

/// The newest commit's seq and how many commit seqs were ever drawn.
fn seqs(app: &TestApp) -> String {
    seqs_in(&app.db)
}

fn seqs_in(db: &TestDb) -> String {
    db.psql("select coalesce(max(seq), 0) || ' ' || (select last_value from pgfeed.commit_seq) from pgfeed.commits")
}

#[tokio::test]
async fn a_10000_row_insert_update_and_delete_log_exactly_their_events_in_order() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (label, title) values ('s1', 'S1'), ('s2', 'S2')");

    // Each statement's events: one per row, in the commit of that statement, numbered 1..10,000
    // in the order the statement changed its rows, with the row's topics and JSON (in UTC) as the
    // table holds it, and for updates the row as it was. The insert changes its rows by id; an
    // update or delete of every row changes them in the table's physical order, which table
    // `scan` records just before (a sequential scan, as theirs: usually id order, but the heap
    // is PostgreSQL's to lay out).
    let check = |op: &str, data: &str, before: &str| {
        format!(
            "set timezone = 'UTC';
             with ev as (
                 select e.* from pgfeed.events e join pgfeed.commits c on c.txid = e.txid
                 where c.seq = (select max(seq) from pgfeed.commits))
             select count(*), min(pos), max(pos), count(distinct pos),
                    bool_and(type = 'message_{op}' and op = '{}' and tbl = 'messages'),
                    bool_and(topics = array['messages', 'messages:' || (data->>'id'), 'studies:' || (data->>'study_id')]),
                    bool_and(row_id = data->'id'),
                    bool_and(data = {data}), bool_and(before is not distinct from {before}),
                    bool_and(old is null and moved_from is null),
                    bool_and(pos = {order})
             from ev",
            match op {
                "created" => "insert",
                "updated" => "update",
                _ => "delete",
            },
            order = match op {
                "created" => "(data->>'id')::bigint - (select min((data->>'id')::bigint) from ev) + 1",
                _ => "(select s.n from scan s where s.id = (data->>'id')::bigint)",
            }
        )
    };
    app.psql(
        "insert into messages (study_id, author, body) select 1 + i % 2, 'bulk', 'm' || i from generate_series(1, 10000) i",
    );
    assert_eq!(
        app.psql(&check(
            "created",
            "(select to_jsonb(m) from messages m where m.id = (ev.data->>'id')::bigint)",
            "null"
        )),
        "10000|1|10000|10000|t|t|t|t|t|t|t"
    );
    app.psql("create table was as select * from messages");
    app.psql("create table scan as select id, row_number() over () as n from messages; alter table scan add primary key (id)");
    app.psql("update messages set body = body || '!'");
    assert_eq!(
        app.psql(&check(
            "updated",
            "(select to_jsonb(m) from messages m where m.id = (ev.data->>'id')::bigint)",
            "(select to_jsonb(w) from was w where w.id = (ev.data->>'id')::bigint)"
        )),
        "10000|1|10000|10000|t|t|t|t|t|t|t"
    );
    app.psql("drop table was, scan; create table was as select * from messages");
    app.psql("create table scan as select id, row_number() over () as n from messages; alter table scan add primary key (id)");
    app.psql("delete from messages");
    assert_eq!(
        app.psql(&check(
            "deleted",
            "(select to_jsonb(w) from was w where w.id = (ev.data->>'id')::bigint)",
            "null"
        )),
        "10000|1|10000|10000|t|t|t|t|t|t|t"
    );

    // And a subscriber of one of those rows, resuming from before them, gets its three changes
    // (read from the log: a socket left unread through the checks above would time out).
    let mut ws = app.ws().await;
    ws.subscribe_since("messages:5000", &first_cursor(&app)).await;
    let seen: Vec<_> = ws
        .events(3)
        .await
        .iter()
        .map(|e| {
            (
                e["type"].as_str().map(str::to_owned),
                e["data"]["body"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Some("message_created".into()), Some("m5000".into())),
            (Some("message_updated".into()), Some("m5000!".into())),
            (Some("message_deleted".into()), Some("m5000!".into())),
        ]
    );
}

#[tokio::test]
async fn statements_of_one_transaction_keep_their_order_whatever_their_size() {
    let app = TestApp::spawn().await;
    app.psql("create table gadgets (id int primary key, name text); select pgfeed.track('gadgets')");
    // Within a statement, events follow the order it changed its rows; the rows each multi-row
    // statement here changes lie in the table in key order, whichever way it reads them.
    app.psql(
        "begin;
         insert into gadgets values (1, 'a'), (2, 'b'), (3, 'c');
         update gadgets set name = 'b2' where id = 2;
         insert into gadgets values (4, 'd');
         update gadgets set name = name || '+' where id in (1, 4);
         delete from gadgets where id in (3, 4);
         commit",
    );
    assert_eq!(
        newest_commit(&app),
        [
            "1|gadgets_created|1|{gadgets,gadgets:1}|-|false|false",
            "2|gadgets_created|2|{gadgets,gadgets:2}|-|false|false",
            "3|gadgets_created|3|{gadgets,gadgets:3}|-|false|false",
            "4|gadgets_updated|2|{gadgets,gadgets:2}|-|false|true",
            "5|gadgets_created|4|{gadgets,gadgets:4}|-|false|false",
            "6|gadgets_updated|1|{gadgets,gadgets:1}|-|false|true",
            "7|gadgets_updated|4|{gadgets,gadgets:4}|-|false|true",
            "8|gadgets_deleted|3|{gadgets,gadgets:3}|-|false|false",
            "9|gadgets_deleted|4|{gadgets,gadgets:4}|-|false|false",
        ]
    );
    let mut ws = app.ws().await;
    ws.subscribe_since("gadgets", &first_cursor(&app)).await;
    let types: Vec<_> = ws
        .events(9)
        .await
        .iter()
        .map(|e| format!("{}:{}", e["type"].as_str().unwrap_or("?"), e["id"]))
        .collect();
    assert_eq!(
        types,
        [
            "gadgets_created:1",
            "gadgets_created:2",
            "gadgets_created:3",
            "gadgets_updated:2",
            "gadgets_created:4",
            "gadgets_updated:1",
            "gadgets_updated:4",
            "gadgets_deleted:3",
            "gadgets_deleted:4",
        ]
    );
}

/// A cursor before every event of this database: the log's epoch, seq 0.
fn first_cursor(app: &TestApp) -> String {
    let epoch = app.psql("select epoch from pgfeed.meta");
    format!("{epoch}-0-0")
}

#[tokio::test]
async fn updates_that_change_primary_keys_are_logged_once_each_with_the_row_as_it_was() {
    let app = TestApp::spawn().await;
    // Deferrable, so that two rows may swap keys in one statement.
    app.psql(
        "create table tags (id int primary key deferrable, name text); select pgfeed.track('tags');
         insert into tags select i, 't' || i from generate_series(1, 6) i",
    );
    // A swap and an untouched key in one statement: pairing by key would pair 1's new row with
    // 2's old one.
    app.psql(
        "begin; set constraints all deferred;
         update tags set id = case id when 1 then 2 when 2 then 1 else id end, name = name || '!' where id <= 3;
         commit",
    );
    let rows = app.psql(
        "select string_agg(e.pos || ':' || e.row_id || '<-' || (e.before->>'id') || ':' || (e.data->>'name'), ' ' order by e.pos)
         from pgfeed.events e join pgfeed.commits c on c.txid = e.txid where c.seq = (select max(seq) from pgfeed.commits)",
    );
    assert_eq!(rows, "1:2<-1:t1! 2:1<-2:t2! 3:3<-3:t3!");
    // A shift of several keys, and one key changed alone.
    app.psql("update tags set id = id + 10 where id >= 4");
    let rows = app.psql(
        "select string_agg(e.pos || ':' || e.row_id || '<-' || (e.before->>'id'), ' ' order by e.pos)
         from pgfeed.events e join pgfeed.commits c on c.txid = e.txid where c.seq = (select max(seq) from pgfeed.commits)",
    );
    assert_eq!(rows, "1:14<-4 2:15<-5 3:16<-6");
    app.psql("update tags set id = 100 where id = 14");
    assert_eq!(newest_commit(&app), ["1|tags_updated|100|{tags,tags:100}|-|false|true"]);
    // A later statement on the table pairs by key again.
    app.psql("update tags set name = 'x' where id in (1, 2)");
    assert_eq!(
        app.psql(
            "select string_agg(e.row_id::text || '<-' || (e.before->>'id') || ':' || (e.before->>'name'), ' ' order by e.row_id)
             from pgfeed.events e join pgfeed.commits c on c.txid = e.txid where c.seq = (select max(seq) from pgfeed.commits)",
        ),
        "1<-1:t2! 2<-2:t1!"
    );
}

#[tokio::test]
async fn messages_moved_to_another_study_in_one_update_leave_their_old_room() {
    let app = TestApp::spawn().await;
    app.psql(
        "insert into studies (label, title) values ('s1', 'S1'), ('s2', 'S2');
         insert into messages (study_id, author, body) select 1, 'a', 'm' || i from generate_series(1, 4) i",
    );
    let mut old_room = app.ws().await;
    old_room.subscribe("studies:1").await;
    // Messages 1 and 2 move, 3 is edited in place, 4 is untouched.
    app.psql(
        "update messages set study_id = case when id <= 2 then 2 else study_id end, body = body || '!' where id <= 3",
    );
    assert_eq!(
        newest_commit(&app),
        [
            "1|message_updated|1|{messages,messages:1,studies:2,studies:1}|studies:1|true|false",
            "2|message_updated|2|{messages,messages:2,studies:2,studies:1}|studies:1|true|false",
            "3|message_updated|3|{messages,messages:3,studies:1}|-|false|true",
        ]
    );
    let seen: Vec<_> = old_room
        .events(3)
        .await
        .iter()
        .map(|e| {
            format!(
                "{}:{}:{}",
                e["type"].as_str().unwrap_or("?"),
                e["id"],
                e["data"]["study_id"]
            )
        })
        .collect();
    // The room left gets an exit for each moved message (the row as it was), and the edit.
    assert_eq!(
        seen,
        ["message_deleted:1:1", "message_deleted:2:1", "message_updated:3:1"]
    );
}

#[tokio::test]
async fn a_statement_that_changes_no_row_logs_nothing_and_draws_no_seq() {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (label, title) values ('s1', 'S1')");
    let before = seqs(&app);
    let events = app.psql("select count(*) from pgfeed.events");
    app.psql(
        "insert into studies (label, title) select 'x', 'X' where false;
         update studies set title = 'T' where id < 0;
         delete from studies where id < 0;
         begin; update studies set title = 'T' where false; delete from messages; commit",
    );
    assert_eq!(seqs(&app), before);
    assert_eq!(app.psql("select count(*) from pgfeed.events"), events);
}

#[tokio::test]
async fn a_rolled_back_savepoint_takes_its_statements_events_and_positions_with_it() {
    let app = TestApp::spawn().await;
    app.psql("create table gadgets (id int primary key, name text); select pgfeed.track('gadgets')");
    let mut ws = app.ws().await;
    ws.subscribe("gadgets").await;
    app.psql(
        "begin;
         insert into gadgets values (1, 'a'), (2, 'b');
         savepoint s;
         insert into gadgets values (3, 'c'), (4, 'd');
         update gadgets set name = 'gone';
         rollback to savepoint s;
         update gadgets set name = name || '+';
         insert into gadgets values (5, 'e');
         commit",
    );
    assert_eq!(
        newest_commit(&app),
        [
            "1|gadgets_created|1|{gadgets,gadgets:1}|-|false|false",
            "2|gadgets_created|2|{gadgets,gadgets:2}|-|false|false",
            "3|gadgets_updated|1|{gadgets,gadgets:1}|-|false|true",
            "4|gadgets_updated|2|{gadgets,gadgets:2}|-|false|true",
            "5|gadgets_created|5|{gadgets,gadgets:5}|-|false|false",
        ]
    );
    let seen: Vec<_> = ws
        .events(5)
        .await
        .iter()
        .map(|e| format!("{}:{}", e["id"], e["data"]["name"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(seen, ["1:a", "2:b", "1:a+", "2:b+", "5:e"]);
    ws.assert_quiet(Duration::from_millis(300)).await;
}

/// The statement path runs as its owner (security definer) without a `set search_path` clause:
/// a writer's search_path (operators, functions, even a table named like a transition table) and
/// time zone change nothing.
#[tokio::test]
async fn a_bulk_writer_with_a_hostile_search_path_and_time_zone_is_captured_as_any_other() {
    let app = TestApp::spawn().await;
    app.psql("create table notes (id int primary key, body text, at timestamptz); select pgfeed.track('notes')");
    app.psql(
        r#"create schema evil;
           create function evil.always(a text, b text) returns boolean language sql as 'select true';
           create operator evil.= (leftarg = text, rightarg = text, function = evil.always);
           create operator evil.<> (leftarg = text, rightarg = text, function = evil.always);
           create function evil.always_j(a jsonb, b jsonb) returns boolean language sql as 'select true';
           create operator evil.= (leftarg = jsonb, rightarg = jsonb, function = evil.always_j);
           create operator evil.<> (leftarg = jsonb, rightarg = jsonb, function = evil.always_j);
           create function evil.to_jsonb(anyelement) returns jsonb language sql as $$select '{"id": 0}'::jsonb$$;
           create function evil.current_setting(text) returns text language sql as $$select 'evil'$$;
           create function evil.count(anyelement) returns int language sql as 'select 1';
           create function evil.row_number() returns int language sql as 'select 7';
           create table evil.pgfeed_new (id int primary key, body text, at timestamptz);
           create table evil.pgfeed_old (id int primary key, body text, at timestamptz);"#,
    );
    let mut ws = app.ws().await;
    ws.subscribe("notes").await;
    let zone = app.psql(
        "set search_path = evil, pg_catalog, public;
         set timezone = 'America/New_York';
         insert into notes values (1, 'a', '2026-11-23 12:00:00+00'), (2, 'b', '2026-11-23 12:00:00+00');
         update notes set body = body || '!', at = at + interval '1 hour';
         delete from notes;
         show timezone",
    );
    assert_eq!(zone, "America/New_York");
    let seen: Vec<_> = ws
        .events(6)
        .await
        .iter()
        .map(|e| {
            format!(
                "{}:{}:{}:{}",
                e["type"].as_str().unwrap_or("?"),
                e["id"],
                e["data"]["body"].as_str().unwrap_or("?"),
                e["data"]["at"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "notes_created:1:a:2026-11-23T12:00:00+00:00",
            "notes_created:2:b:2026-11-23T12:00:00+00:00",
            "notes_updated:1:a!:2026-11-23T13:00:00+00:00",
            "notes_updated:2:b!:2026-11-23T13:00:00+00:00",
            "notes_deleted:1:a!:2026-11-23T13:00:00+00:00",
            "notes_deleted:2:b!:2026-11-23T13:00:00+00:00",
        ]
    );
    assert_eq!(
        app.psql("select string_agg(before->>'body', ',' order by pos) from pgfeed.events where op = 'update'"),
        "a,b"
    );
}

/// A transaction stamped early (`set constraints all immediate`) and then changing many rows in
/// one statement draws its seq again, after that statement, as a 1-row change would.
#[tokio::test]
async fn a_bulk_statement_after_the_stamp_moves_the_commit_to_a_new_seq() {
    let app = TestApp::spawn().await;
    app.psql("create table gadgets (id int primary key, name text); select pgfeed.track('gadgets')");
    let out = app.psql(
        "begin;
         set constraints all immediate;
         insert into gadgets values (1, 'a');
         create temp table first as select current_setting('pgfeed.seq')::bigint as seq;
         insert into gadgets select i, 'x' from generate_series(2, 50) i;
         select (select seq from first) || ' ' || current_setting('pgfeed.seq') || ' ' ||
                (select count(*) from pgfeed.commits where txid = pg_current_xact_id());
         commit",
    );
    let parts: Vec<i64> = out.split(' ').map(|x| x.parse().expect(&out)).collect();
    assert!(parts[1] > parts[0], "drawn again after the bulk statement: {out}");
    assert_eq!(parts[2], 1, "one commit row: {out}");
    assert_eq!(
        app.psql("select count(*) || ' ' || max(pos) from pgfeed.events e join pgfeed.commits c on c.txid = e.txid where c.seq = (select max(seq) from pgfeed.commits)"),
        "50 50"
    );
}

/// Tables tracked by an earlier version (a row trigger) get the statement triggers when the
/// capture code is applied again.
#[tokio::test]
async fn a_table_tracked_with_row_triggers_gets_statement_triggers_when_capture_sql_is_applied_again() {
    let app = TestApp::spawn().await;
    app.psql(
        "create table gadgets (id int primary key, name text);
         insert into pgfeed.tracked (topic, relid, type_prefix, pk) values ('gadgets', 'gadgets', 'gadgets', '{id}');
         create trigger pgfeed_capture after insert or update or delete on gadgets
             for each row execute function pgfeed.capture('gadgets', 'gadgets', 'id', '', '')",
    );
    let sql = format!("{}/sql/capture.sql", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", &app.db.url, "-f", &sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        app.psql("select string_agg(tgname, ' ' order by tgname) from pg_trigger where tgrelid = 'gadgets'::regclass"),
        "pgfeed_capture_delete pgfeed_capture_insert pgfeed_capture_rekey pgfeed_capture_update"
    );
    app.psql("insert into gadgets values (1, 'a'), (2, 'b')");
    assert_eq!(
        newest_commit(&app),
        [
            "1|gadgets_created|1|{gadgets,gadgets:1}|-|false|false",
            "2|gadgets_created|2|{gadgets,gadgets:2}|-|false|false",
        ]
    );
}

#[tokio::test]
async fn a_table_with_a_composite_key_names_each_row_of_a_bulk_statement_by_its_key() {
    let app = TestApp::spawn().await;
    app.psql(
        "create table stock (shop int, sku text, qty int, primary key (shop, sku)); select pgfeed.track('stock');
         insert into stock values (1, 'a', 5), (2, 'b', 7)",
    );
    app.psql("update stock set qty = qty + 1");
    assert_eq!(
        newest_commit(&app),
        [
            r#"1|stock_updated|[1, "a"]|{stock,"stock:1,a"}|-|false|true"#,
            r#"2|stock_updated|[2, "b"]|{stock,"stock:2,b"}|-|false|true"#,
        ]
    );
    app.psql("update stock set sku = sku || '2' where shop = 1");
    assert_eq!(
        newest_commit(&app),
        [r#"1|stock_updated|[1, "a2"]|{stock,"stock:1,a2"}|-|false|true"#]
    );
    app.psql("delete from stock");
    // In the order the delete met them (the table's physical order, which the updates changed).
    let mut deleted: Vec<_> = newest_commit(&app)
        .iter()
        .map(|line| {
            line.split_once('|')
                .map(|(pos, rest)| (rest.to_owned(), pos.to_owned()))
                .expect(line)
        })
        .collect();
    deleted.sort();
    assert_eq!(
        deleted.iter().map(|(rest, _)| rest.as_str()).collect::<Vec<_>>(),
        [
            r#"stock_deleted|[1, "a2"]|{stock,"stock:1,a2"}|-|false|false"#,
            r#"stock_deleted|[2, "b"]|{stock,"stock:2,b"}|-|false|false"#,
        ]
    );
    let mut positions: Vec<_> = deleted.iter().map(|(_, pos)| pos.as_str()).collect();
    positions.sort();
    assert_eq!(positions, ["1", "2"]);
}

/// Applies a capture file with psql, in one transaction, as pgfeed's operators would by hand.
fn apply(db: &TestDb, file: &str) {
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", &db.url, "-f", file])
        .output()
        .expect("psql");
    assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The upgrade path: a database whose capture was installed by the previous version
/// (`fixtures/capture_f57e522.sql`, sql/capture.sql as it was before the bulk statements got
/// cheaper) and whose tables it tracks, then today's sql/capture.sql applied over it (as `pgfeed
/// migrate` does at every start): every statement is still logged as before, bulk or not.
#[tokio::test]
async fn a_database_set_up_by_the_previous_capture_keeps_capturing_once_capture_sql_is_applied_again() {
    let db = TestDb::create_empty().await;
    let root = env!("CARGO_MANIFEST_DIR");
    apply(&db, &format!("{root}/tests/it/fixtures/capture_f57e522.sql"));
    db.psql(
        "create table parts (id int primary key, kit int, name text);
         select pgfeed.track_as('parts', 'parts', 'part', 'kit', 'kits');
         insert into parts select i, 1, 'p' || i from generate_series(1, 3) i",
    );
    let logged_before = [
        "1|part_created|1|{parts,parts:1,kits:1}|-|false|false",
        "2|part_created|2|{parts,parts:2,kits:1}|-|false|false",
        "3|part_created|3|{parts,parts:3,kits:1}|-|false|false",
    ];
    assert_eq!(newest_commit_in(&db), logged_before);
    assert_eq!(
        db.psql("select count(*) from pg_proc where proname = 'serialize_bulk'"),
        "0",
        "the fixture is the capture before this version"
    );

    apply(&db, &format!("{root}/sql/capture.sql"));
    apply(&db, &format!("{root}/sql/capture.sql"));
    // Installed by a superuser: the bulk rendering is `to_jsonb` itself behind its wrapper.
    assert_eq!(
        db.psql(
            "select l.lanname || ' ' || p.proowner::regrole || ' ' || p.prosecdef || ' ' || array_to_string(p.proconfig, ',')
             from pg_proc p join pg_language l on l.oid = p.prolang
             where p.oid = 'pgfeed.serialize_bulk(anyelement)'::regprocedure"
        ),
        "internal pgfeed_capture true transaction_read_only=on"
    );
    // The same statement logs the same events, and so do the others, bulk or one row.
    db.psql("delete from parts");
    db.psql("insert into parts select i, 1, 'p' || i from generate_series(1, 3) i");
    assert_eq!(newest_commit_in(&db), logged_before);
    db.psql("update parts set kit = case when id = 1 then 2 else kit end, name = name || '!'");
    assert_eq!(
        newest_commit_in(&db),
        [
            "1|part_updated|1|{parts,parts:1,kits:2,kits:1}|kits:1|true|false",
            "2|part_updated|2|{parts,parts:2,kits:1}|-|false|true",
            "3|part_updated|3|{parts,parts:3,kits:1}|-|false|true",
        ]
    );
    assert_eq!(
        db.psql(
            "select string_agg((e.data->>'name') || '<-' || (coalesce(e.before, e.old)->>'name'), ' ' order by e.pos)
             from pgfeed.events e join pgfeed.commits c on c.txid = e.txid where c.seq = (select max(seq) from pgfeed.commits)"
        ),
        "p1!<-p1 p2!<-p2 p3!<-p3"
    );
    db.psql("update parts set name = 'one' where id = 2");
    assert_eq!(
        newest_commit_in(&db),
        ["1|part_updated|2|{parts,parts:2,kits:1}|-|false|true"]
    );
    db.psql("delete from parts where id >= 2");
    let mut deleted = newest_commit_in(&db);
    deleted.sort();
    assert_eq!(
        deleted,
        [
            "1|part_deleted|2|{parts,parts:2,kits:1}|-|false|false",
            "2|part_deleted|3|{parts,parts:3,kits:1}|-|false|false",
        ]
    );
    // Every commit has its seq, one after the other.
    assert_eq!(seqs_in(&db), "6 6");
}

/// Runs a capture file with psql as `role` (a login of the test server without a password).
fn apply_as(db: &TestDb, role: &str, file: &str) -> (bool, String) {
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url, "the test server's URL names its user");
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", &url, "-f", file])
        .output()
        .expect("psql");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// An installer that is not a superuser (it owns the database and may act as `pgfeed_capture`)
/// cannot create an internal-language function: bulk statements are rendered by the plpgsql
/// `pgfeed.serialize_bulk` and logged all the same. A superuser's install makes it `to_jsonb`
/// itself, and that one stays when the other installer applies the file again.
#[tokio::test]
async fn an_installer_that_is_not_a_superuser_gets_the_plpgsql_bulk_rendering_and_bulk_capture() {
    let db = TestDb::create_empty().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let capture = format!("{root}/sql/capture.sql");
    let role = format!("inst_{}", db.name);
    // pgfeed_capture is the cluster's; the first test to install capture made it.
    apply(&db, &capture);
    db.psql(&format!(
        "drop schema pgfeed cascade;
         create role \"{role}\" login nosuperuser; grant pgfeed_capture to \"{role}\";
         alter database \"{}\" owner to \"{role}\"; alter schema public owner to \"{role}\"",
        db.name
    ));
    let lang = || {
        db.psql(
            "select l.lanname from pg_proc p join pg_language l on l.oid = p.prolang
             where p.oid = 'pgfeed.serialize_bulk(anyelement)'::regprocedure",
        )
    };
    let (ok, stderr) = apply_as(&db, &role, &capture);
    assert!(ok, "{stderr}");
    assert_eq!(lang(), "plpgsql");
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let as_installer = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    as_installer(
        "create table parts (id int primary key, name text); select pgfeed.track('parts');
         insert into parts select i, 'p' || i from generate_series(1, 3) i",
    );
    assert_eq!(
        newest_commit_in(&db),
        [
            "1|parts_created|1|{parts,parts:1}|-|false|false",
            "2|parts_created|2|{parts,parts:2}|-|false|false",
            "3|parts_created|3|{parts,parts:3}|-|false|false",
        ]
    );
    apply(&db, &capture);
    assert_eq!(lang(), "internal");
    let (ok, stderr) = apply_as(&db, &role, &capture);
    assert!(ok, "{stderr}");
    assert_eq!(lang(), "internal");
    as_installer("update parts set name = name || '!'");
    assert_eq!(
        db.psql(
            "select string_agg(e.op || ':' || e.row_id || ':' || (e.data->>'name') || '<-' || (e.before->>'name'), ' ' order by e.pos)
             from pgfeed.events e join pgfeed.commits c on c.txid = e.txid where c.seq = (select max(seq) from pgfeed.commits)"
        ),
        "update:1:p1!<-p1 update:2:p2!<-p2 update:3:p3!<-p3"
    );
    db.psql(&format!(
        "alter database \"{}\" owner to postgres; alter schema public owner to pg_database_owner;
         drop owned by \"{role}\" cascade; drop role \"{role}\"",
        db.name
    ));
}
