// pgfeed admin page (GET /): the studies table and each study's room, kept live by /client.js.
//
// No framework and no build step. Every list is keyed by row id and updated in place: a change
// rewrites the cells of the existing element, so sorting, filters, scroll position, focus and
// half-typed input survive any number of live updates. Snapshots (on connect, and after
// `refresh_needed`) are merged into what is shown the same way, so a reconnect never duplicates
// or drops a row.
//
// This file is the entry and holds the page's one feed (the connection to /client.js); the
// screens are ES modules under /admin/: signin.js, route.js, table.js, study.js (the study
// dialog), confirm.js, room.js, with api.js and common.js beneath them.
import { connect } from "/client.js";
import { setConn, toast } from "./admin/common.js";
import { boot, feedToken } from "./admin/signin.js";

// ---- the feed ----------------------------------------------------------------------------------

export let feed = null;

export function stopFeed() {
  if (feed) feed.close();
  feed = null;
}

/**
 * While a REST reload is in flight, the rows live events touched or deleted meanwhile
 * (`table:id`), so that merging the reload's older read does not undo them.
 */
let inFlight = null;

/**
 * Subscribes the current view. `reload(guard)` is for `refresh_needed` on a fallback transport,
 * where client.js cannot take a snapshot until the WebSocket is back: the page reloads over REST
 * meanwhile, from after the fallback's new starting point, so nothing is missed.
 */
export function startFeed(topics, onSnapshot, onEvent, reload) {
  stopFeed();
  setConn("connecting");
  let status = null;
  let refreshing = false; // refresh_needed came; the reload has not yet
  const told = () => toast("This page had fallen too far behind to catch up change by change, so it reloaded everything.");
  const restReload = async () => {
    if (!reload || !refreshing) return;
    refreshing = false;
    inFlight = { touched: new Set(), deleted: new Set() };
    try {
      if (await reload(inFlight)) told();
    } finally {
      inFlight = null;
    }
  };
  feed = connect({
    token: feedToken,
    topics,
    onSnapshot: (topic, data, cursor) => {
      onSnapshot(topic, data, cursor);
      if (refreshing) told();
      refreshing = false;
    },
    onEvent: (e) => {
      if (inFlight) (e.op === "delete" ? inFlight.deleted : inFlight.touched).add(`${e.table}:${e.id}`);
      onEvent(e);
    },
    onRefreshNeeded: (topic, reason) => {
      console.info("pgfeed: refresh_needed", topic, reason);
      refreshing = true;
      if (status === "fallback") restReload();
    },
    onStatus: (s, detail) => {
      status = s;
      setConn(s, detail);
      if (s === "fallback" && refreshing) restReload();
    },
    // An open page should be back soon after the server is: retry within 5 s, and when a
    // restart left us on a fallback transport, try the WebSocket again every 5 s.
    backoffMax: 5000,
    wsRetryEvery: 5000,
  });
}

// ---- start -------------------------------------------------------------------------------------

boot();
