//! The REST API's files (README "REST API"), against a real server and database: uploads at and
//! over the limit, byte-identical downloads.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::rest_studies::keys;
use crate::support::{TestApp, TestDb, PATIENCE};

#[tokio::test]
async fn a_5_mib_upload_round_trips_byte_identical_with_its_sha256() {
    let app = TestApp::spawn().await;
    app.rest_study("s1").await;
    let bytes: Vec<u8> = (0..5 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sha = hex::encode(Sha256::digest(&bytes));

    let r = app
        .upload(1, "scan data ü.bin", "application/x-scan", bytes.clone())
        .await;
    let meta = r.ok(201);
    assert_eq!(r.etag(), format!("\"{sha}\""));
    assert_eq!(meta["sha256"], sha);
    assert_eq!(meta["size_bytes"], 5 << 20);
    assert_eq!(meta["name"], "scan data ü.bin");
    assert_eq!(meta["content_type"], "application/x-scan");
    assert_eq!(
        keys(&meta),
        [
            "content_type",
            "created_at",
            "id",
            "name",
            "sha256",
            "size_bytes",
            "study_id"
        ]
        .map(String::from)
        .into()
    );

    let r = app.get("/api/files/1/content").await;
    assert_eq!(r.status, 200);
    assert!(r.bytes == bytes, "the download differs from the upload");
    assert_eq!(r.header("content-type"), Some("application/x-scan"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"scan data _.bin\"; filename*=UTF-8''scan%20data%20%C3%BC.bin")
    );
    assert_eq!(r.header("etag"), Some(format!("\"{sha}\"").as_str()));
    assert_eq!(
        app.psql("select encode(sha256(content), 'hex') from file_contents where file_id = 1"),
        sha
    );
}

#[tokio::test]
async fn files_are_listed_read_and_deleted_with_the_sha256_as_etag() {
    let app = TestApp::spawn().await;
    app.rest_study("s1").await;
    let a = app.upload(1, "a.txt", "text/plain", b"aaa".to_vec()).await.ok(201);
    app.upload(1, "../../b.txt", "text/plain", b"bbb".to_vec())
        .await
        .ok(201);

    let list = app.get("/api/studies/1/files").await.ok(200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.txt", "b.txt"], "directories are stripped from names");
    assert_eq!(
        app.get("/api/studies/1/files?after=1").await.ok(200)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = app.get("/api/files/1").await;
    assert_eq!(r.ok(200), a);
    assert_eq!(r.etag(), format!("\"{}\"", a["sha256"].as_str().unwrap()));

    app.get("/api/files/9").await.assert_error(404, "not_found");
    app.get("/api/files/9/content").await.assert_error(404, "not_found");
    app.get("/api/files/zz").await.assert_error(400, "bad_request");
    app.get("/api/studies/9/files").await.assert_error(404, "not_found");
    app.upload(9, "x", "text/plain", b"x".to_vec())
        .await
        .assert_error(404, "not_found");
    let not_multipart = app.post("/api/studies/1/files", json!({"file": "x"})).await;
    not_multipart.assert_error(400, "bad_request");
    let form = reqwest::multipart::Form::new().text("other", "x");
    app.request(Method::POST, "/api/studies/1/files", |r| r.multipart(form))
        .await
        .assert_error(422, "validation_failed");
    app.psql(
        "insert into files (study_id, name, content_type, size_bytes, sha256) values (1, 'ext', 'text/plain', 0, 'x')",
    );
    app.get("/api/files/3/content").await.assert_error(404, "not_found");

    app.delete("/api/files/1", Some("\"not-the-sha\""))
        .await
        .assert_error(412, "precondition_failed");
    let tag = format!("\"{}\"", a["sha256"].as_str().unwrap());
    assert_eq!(app.delete("/api/files/1", Some(&tag)).await.status, 204);
    app.delete("/api/files/1", None).await.assert_error(404, "not_found");
    assert_eq!(app.psql("select count(*) from file_contents"), "1");
}

/// Reads an HTTP response head (and what follows in the same reads) within `PATIENCE`.
async fn read_response(read: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        while !String::from_utf8_lossy(&got).contains("payload_too_large") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("no answer while the body was still being sent");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn an_upload_declared_over_the_limit_is_refused_before_its_body_is_sent() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_upload = 1 << 20).await;
    app.rest_study("s1").await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();

    let head = format!(
        "POST /api/studies/1/files HTTP/1.1\r\nhost: localhost\r\ncontent-type: multipart/form-data; boundary=B\r\ncontent-length: {}\r\n\r\n",
        100 << 20
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Not one byte of the 100 MiB body is sent: the answer must come anyway.
    let response = read_response(&mut tcp).await;

    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains(r#""code":"payload_too_large""#), "{response}");
}

#[tokio::test]
async fn an_upload_streaming_past_the_limit_is_refused_before_it_ends() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_upload = 1 << 20).await;
    app.rest_study("s1").await;
    let (mut read, mut write) = TcpStream::connect(app.addr).await.unwrap().into_split();

    // Chunked, so the server cannot know the size: it must count while streaming. The body
    // never ends (no last chunk); up to 4 MiB of it is offered against a 1 MiB limit.
    let writer = tokio::spawn(async move {
        let head = "POST /api/studies/1/files HTTP/1.1\r\nhost: localhost\r\ncontent-type: multipart/form-data; boundary=B\r\ntransfer-encoding: chunked\r\n\r\n";
        let part = "--B\r\ncontent-disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\ncontent-type: application/octet-stream\r\n\r\n";
        let mut out = head.as_bytes().to_vec();
        out.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        if write.write_all(&out).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..64 {
            let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            if write.write_all(&frame).await.is_err() {
                return; // the server has answered and closed: what it refused to read stays unsent
            }
            // Paced, so the server has read what was sent when it answers (no reset eats the answer).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let response = read_response(&mut read).await;
    writer.abort();

    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains(r#""code":"payload_too_large""#), "{response}");
    assert_eq!(app.psql("select count(*) from files"), "0");
}

#[tokio::test]
async fn an_upload_of_exactly_the_limit_is_accepted() {
    let app = TestApp::spawn_with(TestDb::create().await, |c| c.max_upload = 1 << 20).await;
    app.rest_study("s1").await;
    let meta = app
        .upload(1, "max.bin", "application/octet-stream", vec![7; 1 << 20])
        .await
        .ok(201);
    assert_eq!(meta["size_bytes"], 1 << 20);
    app.upload(1, "over.bin", "application/octet-stream", vec![7; (1 << 20) + 1])
        .await
        .assert_error(413, "payload_too_large");
}
