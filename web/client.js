// pgfeed browser client: a dependency-free ES module, served by every pgfeed server at /client.js.
//
//   import { connect } from "/client.js";
//   const feed = connect({
//     topics: ["studies", "studies:42"],
//     onEvent: (event) => console.log(event.type, event.data),
//     onSnapshot: (topic, data, cursor) => render(topic, data),
//     onStatus: (status) => badge.textContent = status, // connecting | connected | offline | fallback
//   });
//   const v = feed.view(
//     { topic: "studies", filter: { status: "eq.active" }, order: "updated_at.desc", limit: 50, count: true },
//     (rows, change) => render(rows, change), // change: {type: "view"|"delta", ops, count, next, cursor}
//   );
//   v.update({ ...v.definition, after: v.next }); // the next page
//   v.close();
//   feed.close();
//
// Delivery: every event once (an event published on several of your topics is handed to onEvent
// once), in commit order per topic, with no gap across reconnects, server restarts and changes of
// transport: the client keeps each topic's last cursor and resumes from it.
//
// Transports: WebSocket first (/ws). When WebSockets cannot be opened, it falls back to
// Server-Sent Events read with fetch (/events), then to long-polling (/api/changes), and keeps
// trying to return to the WebSocket. Reconnects use exponential backoff with jitter.
//
// Snapshots: with onSnapshot, a topic that has no cursor yet starts with a snapshot, and a
// `refresh_needed` (cursor older than the server's retention) takes a new one. Snapshots need the
// WebSocket: while on a fallback, `refresh_needed` is passed to onRefreshNeeded and the snapshot
// is taken as soon as the WebSocket is back.
//
// Tokens: `token` is a JWT string, or a function returning one (or a promise of one). A function
// is called before every connection, so when the server ends a stream at the token's `exp`
// (WebSocket close 4001, the SSE stream ends, a long-poll answers 401; README "Security: auth and
// limits") the client asks it for a fresh token and resumes from its cursors, losing nothing.
//
// Views (README "Live views from the browser"): `feed.view(definition, onChange)` keeps `rows`, a
// live window onto a table (PROTOCOL §9), exact after every frame: a `view` frame replaces the rows,
// a `view_delta` applies its ops in order. On the WebSocket every view is one subscription; on a
// fallback each view is a stream (SSE) or a poll loop of its own. After any reconnect or change of
// transport each view resumes from its last cursor, and the server answers with the deltas since
// or a fresh `view`: either way `rows` stays exact. `topics` may be empty when only views are used.
//
// Cursors are opaque to applications. This file ships with the server, so it may compare them
// (`<epoch>-<seq>-<pos>`) to join per-topic positions when it changes transport.

const STATUS = Object.freeze({ CONNECTING: "connecting", CONNECTED: "connected", OFFLINE: "offline", FALLBACK: "fallback" });

/** Cursors remembered to hand each event to onEvent once, whichever topic it came on. */
const SEEN_MAX = 10000;

function parseCursor(c) {
  const m = typeof c === "string" && /^(.*)-(\d+)-(\d+)$/.exec(c);
  return m ? { epoch: m[1], seq: Number(m[2]), pos: Number(m[3]) } : null;
}

/** <0, 0, >0 like a comparator; null when the cursors are not comparable (other logs). */
function compareCursors(a, b) {
  const x = parseCursor(a), y = parseCursor(b);
  if (!x || !y || x.epoch !== y.epoch) return null;
  return x.seq - y.seq || x.pos - y.pos;
}

/** Whether cursor `c` is past `known` (true when `known` is unset or from another log). */
function isAfter(c, known) {
  if (known == null) return true;
  const r = compareCursors(c, known);
  return r === null || r > 0;
}

export function connect(options = {}) {
  const {
    url = globalThis.location ? globalThis.location.origin : "http://127.0.0.1:8080",
    token = null,
    topics = [],
    onEvent = () => {},
    onSnapshot = null,
    onStatus = () => {},
    onRefreshNeeded = () => {},
    backoffMin = 250, // ms: first reconnect delay; doubles per failure, with jitter
    backoffMax = 10000,
    pingEvery = 20000, // ms between our pings on the WebSocket
    wsFailuresBeforeFallback = 2, // WebSocket attempts that fail to open before a fallback
    wsRetryEvery = 30000, // ms: while on a fallback, how often to try the WebSocket again
    pollWait = 25, // s: long-poll wait
    transports = ["ws", "sse", "poll"], // which to use, in order of preference
  } = options;

  /** The token for the next connection (see "Tokens" above). */
  let tokenNow = typeof token === "function" ? null : token;
  const freshToken = async () => {
    if (typeof token === "function") tokenNow = await token();
    return tokenNow;
  };

  const base = url.replace(/\/+$/, "");
  const wsBase = base.replace(/^http/, "ws");
  const cursors = new Map(topics.map((t) => [t, null])); // topic → last cursor sent to us
  const needSnapshot = new Set(onSnapshot ? topics : []);
  const seen = new Set();
  const seenOrder = [];
  let status = null;
  let closed = false;
  let failures = 0; // consecutive failed attempts, for the backoff
  let wsFailures = 0; // consecutive WebSocket attempts that never opened
  let current = null; // { stop() } of the running transport
  let timer = null;
  let probe = null;
  const views = new Map(); // wire name → View (see `view` below)
  let viewNames = 0;

  function setStatus(s, detail) {
    if (s === status) return;
    status = s;
    try { onStatus(s, detail); } catch (e) { console.error(e); }
  }

  function backoff() {
    const ceiling = Math.min(backoffMax, backoffMin * 2 ** Math.min(failures, 16));
    failures += 1;
    return ceiling / 2 + Math.random() * (ceiling / 2); // "equal jitter"
  }

  function later(fn, ms) {
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; if (!closed) fn(); }, ms);
  }

  // ---- delivery, shared by every transport -------------------------------------------------

  function remember(cursor) {
    seen.add(cursor);
    seenOrder.push(cursor);
    if (seenOrder.length > SEEN_MAX) seen.delete(seenOrder.shift());
  }

  /** An event for `topic`; `merged` when the transport sends each event once for all topics. */
  function deliver(event, merged) {
    const topic = event.topic;
    const c = event.cursor;
    const known = cursors.get(topic);
    if (!isAfter(c, known)) return; // already had it on this topic
    if (merged) {
      // A merged stream is in commit order across its topics: every topic is served up to here.
      for (const [t, k] of cursors) if (isAfter(c, k)) cursors.set(t, c);
    } else if (cursors.has(topic)) {
      cursors.set(topic, c);
    }
    if (seen.has(c)) return; // came earlier on another of our topics
    remember(c);
    try { onEvent(event); } catch (e) { console.error(e); }
  }

  function snapshot(frame) {
    cursors.set(frame.topic, frame.cursor);
    needSnapshot.delete(frame.topic);
    if (onSnapshot) {
      try { onSnapshot(frame.topic, frame.data, frame.cursor); } catch (e) { console.error(e); }
    }
  }

  /** The one cursor for a merged stream: the oldest of the topics' cursors (or none). */
  function mergedSince() {
    let min = null;
    for (const c of cursors.values()) {
      if (c == null) continue;
      if (min == null || compareCursors(c, min) < 0) min = c;
    }
    return min;
  }

  // ---- choosing a transport ----------------------------------------------------------------

  function start() {
    if (closed) return;
    clearTimeout(probe);
    freshToken().then(begin, () => retry(false));
  }

  function begin() {
    if (closed) return;
    const order = transports.filter((t) => t !== "ws" || typeof WebSocket !== "undefined");
    const useWs = order.includes("ws") && wsFailures < wsFailuresBeforeFallback;
    setStatus(status === STATUS.FALLBACK ? STATUS.FALLBACK : STATUS.CONNECTING);
    if (useWs) return openWs();
    startFallback(order.filter((t) => t !== "ws"));
  }

  /** After a transport dropped or failed: wait, then start over (WebSocket first when it may work). */
  function retry(wasWorking) {
    if (closed) return;
    current = null;
    if (!wasWorking) setStatus(STATUS.OFFLINE);
    later(start, wasWorking ? backoffMin * Math.random() : backoff());
  }

  function startFallback(order, i = 0) {
    if (closed) return;
    if (i >= order.length) {
      // Nothing works: the server is down or unreachable. Try everything again later.
      wsFailures = 0;
      return retry(false);
    }
    const open = order[i] === "sse" ? openSse : openPoll;
    open(() => startFallback(order, i + 1));
  }

  /**
   * While on a fallback, try a WebSocket now and then; when one opens, switch back to it. The
   * first try comes soon (`soon`): the WebSocket attempts that led to the fallback may have failed
   * only because the server was down (a restart), not because WebSockets are blocked.
   */
  function probeWs(soon = false) {
    if (!transports.includes("ws") || typeof WebSocket === "undefined") return;
    clearTimeout(probe);
    probe = setTimeout(() => {
      if (closed) return;
      let ws;
      try { ws = new WebSocket(wsUrl()); } catch { return probeWs(); }
      ws.onopen = () => {
        ws.close();
        if (closed || status !== STATUS.FALLBACK) return;
        wsFailures = 0;
        if (current) current.stop();
        current = null;
        start();
      };
      ws.onerror = () => probeWs();
    }, soon ? Math.min(1000, wsRetryEvery) : wsRetryEvery);
  }

  function wsUrl() {
    return `${wsBase}/ws${tokenNow ? `?token=${encodeURIComponent(tokenNow)}` : ""}`;
  }

  // ---- WebSocket (README "Subscribing: WebSocket `/ws`") --------------------------------------

  function openWs() {
    let ws;
    try { ws = new WebSocket(wsUrl()); } catch { wsFailures += 1; return retry(false); }
    let opened = false;
    let stopped = false;
    let pinger = null;
    let lastHeard = Date.now();
    // "connected" once every topic is subscribed: from then on nothing committed is missed.
    const pending = new Set(topics);
    const settled = (topic) => {
      pending.delete(topic);
      if (!pending.size) setStatus(STATUS.CONNECTED);
    };
    const subscribe = (topic) => {
      const frame = { action: "subscribe", topic, id: topic }; // an `error` answer echoes the id
      const c = cursors.get(topic);
      if (needSnapshot.has(topic)) frame.snapshot = true;
      else if (c != null) frame.since = c;
      ws.send(JSON.stringify(frame));
    };
    const send = (frame) => { if (ws.readyState === 1) ws.send(JSON.stringify(frame)); };
    current = {
      stop() { stopped = true; clearInterval(pinger); ws.close(1000); },
      // Sent now when open; else `onopen` subscribes every view.
      addView: (v) => send(v.subscribeFrame()),
      removeView: (_v, wire) => send({ action: "unsubscribe", view: wire }),
    };
    ws.onopen = () => {
      opened = true;
      wsFailures = 0;
      failures = 0;
      for (const topic of topics) subscribe(topic);
      for (const v of views.values()) send(v.subscribeFrame());
      if (!pending.size) setStatus(STATUS.CONNECTED);
      pinger = setInterval(() => {
        if (Date.now() - lastHeard > pingEvery * 1.5) return ws.close(4000, "no pong"); // dead peer
        ws.send(JSON.stringify({ action: "ping" }));
      }, pingEvery);
    };
    ws.onmessage = (m) => {
      lastHeard = Date.now();
      let frame;
      try { frame = JSON.parse(m.data); } catch { return; }
      if (frame.view != null && (frame.type === "view" || frame.type === "view_delta" || frame.type === "refresh_needed")) {
        const v = views.get(frame.view);
        if (v) v.receive(frame);
        return;
      }
      switch (frame.type) {
        case "subscribed":
          if (!needSnapshot.has(frame.topic) && cursors.get(frame.topic) == null) cursors.set(frame.topic, frame.cursor);
          settled(frame.topic);
          break;
        case "snapshot":
          snapshot(frame);
          settled(frame.topic);
          break;
        case "refresh_needed":
          // The cursor is gone (older than the log's retention, or from another database): start
          // the topic over from a snapshot (or from now).
          try { onRefreshNeeded(frame.topic, frame.reason); } catch (e) { console.error(e); }
          cursors.set(frame.topic, null);
          if (onSnapshot) needSnapshot.add(frame.topic);
          subscribe(frame.topic);
          break;
        case "error":
          if (typeof frame.id === "string" && frame.id.startsWith("view:")) {
            const v = views.get(frame.id.slice(5));
            if (!v) break;
            if (frame.code === "rate_limited" || frame.code === "unavailable") {
              setTimeout(() => { if (!stopped && !closed && views.get(v.wire) === v) send(v.subscribeFrame()); }, 1000 + Math.random() * 1000);
            } else {
              v.fail(frame);
            }
            break;
          }
          if (frame.code === "rate_limited" && topics.includes(frame.id)) {
            // Snapshots are budgeted per connection (a burst, then about one a second): a
            // refused subscribe is asked again in a moment.
            setTimeout(() => { if (!stopped && !closed && ws.readyState === 1) subscribe(frame.id); }, 1000 + Math.random() * 1000);
            break;
          }
          console.warn("pgfeed:", frame.code, frame.message);
          if (pending.has(frame.id)) settled(frame.id); // refused: it will not be subscribed
          break;
        case "pong":
          break;
        default:
          if (frame.op) deliver(frame, false);
      }
    };
    ws.onclose = (ev) => {
      clearInterval(pinger);
      if (stopped || closed) return;
      if (!opened) wsFailures += 1;
      // 4001: the token expired; `start` asks for a fresh one and resubscribes from the cursors.
      retry(opened || ev.code === 4001);
    };
  }

  // ---- Server-Sent Events, read with fetch (README "Without a WebSocket") ---------------------
  // fetch rather than EventSource: it sees every event type (EventSource only dispatches the
  // types one listens to, and tracked tables add types), and it can send the token as a header.

  function headers() {
    return tokenNow ? { authorization: `Bearer ${tokenNow}` } : {};
  }

  function changesQuery(since) {
    const q = new URLSearchParams({ topics: topics.join(",") });
    if (since) q.set("since", since);
    return q;
  }

  /**
   * A fallback transport is a group of streams: one for the topics (when there are any) and one
   * per view, since SSE and long-poll carry one view per stream. The group is working once any
   * stream is; a stream that ends then restarts the whole group (every stream resumes from its
   * cursor), and one that ends before anything worked means this transport does not work here.
   */
  function fallbackGroup(kind, failed, openTopics, openView) {
    let working = false;
    let stopped = false;
    const streams = new Map(); // View (or "topics") → { stop() }
    const group = {
      stop() { stopped = true; for (const s of streams.values()) s.stop(); streams.clear(); },
      addView(v) { streams.get(v)?.stop(); streams.set(v, openView(v, group)); },
      removeView(v) { streams.get(v)?.stop(); streams.delete(v); },
      get stopped() { return stopped || closed; },
      works() {
        if (working || group.stopped) return;
        working = true;
        failures = 0;
        setStatus(STATUS.FALLBACK, kind);
        probeWs(true);
      },
      /** A stream ended: start over (resuming), or try the next transport if none ever worked. */
      ended() {
        if (group.stopped) return;
        group.stop();
        if (working) retry(true);
        else failed();
      },
    };
    current = group;
    if (topics.length) streams.set("topics", openTopics(group));
    for (const v of views.values()) streams.set(v, openView(v, group));
    if (!streams.size) group.works(); // nothing to carry yet: views added later open their own
    return group;
  }

  const sseSupported = () => typeof fetch !== "undefined" && typeof ReadableStream !== "undefined" && typeof TextDecoder !== "undefined";

  /** GETs an SSE stream and calls onEvent(type, data) per event; resolves when it ends. */
  async function readSse(path, signal, onOpen, onEvent) {
    const res = await fetch(`${base}${path}`, { headers: headers(), signal, cache: "no-store" });
    if (!res.ok || !res.body) {
      const err = new Error(`GET ${path.split("?")[0]}: HTTP ${res.status}`);
      err.status = res.status;
      err.body = await res.json().catch(() => null);
      throw err;
    }
    onOpen();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onOpen();
      buf += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let type = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const i = line.indexOf(":");
          const field = i < 0 ? line : line.slice(0, i);
          const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
          if (field === "event") type = value;
          else if (field === "data") data.push(value);
        }
        if (data.length) onEvent(type, data.join("\n"));
      }
    }
  }

  /**
   * Whether an HTTP status refuses a view's definition (400, 403, 404): that fails the view
   * alone (`onError`), and as the server did answer, the transport works for the others.
   */
  const refused = (status) => status >= 400 && status < 500 && status !== 401 && status !== 408 && status !== 429;

  /** Runs one SSE stream for a group: aborted on stop, silence or the group's end. */
  function sseStream(group, path, onEvent, onRefused) {
    const abort = new AbortController();
    let stopped = false;
    let idle = null;
    const quiet = () => {
      // Keep-alives come every 15 s; silence for much longer means a dead connection.
      clearTimeout(idle);
      idle = setTimeout(() => abort.abort(), 45000);
    };
    readSse(path(), abort.signal, quiet, onEvent)
      .then(() => true, (e) => {
        if (!onRefused || !refused(e.status)) return true;
        onRefused(e);
        return false;
      })
      .then((end) => {
        clearTimeout(idle);
        if (!stopped && end) group.ended();
      });
    return { stop() { stopped = true; clearTimeout(idle); abort.abort(); } };
  }

  function openSse(failed) {
    if (!sseSupported()) return failed();
    fallbackGroup("sse", failed,
      (group) => sseStream(group, () => `/events?${changesQuery(mergedSince())}`, (type, data) => {
        let frame;
        try { frame = JSON.parse(data); } catch { return; }
        if (type === "subscribed") {
          // Working from here: the server follows the topics (an OK answer alone is not that).
          group.works();
          for (const [t, k] of cursors) if (isAfter(frame.cursor, k)) cursors.set(t, frame.cursor);
        } else if (type === "refresh_needed") {
          try { onRefreshNeeded(frame.topic, frame.reason); } catch (e) { console.error(e); }
          cursors.set(frame.topic, null);
          if (onSnapshot) needSnapshot.add(frame.topic);
        } else if (frame.op) {
          deliver(frame, true);
        }
      }),
      (v, group) => sseStream(group, () => `/events?${v.query()}`, (type, data) => {
        let frame;
        try { frame = JSON.parse(data); } catch { return; }
        if (type === "view" || type === "view_delta" || type === "refresh_needed") {
          group.works();
          v.receive({ ...frame, type });
        }
      }, (e) => { v.fail(errorOf(e)); group.works(); }),
    );
  }

  function errorOf(e) {
    const body = e.body && e.body.error;
    return { type: "error", code: (body && body.code) || `http_${e.status}`, message: (body && body.message) || e.message };
  }

  // ---- long-polling (README "Without a WebSocket") --------------------------------------------

  /**
   * Runs one poll loop for a group. `next(since, body)` handles an answer and returns the next
   * `since`; `expired()` handles a 410 and returns the `since` to go on from.
   */
  function pollLoop(group, query, first, next, expired, onRefused) {
    const abort = new AbortController();
    let stopped = false;
    let since = first();
    (async () => {
      for (;;) {
        const q = query(since);
        q.set("wait", since ? String(pollWait) : "0");
        const res = await fetch(`${base}/api/changes?${q}`, { headers: headers(), signal: abort.signal, cache: "no-store" });
        if (stopped || group.stopped) return false;
        if (res.status === 410) {
          since = expired();
          continue;
        }
        if (res.status === 401 && typeof token === "function") {
          // Expired meanwhile: ask for a fresh token and go on from `since`.
          const old = tokenNow;
          if ((await freshToken()) !== old) continue;
        }
        if (onRefused && refused(res.status)) {
          const err = new Error(`GET /api/changes: HTTP ${res.status}`);
          err.status = res.status;
          err.body = await res.json().catch(() => null);
          onRefused(err);
          group.works();
          return false;
        }
        if (!res.ok) throw new Error(`GET /api/changes: HTTP ${res.status}`);
        const body = await res.json();
        if (stopped || group.stopped) return false;
        group.works();
        since = next(body);
      }
    })()
      .then((end) => end, () => true)
      .then((end) => { if (!stopped && end) group.ended(); });
    return { stop() { stopped = true; abort.abort(); } };
  }

  function openPoll(failed) {
    if (typeof fetch === "undefined") return failed();
    fallbackGroup("poll", failed,
      (group) => pollLoop(group, changesQuery, mergedSince,
        (body) => {
          for (const event of body.events) deliver(event, true);
          for (const [t, k] of cursors) if (isAfter(body.cursor, k)) cursors.set(t, body.cursor);
          return body.cursor;
        },
        () => {
          for (const t of topics) {
            try { onRefreshNeeded(t, "cursor_expired"); } catch (e) { console.error(e); }
            cursors.set(t, null);
            if (onSnapshot) needSnapshot.add(t);
          }
          return null;
        }),
      (v, group) => pollLoop(group, (since) => v.query(since), () => v.resumeFrom(),
        (body) => {
          for (const frame of body.events) v.receive(frame);
          return body.cursor;
        },
        () => { v.awaiting = true; v.cursor = null; return null; },
        (e) => v.fail(errorOf(e))),
    );
  }

  // ---- views (PROTOCOL §9; README "Live views from the browser") ------------------------------

  const DEFINITION_KEYS = ["topic", "filter", "order", "limit", "after", "count"];

  /** Keeps `rows` of one view current; the transports hand it every frame of its wire name. */
  class View {
    constructor(name, definition, onChange, onError) {
      this.name = name;
      this.generation = 1;
      this.onChange = onChange;
      this.onError = onError;
      this.rows = [];
      this.count = null;
      this.next = null;
      this.cursor = null;
      this.loaded = false;
      this.error = null;
      this.closed = false;
      this.setDefinition(definition);
    }

    setDefinition(definition) {
      if (!definition || typeof definition.topic !== "string") throw new Error("pgfeed view: a definition needs a topic");
      const d = {};
      for (const k of DEFINITION_KEYS) if (definition[k] !== undefined) d[k] = definition[k];
      this.definition = Object.freeze(d);
      // Frames of an earlier definition may still be on their way: a new definition gets a new
      // wire name, so they find no view and are dropped.
      this.wire = this.generation === 1 ? this.name : `${this.name}-${this.generation}`;
      // Deltas apply only to the rows they were computed from: until this definition's first
      // `view`, there are none.
      this.awaiting = true;
      this.cursor = null;
    }

    /** The `since` to (re)subscribe with: the last cursor, unless a fresh `view` is needed. */
    resumeFrom() {
      return this.awaiting ? null : this.cursor;
    }

    subscribeFrame() {
      const frame = { action: "subscribe", id: `view:${this.wire}`, view: this.wire, ...this.definition };
      const since = this.resumeFrom();
      if (since) frame.since = since;
      return frame;
    }

    /** The SSE / long-poll query: `filter.<column>=<op.value>` per filter entry. */
    query(since = this.resumeFrom()) {
      const d = this.definition;
      const q = new URLSearchParams({ view: this.wire, topic: d.topic });
      for (const [col, cond] of Object.entries(d.filter || {})) q.set(`filter.${col}`, cond);
      if (d.order) q.set("order", d.order);
      if (d.limit != null) q.set("limit", String(d.limit));
      if (d.count) q.set("count", "true");
      if (d.after != null) q.set("after", d.after);
      if (since) q.set("since", since);
      return q;
    }

    receive(frame) {
      if (this.closed) return;
      if (frame.type === "view") return this.replace(frame);
      if (frame.type === "refresh_needed") return this.expire();
      if (frame.type !== "view_delta" || this.awaiting) return;
      // A count that followed its rows comes at their cursor, with no ops.
      const countOnly = frame.cursor === this.cursor && frame.ops.length === 0 && frame.count != null;
      if (this.cursor != null && !isAfter(frame.cursor, this.cursor) && !countOnly) return; // had it (a resume overlaps)
      const rows = this.rows;
      for (const op of frame.ops) {
        const ok = op.op === "exit" ? this.at(op.from, op.key) && rows.splice(op.from, 1)
          : op.op === "enter" ? op.to >= 0 && op.to <= rows.length && rows.splice(op.to, 0, op.row)
          : op.op === "update" ? this.at(op.from, op.key) && rows.splice(op.from, 1) && op.to >= 0 && op.to <= rows.length && rows.splice(op.to, 0, op.row)
          : false;
        if (!ok) {
          // Rows that no longer agree with the server's: start this view over from a fresh `view`.
          console.warn("pgfeed: view", this.name, "out of step at", frame.cursor, op);
          return this.expire();
        }
      }
      if ("count" in frame) this.count = frame.count;
      if ("next" in frame) this.next = frame.next;
      this.cursor = frame.cursor;
      this.emit({ type: "delta", ops: frame.ops });
    }

    /** Whether rows[i] is the row with primary key `key` (checked when the row shows its key). */
    at(i, key) {
      const row = this.rows[i];
      if (row === undefined) return false;
      return key == null || !row || typeof row !== "object" || !("id" in row) || String(row.id) === String(key);
    }

    replace(frame) {
      this.rows = Array.isArray(frame.rows) ? frame.rows.slice() : [];
      this.count = frame.count ?? null;
      this.next = frame.next ?? null;
      this.cursor = frame.cursor ?? null;
      this.awaiting = false;
      this.loaded = true;
      this.error = null;
      this.emit({ type: "view", ops: null });
    }

    /** The cursor cannot be resumed from (or the rows are out of step): ask for a fresh `view`. */
    expire() {
      this.awaiting = true;
      this.cursor = null;
      current?.addView?.(this);
    }

    fail(frame) {
      this.error = { code: frame.code, message: frame.message };
      console.warn("pgfeed: view", this.name, frame.code, frame.message);
      if (this.onError) {
        try { this.onError(this.error); } catch (e) { console.error(e); }
      }
    }

    emit(change) {
      const full = { ...change, count: this.count, next: this.next, cursor: this.cursor };
      try { this.onChange(this.rows, full); } catch (e) { console.error(e); }
    }
  }

  /** The handle `feed.view` returns: the view's state, read-only, and what may be done with it. */
  function viewHandle(v) {
    return {
      get name() { return v.name; },
      get definition() { return v.definition; },
      get rows() { return v.rows; },
      get count() { return v.count; },
      get next() { return v.next; },
      get cursor() { return v.cursor; },
      get loaded() { return v.loaded; },
      get error() { return v.error; },
      update(definition) {
        if (v.closed) throw new Error("pgfeed view: closed");
        const old = v.wire;
        views.delete(old);
        current?.removeView?.(v, old);
        v.generation += 1;
        v.setDefinition(definition);
        v.error = null;
        views.set(v.wire, v);
        current?.addView?.(v);
      },
      close() {
        if (v.closed) return;
        v.closed = true;
        views.delete(v.wire);
        current?.removeView?.(v, v.wire);
      },
    };
  }

  function view(definition, onChange = () => {}, onError = null) {
    if (closed) throw new Error("pgfeed: the feed is closed");
    if (onChange && typeof onChange === "object") ({ onChange = () => {}, onError = null } = onChange);
    viewNames += 1;
    const name = definition.name || `v${viewNames}`;
    if ([...views.values()].some((v) => v.name === name)) throw new Error(`pgfeed view: ${name} is already open`);
    const v = new View(name, definition, onChange, onError);
    views.set(v.wire, v);
    current?.addView?.(v);
    return viewHandle(v);
  }

  start();

  return {
    /** Stops for good: no more callbacks. */
    close() {
      closed = true;
      clearTimeout(timer);
      clearTimeout(probe);
      if (current) current.stop();
      current = null;
    },
    /** The current status: connecting | connected | offline | fallback. */
    get status() { return status; },
    /** Opens a live view (PROTOCOL §9): see "Views" at the top of this file. */
    view,
    /** Each topic's last cursor (for saving and passing to a later session's server calls). */
    get cursors() { return Object.fromEntries(cursors); },
  };
}

export { STATUS, compareCursors };
