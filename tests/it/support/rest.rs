//! A REST client for tests: each call answers a [`Reply`] with the status, the headers and the
//! body, so a test can assert on any of them without unwrapping.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::TestApp;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl Reply {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "{} answered non-JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn etag(&self) -> &str {
        self.header("etag")
            .unwrap_or_else(|| panic!("no ETag on {} {}", self.status, String::from_utf8_lossy(&self.bytes)))
    }

    /// Asserts the status and, for an error, the error shape of README "REST API" with this `code`.
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected {status}, got {}: {}",
            self.status,
            String::from_utf8_lossy(&self.bytes)
        );
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        body
    }

    /// Asserts a success status and answers the JSON body.
    pub fn ok(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected {status}, got {}: {}",
            self.status,
            String::from_utf8_lossy(&self.bytes)
        );
        if self.bytes.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
}

impl TestApp {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Reply {
        let req = build(reqwest::Client::new().request(method.clone(), self.url(path)));
        let res = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = res.bytes().await.expect("response body").to_vec();
        Reply { status, headers, bytes }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, |r| r).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, |r| r.json(&body)).await
    }

    pub async fn patch(&self, path: &str, body: Value, if_match: Option<&str>) -> Reply {
        self.request(Method::PATCH, path, |r| {
            let r = r.json(&body);
            match if_match {
                Some(tag) => r.header("if-match", tag),
                None => r,
            }
        })
        .await
    }

    pub async fn delete(&self, path: &str, if_match: Option<&str>) -> Reply {
        self.request(Method::DELETE, path, |r| match if_match {
            Some(tag) => r.header("if-match", tag),
            None => r,
        })
        .await
    }

    /// Uploads `bytes` as the multipart field `file`.
    pub async fn upload(&self, study_id: i64, name: &str, content_type: &str, bytes: Vec<u8>) -> Reply {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_owned())
            .mime_str(content_type)
            .expect("mime");
        let form = reqwest::multipart::Form::new().part("file", part);
        self.request(Method::POST, &format!("/api/studies/{study_id}/files"), |r| {
            r.multipart(form)
        })
        .await
    }

    /// Creates a study over REST and answers its row.
    pub async fn rest_study(&self, label: &str) -> Value {
        self.post(
            "/api/studies",
            serde_json::json!({"label": label, "title": format!("Study {label}")}),
        )
        .await
        .ok(201)
    }
}
