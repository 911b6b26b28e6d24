// docs/examples/study-session.html in Debian's headless Chromium (playwright-core from
// tests/browser, never a downloaded browser), against the server tests/it/socketio.rs started.
// The page and socket.io-client's browser bundle are served as if from pgfeed's own origin (the
// same-origin deployment the page describes): Playwright answers those two requests, everything
// else goes to the real server. psql writes; the page must show every message and file once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { readFileSync, existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const PLAYWRIGHT = here("../browser/node_modules/playwright-core/index.mjs");
const PAGE = readFileSync(here("../../docs/examples/study-session.html"), "utf8");
const BUNDLE = readFileSync(here("node_modules/socket.io-client/dist/socket.io.min.js"), "utf8");
const URL_ = process.env.PGFEED_URL;
const DB = process.env.PGFEED_DB;
const SECRET = process.env.PGFEED_JWT_SECRET;
const PATIENCE = 30_000;

if (!existsSync(PLAYWRIGHT)) throw new Error("playwright-core is missing: npm ci --prefix tests/browser");
const { chromium } = await import(PLAYWRIGHT);

function sql(q) {
  return execFileSync("psql", ["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", DB, "-c", q], {
    encoding: "utf8",
  }).trim();
}
const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
function jwt(claims) {
  const head = b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims);
  return head + "." + createHmac("sha256", SECRET).update(head).digest("base64url");
}
const message = (study, body) =>
  Number(sql(`insert into messages(study_id, author, body) values (${study}, 'ana', '${body}') returning id`));
const file = (study, name) =>
  Number(
    sql(`insert into files(study_id, name, content_type, size_bytes, sha256)
         values (${study}, '${name}', 'text/csv', 23, repeat('0', 64)) returning id`),
  );

/** The ids the page lists under `#list`, in order. */
const listed = (page, list) =>
  page.$$eval(`#${list} li`, (items) => items.map((li) => Number(li.dataset.id)));

/** Waits until the page lists exactly `ids` under `#list`. */
async function shows(page, list, ids) {
  await page.waitForFunction(
    ({ list, ids }) => {
      const now = [...document.querySelectorAll(`#${list} li`)].map((li) => Number(li.dataset.id));
      return now.length >= ids.length && ids.every((id) => now.includes(id));
    },
    { list, ids },
    { timeout: PATIENCE },
  );
  assert.deepEqual(await listed(page, list), ids);
}

for (const transports of [null, "websocket"]) {
  test(`study-session.html (${transports ?? "polling, then websocket"}): the room live, and nothing lost or doubled across a drop`, async () => {
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        // A document Playwright fulfils has no address Chromium can place, so its Local Network
        // Access checks take it for a public site and block its WebSocket to 127.0.0.1. Served
        // for real from the same origin (as the page describes), it is not blocked.
        "--disable-features=LocalNetworkAccessChecks",
      ],
    });
    try {
      const study = Number(
        sql(`insert into studies(label, title) values ('room-${randomUUID()}', 'Sleep and memory') returning id`),
      );
      const m0 = message(study, "before anyone came");
      const f0 = file(study, "consent.pdf");

      const page = await browser.newPage();
      page.on("console", (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
      await page.route(`${URL_}/examples/study-session.html*`, (r) =>
        r.fulfill({ contentType: "text/html", body: PAGE }),
      );
      await page.route(`${URL_}/examples/socket.io.min.js`, (r) =>
        r.fulfill({ contentType: "text/javascript", body: BUNDLE }),
      );
      const token = jwt({ role: "member", studies: [study], exp: Math.floor(Date.now() / 1000) + 3600 });
      const query = `study=${study}&token=${token}` + (transports ? `&transports=${transports}` : "");
      await page.goto(`${URL_}/examples/study-session.html?${query}`);

      // The snapshot: what was there before the page opened.
      await page.waitForSelector('#status[data-state="live"]', { timeout: PATIENCE });
      assert.equal(await page.textContent("#title"), "Sleep and memory");
      await shows(page, "messages", [m0]);
      await shows(page, "files", [f0]);
      // Every event the page's socket receives from here on, to see that none comes twice (the
      // page itself would hide a repeat, as it lists rows by id).
      await page.evaluate(() => {
        window.created = [];
        window.socket.onAny((event, e) => event === "message_created" && window.created.push(e.id));
      });

      // Live: written by psql, shown by the page.
      const m1 = message(study, "hello from psql");
      const f1 = file(study, "scores.csv");
      await shows(page, "messages", [m0, m1]);
      await shows(page, "files", [f0, f1]);
      assert.match(await page.textContent(`#messages li[data-id="${m1}"]`), /hello from psql/);

      // The network drops; written meanwhile; the page reconnects by itself and resumes.
      await page.evaluate(() => window.socket.io.engine.close());
      const m2 = message(study, "while you were away");
      await shows(page, "messages", [m0, m1, m2]);
      const m3 = message(study, "back again");
      await shows(page, "messages", [m0, m1, m2, m3]);
      await page.waitForSelector('#status[data-state="live"]', { timeout: PATIENCE });
      assert.deepEqual(await page.evaluate(() => window.created), [m1, m2, m3]);
    } finally {
      await browser.close();
    }
  });
}
