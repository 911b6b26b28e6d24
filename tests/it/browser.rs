//! web/client.js in a real browser: Debian's headless Chromium driven by playwright-core
//! (tests/browser/client-test.mjs). Needs `node`, `chromium` (apt) and `npm ci --prefix
//! tests/browser`; a missing piece fails the test with the command that installs it.

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::support::browser::node_driver;
use crate::support::{TestApp, PATIENCE};

/// The page, through the node driver: one JSON line per command and answer.
struct Browser {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    /// Opens the server's origin in Chromium and connects client.js to `topics`; returns the
    /// page and the status it reached first (`connected`, or `fallback:sse` etc.).
    async fn open(app: &TestApp, mode: &str, topics: &[&str]) -> (Browser, String) {
        let mut child = node_driver("client-test.mjs")
            .arg(app.url(""))
            .arg(mode)
            .args(topics)
            .spawn()
            .expect("node is missing: apt-get install -y nodejs npm");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut browser = Browser {
            _child: child,
            stdin,
            lines,
        };
        let ready = browser.answer().await;
        let status = ready["ready"]
            .as_str()
            .unwrap_or_else(|| panic!("the page did not connect: {ready}"))
            .to_owned();
        (browser, status)
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(PATIENCE * 2, self.lines.next_line())
            .await
            .expect("no answer from the browser driver in time")
            .expect("reading the driver")
            .expect("the browser driver exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("driver said {line:?}: {e}"))
    }

    /// What the page received once it has `n` events (and a moment more, to see extras).
    async fn received(&mut self, n: usize) -> Value {
        let cmd = json!({"cmd": "await", "count": n}).to_string() + "\n";
        self.stdin.write_all(cmd.as_bytes()).await.expect("driver stdin");
        self.answer().await
    }
}

fn ids(v: &Value) -> Vec<i64> {
    v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i.as_i64().expect("id"))
        .collect()
}

fn insert_messages(app: &TestApp, ids: std::ops::RangeInclusive<i64>) {
    for id in ids {
        app.psql(&format!(
            "insert into messages (id, study_id, author, body) overriding system value values ({id}, 1, 'a', 'm{id}')"
        ));
    }
}

/// Events arrive; the server is stopped (rows written meanwhile) and started again on the same
/// port; the page's list has every row once, in order.
async fn survives_a_restart(mode: &str) -> (String, Value) {
    let app = TestApp::spawn().await;
    app.psql("insert into studies (id, label, title) values (1, 's', 'S')");
    let (mut page, first) = Browser::open(&app, mode, &["messages", "studies:1"]).await;

    insert_messages(&app, 1..=3);
    assert_eq!(ids(&page.received(3).await), [1, 2, 3]);

    let (db, addr) = (app.db.clone(), app.addr);
    app.stop().await;
    db.psql("insert into messages (id, study_id, author, body) overriding system value values (4, 1, 'a', 'down')");
    let app = TestApp::spawn_at(db, addr).await;
    insert_messages(&app, 5..=6);

    let got = page.received(6).await;
    assert_eq!(ids(&got), [1, 2, 3, 4, 5, 6], "no gap, no duplicate: {got}");
    (first, got)
}

#[tokio::test]
async fn the_browser_client_resumes_across_a_server_restart_without_gap_or_duplicate() {
    let (first, got) = survives_a_restart("ws").await;
    assert_eq!(first, "connected", "WebSocket first");
    let statuses: Vec<_> = got["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        statuses.iter().any(|s| *s == "offline" || *s == "connecting"),
        "the restart was noticed: {statuses:?}"
    );
}

#[tokio::test]
async fn with_websockets_blocked_the_browser_client_falls_back_to_sse_and_still_gets_everything() {
    let (first, _) = survives_a_restart("no-ws").await;
    assert_eq!(first, "fallback:sse");
}

#[tokio::test]
async fn without_websockets_or_sse_the_browser_client_long_polls() {
    let (first, _) = survives_a_restart("no-ws-no-sse").await;
    assert_eq!(first, "fallback:poll");
}

#[tokio::test]
async fn client_js_is_served_as_javascript_from_the_binary() {
    let app = TestApp::spawn().await;
    let resp = reqwest::get(app.url("/client.js")).await.expect("GET /client.js");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("export function connect("),
        "an ES module exporting connect"
    );
}
