// Drives the view API of web/client.js (`feed.view`) in Debian's headless Chromium for
// tests/it/browser.rs.
//
//   node view-test.mjs SERVER_URL MODE DEFINITION_JSON
//
// MODE as in client-test.mjs: "ws", "no-ws" (SSE), "no-ws-no-sse" (long-polling).
// Prints {"ready": status} once the feed is up; then reads commands, one JSON line each, and
// answers each with one JSON line:
//   {"cmd": "await", "ids": [...], "count": N}  → waits until the view's rows have exactly these
//                                                 ids (and this count), then
//                                                 {"ids", "count", "next", "statuses", "changes"}
//                                                 (what it has when that never happens)
//   {"cmd": "update", "definition": {...}}      → v.update(definition); {"ok": true}
//   {"cmd": "next"}                             → v.update({...v.definition, after: v.next}); {"ok": true}
//   {"cmd": "quit"}
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [serverUrl, mode, definitionJson] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const PATIENCE_MS = 30000;

const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const out = (v) => process.stdout.write(JSON.stringify(v) + "\n");

try {
  const page = await browser.newPage();
  page.on("console", (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
  if (mode === "no-ws" || mode === "no-ws-no-sse") {
    // Like a proxy that breaks WebSockets: every attempt errors and closes without opening.
    await page.addInitScript(() => {
      window.WebSocket = class BlockedWebSocket extends EventTarget {
        constructor() {
          super();
          this.readyState = 0;
          setTimeout(() => {
            this.readyState = 3;
            this.onerror?.(new Event("error"));
            this.onclose?.({ code: 1006, reason: "blocked by the test" });
          }, 10);
        }
        send() { throw new Error("not open"); }
        close() {}
      };
    });
  }
  if (mode === "no-ws-no-sse") {
    await page.route("**/events?*", (route) => route.fulfill({ status: 502, body: "no streaming here" }));
  }
  await page.goto(`${serverUrl}/healthz`);
  const ready = await page.evaluate(
    async ({ definition, patience }) => {
      const { connect } = await import("/client.js");
      window.statuses = [];
      window.changes = [];
      return await new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error(`not connected: ${window.statuses}`)), patience);
        window.feed = connect({
          backoffMax: 1000,
          onStatus: (s, detail) => {
            window.statuses.push(detail ? `${s}:${detail}` : s);
            if (s === "connected" || s === "fallback") resolve(window.statuses.at(-1));
          },
        });
        // The rows as onChange sees them, checked against the view's own after every change.
        window.v = window.feed.view(definition, (rows, change) => {
          window.changes.push({ type: change.type, ops: change.ops ? change.ops.length : null });
          if (rows !== window.v.rows) console.error("onChange got other rows than v.rows");
        }, (e) => console.error("view error", e.code, e.message));
      });
    },
    { definition: JSON.parse(definitionJson), patience: PATIENCE_MS },
  );
  out({ ready });

  const state = () => page.evaluate(() => ({
    ids: window.v.rows.map((r) => r.id),
    count: window.v.count,
    next: window.v.next,
    statuses: window.statuses,
    changes: window.changes,
  }));
  for await (const line of createInterface({ input: process.stdin })) {
    const cmd = JSON.parse(line);
    if (cmd.cmd === "quit") break;
    if (cmd.cmd === "await") {
      await page.waitForFunction(({ ids, count }) => JSON.stringify(window.v.rows.map((r) => r.id)) === JSON.stringify(ids)
        && (count == null || window.v.count === count), { ids: cmd.ids, count: cmd.count ?? null }, { timeout: PATIENCE_MS, polling: 50 })
        .catch(() => {});
      out(await state());
    } else if (cmd.cmd === "update") {
      await page.evaluate((d) => window.v.update(d), cmd.definition);
      out({ ok: true });
    } else if (cmd.cmd === "next") {
      await page.evaluate(() => window.v.update({ ...window.v.definition, after: window.v.next }));
      out({ ok: true });
    }
  }
} catch (e) {
  out({ error: String(e && e.stack || e) });
  process.exitCode = 1;
} finally {
  await browser.close();
}
