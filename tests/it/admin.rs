//! The admin page (`GET /`, web/index.html + admin.js + admin.css) in a real browser: Debian's
//! headless Chromium driven by playwright-core (tests/browser/admin-test.mjs), two pages at a time,
//! with psql as the outside writer and a server restart on the same port. Needs `node`,
//! `chromium` (apt) and `npm ci --prefix tests/browser`; a missing piece fails the test with the
//! command that installs it. The scenarios take the README's screenshots (see [`screenshots`]).

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::browser::node_driver;
use crate::support::{TestApp, PATIENCE};

/// Where the scenarios save their screenshots: target/screenshots/, or the committed
/// docs/screenshots/ (shown in the README) with `PGFEED_UPDATE_SCREENSHOTS=1`, so that an
/// ordinary test run leaves the work tree clean.
fn screenshots() -> String {
    let dir = if std::env::var_os("PGFEED_UPDATE_SCREENSHOTS").is_some() {
        "docs/screenshots"
    } else {
        "target/screenshots"
    };
    format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs one scenario of admin-test.mjs against `app`, serving its requests to stop and start
/// the server; returns the summary it ends with.
async fn run(app: TestApp, scenario: &str) -> Value {
    run_with(app, scenario, &[]).await
}

pub async fn run_with(app: TestApp, scenario: &str, env: &[(&str, String)]) -> Value {
    let mut child = node_driver("admin-test.mjs")
        .arg(app.url(""))
        .arg(&app.db.url)
        .arg(scenario)
        .arg(screenshots())
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .spawn()
        .expect("node is missing: apt-get install -y nodejs npm");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (db, addr) = (app.db.clone(), app.addr);
    let mut app = Some(app);
    loop {
        let line = tokio::time::timeout(PATIENCE * 6, lines.next_line())
            .await
            .expect("the admin page scenario took too long")
            .expect("reading the driver")
            .expect("the browser driver exited without a summary");
        let msg: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("driver said {line:?}: {e}"));
        if let Some(text) = msg["log"].as_str() {
            eprintln!("admin page [{scenario}]: {text}");
        } else if let Some(what) = msg["need"].as_str() {
            match what {
                "stop" => app.take().expect("a running server").stop().await,
                "start" => app = Some(TestApp::spawn_at(db.clone(), addr).await),
                other => panic!("the driver asked for {other:?}"),
            }
            stdin.write_all(b"ok\n").await.expect("driver stdin");
        } else if let Some(error) = msg["error"].as_str() {
            panic!("admin page [{scenario}] failed:\n{error}");
        } else if !msg["done"].is_null() {
            let _ = child.wait().await;
            return msg["done"].clone();
        }
    }
}

/// Two pages on the studies table: a psql INSERT, UPDATE and DELETE each show in both (observed
/// delays are printed, not asserted tightly: the machine is shared); an edit in one shows in the
/// other; a conflicting edit is reported and not written; after a server restart, with writes
/// made while it was down, both pages show exactly the database's rows and go on live.
#[tokio::test]
async fn admin_table_follows_every_writer_and_survives_a_restart() {
    let app = TestApp::spawn().await;
    let summary = run(app, "table").await;
    eprintln!("admin table: {summary}");
    assert!(summary["rows"].as_u64().unwrap() > 0);
}

/// Two pages in one study's room: a message posted in one appears in the other, a psql message
/// in both; a file uploaded in one (with a progress bar) is downloaded byte for byte from the
/// other; deleting a file or the study shows in both.
#[tokio::test]
async fn admin_rooms_share_messages_and_files_live() {
    let app = TestApp::spawn().await;
    let summary = run(app, "room").await;
    eprintln!("admin room: {summary}");
}

/// The pages' cursors are pruned from the log while the server is down: on reconnect the server
/// answers each view with a fresh window, and the table and the room show it (the changes made
/// meanwhile included, nothing doubled) and go on live.
#[tokio::test]
async fn after_refresh_needed_the_admin_page_reloads_its_snapshots() {
    let app = TestApp::spawn().await;
    let summary = run(app, "refresh").await;
    eprintln!("admin refresh: {summary}");
}

/// The studies table is a live view of 50 rows: the server sorts on every column, filters by
/// status, searches label and title, and pages (next/previous); after each, the page shows exactly
/// what PostgreSQL's own SELECT gives. A psql INSERT lands in the visible page (the last row
/// overflows), a row leaving the filter disappears and the next one fills in, the total follows,
/// rows that stay keep their element, and a bulk UPDATE arrives (longest main-thread task logged).
#[tokio::test]
async fn the_admin_table_is_a_server_side_view_sorted_filtered_searched_and_paged_live() {
    let app = TestApp::spawn().await;
    let summary = run(app, "views").await;
    eprintln!("admin views: {summary}");
}

/// A room shows its newest 50 messages and files (views, newest first), their totals, "Load
/// older" for the rest, and psql posts and deletes live.
#[tokio::test]
async fn a_room_shows_its_newest_messages_and_files_as_views_and_loads_older_ones() {
    let app = TestApp::spawn().await;
    let summary = run(app, "room-views").await;
    eprintln!("admin room views: {summary}");
}

/// With WebSockets blocked the page's views run over SSE, and with SSE blocked too over
/// long-polling: the table's first page, a psql INSERT, a sort, the next page and a room's thread.
#[tokio::test]
async fn without_websockets_the_admin_pages_views_run_over_sse_and_long_polling() {
    let app = TestApp::spawn().await;
    let summary = run(app, "fallback").await;
    eprintln!("admin fallback: {summary}");
}

/// With auth on, the page asks for a token, keeps it for the tab, and a member's table holds
/// only the studies named in the token (a view with `id=in.(…)`), live.
#[tokio::test]
async fn with_auth_the_admin_page_asks_for_a_token_and_shows_a_member_their_studies() {
    let app = crate::auth::secured().await;
    let member = crate::auth::token(json!({"role": "member", "studies": [1, 3], "exp": crate::auth::in_an_hour()}));
    let summary = run_with(app, "member", &[("ADMIN_TEST_MEMBER_TOKEN", member)]).await;
    eprintln!("admin member: {summary}");
}

#[tokio::test]
async fn the_admin_page_and_its_assets_are_served_from_the_binary() {
    let app = TestApp::spawn().await;
    for (path, ty, needle) in [
        ("/", "text/html", r#"<script type="module" src="/admin.js">"#),
        (
            "/admin.js",
            "text/javascript",
            r#"import { connect } from "/client.js";"#,
        ),
        ("/admin.css", "text/css", ".conn"),
    ] {
        let resp = reqwest::get(app.url(path)).await.expect("GET");
        assert_eq!(resp.status(), 200, "{path}");
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with(ty), "{path}: {content_type}");
        if path == "/" {
            let csp = resp.headers()["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("default-src 'self'"), "{csp}");
        }
        let body = resp.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle:?}");
    }
}
