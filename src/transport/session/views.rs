//! A connection's live views (PROTOCOL §9): `subscribe` with a `view` name opens one, frames
//! come from the views' own queue (`feed::views`), each written with the name the client chose.

use std::collections::HashMap;

use axum::extract::ws::Message;
use futures::{Sink, Stream};
use tokio::sync::mpsc;

use super::{frames, stall, End, Session, WRITE_BATCH};
use crate::feed::views::{Request, ViewItem, ViewSink, Views};
use crate::feed::Stopped;
use crate::transport::frames::ClientFrame;

/// View frames one connection may have waiting. A connection that falls further behind is closed
/// with 4008, as for events, and resumes each view with its last cursor. A frame is a pointer to
/// one shared by the window's subscribers, so the queue costs little until it is used.
const VIEW_QUEUE: usize = 1024;
/// The longest view name.
const MAX_NAME: usize = 128;

/// The views of one connection: their queue, and names by subscription id and back.
#[derive(Debug)]
pub struct ConnViews {
    engine: Views,
    tx: mpsc::Sender<ViewItem>,
    rx: mpsc::Receiver<ViewItem>,
    names: HashMap<String, u64>,
    by_id: HashMap<u64, String>,
}

impl ConnViews {
    /// The next frame of any view; never, for a connection without views.
    pub async fn next(views: &mut Option<Box<ConnViews>>) -> Option<ViewItem> {
        match views {
            Some(v) => v.rx.recv().await,
            None => std::future::pending().await,
        }
    }

    pub fn len(views: &Option<Box<ConnViews>>) -> usize {
        views.as_ref().map_or(0, |v| v.names.len())
    }
}

impl<S, H> Session<S, H>
where
    S: Sink<Message, Error = axum::Error> + Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
    H: Send,
{
    /// Topics and views together: what `--max-subscriptions` bounds.
    pub(super) fn subscriptions(&self) -> usize {
        self.subs.len() + ConnViews::len(&self.views)
    }

    pub(super) async fn subscribe_view(&mut self, frame: ClientFrame) -> Result<(), End> {
        let id = frame.id.as_ref();
        let name = frame.view.clone().unwrap_or_default();
        if name.is_empty() || name.len() > MAX_NAME {
            return self
                .client_error("bad_request", &format!("a view's name is 1 to {MAX_NAME} bytes"), id)
                .await;
        }
        let Some(topic) = frame.topic.clone() else {
            return self.client_error("bad_request", "subscribe needs a topic", id).await;
        };
        let replacing = self.views.as_ref().and_then(|v| v.names.get(&name).copied());
        if replacing.is_none() && self.subscriptions() >= self.config.max_subscriptions {
            let message = format!("at most {} subscriptions per connection", self.config.max_subscriptions);
            return self.client_error("too_many_subscriptions", &message, id).await;
        }
        let feed = self.subs.feed().clone();
        let engine = match feed.views() {
            Ok(e) => e.clone(),
            Err(e) => return self.answer(&topic, id, Err(e.into())).await,
        };
        let views = self.views.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(VIEW_QUEUE);
            Box::new(ConnViews {
                engine: engine.clone(),
                tx,
                rx,
                names: HashMap::new(),
                by_id: HashMap::new(),
            })
        });
        if let Some(old) = replacing {
            engine.unsubscribe(old);
            views.names.remove(&name);
            views.by_id.remove(&old);
        }
        let sink = ViewSink {
            tx: views.tx.clone(),
            overflow: self.subs.outbox().overflow_signal(),
        };
        let req = Request {
            topic: topic.clone(),
            filter: frame.filter,
            order: frame.order,
            limit: frame.limit,
            after: frame.after,
            count: frame.count,
        };
        match engine
            .subscribe(&req, frame.since.as_deref(), self.subs.access(), sink)
            .await
        {
            Ok(sub) => {
                let views = self.views.as_mut().expect("made above");
                views.names.insert(name.clone(), sub);
                views.by_id.insert(sub, name);
                Ok(())
            }
            Err(e) => self.answer(&topic, id, Err(Stopped::Feed(e))).await,
        }
    }

    pub(super) async fn unsubscribe_view(&mut self, frame: ClientFrame) -> Result<(), End> {
        let name = frame.view.as_deref().unwrap_or_default();
        if let Some(views) = &mut self.views {
            if let Some(sub) = views.names.remove(name) {
                views.by_id.remove(&sub);
                views.engine.unsubscribe(sub);
            }
        }
        self.send_frame(&frames::Unsubscribed::view(name, frame.id.as_ref()))
            .await
    }

    /// Writes a view frame under the name its subscription has on this connection (none: the
    /// view was closed or replaced meanwhile, and the frame is dropped), and whatever else is
    /// already queued, up to a batch, then flushes once: one socket write for many frames.
    pub(super) async fn deliver_view(&mut self, first: ViewItem) -> Result<(), End> {
        let mut next = Some(first);
        let mut fed = 0;
        while let Some(item) = next.take() {
            let Some(views) = &mut self.views else { return Ok(()) };
            match item {
                ViewItem::Frame(sub, frame) => {
                    if let Some(name) = views.by_id.get(&sub) {
                        let text = frame.text(name);
                        stall(futures::SinkExt::feed(&mut self.socket, Message::Text(text.into()))).await??;
                        fed += 1;
                    }
                }
                ViewItem::Failed(sub, message) => {
                    if let Some(name) = views.by_id.remove(&sub) {
                        views.names.remove(&name);
                        let msg = format!("view {name:?}: {message}");
                        let text = frames::text(&frames::Error::new("unavailable", &msg, None));
                        stall(futures::SinkExt::feed(&mut self.socket, Message::Text(text))).await??;
                    }
                }
            }
            if fed < WRITE_BATCH {
                next = self.views.as_mut().and_then(|v| v.rx.try_recv().ok());
            }
        }
        stall(futures::SinkExt::flush(&mut self.socket)).await??;
        Ok(())
    }
}

impl Drop for ConnViews {
    /// A connection's end ends its subscriptions at once: a quiet window would otherwise keep them
    /// (and itself) until its next frame found their queue gone.
    fn drop(&mut self) {
        for &sub in self.by_id.keys() {
            self.engine.unsubscribe(sub);
        }
    }
}
