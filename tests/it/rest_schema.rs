//! The REST API as a whole (README "REST API"): errors that belong to no route, and the OpenAPI
//! document against the router and against Schemathesis.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;

use crate::support::{TestApp, TestDb};

// ---- errors that belong to no route ----

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = TestApp::spawn().await;
    app.get("/api/nothing").await.assert_error(404, "not_found");
    let r = app.request(Method::PUT, "/api/studies", |r| r).await;
    r.assert_error(405, "method_not_allowed");
    assert!(r.header("allow").is_some_and(|a| a.contains("POST")));
    app.get("/api/messages/1").await.assert_error(405, "method_not_allowed");
}

#[tokio::test]
async fn a_database_outage_is_a_503_with_a_clear_message_not_a_500() {
    let app = TestApp::spawn().await;
    app.get("/api/studies").await.ok(200);
    // The outage: from the maintenance database, refuse new connections and end the pool's.
    let db = &app.db.name;
    let admin = TestDb::external("postgres", app.db.url.replace(db.as_str(), "postgres"));
    admin.psql(&format!("alter database {db} allow_connections false"));
    admin.psql(&format!(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = '{db}'"
    ));

    let body = app.get("/api/studies").await.assert_error(503, "unavailable");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("database"),
        "{body}"
    );
}

// ---- the OpenAPI document ----

/// Every literal path given to `.route(` anywhere under `src/`.
fn routes_in_source(dir: &std::path::Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            routes_in_source(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split(".route(\"").skip(1) {
                out.insert(piece.split('"').next().unwrap().to_owned());
            }
        }
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_the_router_serves() {
    let app = TestApp::spawn().await;
    app.rest_study("s1").await;
    let doc = app.get("/api/openapi.json").await.ok(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();

    // Documented → served, and served on a documented path → documented: every method of every
    // documented path is either in the document or a 405 from the router.
    for (path, item) in paths {
        let concrete = path.replace("{id}", "1");
        for method in ["get", "post", "put", "patch", "delete"] {
            let r = app
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    &concrete,
                    |r| r,
                )
                .await;
            let fell_through = r.status == 404 && String::from_utf8_lossy(&r.bytes).contains("no route");
            if item.get(method).is_some() {
                assert!(
                    r.status != 405 && !fell_through,
                    "{method} {path} is documented but not served: {}",
                    r.status
                );
                let documented = item[method]["responses"].as_object().unwrap();
                assert!(
                    documented.contains_key(r.status.as_str()),
                    "{method} {concrete} answered {} which is not documented",
                    r.status
                );
            } else {
                assert_eq!(r.status, 405, "{method} {path} is served but not documented");
            }
        }
    }
    // Read your writes: every successful REST write declares the header it answers, every read
    // the header (the streams: `?position=`) it takes, and what a bad or unreached one gets.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let answers = op["responses"].as_object().unwrap();
            if method == "get" {
                let takes = op["parameters"].as_array().into_iter().flatten().any(|p| {
                    (p["name"] == "Pgfeed-Position" && p["in"] == "header")
                        || (p["name"] == "position" && p["in"] == "query")
                });
                assert!(takes, "GET {path} does not declare a position");
                assert!(
                    answers.contains_key("400") && answers.contains_key("503"),
                    "GET {path}: {answers:?}"
                );
            } else if path.starts_with("/api/") {
                for (status, answer) in answers.iter().filter(|(s, _)| s.starts_with('2')) {
                    assert!(
                        answer["headers"].get("Pgfeed-Position").is_some(),
                        "{method} {path} {status} does not declare Pgfeed-Position"
                    );
                }
            }
        }
    }
    // Routes added with a plain `.route(` (not through `utoipa_axum::routes!`) must be documented.
    let mut literal = BTreeSet::new();
    routes_in_source(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut literal,
    );
    assert!(literal.contains("/ws"), "the source scan found {literal:?}");
    for route in literal {
        assert!(
            paths.contains_key(&route),
            "{route} is routed but missing from the OpenAPI document"
        );
    }
    for schema in ["Study", "Message", "File", "ErrorBody"] {
        assert!(doc["components"]["schemas"].get(schema).is_some(), "no {schema} schema");
    }
}

/// Schemathesis (PyPI) generates requests from `/api/openapi.json` and checks that no answer is
/// a 5xx and every answer conforms to the document. Skipped when it is not installed, unless
/// `PGFEED_REQUIRE_SCHEMATHESIS` is set (as `.ci/run` should). `positive_data_acceptance` is left
/// out on purpose: a random `If-Match` is rightly a 412, and a blank or NUL-bearing label that the
/// schema's lengths allow is rightly a 422.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let installed = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var_os("PGFEED_REQUIRE_SCHEMATHESIS").is_none(),
            "schemathesis is required but not installed"
        );
        eprintln!("skipped: schemathesis is not installed (pip install schemathesis)");
        return;
    }
    let app = TestApp::spawn().await;
    let run = tokio::process::Command::new("schemathesis")
        .args(["run", &app.url("/api/openapi.json")])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args([
            "--exclude-path",
            "/ws",
            // Streams: an SSE response never ends, a long-poll may wait a minute.
            "--exclude-path",
            "/events",
            "--exclude-path",
            "/api/changes",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--no-color",
        ])
        .current_dir(std::env::temp_dir()) // it keeps a `.schemathesis/` cache in its working directory
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("schemathesis took too long")
        .expect("running schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
