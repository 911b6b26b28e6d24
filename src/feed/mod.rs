//! The feed as transports see it: topics checked against the tracked tables, cursors, snapshots,
//! the log read page by page ([`Feed::changes`]), and [`Subscriptions`], which join a resume or a
//! snapshot to the live stream without gap or overlap. Who may see what is decided in [`access`].
//! Transports (WebSocket, SSE, long-poll) only frame what this module hands them.

pub mod access;
mod subscriptions;
pub mod views;

pub use subscriptions::{first_delivery, Emit, Gone, Item, Stopped, Subscriptions};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::auth::Access;
use crate::db::log::{self, Page, Standing};
use crate::db::replica::{self, Replica};
use crate::db::{snapshot, tracked::Tracked, watermark};
use crate::event::{same_in_generation, CursorCheck, Epoch, Event, Position, Topic};
use crate::hub::{Delivery, Hub};
use crate::metrics::{ReadFor, ReadOn};

/// Why the feed refused or failed a request: the client's mistakes (`BadRequest`, `UnknownTopic`,
/// `Forbidden`, `Refresh`, `TooLarge`) or the database's faults (`Db`, `Busy`, `Internal`), each
/// turned once into what the client is told (`http::error`, the session's `answer`). A client
/// whose connection went away is no error of the feed's: see [`Stopped`].
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// The cursor can no longer (or never could) be served from this log: take a snapshot.
    /// Carries the `reason` of `refresh_needed`.
    #[error("cursor cannot be resumed: {0}")]
    Refresh(&'static str),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The database stayed busy beyond our patience: a snapshot could not start.
    #[error("{0}")]
    Busy(&'static str),
    /// A server-side mistake (never expected), such as a snapshot handed to SSE.
    #[error("internal error: {0}")]
    Internal(String),
    /// What was asked for is larger than one answer may be (a snapshot over the limit).
    #[error("{0}")]
    TooLarge(String),
    /// The server holds as much of a bounded resource as it may (live view rows): try later.
    #[error("{0}")]
    Full(String),
}

impl FeedError {
    /// What a client is told when the feed's database fails: the same words on every transport
    /// and in REST, and nothing of the cause, which is logged instead.
    pub const UNAVAILABLE: &'static str = "the database is unavailable or failed; try again later";
}

/// What a resume is told while the log's new generation is not settled yet after a failover.
const MOVING: &str =
    "the database failed over a moment ago and this server is still moving to its new generation; try again";

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// From now on.
    Live,
    /// With every event after this position.
    After(Position),
    /// With a snapshot of the one topic (of this table), then every event after it.
    Snapshot(&'a Tracked),
}

/// The default of `--max-snapshot`: the largest snapshot one frame may carry.
pub const MAX_SNAPSHOT: usize = 16 << 20;

/// The least time between two reloads of the tracked tables on a miss. A topic of an unknown
/// table costs no database work of its own: misses wait for the next reload (at most this long)
/// and share it, so a flood of unknown names costs the database one small query per interval,
/// server-wide, and a table tracked a moment ago is still found.
const RELOAD_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Feed {
    pub pool: PgPool,
    pub hub: Arc<Hub>,
    tracked: Arc<RwLock<HashMap<String, Arc<Tracked>>>>,
    /// When the last reload on a miss started; held while one runs, so misses share it.
    reloaded: Arc<tokio::sync::Mutex<Option<Instant>>>,
    /// The largest snapshot sent, in bytes of JSON (`--max-snapshot`).
    max_snapshot: usize,
    /// Commits one log read of a resume walks at most (`log::RESUME_SCAN`).
    resume_scan: i64,
    /// Live views ([`views`]), once started ([`Feed::with_views`]).
    pub views: Option<views::Views>,
    /// `--durable-watermark standby`: log reads stop at the watermark ([`Feed::changes`]).
    bounded: bool,
    /// `--replica-url`: the standby that resumes, snapshots and views read from while it is
    /// usable and has replayed what this server relayed (`db::replica`); the listener holds it
    /// too, and says whether it is usable.
    pub replica: Option<Arc<Replica>>,
}

impl Feed {
    pub async fn new(pool: PgPool, hub: Arc<Hub>) -> Result<Self, sqlx::Error> {
        let feed = Feed::unloaded(pool, hub);
        feed.reload_tracked().await?;
        Ok(feed)
    }

    /// A feed that knows no tracked table yet (a miss loads them): what [`Feed::new`] starts
    /// from, and what session tests that never subscribe use over a pool that never connects.
    pub(crate) fn unloaded(pool: PgPool, hub: Arc<Hub>) -> Self {
        Feed {
            pool,
            hub,
            tracked: Default::default(),
            reloaded: Default::default(),
            max_snapshot: MAX_SNAPSHOT,
            resume_scan: log::RESUME_SCAN,
            views: None,
            bounded: false,
            replica: None,
        }
    }

    /// Starts live views over this feed (their engine task runs until `stop`).
    /// `count_wait`: how long a view's first frame waits for its count (`--view-count-wait`).
    pub fn with_views(mut self, count_wait: std::time::Duration, stop: tokio_util::sync::CancellationToken) -> Self {
        self.views = Some(views::Views::start(self.clone(), count_wait, stop));
        self
    }

    /// The live views, or the error a client gets where the server runs none (session tests).
    pub fn views(&self) -> Result<&views::Views, FeedError> {
        self.views
            .as_ref()
            .ok_or_else(|| FeedError::Internal("live views are not running".into()))
    }

    /// Sets the largest snapshot (bytes of JSON) and the commits one resume read may walk.
    pub fn with_limits(mut self, max_snapshot: usize, resume_scan: i64) -> Self {
        self.max_snapshot = max_snapshot;
        self.resume_scan = resume_scan.max(1);
        self
    }

    /// With `--durable-watermark standby`: log reads never pass the watermark.
    pub fn bounded_by_watermark(mut self, bounded: bool) -> Self {
        self.bounded = bounded;
        self
    }

    /// With `--replica-url`: reads go to this standby when they can (see [`Feed::settled`]).
    pub fn reading_from(mut self, replica: Option<Arc<Replica>>) -> Self {
        self.replica = replica;
        self
    }

    /// Where a snapshot or a view read (`what`) may be taken besides the primary (`db::replica`).
    pub fn standby(&self, what: ReadFor) -> Option<replica::Standby<'_>> {
        self.replica.as_deref().map(|replica| replica::Standby {
            replica,
            at_least: self.hub.last().seq,
            gen: self.hub.epoch().gen(),
            what,
        })
    }

    pub fn max_snapshot(&self) -> usize {
        self.max_snapshot
    }

    async fn reload_tracked(&self) -> Result<(), sqlx::Error> {
        let all = crate::db::tracked::load(&self.pool).await?;
        let map = all.into_iter().map(|t| (t.topic.clone(), Arc::new(t))).collect();
        *self.tracked.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(())
    }

    fn lookup(&self, table: &str) -> Option<Arc<Tracked>> {
        self.tracked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            .cloned()
    }

    /// Checks a topic (README, "Subscribing: WebSocket `/ws`"): its table must be tracked, its key
    /// plausible for that table. A table tracked since the last look (`pgfeed.track` by anyone)
    /// is found by reloading, so a client need not wait for a restart.
    pub async fn check_topic(&self, topic: &str) -> Result<Arc<Tracked>, FeedError> {
        let parsed = Topic::parse(topic).map_err(|_| FeedError::BadRequest(format!("malformed topic {topic:?}")))?;
        let table = match self.lookup(parsed.table) {
            Some(t) => t,
            None => {
                self.reload_after(Instant::now()).await?;
                self.lookup(parsed.table)
                    .ok_or_else(|| FeedError::UnknownTopic(topic.to_owned()))?
            }
        };
        match parsed.key {
            Some(key) if !table.key_is_plausible(key) => Err(FeedError::UnknownTopic(topic.to_owned())),
            _ => Ok(table),
        }
    }

    /// Makes sure the tracked tables were reloaded after `asked` (a miss's time), so a table
    /// tracked before the miss is found; at most one reload per [`RELOAD_EVERY`], shared by every
    /// miss that waited for it.
    async fn reload_after(&self, asked: Instant) -> Result<(), sqlx::Error> {
        let mut last = self.reloaded.lock().await;
        if last.is_some_and(|at| at >= asked) {
            return Ok(());
        }
        if let Some(at) = *last {
            tokio::time::sleep_until((at + RELOAD_EVERY).into()).await;
        }
        *last = Some(Instant::now());
        self.reload_tracked().await
    }

    /// Whether `access` may subscribe to the checked `topic`: see [`access::authorize`].
    pub async fn authorize(&self, access: &Access, topic: &str, table: &Tracked) -> Result<(), FeedError> {
        access::authorize(&self.pool, access, topic, table).await
    }

    /// Reads a client's cursor: garbage is a bad request; another log's cursor, one that
    /// retention has passed, or one from the future needs a snapshot. One of an older generation
    /// (from before a failover) resumes exactly where the new generation's log agrees with the
    /// old one, and is told `log_diverged` past that (`event::same_in_generation`).
    pub async fn parse_cursor(&self, cursor: &str) -> Result<Position, FeedError> {
        let epoch = self.hub.epoch();
        let (db, wm) = self.settled(&epoch).await?;
        let at = match epoch.parse_cursor(cursor) {
            Err(_) => return Err(FeedError::BadRequest(format!("malformed cursor {cursor:?}"))),
            Ok(CursorCheck::Foreign) => return Err(FeedError::Refresh("cursor_unknown")),
            Ok(CursorCheck::Ours(at)) => at,
            Ok(CursorCheck::Other { gen, at }) if gen < epoch.gen() => {
                let good = watermark::good_after(&self.pool, gen).await?;
                if !same_in_generation(gen, at.seq, epoch.gen(), good) {
                    return Err(FeedError::Refresh("log_diverged"));
                }
                at
            }
            Ok(CursorCheck::Other { gen, .. }) => {
                // Newer than this server's: a generation it has not moved to yet, or none at all.
                return Err(if watermark::known(&self.pool, gen).await? {
                    FeedError::Busy(MOVING)
                } else {
                    FeedError::Refresh("cursor_unknown")
                });
            }
        };
        // A cursor past what the standby replayed (handed out by a server on the primary) is
        // judged on the primary: the standby does not know its commit yet.
        let db = if at.seq <= wm.seq { db } else { &self.pool };
        match log::standing(db, at).await? {
            Standing::Kept => Ok(at),
            Standing::Expired => Err(FeedError::Refresh("cursor_expired")),
            Standing::Unknown => Err(FeedError::Refresh("cursor_unknown")),
        }
    }

    /// Where to read the log, and its watermark there, once this server serves the database's
    /// generation: while a failover is not settled (a standby promoted a moment ago, whose new
    /// generation no leader has recorded yet, or one this server has not moved to), nothing is
    /// read from the log, since it could not be told apart from what diverged; the client is told
    /// to try again.
    ///
    /// With `--replica-url`, the standby, when it is usable and has replayed a watermark of this
    /// generation that covers what this server relayed (so every seq up to the hub's position is
    /// there); else the primary. Nothing read on the standby differs from the primary's: every
    /// read stops within the unbroken run of commit rows it sees (`db::log`, "Bounds").
    async fn settled(&self, epoch: &Epoch) -> Result<(&PgPool, watermark::Watermark), FeedError> {
        if let Some(replica) = self.replica.as_deref() {
            if let Some(wm) = replica::watermark(replica).await {
                if !wm.moved && wm.gen == epoch.gen() && wm.seq >= self.hub.last().seq {
                    replica.count(ReadOn::Standby, ReadFor::Resume);
                    return Ok((&replica.pool, wm));
                }
            }
            replica.count(ReadOn::Primary, ReadFor::Resume);
        }
        let wm = watermark::read(&self.pool).await?;
        if wm.moved || wm.gen != epoch.gen() {
            return Err(FeedError::Busy(MOVING));
        }
        Ok((&self.pool, wm))
    }

    pub fn cursor(&self, at: Position) -> String {
        self.hub.epoch().cursor(at)
    }

    /// The current position: just after the newest final commit, as the database sees it now
    /// (never before what the hub relayed). Where a live subscription starts.
    pub async fn head(&self) -> Result<Position, FeedError> {
        let last = self.hub.last();
        if self.bounded || self.replica.is_some() {
            // Nothing past the watermark, which the hub never passes; and with `--replica-url`,
            // no read on the primary per subscription (the hub is at most a poll behind).
            return Ok(last);
        }
        Ok(log::final_head(&self.pool, last.seq).await?.max(last))
    }

    /// The one page reader, for long-poll's answers and every subscription's catch-up alike:
    /// up to `limit` events after `after` on any of the checked `topics`, in commit order, each
    /// event once (see [`first_delivery`]); the position to read after next time; and whether
    /// more may follow at once. When the page is not full that position is the last commit the
    /// read walked, so a client whose topics are quiet still moves forward (and its cursor does
    /// not age out of retention). One read walks at most `resume_scan` commits: when the log
    /// goes on beyond them, more may follow though the page is not full.
    pub async fn changes(
        &self,
        topics: &[String],
        after: Position,
        limit: i64,
    ) -> Result<(Vec<Delivery>, Position, bool), FeedError> {
        let known = self.hub.last().seq;
        let epoch = self.hub.epoch();
        let (db, wm) = self.settled(&epoch).await?;
        // With `--durable-watermark standby`, never past the watermark: what the standby has not
        // flushed is delivered by no one. (With `local`, a commit final on the primary may be
        // read at once: should it be lost in a failover, its cursor is past the new
        // generation's last good seq and is told `log_diverged`.)
        let (scan, cap) = if self.bounded {
            let cap = known.min(wm.seq).max(after.seq);
            (self.resume_scan.min(cap - after.seq), cap)
        } else {
            (self.resume_scan, i64::MAX)
        };
        let read = log::read_after_any(db, after, topics, limit, known, scan).await?;
        let (scanned, upto) = (read.scanned, read.upto.min(cap));
        let rows = match read.page {
            Page::Expired => return Err(FeedError::Refresh("cursor_expired")),
            Page::Rows(rows) => rows,
        };
        let full = rows.len() as i64 >= limit;
        let epoch = &epoch;
        let mut next = after;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            next = Position {
                seq: row.seq,
                pos: row.pos,
            };
            // Only the frame this stream sends: see `first_delivery`.
            let Some(i) = row.topics.iter().position(|t| topics.contains(t)) else {
                continue;
            };
            let event = Event::from_row_on(row, i, epoch);
            out.push(Delivery::new(Arc::new(event), 0));
        }
        if !full {
            next = next.max(Position::end_of(scanned));
        }
        Ok((out, next, full || scanned < upto))
    }

    /// The topic's current state and the position it reflects. `topic` must have passed `check_topic`.
    pub async fn snapshot(&self, topic: &str, table: &Tracked) -> Result<(Position, String), FeedError> {
        let key = Topic::parse(topic).ok().and_then(|t| t.key);
        let of = match key {
            None => snapshot::Of::Table(table),
            Some(id) if table.topic == "studies" => snapshot::Of::Room(id.parse().unwrap_or(-1)),
            Some(key) => snapshot::Of::Row(table, key),
        };
        let (at, data) = snapshot::take(&self.pool, self.standby(ReadFor::Snapshot), of, self.max_snapshot)
            .await
            .map_err(|e| {
                if log::is_lock_timeout(&e) {
                    FeedError::Busy("a commit has been in flight for 10 s, so the snapshot could not start; try again")
                } else {
                    FeedError::from(e)
                }
            })?;
        let data = data.ok_or_else(|| {
            FeedError::TooLarge(format!(
                "the snapshot of {topic:?} is over {} bytes: read the rows page by page through the REST \
                 API (?limit=&after=), then subscribe with since",
                self.max_snapshot
            ))
        })?;
        Ok((at, data))
    }
}
