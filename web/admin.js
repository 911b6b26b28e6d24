// pgfeed admin page (GET /): the studies table and each study's room, kept live by /client.js.
//
// No framework and no build step. Every list on the page is a live view (PROTOCOL §9): the server
// sorts, filters and pages, and sends the exact changes to the rows shown, which are updated in
// place (web/admin/list.js), so sorting, filters, scroll position, focus and half-typed input
// survive any number of live updates, and a table of a million rows costs the page 50 of them.
//
// This file is the entry and holds the page's one feed (the connection to /client.js), on which
// every screen opens its views; the screens are ES modules under /admin/: signin.js, route.js,
// table.js, study.js (the study dialog), confirm.js, room.js, with api.js, list.js and common.js
// beneath them.
import { connect } from "/client.js";
import { setConn } from "./admin/common.js";
import { boot, feedToken } from "./admin/signin.js";

// ---- the feed ----------------------------------------------------------------------------------

export let feed = null;

export function stopFeed() {
  if (feed) feed.close();
  feed = null;
}

function startFeed() {
  setConn("connecting");
  feed = connect({
    token: feedToken,
    topics: [], // views only
    onStatus: (s, detail) => setConn(s, detail),
    // An open page should be back soon after the server is: retry within 5 s, and when a
    // restart left us on a fallback transport, try the WebSocket again every 5 s.
    backoffMax: 5000,
    wsRetryEvery: 5000,
  });
}

/**
 * Opens a view on the page's feed, starting the feed if need be. The handle's `stale` says that
 * the feed it lived on was stopped (a sign-out): the screen opens a new one.
 */
export function openView(definition, onChange, onError) {
  if (!feed) startFeed();
  const on = feed;
  const v = on.view(definition, onChange, onError || ((e) => console.warn("view", definition.topic, e.code, e.message)));
  Object.defineProperty(v, "stale", { get: () => feed !== on });
  return v;
}

// ---- start -------------------------------------------------------------------------------------

boot();
