//! A subscription's opening frames (`subscribed`, a snapshot, the backlog from the log), written
//! by the feed straight to the socket while the session loop waits for the subscribe to finish:
//! they go out before any live delivery queued meanwhile (README "Subscribing: WebSocket `/ws`").

use axum::extract::ws::Message;
use futures::{Sink, SinkExt};
use serde_json::Value;

use super::stall;
use crate::feed::{Emit, Feed, Gone, Item};
use crate::transport::frames;

/// Writes one subscribe's opening frames to the socket the session owns, borrowed for the call.
pub struct SocketEmitter<'a, S> {
    pub socket: &'a mut S,
    pub feed: &'a Feed,
    pub topic: &'a str,
    /// The subscribe frame's `id`, echoed in `subscribed` and `snapshot`.
    pub id: Option<&'a Value>,
}

impl<S> Emit for SocketEmitter<'_, S>
where
    S: Sink<Message, Error = axum::Error> + Unpin + Send,
{
    async fn emit(&mut self, item: Item) -> Result<(), Gone> {
        let msg = match item {
            Item::Subscribed(at) => {
                let cursor = self.feed.cursor(at);
                frames::text(&frames::Subscribed::new(self.topic, &cursor, self.id))
            }
            Item::Snapshot(at, data) => frames::snapshot_text(self.topic, &self.feed.cursor(at), data, self.id),
            Item::Event(d) => {
                // Backlog events are only buffered; `flush` sends a page of them in one go.
                let text = d.frame().clone();
                return match stall(self.socket.feed(Message::Text(text))).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(Gone),
                };
            }
        };
        match stall(self.socket.send(Message::Text(msg))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        match stall(self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }
}
