// Measures the admin page (GET /) of a running pgfeed in Debian's headless Chromium (never a
// downloaded browser), for README "Performance" (Live views):
//
//   node scripts/admin-page-bench.mjs SERVER_URL DATABASE_URL
//
// `target/release/pgfeed-bench admin-page` sets up a server on 1,000,000 studies and runs this;
// `pgfeed-bench admin-page --hold` only sets it up. Needs `npm ci --prefix tests/browser` (for
// playwright-core), `chromium` (apt, or CHROMIUM_PATH) and `psql`. It writes to the database: the
// bulk UPDATE appends "x" to 100,000 titles.
//
// Prints a table and one JSON line on stdout, progress on stderr:
// - first page visible: navigation start → the first study row on screen
// - sort change / filter change: the click → the table's first row is the one PostgreSQL puts
//   first for the new order or filter (text by code point, as PROTOCOL §9 orders it)
// - JS heap: CDP Performance.getMetrics after those, before and after a forced GC
// - longest main-thread task (PerformanceObserver "longtask") from a 100,000-row UPDATE of the
//   studies on the page until that change shows, plus 2 s
//
// The table rows are `#studies tbody tr[data-id]` (data-id is the study's id), the sort buttons
// `#studies th[data-sort=COLUMN] button`, the status filter `#status-filter`: the admin page's
// own markup (web/index.html, web/admin/table.js), kept stable for its tests and this script.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";

const require = createRequire(new URL("../tests/browser/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const [serverUrl, databaseUrl] = process.argv.slice(2);
if (!serverUrl || !databaseUrl) {
  process.stderr.write("usage: node scripts/admin-page-bench.mjs SERVER_URL DATABASE_URL\n");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const ROWS = "#studies tbody tr[data-id]";
/** How long any one step may take before the script reports it as not done. */
const PATIENCE_MS = 60000;
const BULK_ROWS = 100000;
/** After the bulk update shows, how long longtasks are still collected (the page may still be busy). */
const AFTERMATH_MS = 2000;

/**
 * A page whose main thread never yields (rendering a whole table at once) cannot answer its own
 * deadline: this one is kept outside it.
 */
function withPatience(promise) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ ms: null, rows: null, first: "(the page did not answer)" }), PATIENCE_MS + 15000);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

const progress = (msg) => process.stderr.write(`admin-page-bench: ${msg}\n`);

function psql(sql) {
  return execFileSync("psql", ["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", databaseUrl, "-c", sql], {
    encoding: "utf8",
  }).trim();
}

/** The row PostgreSQL puts first on the page's first page for a filter and order. */
function firstRow(where, order) {
  const [id, ...title] = psql(`select id, title from studies where ${where} order by ${order}, id limit 1`).split("|");
  return { id, title: title.join("|") };
}

const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-precise-memory-info",
  ],
});
const results = {};
const notes = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => process.stderr.write(`[page error] ${e.stack || e}\n`));
  await page.addInitScript(() => {
    window.__longtasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.__longtasks.push({ start: e.startTime, duration: e.duration });
    }).observe({ type: "longtask", buffered: true });
  });
  const cdp = await context.newCDPSession(page);
  await cdp.send("Performance.enable");

  /**
   * Runs `act` in the page, then polls every frame until the table's first visible row is `id`
   * (and shows `text`, when given); returns the ms from `act` (or from navigation start, for
   * none) to that frame, or null after PATIENCE_MS, with what the table showed.
   */
  const untilFirstRow = (id, text, act) => withPatience(page.evaluate(
      ({ ROWS, id, text, act, patience }) =>
        new Promise((resolve) => {
          const t0 = act ? performance.now() : 0;
          const first = () => [...document.querySelectorAll(ROWS)].find((tr) => tr.getClientRects().length > 0);
          const done = () => {
            const tr = first();
            if (!tr) return false;
            if (id !== null && tr.dataset.id !== String(id)) return false;
            return text === null || tr.textContent.includes(text);
          };
          const deadline = performance.now() + patience;
          const poll = () => {
            if (done()) return resolve({ ms: performance.now() - t0, rows: document.querySelectorAll(ROWS).length });
            if (performance.now() > deadline) {
              const tr = first();
              return resolve({ ms: null, rows: document.querySelectorAll(ROWS).length, first: tr ? tr.dataset.id : null });
            }
            requestAnimationFrame(poll);
          };
          if (act === "sort") document.querySelector('#studies th[data-sort="title"] button').click();
          if (act === "filter") {
            const select = document.getElementById("status-filter");
            select.value = "active";
            select.dispatchEvent(new Event("input", { bubbles: true }));
            select.dispatchEvent(new Event("change", { bubbles: true }));
          }
          poll();
        }),
      { ROWS, id, text, act, patience: PATIENCE_MS },
    ));

  progress(`opening ${serverUrl}`);
  await page.goto(serverUrl, { waitUntil: "commit" });
  const shown = await untilFirstRow(null, null, null);
  results.first_page_ms = shown.ms;
  results.first_page_rows = shown.rows;
  progress(`first page: ${JSON.stringify(shown)}`);

  if (shown.ms !== null) {
    const byTitle = firstRow("true", `title collate "C"`);
    const sorted = await untilFirstRow(byTitle.id, null, "sort");
    results.sort_ms = sorted.ms;
    progress(`sort by title: ${JSON.stringify(sorted)} (want ${byTitle.id})`);
    if (sorted.ms === null) notes.push(`after sorting by title the first row was ${sorted.first}, PostgreSQL's is ${byTitle.id}`);

    const activeByTitle = firstRow("status = 'active'", `title collate "C"`);
    const filtered = await untilFirstRow(activeByTitle.id, null, "filter");
    results.filter_ms = filtered.ms;
    progress(`filter active: ${JSON.stringify(filtered)} (want ${activeByTitle.id})`);
    if (filtered.ms === null) notes.push(`after filtering on active the first row was ${filtered.first}, PostgreSQL's is ${activeByTitle.id}`);
  }

  const metric = async (name) => {
    const { metrics } = await cdp.send("Performance.getMetrics");
    return (metrics.find((m) => m.name === name)?.value ?? 0) / 1048576;
  };
  results.js_heap_used_mb = await metric("JSHeapUsedSize");
  await cdp.send("HeapProfiler.collectGarbage");
  results.js_heap_used_after_gc_mb = await metric("JSHeapUsedSize");
  results.dom_nodes = await metric("Nodes") * 1048576;
  progress(`heap ${results.js_heap_used_mb.toFixed(1)} MB, ${results.js_heap_used_after_gc_mb.toFixed(1)} MB after GC`);

  if (shown.ms !== null) {
    // The studies the page shows (active, by title) are the first of the 100,000 updated, so the
    // change lands on screen.
    const mark = await page.evaluate(() => performance.now());
    const t0 = Date.now();
    const updated = psql(
      `with u as (update studies set title = title || 'x' where id in
         (select id from studies where status = 'active' order by title collate "C", id limit ${BULK_ROWS})
       returning 1) select count(*) from u`,
    );
    const acked = Date.now();
    results.bulk_rows = Number(updated);
    results.bulk_statement_ms = acked - t0;
    const after = firstRow("status = 'active'", `title collate "C"`);
    const landed = await untilFirstRow(after.id, after.title, null);
    results.bulk_visible_after_commit_ms = landed.ms === null ? null : Date.now() - acked;
    if (landed.ms === null) notes.push(`the bulk update did not show: first row ${landed.first}, PostgreSQL's is ${after.id} ${after.title}`);
    await page.waitForTimeout(AFTERMATH_MS);
    const tasks = await page.evaluate((mark) => window.__longtasks.filter((t) => t.start >= mark), mark);
    results.long_tasks = tasks.length;
    results.longest_task_ms = tasks.reduce((m, t) => Math.max(m, t.duration), 0);
    progress(`bulk update of ${updated} rows: ${JSON.stringify(landed)}, ${tasks.length} long tasks`);
  }
} finally {
  await browser.close();
}

const ms = (v) => (v === null || v === undefined ? "not within 60 s" : `${Math.round(v)} ms`);
const ok = (v, max) => v !== null && v !== undefined && v <= max;
const verdicts = {
  first_page: ok(results.first_page_ms, 1000),
  sort: ok(results.sort_ms, 500),
  filter: ok(results.filter_ms, 500),
  heap: ok(results.js_heap_used_mb, 50),
  longest_task: ok(results.longest_task_ms, 200),
};
const studies = psql("select count(*) from studies");
const table = [
  ["studies", studies],
  ["first page visible", `${ms(results.first_page_ms)} after navigation (${results.first_page_rows} rows)`],
  ["sort change (title)", ms(results.sort_ms)],
  ["filter change (active)", ms(results.filter_ms)],
  ["JS heap used", `${results.js_heap_used_mb.toFixed(1)} MB (${results.js_heap_used_after_gc_mb.toFixed(1)} MB after GC), ${results.dom_nodes} DOM nodes`],
  [
    "bulk UPDATE",
    results.bulk_rows === undefined
      ? "not run"
      : `${results.bulk_rows} rows in ${results.bulk_statement_ms} ms; on screen ${ms(results.bulk_visible_after_commit_ms)} after its commit`,
  ],
  [
    "longest main-thread task",
    results.longest_task_ms === undefined ? "not measured" : `${Math.round(results.longest_task_ms)} ms (${results.long_tasks} tasks over 50 ms)`,
  ],
  ["target", "first page ≤ 1 s, sort/filter ≤ 500 ms, heap ≤ 50 MB, no task over 200 ms"],
  ["verdict", Object.entries(verdicts).map(([k, v]) => `${k} ${v ? "✓" : "✗"}`).join(" · ")],
  ...notes.map((n) => ["note", n]),
];
const width = Math.max(...table.map(([k]) => k.length));
process.stdout.write(`\n== admin-page\n${table.map(([k, v]) => `  ${k.padEnd(width)}  ${v}`).join("\n")}\n`);
process.stdout.write(JSON.stringify({ scenario: "admin-page", studies: Number(studies), ...results, verdicts, meets_target: Object.values(verdicts).every(Boolean) }) + "\n");
