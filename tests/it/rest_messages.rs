//! The REST API's messages (README "REST API"), against a real server and database.

use serde_json::json;

use crate::rest_studies::keys;
use crate::support::TestApp;

#[tokio::test]
async fn messages_are_listed_created_edited_and_deleted_per_study() {
    let app = TestApp::spawn().await;
    app.rest_study("s1").await;
    app.rest_study("s2").await;

    let r = app
        .post("/api/studies/1/messages", json!({"author": "ana", "body": "first"}))
        .await;
    let first = r.ok(201);
    assert_eq!(r.etag(), "\"1\"");
    assert_eq!(
        keys(&first),
        [
            "author",
            "body",
            "created_at",
            "id",
            "study_id",
            "updated_at",
            "version"
        ]
        .map(String::from)
        .into()
    );
    app.post("/api/studies/2/messages", json!({"author": "bob", "body": "elsewhere"}))
        .await
        .ok(201);
    app.post("/api/studies/1/messages", json!({"author": "cy", "body": "second"}))
        .await
        .ok(201);

    let list = app.get("/api/studies/1/messages").await.ok(200);
    let bodies: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["first", "second"]);
    let page = app.get("/api/studies/1/messages?limit=1&after=1").await.ok(200);
    assert_eq!(page["items"][0]["body"], "second");

    let r = app
        .patch("/api/messages/1", json!({"body": "edited"}), Some("\"1\""))
        .await;
    assert_eq!(r.ok(200)["body"], "edited");
    assert_eq!(r.etag(), "\"2\"");
    app.patch("/api/messages/1", json!({"body": "late"}), Some("\"1\""))
        .await
        .assert_error(412, "precondition_failed");
    app.patch("/api/messages/1", json!({"body": ""}), None)
        .await
        .assert_error(422, "validation_failed");
    app.patch("/api/messages/1", json!({"body": "x", "author": "eve"}), None)
        .await
        .assert_error(422, "validation_failed");
    app.patch("/api/messages/99", json!({"body": "x"}), None)
        .await
        .assert_error(404, "not_found");

    app.post("/api/studies/1/messages", json!({"author": "", "body": "b"}))
        .await
        .assert_error(422, "validation_failed");
    app.post(
        "/api/studies/1/messages",
        json!({"author": "a", "body": "b".repeat(10_001)}),
    )
    .await
    .assert_error(422, "validation_failed");
    app.post("/api/studies/1/messages", json!({"author": "a"}))
        .await
        .assert_error(422, "validation_failed");
    app.post("/api/studies/9/messages", json!({"author": "a", "body": "b"}))
        .await
        .assert_error(404, "not_found");
    app.get("/api/studies/9/messages").await.assert_error(404, "not_found");
    app.get("/api/studies/1/messages?limit=0")
        .await
        .assert_error(422, "validation_failed");

    app.delete("/api/messages/1", Some("\"1\""))
        .await
        .assert_error(412, "precondition_failed");
    assert_eq!(app.delete("/api/messages/1", Some("\"2\"")).await.status, 204);
    app.delete("/api/messages/1", None).await.assert_error(404, "not_found");
}
