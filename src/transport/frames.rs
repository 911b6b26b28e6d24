//! Every frame of the protocol, as types: what a WebSocket client sends, and what the server
//! answers on the WebSocket and on SSE (README "Subscribing: WebSocket `/ws`", "Server-Sent
//! Events"). Change frames themselves are built once per event by the hub, not here.
//!
//! Answer frames list their fields in alphabetical order, `type` included (except `snapshot`):
//! that is the order they had when they were built as JSON maps, kept so that the bytes a client
//! receives do not change.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// A client frame. Unknown fields are ignored, so clients may send more than this reads.
#[derive(Debug, Default, Deserialize)]
pub struct ClientFrame {
    pub action: String,
    pub topic: Option<String>,
    pub since: Option<String>,
    #[serde(default)]
    pub snapshot: bool,
    /// Echoed in the answer, whatever JSON it is, so the client can match answers to requests.
    pub id: Option<Value>,
    /// A live view's name (PROTOCOL §9): with it, `subscribe` opens a view of `topic` as the
    /// fields below define it, and `unsubscribe` closes it.
    pub view: Option<String>,
    #[serde(default)]
    pub filter: std::collections::BTreeMap<String, String>,
    pub order: Option<String>,
    pub limit: Option<i64>,
    pub after: Option<String>,
    #[serde(default)]
    pub count: bool,
}

/// The client's request id, echoed back when it sent one.
type Id<'a> = Option<&'a Value>;

/// `{"type":"subscribed"}` on a WebSocket: the topic's starting cursor.
#[derive(Serialize)]
pub struct Subscribed<'a> {
    pub cursor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Id<'a>,
    pub topic: &'a str,
    #[serde(rename = "type")]
    kind: Kind,
}

/// `{"type":"subscribed"}` on SSE: one cursor for the stream's topics together.
#[derive(Serialize)]
pub struct SubscribedAll<'a> {
    pub cursor: &'a str,
    pub topics: &'a [String],
    #[serde(rename = "type")]
    kind: Kind,
}

#[derive(Serialize)]
pub struct Unsubscribed<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Id<'a>,
    /// A topic's subscription ended, or (`view`) a live view closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    #[serde(rename = "type")]
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<&'a str>,
}

#[derive(Serialize)]
pub struct Pong<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Id<'a>,
    #[serde(rename = "type")]
    kind: Kind,
}

/// `{"type":"error"}`: `code` is one of the README's list; the connection stays usable.
#[derive(Serialize)]
pub struct Error<'a> {
    pub code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Id<'a>,
    pub message: &'a str,
    #[serde(rename = "type")]
    kind: Kind,
}

/// `{"type":"refresh_needed"}`: the cursor is gone from the log; the client takes a snapshot.
#[derive(Serialize)]
pub struct RefreshNeeded<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Id<'a>,
    pub reason: &'a str,
    pub topic: &'a str,
    #[serde(rename = "type")]
    kind: Kind,
}

/// `{"type":"snapshot"}`: `data` is the database's jsonb text, passed through unparsed.
#[derive(Serialize)]
pub struct Snapshot<'a> {
    #[serde(rename = "type")]
    kind: Kind,
    pub topic: &'a str,
    pub cursor: &'a str,
    pub data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Id<'a>,
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Subscribed,
    Unsubscribed,
    Pong,
    Error,
    RefreshNeeded,
    Snapshot,
}

impl<'a> Subscribed<'a> {
    pub fn new(topic: &'a str, cursor: &'a str, id: Id<'a>) -> Self {
        Subscribed {
            cursor,
            id,
            topic,
            kind: Kind::Subscribed,
        }
    }
}

impl<'a> SubscribedAll<'a> {
    pub fn new(topics: &'a [String], cursor: &'a str) -> Self {
        SubscribedAll {
            cursor,
            topics,
            kind: Kind::Subscribed,
        }
    }
}

impl<'a> Unsubscribed<'a> {
    pub fn new(topic: &'a str, id: Id<'a>) -> Self {
        Unsubscribed {
            id,
            topic: Some(topic),
            kind: Kind::Unsubscribed,
            view: None,
        }
    }

    pub fn view(view: &'a str, id: Id<'a>) -> Self {
        Unsubscribed {
            id,
            topic: None,
            kind: Kind::Unsubscribed,
            view: Some(view),
        }
    }
}

impl<'a> Pong<'a> {
    pub fn new(id: Id<'a>) -> Self {
        Pong { id, kind: Kind::Pong }
    }
}

impl<'a> Error<'a> {
    pub fn new(code: &'a str, message: &'a str, id: Id<'a>) -> Self {
        Error {
            code,
            id,
            message,
            kind: Kind::Error,
        }
    }
}

impl<'a> RefreshNeeded<'a> {
    pub fn new(topic: &'a str, reason: &'a str, id: Id<'a>) -> Self {
        RefreshNeeded {
            id,
            reason,
            topic,
            kind: Kind::RefreshNeeded,
        }
    }
}

impl<'a> Snapshot<'a> {
    pub fn new(topic: &'a str, cursor: &'a str, data: &'a RawValue, id: Id<'a>) -> Self {
        Snapshot {
            kind: Kind::Snapshot,
            topic,
            cursor,
            data,
            id,
        }
    }
}

/// A frame as the text of a message. These frames hold only strings and JSON values, which
/// always serialize; an empty text would be the sign of a bug, not a client's doing.
pub fn text(frame: &impl Serialize) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default())
}

/// A snapshot frame's text, from the database's jsonb text of the data.
pub fn snapshot_text(topic: &str, cursor: &str, data: String, id: Id<'_>) -> Utf8Bytes {
    // Falls back to null rather than fail the client: the text came from the database as jsonb.
    let data =
        RawValue::from_string(data).unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"));
    text(&Snapshot::new(topic, cursor, &data, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_id(mut v: Value, id: Id<'_>) -> Value {
        if let (Some(id), Some(obj)) = (id, v.as_object_mut()) {
            obj.insert("id".into(), id.clone());
        }
        v
    }

    #[test]
    fn answer_frames_are_the_bytes_the_json_maps_were() {
        let id = json!({"n": 1});
        for id in [None, Some(&id), Some(&Value::Null)] {
            assert_eq!(
                text(&Subscribed::new("studies", "c1", id)).as_str(),
                with_id(json!({"type": "subscribed", "topic": "studies", "cursor": "c1"}), id).to_string()
            );
            assert_eq!(
                text(&Unsubscribed::new("studies", id)).as_str(),
                with_id(json!({"type": "unsubscribed", "topic": "studies"}), id).to_string()
            );
            assert_eq!(
                text(&Unsubscribed::view("main", id)).as_str(),
                with_id(json!({"type": "unsubscribed", "view": "main"}), id).to_string()
            );
            assert_eq!(
                text(&Pong::new(id)).as_str(),
                with_id(json!({"type": "pong"}), id).to_string()
            );
            assert_eq!(
                text(&Error::new("bad_request", "no \"x\"", id)).as_str(),
                with_id(
                    json!({"type": "error", "code": "bad_request", "message": "no \"x\""}),
                    id
                )
                .to_string()
            );
            assert_eq!(
                text(&RefreshNeeded::new("studies", "cursor_expired", id)).as_str(),
                with_id(
                    json!({"type": "refresh_needed", "topic": "studies", "reason": "cursor_expired"}),
                    id
                )
                .to_string()
            );
        }
        let topics = ["a".to_owned(), "b:1".to_owned()];
        assert_eq!(
            text(&SubscribedAll::new(&topics, "c1")).as_str(),
            json!({"type": "subscribed", "topics": topics, "cursor": "c1"}).to_string()
        );
    }

    #[test]
    fn a_snapshot_passes_its_data_through_and_bad_data_becomes_null() {
        let id = json!(7);
        assert_eq!(
            snapshot_text("studies:1", "c", r#"{"a": [1]}"#.into(), Some(&id)).as_str(),
            r#"{"type":"snapshot","topic":"studies:1","cursor":"c","data":{"a": [1]},"id":7}"#
        );
        assert_eq!(
            snapshot_text("t", "c", "{".into(), None).as_str(),
            r#"{"type":"snapshot","topic":"t","cursor":"c","data":null}"#
        );
    }
}
