//! The REST API's studies (README "REST API"), against a real server and database: every route's
//! success and error statuses, If-Match under concurrency, and REST writes reaching `/ws` exactly
//! like psql writes.

use std::collections::BTreeSet;

use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::TestApp;

pub(crate) fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

// ---- events: REST writes go through the triggers like anyone's ----

#[tokio::test]
async fn a_study_created_over_rest_reaches_ws_exactly_as_its_response_and_shaped_like_a_psql_insert() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.subscribe("studies").await;

    let created = app
        .post(
            "/api/studies",
            json!({"label": "rest", "title": "Over REST", "status": "active"}),
        )
        .await
        .ok(201);
    app.psql("insert into studies (label, title) values ('psql', 'Over psql')");

    let [from_rest, from_psql] = <[Value; 2]>::try_from(ws.events(2).await).unwrap();
    assert_eq!(from_rest["type"], "study_created");
    assert_eq!(
        from_rest["data"], created,
        "the REST answer is byte-for-byte the event's row"
    );
    assert_eq!(from_psql["type"], "study_created");
    assert_eq!(keys(&from_rest), keys(&from_psql));
    assert_eq!(keys(&from_rest["data"]), keys(&from_psql["data"]));
    let read = app.get(&format!("/api/studies/{}", created["id"])).await.ok(200);
    assert_eq!(read, created);
}

#[tokio::test]
async fn rest_messages_and_files_reach_the_study_room_as_their_rows() {
    let app = TestApp::spawn().await;
    let study = app.rest_study("room").await;
    let mut ws = app.ws().await;
    ws.subscribe(&format!("studies:{}", study["id"])).await;

    let message = app
        .post("/api/studies/1/messages", json!({"author": "ana", "body": "hi"}))
        .await
        .ok(201);
    let edited = app
        .patch(
            &format!("/api/messages/{}", message["id"]),
            json!({"body": "hello"}),
            None,
        )
        .await
        .ok(200);
    let file = app.upload(1, "a.txt", "text/plain", b"abc".to_vec()).await.ok(201);

    let events = ws.events(3).await;
    assert_eq!(events[0]["type"], "message_created");
    assert_eq!(events[0]["data"], message);
    assert_eq!(events[1]["type"], "message_updated");
    assert_eq!(events[1]["data"], edited);
    assert_eq!(events[2]["type"], "file_created");
    assert_eq!(
        events[2]["data"], file,
        "file events carry the metadata row, never the bytes"
    );
}

// ---- studies ----

#[tokio::test]
async fn studies_are_listed_by_status_and_search_in_keyset_pages() {
    let app = TestApp::spawn().await;
    for (label, title, status) in [
        ("alpha", "Sleep study", "active"),
        ("beta", "Diet", "draft"),
        ("gamma", "Sleep and diet", "active"),
        ("delta", "100% cotton", "closed"),
        ("eps_ilon", "Exercise", "active"),
    ] {
        app.post(
            "/api/studies",
            json!({"label": label, "title": title, "status": status}),
        )
        .await
        .ok(201);
    }
    let labels = |v: Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["label"].as_str().unwrap().to_owned())
            .collect()
    };

    assert_eq!(
        labels(app.get("/api/studies").await.ok(200)),
        ["alpha", "beta", "gamma", "delta", "eps_ilon"]
    );
    assert_eq!(
        labels(app.get("/api/studies?status=active").await.ok(200)),
        ["alpha", "gamma", "eps_ilon"]
    );
    assert_eq!(
        labels(app.get("/api/studies?q=SLEEP").await.ok(200)),
        ["alpha", "gamma"]
    );
    assert_eq!(
        labels(app.get("/api/studies?q=%25").await.ok(200)),
        ["delta"],
        "% is literal, not a wildcard"
    );
    assert_eq!(
        labels(app.get("/api/studies?q=s_i").await.ok(200)),
        ["eps_ilon"],
        "_ is literal too"
    );
    assert_eq!(
        labels(app.get("/api/studies?status=active&q=diet").await.ok(200)),
        ["gamma"]
    );
    let page1 = app.get("/api/studies?limit=2").await.ok(200);
    let last = page1["items"][1]["id"].as_i64().unwrap();
    assert_eq!(labels(page1), ["alpha", "beta"]);
    assert_eq!(
        labels(app.get(&format!("/api/studies?limit=2&after={last}")).await.ok(200)),
        ["gamma", "delta"]
    );
    assert_eq!(
        labels(app.get("/api/studies?after=5").await.ok(200)),
        Vec::<String>::new()
    );

    app.get("/api/studies?status=sleeping")
        .await
        .assert_error(422, "validation_failed");
    app.get("/api/studies?limit=0")
        .await
        .assert_error(422, "validation_failed");
    app.get("/api/studies?limit=501")
        .await
        .assert_error(422, "validation_failed");
    app.get("/api/studies?limit=many")
        .await
        .assert_error(400, "bad_request");
    app.get("/api/studies?after=x").await.assert_error(400, "bad_request");
}

#[tokio::test]
async fn a_study_is_created_and_read_with_its_version_as_etag() {
    let app = TestApp::spawn().await;
    let r = app
        .post(
            "/api/studies",
            json!({"label": "s1", "title": "First", "description": "about"}),
        )
        .await;
    let created = r.ok(201);
    assert_eq!(r.etag(), "\"1\"");
    assert_eq!(created["status"], "draft");
    assert_eq!(created["description"], "about");
    assert_eq!(
        keys(&created),
        [
            "created_at",
            "description",
            "id",
            "label",
            "status",
            "title",
            "updated_at",
            "version"
        ]
        .map(String::from)
        .into()
    );
    let r = app.get("/api/studies/1").await;
    assert_eq!(r.ok(200), created);
    assert_eq!(r.etag(), "\"1\"");

    app.get("/api/studies/999").await.assert_error(404, "not_found");
    app.get("/api/studies/abc").await.assert_error(400, "bad_request");
    app.get("/api/studies/99999999999999999999")
        .await
        .assert_error(400, "bad_request");
}

#[tokio::test]
async fn creating_a_study_rejects_duplicates_bad_json_and_invalid_fields() {
    let app = TestApp::spawn().await;
    app.rest_study("taken").await;

    app.post("/api/studies", json!({"label": "taken", "title": "Again"}))
        .await
        .assert_error(409, "conflict");
    let body = app
        .post("/api/studies", json!({"label": " ", "title": "x".repeat(201)}))
        .await
        .assert_error(422, "validation_failed");
    assert_eq!(body["error"]["details"]["label"], "must not be empty");
    assert_eq!(body["error"]["details"]["title"], "must be at most 200 characters");
    let body = app
        .post("/api/studies", json!({"label": "l".repeat(101), "title": "t"}))
        .await
        .assert_error(422, "validation_failed");
    assert!(body["error"]["details"]["label"].is_string());
    let body = app
        .post("/api/studies", json!({"label": "s", "title": "t", "status": "paused"}))
        .await
        .assert_error(422, "validation_failed");
    assert!(
        body["error"]["details"]["status"]
            .as_str()
            .unwrap()
            .contains("unknown variant"),
        "{body}"
    );
    let body = app
        .post("/api/studies", json!({"title": "t"}))
        .await
        .assert_error(422, "validation_failed");
    assert_eq!(body["error"]["details"]["label"], "is required");
    app.post("/api/studies", json!({"label": "s", "title": "t", "colour": "red"}))
        .await
        .assert_error(422, "validation_failed");
    app.post("/api/studies", json!({"label": "nul\u{0}", "title": "t"}))
        .await
        .assert_error(422, "validation_failed");
    app.post("/api/studies", json!({"label": "s", "title": 7}))
        .await
        .assert_error(422, "validation_failed");

    let malformed = app
        .request(Method::POST, "/api/studies", |r| {
            r.header("content-type", "application/json").body("{\"label\":")
        })
        .await;
    malformed.assert_error(400, "bad_request");
    let wrong_type = app
        .request(Method::POST, "/api/studies", |r| {
            r.header("content-type", "text/plain").body("{}")
        })
        .await;
    wrong_type.assert_error(400, "bad_request");
    let none = app.request(Method::POST, "/api/studies", |r| r.body("{}")).await;
    none.assert_error(400, "bad_request");
    assert_eq!(
        app.psql("select count(*) from studies"),
        "1",
        "nothing was written by the failures"
    );
}

#[tokio::test]
async fn patch_changes_only_the_given_fields_and_honours_if_match() {
    let app = TestApp::spawn().await;
    app.rest_study("s1").await;
    app.rest_study("s2").await;

    let r = app
        .patch(
            "/api/studies/1",
            json!({"title": "Renamed", "status": "active"}),
            Some("\"1\""),
        )
        .await;
    let patched = r.ok(200);
    assert_eq!(r.etag(), "\"2\"");
    assert_eq!(
        (
            patched["title"].as_str(),
            patched["status"].as_str(),
            patched["label"].as_str()
        ),
        (Some("Renamed"), Some("active"), Some("s1"))
    );
    assert_eq!(patched["version"], 2);

    let stale = app
        .patch("/api/studies/1", json!({"title": "Lost update"}), Some("\"1\""))
        .await
        .assert_error(412, "precondition_failed");
    assert!(stale["error"]["message"].as_str().unwrap().contains("\"2\""), "{stale}");
    app.patch("/api/studies/1", json!({"title": "x"}), Some("W/\"2\""))
        .await
        .assert_error(412, "precondition_failed");
    app.patch("/api/studies/1", json!({"title": "Any"}), Some("*"))
        .await
        .ok(200);
    app.patch("/api/studies/1", json!({"title": "Listed"}), Some("\"7\", \"3\""))
        .await
        .ok(200);
    app.patch("/api/studies/1", json!({"description": "no condition"}), None)
        .await
        .ok(200);

    let unchanged = app.patch("/api/studies/1", json!({}), None).await.ok(200);
    assert_eq!(
        unchanged["version"], 5,
        "a PATCH that changes nothing makes no new version"
    );
    app.patch("/api/studies/1", json!({}), Some("\"1\""))
        .await
        .assert_error(412, "precondition_failed");

    app.patch("/api/studies/1", json!({"label": "s2"}), None)
        .await
        .assert_error(409, "conflict");
    app.patch("/api/studies/1", json!({"title": ""}), None)
        .await
        .assert_error(422, "validation_failed");
    app.patch("/api/studies/1", json!({"status": "gone"}), None)
        .await
        .assert_error(422, "validation_failed");
    app.patch("/api/studies/1", json!({"version": 9}), None)
        .await
        .assert_error(422, "validation_failed");
    app.patch("/api/studies/9", json!({"title": "t"}), None)
        .await
        .assert_error(404, "not_found");
    app.patch("/api/studies/9", json!({"title": "t"}), Some("\"1\""))
        .await
        .assert_error(404, "not_found");
    app.patch("/api/studies/x", json!({"title": "t"}), None)
        .await
        .assert_error(400, "bad_request");
}

#[tokio::test]
async fn concurrent_patches_with_the_same_if_match_let_exactly_one_win() {
    let app = TestApp::spawn().await;
    app.rest_study("contested").await;

    let attempts = (0..8).map(|i| app.patch("/api/studies/1", json!({"title": format!("admin {i}")}), Some("\"1\"")));
    let replies = join_all(attempts).await;

    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 412).count(), 7, "{statuses:?}");
    let winner = replies.iter().find(|r| r.status == 200).unwrap().json();
    let now = app.get("/api/studies/1").await.ok(200);
    assert_eq!(now["title"], winner["title"]);
    assert_eq!(now["version"], 2);
}

#[tokio::test]
async fn deleting_a_study_cascades_to_its_messages_and_files_each_an_event() {
    let app = TestApp::spawn().await;
    app.rest_study("doomed").await;
    app.post("/api/studies/1/messages", json!({"author": "a", "body": "b"}))
        .await
        .ok(201);
    app.upload(1, "f.bin", "application/octet-stream", vec![1, 2, 3])
        .await
        .ok(201);
    let mut ws = app.ws().await;
    ws.subscribe("studies:1").await;

    app.delete("/api/studies/1", Some("\"2\""))
        .await
        .assert_error(412, "precondition_failed");
    let r = app.delete("/api/studies/1", Some("\"1\"")).await;
    assert_eq!(r.status, 204);

    let kinds: BTreeSet<String> = ws
        .events(3)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["file_deleted", "message_deleted", "study_deleted"]
            .map(String::from)
            .into()
    );
    assert_eq!(app.psql("select count(*) from file_contents"), "0");
    app.get("/api/studies/1").await.assert_error(404, "not_found");
    app.delete("/api/studies/1", None).await.assert_error(404, "not_found");
    app.delete("/api/studies/abc", None)
        .await
        .assert_error(400, "bad_request");
}
