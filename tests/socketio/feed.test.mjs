// socket.io-client 4.x against pgfeed's /socket.io/ (PROTOCOL §10), over long-polling and over
// WebSocket, with psql as the writer. Run by tests/it/socketio.rs, which starts the server and a
// throwaway database and passes them in:
//   PGFEED_URL (http://127.0.0.1:PORT), PGFEED_DB (a libpq URL for psql),
//   PGFEED_JWT_SECRET (the server's secret: tokens are made here), PGFEED_MAX_SUBSCRIPTIONS.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { io } from "socket.io-client";

const URL = process.env.PGFEED_URL;
const DB = process.env.PGFEED_DB;
const SECRET = process.env.PGFEED_JWT_SECRET;
const MAX_SUBSCRIPTIONS = Number(process.env.PGFEED_MAX_SUBSCRIPTIONS || 100);
// Generous: the machine is shared with builds. Nothing asserts a duration.
const PATIENCE = 30_000;

if (!URL || !DB || !SECRET) throw new Error("run me from tests/it/socketio.rs (PGFEED_URL, PGFEED_DB, PGFEED_JWT_SECRET)");

/** An external writer: one psql statement, its unaligned output. */
function sql(q) {
  return execFileSync("psql", ["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", DB, "-c", q], {
    encoding: "utf8",
  }).trim();
}

const b64 = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
/** An HS256 token for the server's secret. */
function jwt(claims) {
  const head = b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims);
  return head + "." + createHmac("sha256", SECRET).update(head).digest("base64url");
}
const inSeconds = (s) => Math.floor(Date.now() / 1000) + s;
const ADMIN = jwt({ role: "admin", exp: inSeconds(3600) });

function newStudy() {
  return Number(sql(`insert into studies(label, title) values ('sio-${randomUUID()}', 'Socket.IO') returning id`));
}
function newMessage(study, body) {
  return Number(sql(`insert into messages(study_id, author, body) values (${study}, 'ana', '${body}') returning id`));
}

/** A socket that records every event it receives (name, then its arguments). */
function open(transports, auth, extra = {}) {
  const socket = io(URL, { transports, auth, forceNew: true, reconnection: false, ...extra });
  socket.seen = [];
  socket.onAny((event, ...args) => socket.seen.push({ event, args }));
  return socket;
}

/** Resolves once `socket` is connected; rejects with the connect_error. */
function connected(socket) {
  return new Promise((resolve, reject) => {
    if (socket.connected) return resolve(socket);
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", reject);
  });
}

/** The first recorded event (from index `from`) that matches, waiting for it. */
async function seen(socket, match, from = 0) {
  const deadline = Date.now() + PATIENCE;
  for (;;) {
    const i = socket.seen.findIndex((e, n) => n >= from && match(e));
    if (i >= 0) return socket.seen[i];
    if (Date.now() > deadline) {
      throw new Error(`not seen; got ${JSON.stringify(socket.seen.map((e) => e.event))}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

const ack = (socket, event, data) => socket.timeout(PATIENCE).emitWithAck(event, data);
const messageEvents = (socket, study) =>
  socket.seen.filter((e) => e.event.startsWith("message_") && e.args[0].data.study_id === study);

for (const transports of [["polling"], ["websocket"]]) {
  const name = transports[0];

  test(`${name}: subscribe with a snapshot, then live events under their type with one argument`, async () => {
    const study = newStudy();
    const first = newMessage(study, "before");
    const s = await connected(open(transports, { token: ADMIN }));
    try {
      const answer = await ack(s, "subscribe", { topic: `studies:${study}`, snapshot: true });
      assert.equal(typeof answer.cursor, "string", JSON.stringify(answer));
      assert.equal(answer.topic, `studies:${study}`);
      const snap = await seen(s, (e) => e.event === "snapshot");
      assert.equal(snap.args.length, 1);
      assert.equal(snap.args[0].topic, `studies:${study}`);
      assert.equal(snap.args[0].data.study.id, study);
      assert.deepEqual(snap.args[0].data.messages.map((m) => m.id), [first]);
      assert.equal(snap.args[0].id, undefined, "no internal id leaks into the snapshot");

      // A refresh answers with the new snapshot's cursor, and sends it.
      const refreshed = await ack(s, "refresh", { topic: `studies:${study}` });
      assert.equal(typeof refreshed.cursor, "string", JSON.stringify(refreshed));
      await seen(s, (e) => e.event === "snapshot" && e.args[0].cursor === refreshed.cursor);

      const live = newMessage(study, "live");
      sql(`update messages set body = 'edited' where id = ${live}`);
      const updated = await seen(s, (e) => e.event === "message_updated");
      const events = messageEvents(s, study);
      assert.deepEqual(
        events.map((e) => [e.event, e.args[0].id]),
        [["message_created", live], ["message_updated", live]],
      );
      for (const e of events) assert.equal(e.args.length, 1);
      assert.equal(updated.args[0].data.body, "edited");
      assert.equal(updated.args[0].topic, `studies:${study}`);
      assert.equal(typeof updated.args[0].cursor, "string");
    } finally {
      s.disconnect();
    }
  });

  test(`${name}: a row of a megabyte arrives whole`, async () => {
    const study = newStudy();
    const s = await connected(open(transports, { token: ADMIN }));
    try {
      assert.ok((await ack(s, "subscribe", { topic: `studies:${study}` })).cursor);
      const id = Number(
        sql(`insert into messages(study_id, author, body) values (${study}, 'ana', repeat('x', 1000000)) returning id`),
      );
      const e = await seen(s, (e) => e.event === "message_created" && e.args[0].id === id);
      assert.equal(e.args[0].data.body.length, 1_000_000);
    } finally {
      s.disconnect();
    }
  });

  test(`${name}: errors are acks with a code; unsubscribe is acknowledged and ends the events`, async () => {
    const s = await connected(open(transports, { token: ADMIN }));
    try {
      assert.equal((await ack(s, "subscribe", { topic: "no_such_table" })).error.code, "unknown_topic");
      assert.equal((await ack(s, "subscribe", {})).error.code, "bad_request");
      assert.equal((await ack(s, "subscribe", "studies")).error.code, "bad_request");
      assert.equal((await ack(s, "subscribe", { topic: "studies", since: "garbage" })).error.code, "bad_request");
      assert.equal((await ack(s, "launch", { topic: "studies" })).error.code, "bad_request");

      const [a, b] = [newStudy(), newStudy()];
      assert.ok((await ack(s, "subscribe", { topic: `studies:${a}` })).cursor);
      assert.deepEqual(await ack(s, "unsubscribe", { topic: `studies:${a}` }), { topic: `studies:${a}` });
      assert.ok((await ack(s, "subscribe", { topic: `studies:${b}` })).cursor);
      newMessage(a, "after unsubscribe");
      const mark = newMessage(b, "marker");
      // Committed after the one on `a`, and delivered in commit order: `a`'s would have come first.
      await seen(s, (e) => e.event === "message_created" && e.args[0].id === mark);
      assert.deepEqual(messageEvents(s, a), []);
    } finally {
      s.disconnect();
    }
  });

  test(`${name}: a transport that drops and a resume with since lose and repeat nothing`, async () => {
    const study = newStudy();
    const s = open(transports, { token: ADMIN }, { reconnection: true, reconnectionDelay: 200, reconnectionDelayMax: 500 });
    try {
      await connected(s);
      assert.ok((await ack(s, "subscribe", { topic: `studies:${study}` })).cursor);
      const m1 = newMessage(study, "one");
      const got1 = await seen(s, (e) => e.event === "message_created" && e.args[0].id === m1);
      const cursor = got1.args[0].cursor;

      const reconnected = new Promise((resolve) => s.io.once("reconnect", resolve));
      s.io.engine.close(); // the network drops; the client reconnects by itself
      // Written while the socket is down (psql blocks this process, so no reconnect happens meanwhile).
      const m2 = newMessage(study, "two");
      const m3 = newMessage(study, "three");
      await reconnected;
      await connected(s);
      assert.ok((await ack(s, "subscribe", { topic: `studies:${study}`, since: cursor })).cursor);
      const m4 = newMessage(study, "four");
      await seen(s, (e) => e.event === "message_created" && e.args[0].id === m4);
      assert.deepEqual(
        messageEvents(s, study).map((e) => e.args[0].id),
        [m1, m2, m3, m4],
      );
    } finally {
      s.disconnect();
    }
  });

  test(`${name}: at its token's exp the server disconnects; a fresh token and since resume exactly`, async () => {
    const study = newStudy();
    const s = await connected(open(transports, { token: jwt({ role: "admin", exp: inSeconds(3) }) }));
    try {
      const gone = new Promise((resolve) => s.once("disconnect", resolve));
      assert.ok((await ack(s, "subscribe", { topic: `studies:${study}` })).cursor);
      const m1 = newMessage(study, "one");
      const got1 = await seen(s, (e) => e.event === "message_created" && e.args[0].id === m1);
      const closing = await seen(s, (e) => e.event === "closing");
      assert.equal(closing.args[0].code, 4001);
      assert.equal(await gone, "io server disconnect");
      const m2 = newMessage(study, "missed");
      s.auth = { token: ADMIN };
      s.connect();
      await connected(s);
      assert.ok((await ack(s, "subscribe", { topic: `studies:${study}`, since: got1.args[0].cursor })).cursor);
      const m3 = newMessage(study, "three");
      await seen(s, (e) => e.event === "message_created" && e.args[0].id === m3);
      assert.deepEqual(messageEvents(s, study).map((e) => e.args[0].id), [m1, m2, m3]);
    } finally {
      s.disconnect();
    }
  });

  test(`${name}: a live view sends its rows, then deltas`, async () => {
    const study = newStudy();
    const m1 = newMessage(study, "a");
    const s = await connected(open(transports, { token: ADMIN }));
    try {
      const answer = await ack(s, "subscribe", {
        topic: "messages",
        view: "main",
        filter: { study_id: `eq.${study}` },
        order: "id.desc",
        limit: 10,
        count: true,
      });
      assert.equal(answer.view, "main", JSON.stringify(answer));
      assert.equal(typeof answer.cursor, "string");
      const view = await seen(s, (e) => e.event === "view");
      assert.equal(view.args.length, 1);
      assert.deepEqual(view.args[0].rows.map((r) => r.id), [m1]);
      assert.equal(view.args[0].count, 1);
      const m2 = newMessage(study, "b");
      const delta = await seen(s, (e) => e.event === "view_delta");
      assert.equal(delta.args[0].view, "main");
      assert.deepEqual(
        delta.args[0].ops.map((o) => [o.op, Number(o.key), o.to]),
        [["enter", m2, 0]],
      );
      assert.equal(delta.args[0].count, 2);
      assert.deepEqual(await ack(s, "unsubscribe", { view: "main" }), { view: "main" });
    } finally {
      s.disconnect();
    }
  });
}

test("a tracked table with a text key: its events come under <table>_created", async () => {
  const table = `gadgets_${randomUUID().slice(0, 8)}`;
  sql(`create table ${table}(code text primary key, name text not null); select pgfeed.track('${table}')`);
  const s = await connected(open(["websocket"], { token: ADMIN }));
  try {
    assert.ok((await ack(s, "subscribe", { topic: table })).cursor);
    sql(`insert into ${table} values ('abc-1', 'sprocket')`);
    const e = await seen(s, (e) => e.event === `${table}_created`);
    assert.equal(e.args[0].id, "abc-1");
    assert.equal(e.args[0].data.name, "sprocket");
  } finally {
    s.disconnect();
  }
});

test("auth: no token, a bad token, or a forged one is a connect_error saying why", async () => {
  for (const auth of [{}, { token: "not-a-jwt" }, { token: ADMIN.slice(0, -2) + "xx" }]) {
    const s = open(["websocket"], auth);
    try {
      await assert.rejects(connected(s), (e) => {
        assert.match(e.message, /unauthorized/);
        return true;
      });
      assert.equal(s.connected, false);
    } finally {
      s.close();
    }
  }
});

test("a member may not subscribe to or view another study's room", async () => {
  const [mine, theirs] = [newStudy(), newStudy()];
  const s = await connected(open(["websocket"], { token: jwt({ role: "member", studies: [mine], exp: inSeconds(3600) }) }));
  try {
    assert.ok((await ack(s, "subscribe", { topic: `studies:${mine}` })).cursor);
    assert.equal((await ack(s, "subscribe", { topic: `studies:${theirs}` })).error.code, "forbidden");
    assert.equal((await ack(s, "subscribe", { topic: "messages" })).error.code, "forbidden");
    const view = { topic: "messages", view: "v", filter: { study_id: `eq.${theirs}` } };
    assert.equal((await ack(s, "subscribe", view)).error.code, "forbidden");
    newMessage(theirs, "secret");
    const mark = newMessage(mine, "mine");
    await seen(s, (e) => e.event === "message_created" && e.args[0].id === mark);
    assert.deepEqual(messageEvents(s, theirs), []);
  } finally {
    s.disconnect();
  }
});

test("too many subscriptions on one socket is an error ack, and the socket stays usable", async () => {
  const s = await connected(open(["websocket"], { token: ADMIN }));
  try {
    const studies = Array.from({ length: MAX_SUBSCRIPTIONS + 1 }, () => newStudy());
    const answers = [];
    for (const id of studies) answers.push(await ack(s, "subscribe", { topic: `studies:${id}` }));
    assert.ok(answers.slice(0, MAX_SUBSCRIPTIONS).every((a) => typeof a.cursor === "string"));
    assert.equal(answers.at(-1).error.code, "too_many_subscriptions");
    const mark = newMessage(studies[0], "still here");
    await seen(s, (e) => e.event === "message_created" && e.args[0].id === mark);
  } finally {
    s.disconnect();
  }
});

test("a flood of events: each is answered, refused as rate_limited, or the socket is cut off (1008)", async () => {
  const s = await connected(open(["websocket"], { token: ADMIN }));
  const other = await connected(open(["polling"], { token: ADMIN }));
  try {
    const answers = await Promise.all(
      Array.from({ length: 3000 }, () => ack(s, "ping", {}).catch((e) => ({ lost: e.message }))),
    );
    // Never left waiting: an answer, or the end of the socket.
    for (const a of answers) {
      if (a.lost) assert.equal(a.lost, "socket has been disconnected");
      else if (a.error) assert.equal(a.error.code, "rate_limited");
      else assert.deepEqual(a, {});
    }
    assert.ok(answers.some((a) => a.error || a.lost), "3000 at once is over the limits");
    if (answers.some((a) => a.lost)) {
      assert.equal(s.connected, false);
      const closing = s.seen.find((e) => e.event === "closing");
      if (closing) assert.equal(closing.args[0].code, 1008);
    }
    assert.ok((await ack(other, "subscribe", { topic: "studies" })).cursor);
  } finally {
    s.disconnect();
    other.disconnect();
  }
});

test("an event over 64 KiB disconnects the socket (1009); a binary attachment closes its connection; others go on", async () => {
  const s = await connected(open(["websocket"], { token: ADMIN }));
  const gone = new Promise((resolve) => s.once("disconnect", resolve));
  s.emit("subscribe", { topic: "studies", padding: "x".repeat(70 * 1024) });
  const closing = await seen(s, (e) => e.event === "closing");
  assert.equal(closing.args[0].code, 1009);
  await gone;

  // Binary attachments are not taken: the packet is dropped and the connection closed.
  const b = await connected(open(["websocket"], { token: ADMIN }));
  const bGone = new Promise((resolve) => b.once("disconnect", resolve));
  b.emit("subscribe", Buffer.from("binary"));
  await bGone;
  b.close();
  const c = await connected(open(["polling"], { token: ADMIN }));
  try {
    assert.ok((await ack(c, "subscribe", { topic: "studies" })).cursor);
  } finally {
    c.disconnect();
  }
});
