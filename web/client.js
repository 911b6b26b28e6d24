// pgfeed browser client: a dependency-free ES module, served by every pgfeed server at /client.js.
//
//   import { connect } from "/client.js";
//   const feed = connect({
//     topics: ["studies", "studies:42"],
//     onEvent: (event) => console.log(event.type, event.data),
//     onSnapshot: (topic, data, cursor) => render(topic, data),
//     onStatus: (status) => badge.textContent = status, // connecting | connected | offline | fallback
//   });
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
  if (!topics.length) throw new Error("pgfeed connect: topics must name at least one topic");

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
    current = { stop() { stopped = true; clearInterval(pinger); ws.close(1000); } };
    ws.onopen = () => {
      opened = true;
      wsFailures = 0;
      failures = 0;
      for (const topic of topics) subscribe(topic);
      pinger = setInterval(() => {
        if (Date.now() - lastHeard > pingEvery * 1.5) return ws.close(4000, "no pong"); // dead peer
        ws.send(JSON.stringify({ action: "ping" }));
      }, pingEvery);
    };
    ws.onmessage = (m) => {
      lastHeard = Date.now();
      let frame;
      try { frame = JSON.parse(m.data); } catch { return; }
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

  function openSse(failed) {
    if (typeof fetch === "undefined" || typeof ReadableStream === "undefined" || typeof TextDecoder === "undefined") {
      return failed();
    }
    const abort = new AbortController();
    let working = false;
    let stopped = false;
    let idle = null;
    current = { stop() { stopped = true; clearTimeout(idle); abort.abort(); } };
    const quiet = () => {
      // Keep-alives come every 15 s; silence for much longer means a dead connection.
      clearTimeout(idle);
      idle = setTimeout(() => abort.abort(), 45000);
    };
    const handle = (type, data) => {
      let frame;
      try { frame = JSON.parse(data); } catch { return; }
      if (type === "subscribed") {
        working = true;
        failures = 0;
        for (const [t, k] of cursors) if (isAfter(frame.cursor, k)) cursors.set(t, frame.cursor);
        setStatus(STATUS.FALLBACK, "sse");
        probeWs(true);
      } else if (type === "refresh_needed") {
        try { onRefreshNeeded(frame.topic, frame.reason); } catch (e) { console.error(e); }
        cursors.set(frame.topic, null);
        if (onSnapshot) needSnapshot.add(frame.topic);
      } else if (frame.op) {
        deliver(frame, true);
      }
    };
    (async () => {
      const res = await fetch(`${base}/events?${changesQuery(mergedSince())}`, { headers: headers(), signal: abort.signal, cache: "no-store" });
      if (!res.ok || !res.body) throw new Error(`GET /events: HTTP ${res.status}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      quiet();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        quiet();
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
          if (data.length) handle(type, data.join("\n"));
        }
      }
    })()
      .catch(() => {})
      .finally(() => {
        clearTimeout(idle);
        if (stopped || closed) return;
        if (working) retry(true); // the stream ended (server restart, slow consumer): resume
        else failed(); // never got going: try the next transport
      });
  }

  // ---- long-polling (README "Without a WebSocket") --------------------------------------------

  function openPoll(failed) {
    if (typeof fetch === "undefined") return failed();
    const abort = new AbortController();
    let working = false;
    let stopped = false;
    let since = mergedSince();
    current = { stop() { stopped = true; abort.abort(); } };
    (async () => {
      for (;;) {
        const q = changesQuery(since);
        q.set("wait", since ? String(pollWait) : "0");
        const res = await fetch(`${base}/api/changes?${q}`, { headers: headers(), signal: abort.signal, cache: "no-store" });
        if (res.status === 410) {
          for (const t of topics) {
            try { onRefreshNeeded(t, "cursor_expired"); } catch (e) { console.error(e); }
            cursors.set(t, null);
            if (onSnapshot) needSnapshot.add(t);
          }
          since = null;
          continue;
        }
        if (res.status === 401 && working && typeof token === "function") {
          // Expired meanwhile: ask for a fresh token and go on from `since`.
          const old = tokenNow;
          if ((await freshToken()) !== old) continue;
        }
        if (!res.ok) throw new Error(`GET /api/changes: HTTP ${res.status}`);
        const body = await res.json();
        if (!working) {
          working = true;
          failures = 0;
          setStatus(STATUS.FALLBACK, "poll");
          probeWs(true);
        }
        for (const event of body.events) deliver(event, true);
        for (const [t, k] of cursors) if (isAfter(body.cursor, k)) cursors.set(t, body.cursor);
        since = body.cursor;
        if (stopped || closed) return;
      }
    })()
      .catch(() => {})
      .finally(() => {
        if (stopped || closed) return;
        if (working) retry(true);
        else failed();
      });
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
    /** Each topic's last cursor (for saving and passing to a later session's server calls). */
    get cursors() { return Object.fromEntries(cursors); },
  };
}

export { STATUS, compareCursors };
