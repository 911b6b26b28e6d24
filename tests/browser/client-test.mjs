// Drives web/client.js in Debian's headless Chromium for tests/it/browser.rs.
//
//   node client-test.mjs SERVER_URL MODE TOPIC...
//
// MODE: "ws" (everything allowed), "no-ws" (window.WebSocket always fails), "no-ws-no-sse"
// (WebSocket fails and GET /events is refused, leaving long-polling).
// Prints one JSON line when the client is up ({"ready": status}); then reads commands, one JSON
// line each, from stdin, and answers each with one JSON line:
//   {"cmd": "await", "count": N}  → waits for N events, lets 300 ms pass, then
//                                   {"ids": [...], "cursors": [...], "statuses": [...]}
//   {"cmd": "quit"}
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [serverUrl, mode, ...topics] = process.argv.slice(2);
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
  // Any page of the server's origin will do: client.js is imported from the same origin.
  await page.goto(`${serverUrl}/healthz`);
  const ready = await page.evaluate(
    async ({ topics, patience }) => {
      const { connect } = await import("/client.js");
      window.received = [];
      window.statuses = [];
      return await new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error(`not connected: ${window.statuses}`)), patience);
        window.feed = connect({
          topics,
          backoffMax: 1000,
          onEvent: (e) => window.received.push({ id: e.id, cursor: e.cursor, topic: e.topic }),
          onStatus: (s, detail) => {
            window.statuses.push(detail ? `${s}:${detail}` : s);
            if (s === "connected" || s === "fallback") resolve(window.statuses.at(-1));
          },
        });
      });
    },
    { topics, patience: PATIENCE_MS },
  );
  out({ ready });

  for await (const line of createInterface({ input: process.stdin })) {
    const cmd = JSON.parse(line);
    if (cmd.cmd === "quit") break;
    if (cmd.cmd === "await") {
      await page.waitForFunction((n) => window.received.length >= n, cmd.count, { timeout: PATIENCE_MS, polling: 50 })
        .catch(() => {});
      await page.waitForTimeout(300);
      out(await page.evaluate(() => ({
        ids: window.received.map((e) => e.id),
        cursors: window.received.map((e) => e.cursor),
        statuses: window.statuses,
      })));
    }
  }
} catch (e) {
  out({ error: String(e && e.stack || e) });
  process.exitCode = 1;
} finally {
  await browser.close();
}
