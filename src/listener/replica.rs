//! A follower with `--replica-url` (README "Running many servers and failing over"): it reads the
//! log from the hot standby, up to the watermark the standby has replayed, so that adding servers
//! adds no log reads to the primary.
//!
//! A standby cannot LISTEN (no NOTIFY reaches it), so the follower polls the standby's watermark
//! row: [`POLL_MIN`] after a read that relayed something, doubling up to [`POLL_MAX`] while
//! nothing comes; each poll is one small read on the standby. Its session on the primary stays,
//! for two things only: every [`leader::TAKEOVER_TRY`] it tries the lead and reads the primary's
//! watermark in one statement (a server that takes the lead settles and writes on the primary,
//! as any leader), and its presence tells the leader that someone follows (so the watermark is
//! written for every batch).
//!
//! The standby is *behind* when its replayed watermark has not reached, by the next try, the
//! primary's watermark read at the previous one (more than about [`leader::TAKEOVER_TRY`] of
//! lag), and *down* when a read on it fails. While it is either, the follower reads from the
//! primary as any follower does (LISTEN `pgfeed_watermark` there) and the feed reads there too
//! ([`Replica::set_usable`]); at the first try that finds the standby caught up again, both go
//! back to it.

use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection};

use super::{connection_ended, follow_relay, leader, Announced, Listener};
use crate::db::replica::Replica;
use crate::db::watermark;
use crate::metrics::{ReadFor, ReadOn};

/// The shortest gap between two polls of the standby's watermark: after a poll that relayed
/// something, the next comes this soon (more commits are likely under way).
const POLL_MIN: Duration = Duration::from_millis(2);
/// The longest gap while nothing comes: the latency a first commit after a quiet spell may have
/// on this server, on top of the standby's replay. 50 ms is 20 small reads a second on the standby.
const POLL_MAX: Duration = Duration::from_millis(50);
/// A connection to the standby that takes longer than this counts as the standby being down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Follows the leader, reading from the standby while it is usable and from the primary
/// otherwise; returns once this server took the lead (which it then holds on the primary).
pub(super) async fn follow(
    client: &tokio_postgres::Client,
    primary_reader: &mut PgConnection,
    replica: &Replica,
    listener: &Listener,
    announced: &Announced,
    driver: &mut tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> anyhow::Result<()> {
    let Listener { hub, metrics, .. } = listener;
    let mut standby: Option<PgConnection> = None;
    // The primary's watermark at the previous try: the standby must have replayed it by now.
    let mut primary_before: Option<i64> = None;
    let mut listening = false;
    // Where reads go, once the first try has decided.
    let mut on_standby: Option<bool> = None;
    let mut gap = POLL_MIN;
    let mut tick = tokio::time::interval(leader::TAKEOVER_TRY);
    let result = async {
        loop {
            let usable = replica.is_usable();
            tokio::select! {
                _ = tick.tick() => {
                    let (lead, primary_seq) = try_lead(client).await?;
                    if lead {
                        tracing::info!("the lead was free: this server leads now, on the primary");
                        return Ok(());
                    }
                    if standby.is_none() {
                        standby = connect(replica).await;
                    }
                    let replayed = match standby.as_mut() {
                        Some(conn) => match watermark::read(&mut *conn).await {
                            Ok(wm) => Some(wm),
                            Err(e) => {
                                tracing::debug!(error = %e, "the standby failed a read");
                                standby = None;
                                None
                            }
                        },
                        None => None,
                    };
                    // (A standby in an older generation than this server's holds nothing it may serve.)
                    let caught_up = replayed.is_some_and(|wm| {
                        wm.gen >= hub.epoch().gen() && primary_before.is_none_or(|p| wm.seq >= p)
                    });
                    primary_before = Some(primary_seq);
                    if on_standby != Some(caught_up) {
                        on_standby = Some(caught_up);
                        switch(client, replica, caught_up, &mut listening).await?;
                    }
                    if !caught_up {
                        relay_from_primary(primary_reader, replica, listener).await?;
                    }
                }
                _ = tokio::time::sleep(gap), if usable => {
                    let Some(conn) = standby.as_mut() else {
                        on_standby = Some(false);
                        switch(client, replica, false, &mut listening).await?;
                        continue;
                    };
                    let before = hub.last();
                    match follow_relay(conn, hub, metrics).await {
                        Ok(()) if hub.last() > before => {
                            replica.count(ReadOn::Standby, ReadFor::Log);
                            gap = POLL_MIN;
                        }
                        Ok(()) => gap = (gap * 2).min(POLL_MAX),
                        Err(e) => {
                            tracing::warn!(error = format!("{e:#}"), "the standby failed; reading from the primary");
                            standby = None;
                            on_standby = Some(false);
                            switch(client, replica, false, &mut listening).await?;
                            relay_from_primary(primary_reader, replica, listener).await?;
                        }
                    }
                }
                _ = announced.wake.notified(), if listening => {
                    if announced.pending(hub.last().seq) {
                        relay_from_primary(primary_reader, replica, listener).await?;
                    }
                }
                ended = &mut *driver => return connection_ended(ended),
            }
        }
    }
    .await;
    // Leading, it reads on the primary. After a failure (the primary's session lost, say) the
    // flag stays: reads on the standby stay exact whatever the listener does (they need the
    // standby's watermark to cover what this server relayed), and with the primary away the
    // standby may be all there is to read.
    // (After a failure the session is gone, and its LISTEN with it.)
    if result.is_ok() {
        replica.set_usable(false);
        if listening {
            client
                .batch_execute(&format!("unlisten {}", leader::WATERMARK_CHANNEL))
                .await
                .context("UNLISTEN")?;
        }
    }
    result
}

/// A follower's read on the primary, counted when it relayed something.
async fn relay_from_primary(reader: &mut PgConnection, replica: &Replica, listener: &Listener) -> anyhow::Result<()> {
    let before = listener.hub.last();
    follow_relay(reader, &listener.hub, &listener.metrics).await?;
    if listener.hub.last() > before {
        replica.count(ReadOn::Primary, ReadFor::Log);
    }
    Ok(())
}

/// Tries the lead and reads the primary's watermark, in one round trip.
async fn try_lead(client: &tokio_postgres::Client) -> anyhow::Result<(bool, i64)> {
    let row = client
        .query_one(
            &format!(
                "select pg_try_advisory_lock({}), (select seq from pgfeed.watermark)",
                leader::LEADER_LOCK
            ),
            &[],
        )
        .await
        .context("trying the leader lock")?;
    Ok((row.get(0), row.get(1)))
}

/// A connection to the standby, or `None` when it does not answer in time.
async fn connect(replica: &Replica) -> Option<PgConnection> {
    let options = (*replica.pool.connect_options()).clone();
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "the standby does not answer");
            None
        }
        Err(_) => None,
    }
}

/// Moves reads to the standby (`to_standby`) or to the primary: the feed's with
/// [`Replica::set_usable`], the listener's by listening for the leader's wake-ups on the
/// primary only while it reads there.
async fn switch(
    client: &tokio_postgres::Client,
    replica: &Replica,
    to_standby: bool,
    listening: &mut bool,
) -> anyhow::Result<()> {
    replica.set_usable(to_standby);
    if to_standby {
        tracing::info!("reading from the standby (--replica-url)");
        if *listening {
            client
                .batch_execute(&format!("unlisten {}", leader::WATERMARK_CHANNEL))
                .await
                .context("UNLISTEN")?;
            *listening = false;
        }
    } else {
        tracing::warn!("the standby is down or behind: reading from the primary");
        if !*listening {
            client
                .batch_execute(&format!("listen {}", leader::WATERMARK_CHANNEL))
                .await
                .context("LISTEN")?;
            *listening = true;
        }
    }
    Ok(())
}
