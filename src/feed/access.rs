//! Who may see what: the one place the study-room rules live (README, "Security: auth and
//! limits"). An admin sees everything. A member sees its studies, and the messages and files that
//! belong to them, judged by the row's study, so guessing ids reveals nothing. The stream's
//! subscriptions ([`authorize`]), the REST guard ([`study_of`], [`may_see`]) and each delivery
//! ([`admit`]) all ask here, so the rules cannot drift apart.
//!
//! Rights follow the row (README, "Rights follow the row"): the capture trigger logs an update
//! that moves a row to another parent with the row as it was and the parent topic it left
//! ([`crate::event::Move`]), so the event is an exit on the old study's room (`…_deleted`, the old
//! row), an entry on the new one's (`…_created`, the new row), and the update it is on `messages`
//! and `messages:<id>`. That much needs no rights: each room is subscribed to by those who may
//! see it.
//!
//! A member's subscription to one row (`messages:<id>`, `files:<id>`) was authorized for the
//! study the row was in then; [`admit`] judges each of its deliveries by the study the row is in
//! after the change (and, for a move, before it):
//! - in one of the member's studies before and after: delivered as published;
//! - a move out of them: the exit (`…_deleted` with the row as it was), then nothing of the row;
//! - a move back into them: the entry (`…_created` with the row as it is), and again what follows;
//! - otherwise (the row is elsewhere): nothing.
//!
//! The judgement needs only the event, not what the subscription saw before, so a resume from a
//! cursor gets exactly what the live stream got.

use sqlx::PgPool;

use super::FeedError;
use crate::auth::Access;
use crate::db::tracked::Tracked;
use crate::event::{Topic, View};
use crate::hub::Delivery;

/// What an id names, as far as rights go: a study itself, or a row of a table whose rows belong
/// to a study (`messages`, `files`).
#[derive(Debug, Clone, Copy)]
pub enum Concerns<'a> {
    Study(i64),
    Row(&'a str, i64),
}

/// The study `what` concerns: `None` when it is a row that does not exist (or of a table whose
/// rows belong to no study), which no member may see.
pub async fn study_of(pool: &PgPool, what: Concerns<'_>) -> Result<Option<i64>, sqlx::Error> {
    match what {
        Concerns::Study(id) => Ok(Some(id)),
        Concerns::Row(table, id) => crate::db::rows::study_of(pool, table, id).await,
    }
}

/// Whether `access` may see what concerns `study` (see [`study_of`]).
pub fn may_see(access: &Access, study: Option<i64>) -> bool {
    access.is_admin() || study.is_some_and(|id| access.may_study(id))
}

/// Whether `access` may subscribe to the checked `topic` of `table`: an admin to anything; a
/// member to its studies' rooms (`studies:<id>`) and to rows that belong to them
/// (`messages:<id>`, `files:<id>`). A table as a whole (`messages`) is an admin's only.
pub async fn authorize(pool: &PgPool, access: &Access, topic: &str, table: &Tracked) -> Result<(), FeedError> {
    if access.is_admin() {
        return Ok(());
    }
    let key = Topic::parse(topic)
        .ok()
        .and_then(|t| t.key)
        .and_then(|k| k.parse::<i64>().ok());
    let study = match (table.topic.as_str(), key) {
        (ROOM_TABLE, Some(id)) => study_of(pool, Concerns::Study(id)).await?,
        (table @ ("messages" | "files"), Some(id)) => study_of(pool, Concerns::Row(table, id)).await?,
        _ => None,
    };
    if may_see(access, study) {
        Ok(())
    } else {
        Err(FeedError::Forbidden(format!(
            "this token may not subscribe to {topic:?}"
        )))
    }
}

/// The topic of a room, the parent of the guarded rows: `studies:<id>`.
const ROOM_TABLE: &str = "studies";

/// Whether `access` may be sent `d`, and how: a member's delivery on the topic of a message or
/// file row may become the move's exit or entry (see the module's documentation). Everything
/// else is sent as published: admins see everything, and a room topic only ever carries what
/// belongs there.
pub fn admit(access: &Access, d: &mut Delivery) -> bool {
    if access.is_admin() || !guarded(d.topic()) {
        return true;
    }
    let may = |room: Option<&str>| {
        room.and_then(|r| r.strip_prefix(ROOM_TABLE))
            .and_then(|r| r.strip_prefix(':'))
            .and_then(|id| id.parse::<i64>().ok())
            .is_some_and(|id| access.may_study(id))
    };
    let after = may(d.event.room.as_deref());
    let Some(moved) = &d.event.moved else { return after };
    match (may(moved.from.as_deref()), after) {
        (true, true) => true,
        (true, false) => d.view_as(View::Exit),
        (false, true) => d.view_as(View::Entry),
        (false, false) => false,
    }
}

/// Whether `topic` is one row of a table whose rows belong to a room (`messages:10`).
fn guarded(topic: &str) -> bool {
    matches!(
        Topic::parse(topic),
        Ok(Topic {
            table: "messages" | "files",
            key: Some(_)
        })
    )
}
