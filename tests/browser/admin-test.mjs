// Drives the admin page (GET /) in Debian's headless Chromium for tests/it/admin.rs.
//
//   node admin-test.mjs SERVER_URL DATABASE_URL SCENARIO SCREENSHOT_DIR
//
// SCENARIO: "table" (two pages on the studies table: psql writes, edits, a conflict, a server
// restart), "room" (two pages in one study's room: messages and files), "refresh", "member",
// "expiry" (a member's token expires while the page is open: a fresh one resumes the feed),
// "views" (the table as a server-side view: sort, filter, search, pages, the live total, rows
// entering and leaving the page), "room-views" (a room's newest 50 messages and files, "Load
// older", live) or "fallback" (the table and a room without WebSockets, then without SSE).
// Writes with psql itself (a writer outside pgfeed). Talks to the Rust test in JSON lines:
//   stdout {"log": "..."}            something worth printing (observed delays)
//   stdout {"need": "stop"|"start"}  stop the server / start it again on the same port; the test
//                                    answers with one line on stdin when it is done
//   stdout {"done": {...}}           finished; a summary with the observed delays
//   stdout {"error": "..."}          failed (exit code 1)
import { execFileSync } from "node:child_process";
import { readFileSync, mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [serverUrl, databaseUrl, scenario, shotDir] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
/** How long to wait for something that should take well under a second (the machine is shared). */
const LIVE_MS = 5000;
const PATIENCE_MS = 30000;

const out = (v) => process.stdout.write(JSON.stringify(v) + "\n");
const log = (msg) => out({ log: msg });
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function need(what) {
  out({ need: what });
  const { value, done } = await stdin.next();
  if (done) throw new Error(`the test closed stdin instead of answering ${what}`);
  return value;
}

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

function psql(sql) {
  return execFileSync("psql", ["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", databaseUrl, "-c", sql], { encoding: "utf8" }).trim();
}

const delays = [];
/** Waits for `fn` (a playwright wait), recording how long it took after the write. */
async function within(label, since, fn) {
  await fn();
  const ms = Date.now() - since;
  delays.push({ label, ms });
  log(`${label}: ${ms} ms`);
  return ms;
}

const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

/** A page in a context of its own (its own sessionStorage, like another person's browser). */
async function openPage(name, hash = "", viewport = { width: 1280, height: 800 }, waitConnected = true, blocked = null) {
  const context = await browser.newContext({ viewport, acceptDownloads: true });
  const page = await context.newPage();
  if (blocked) {
    // Like a proxy that breaks WebSockets (and, for "sse", streaming too).
    await page.addInitScript(() => {
      window.WebSocket = class BlockedWebSocket extends EventTarget {
        constructor() {
          super();
          this.readyState = 0;
          setTimeout(() => { this.readyState = 3; this.onerror?.(new Event("error")); this.onclose?.({ code: 1006 }); }, 10);
        }
        send() { throw new Error("not open"); }
        close() {}
      };
    });
    if (blocked === "sse") await page.route("**/events?*", (route) => route.fulfill({ status: 502, body: "no streaming here" }));
  }
  page.on("console", (m) => { if (m.type() !== "debug") process.stderr.write(`[${name} ${m.type()}] ${m.text()}\n`); });
  page.on("pageerror", (e) => process.stderr.write(`[${name} pageerror] ${e.stack || e}\n`));
  // What the test wants to know about the page's life: every connection status it showed, and
  // every element that was highlighted.
  await page.addInitScript(() => {
    window.__longestTask = 0;
    try {
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) window.__longestTask = Math.max(window.__longestTask, Math.round(e.duration));
      }).observe({ type: "longtask" });
    } catch { /* no long-task timing here */ }
    window.__statuses = [];
    window.__flashed = [];
    new MutationObserver((records) => {
      for (const r of records) {
        const el = r.target;
        if (el.id === "conn" && r.attributeName === "data-status") window.__statuses.push(el.dataset.status + (el.dataset.transport ? `:${el.dataset.transport}` : ""));
        if (r.attributeName === "class" && el.classList && el.classList.contains("flash")) window.__flashed.push(el.dataset.id || el.id);
      }
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["class", "data-status"] });
  });
  await page.goto(`${serverUrl}/${hash}`);
  if (waitConnected) await page.locator(blocked ? '#conn[data-status="fallback"]' : '#conn[data-status="connected"]').waitFor({ timeout: PATIENCE_MS });
  page.name = name;
  return page;
}

const row = (id) => `#studies tbody tr[data-id="${id}"]`;

async function shownIds(page) {
  return page.$$eval("#studies tbody tr[data-id]", (trs) => trs.map((tr) => Number(tr.dataset.id)));
}

async function flashed(page, id) {
  return page.evaluate((id) => window.__flashed.includes(String(id)), id);
}

function dbIds() {
  const text = psql("select coalesce(string_agg(id::text, ',' order by id), '') from studies");
  return text ? text.split(",").map(Number) : [];
}

async function screenshot(page, file) {
  mkdirSync(shotDir, { recursive: true });
  await page.waitForTimeout(1800); // let highlights fade
  await page.screenshot({ path: `${shotDir}/${file}` });
  log(`screenshot ${shotDir}/${file}`);
}

// ---- the studies table -------------------------------------------------------------------------

async function tableScenario() {
  psql(`insert into studies (label, title, description, status) values
          ('sleep-2026', 'Sleep and memory consolidation', 'Does a nap after learning help recall a week later?', 'active'),
          ('diet-07', 'Mediterranean diet and mood', '', 'draft'),
          ('gait-12', 'Running cadence and knee load', 'Gait lab, 40 recreational runners.', 'closed'),
          ('cohort-01', 'Legacy cohort follow-up', '', 'archived')`);
  const a = await openPage("A");
  const b = await openPage("B");
  for (const p of [a, b]) await p.waitForFunction(() => document.querySelectorAll("#studies tbody tr[data-id]").length === 4);

  // A sorts by title, descending; B keeps the default (label, ascending).
  await a.locator('#studies th[data-sort="title"] button').click();
  await a.locator('#studies th[data-sort="title"] button').click();
  assert((await a.getAttribute('#studies th[data-sort="title"]', "aria-sort")) === "descending", "A sorts by title descending");
  // The new order's window has come (a row that lands before it is in that window, unhighlighted).
  await a.waitForFunction(() => {
    const t = [...document.querySelectorAll("#studies tbody tr[data-id] td.title")].map((td) => td.textContent);
    return t.length === 4 && t.every((x, i) => i === 0 || t[i - 1].localeCompare(x) > 0);
  });

  // psql INSERT: the row appears in both, highlighted, in each page's own order.
  let t = Date.now();
  const id = Number(psql("insert into studies (label, title) values ('mri-33', 'Functional MRI of attention') returning id"));
  t = Date.now();
  await Promise.all([a, b].map((p) => within(`psql INSERT → page ${p.name}`, t, () => p.locator(row(id)).waitFor({ timeout: LIVE_MS }))));
  for (const p of [a, b]) assert(await flashed(p, id), `the new row is highlighted in ${p.name}`);
  const titlesA = await a.$$eval("#studies tbody tr[data-id] td.title", (tds) => tds.map((td) => td.textContent));
  assert(JSON.stringify(titlesA) === JSON.stringify([...titlesA].sort((x, y) => y.localeCompare(x))), `A keeps its sort: ${titlesA}`);
  const labelsB = await b.$$eval("#studies tbody tr[data-id] td.label", (tds) => tds.map((td) => td.textContent));
  assert(JSON.stringify(labelsB) === JSON.stringify([...labelsB].sort()), `B keeps its sort: ${labelsB}`);

  // psql UPDATE: the cells change in place (the same <tr>), highlighted.
  await b.locator(row(id)).evaluate((tr) => { tr.dataset.marker = "same-element"; });
  psql(`update studies set title = 'Functional MRI of sustained attention', status = 'active' where id = ${id}`);
  t = Date.now();
  await Promise.all([a, b].map((p) => within(`psql UPDATE → page ${p.name}`, t, () =>
    p.locator(`${row(id)} td.title`, { hasText: "sustained" }).waitFor({ timeout: LIVE_MS }))));
  assert((await b.locator(row(id)).getAttribute("data-marker")) === "same-element", "the row was updated in place, not re-rendered");
  assert((await b.locator(`${row(id)} td.version`).textContent()) === "2", "version 2 shown");

  // psql DELETE: the row disappears from both.
  psql(`delete from studies where id = ${id}`);
  t = Date.now();
  await Promise.all([a, b].map((p) => within(`psql DELETE → page ${p.name}`, t, () => p.locator(row(id)).waitFor({ state: "detached", timeout: LIVE_MS }))));

  // A filter is kept across live changes: B shows only active studies; a psql change makes one.
  await b.selectOption("#status-filter", "active");
  const diet = Number(psql("select id from studies where label = 'diet-07'"));
  // The filtered window replaces the rows when it comes: diet-07 (a draft) leaves B.
  await b.locator(row(diet)).waitFor({ state: "detached", timeout: LIVE_MS });
  psql(`update studies set status = 'active' where id = ${diet}`);
  t = Date.now();
  await within("psql UPDATE into B's filter", t, () => b.locator(row(diet)).waitFor({ timeout: LIVE_MS }));
  await b.selectOption("#status-filter", "");

  // An edit in page A (the REST API, with If-Match) shows in page B.
  const gait = Number(psql("select id from studies where label = 'gait-12'"));
  await a.getByRole("button", { name: "Edit gait-12" }).click();
  await a.fill("#study-title", "Running cadence, knee and hip load");
  t = Date.now();
  await a.click("#study-save");
  await within("edit in A → page B", t, () => b.locator(`${row(gait)} td.title`, { hasText: "hip load" }).waitFor({ timeout: LIVE_MS }));
  await a.locator("#study-dialog").waitFor({ state: "hidden" });
  assert(psql(`select version from studies where id = ${gait}`) === "2", "A's edit is version 2");

  // A conflicting edit is reported, not overwritten. B starts editing sleep-2026 (version 1) and
  // has typed half a title when A saves another change to the same study.
  const sleep = Number(psql("select id from studies where label = 'sleep-2026'"));
  await b.getByRole("button", { name: "Edit sleep-2026" }).click();
  await b.fill("#study-title", "Sleep, naps and memory");
  await b.locator("#study-title").press("End");
  await a.getByRole("button", { name: "Edit sleep-2026" }).click();
  await a.selectOption("#study-status", "closed");
  await a.click("#study-save");
  await a.locator("#study-dialog").waitFor({ state: "hidden" });
  // B is told while typing, and keeps its text and focus.
  await b.locator("#study-notice", { hasText: "Someone else changed this study" }).waitFor({ timeout: LIVE_MS });
  assert((await b.inputValue("#study-title")) === "Sleep, naps and memory", "B's half-typed title survives the live update");
  assert(await b.evaluate(() => document.activeElement.id === "study-title"), "B's focus stays in the title field");
  await b.click("#study-save");
  await b.locator("#study-notice", { hasText: "Not saved" }).waitFor({ timeout: LIVE_MS });
  const notice = await b.locator("#study-notice").textContent();
  assert(notice.includes("current version is 2") && notice.includes("Closed"), `B is shown the current version: ${notice}`);
  assert(psql(`select title || '|' || status || '|' || version from studies where id = ${sleep}`) === "Sleep and memory consolidation|closed|2",
    "the conflicting edit did not overwrite A's");
  log("conflicting edit reported (412), nothing overwritten");
  // B may then apply its edit on top of the current version, knowingly.
  await b.getByRole("button", { name: "Keep my changes on version 2" }).click();
  await b.click("#study-save");
  await b.locator("#study-dialog").waitFor({ state: "hidden", timeout: LIVE_MS });
  await a.locator(`${row(sleep)} td.title`, { hasText: "Sleep, naps and memory" }).waitFor({ timeout: LIVE_MS });
  assert(psql(`select status || '|' || version from studies where id = ${sleep}`) === "closed|3", "B's title on top of A's status");

  // Errors from the API are shown next to the field: a taken label (409) on create.
  await a.click("#new-study");
  await a.fill("#study-label", "diet-07");
  await a.fill("#study-title", "A duplicate");
  await a.click("#study-save");
  await a.locator("#study-label-error", { hasText: "taken" }).waitFor({ timeout: LIVE_MS });
  assert(await a.evaluate(() => document.activeElement.id === "study-label"), "the field at fault has the focus");
  await a.keyboard.press("Escape");

  // Create through the page (keyboard only): appears in B.
  await a.focus("#new-study");
  await a.keyboard.press("Enter");
  await a.keyboard.type("eeg-05");
  await a.keyboard.press("Tab");
  await a.keyboard.type("Sleep spindles in adolescents");
  t = Date.now();
  await a.keyboard.press("Enter");
  await within("create in A → page B", t, () => b.locator("#studies td.label", { hasText: "eeg-05" }).waitFor({ timeout: LIVE_MS }));

  // The server restarts; meanwhile psql inserts, updates and deletes. Both pages catch up with
  // every row once, and go on live.
  const before = { A: await a.evaluate(() => window.__statuses.length), B: await b.evaluate(() => window.__statuses.length) };
  await need("stop");
  await Promise.all([a, b].map((p) => p.locator('#conn[data-status="offline"], #conn[data-status="connecting"]').waitFor({ timeout: PATIENCE_MS })));
  const cohort = Number(psql("select id from studies where label = 'cohort-01'"));
  psql(`insert into studies (label, title) values ('down-1', 'Written while the server was down');
        update studies set title = 'Mediterranean diet, mood and sleep' where id = ${diet};
        delete from studies where id = ${cohort}`);
  await need("start");
  t = Date.now();
  await Promise.all([a, b].map((p) => within(`restart → page ${p.name} caught up`, t, async () => {
    // Back on the WebSocket, or first on a fallback (a restart can look like blocked WebSockets).
    await p.locator('#conn[data-status="connected"], #conn[data-status="fallback"]').waitFor({ timeout: PATIENCE_MS });
    await p.locator("#studies td.label", { hasText: "down-1" }).waitFor({ timeout: PATIENCE_MS });
    await p.locator(row(cohort)).waitFor({ state: "detached", timeout: PATIENCE_MS });
    await p.locator(`${row(diet)} td.title`, { hasText: "and sleep" }).waitFor({ timeout: PATIENCE_MS });
  })));
  for (const p of [a, b]) await p.locator('#conn[data-status="connected"]').waitFor({ timeout: PATIENCE_MS });
  const after = Number(psql("insert into studies (label, title) values ('after-1', 'Written after the restart') returning id"));
  t = Date.now();
  await Promise.all([a, b].map((p) => within(`after restart, psql INSERT → page ${p.name}`, t, () => p.locator(row(after)).waitFor({ timeout: LIVE_MS }))));
  const want = dbIds();
  for (const p of [a, b]) {
    const ids = await shownIds(p);
    assert(new Set(ids).size === ids.length, `no doubled rows in ${p.name}: ${ids}`);
    assert(JSON.stringify([...ids].sort((x, y) => x - y)) === JSON.stringify(want), `${p.name} shows exactly the database's rows: ${ids} vs ${want}`);
    const statuses = (await p.evaluate(() => window.__statuses)).slice(before[p.name]);
    assert(statuses.includes("connected") && statuses.some((s) => s === "offline" || s === "connecting"), `${p.name} showed the restart: ${statuses}`);
    log(`page ${p.name} statuses across the restart: ${statuses.join(" → ")}`);
  }
  const titles = await a.$$eval("#studies tbody tr[data-id]", (trs) => Object.fromEntries(trs.map((tr) => [tr.dataset.id, tr.querySelector("td.title").textContent])));
  const dbTitles = Object.fromEntries(psql("select id || '|' || title from studies order by id").split("\n").map((l) => l.split("|")));
  assert(JSON.stringify(titles, Object.keys(titles).sort()) === JSON.stringify(dbTitles, Object.keys(dbTitles).sort()), "titles match the database");

  // Screenshots: the table at 1280×800 and at phone width.
  await a.locator('#studies th[data-sort="label"] button').click();
  await screenshot(a, "table.png");
  const phone = await openPage("phone", "", { width: 390, height: 844 });
  await phone.waitForFunction((n) => document.querySelectorAll("#studies tbody tr[data-id]").length === n, want.length);
  await screenshot(phone, "table-phone.png");
  return { rows: want.length };
}

// ---- the table as a live view: server-side sort, filter, search, pages, total ------------------

/** The labels PostgreSQL's own SELECT puts on a page (code-point order, as views sort text). */
function pageLabels(where, order, offset = 0) {
  return psql(`select coalesce(string_agg(label, ',' order by n), '') from (
                 select label, row_number() over (order by ${order}) n from studies where ${where}
                 order by ${order} offset ${offset} limit 50) p`);
}

async function shownLabels(page) {
  return page.$$eval("#studies tbody tr[data-id] td.label", (tds) => tds.map((td) => td.textContent).join(","));
}

/** Waits until the page shows exactly `want` (labels, in order); fails saying what it shows. */
async function showsLabels(page, want, what) {
  try {
    await page.waitForFunction((want) => [...document.querySelectorAll("#studies tbody tr[data-id] td.label")].map((td) => td.textContent).join(",") === want,
      want, { timeout: LIVE_MS, polling: 50 });
  } catch {
    throw new Error(`${what}: the page shows ${await shownLabels(page)}\n  but the SELECT gives ${want}`);
  }
}

async function showsText(page, selector, text, what) {
  try {
    await page.locator(selector, { hasText: text }).waitFor({ timeout: LIVE_MS });
  } catch {
    throw new Error(`${what}: ${selector} says ${JSON.stringify(await page.locator(selector).textContent())}, not ${JSON.stringify(text)}`);
  }
}

async function viewsScenario() {
  // 240 studies, a quarter of each status: more than a page of every filter.
  psql(`insert into studies (label, title, status)
          select 's' || lpad(i::text, 3, '0'), 'Study ' || (i * 7919 % 240), (array['draft', 'active', 'closed', 'archived'])[i % 4 + 1]
          from generate_series(1, 240) i`);
  const a = await openPage("A");
  const byLabel = `label collate "C", id`;
  await showsLabels(a, pageLabels("true", byLabel), "the first page");
  await showsText(a, "#study-count", "(240)", "the live total");
  await showsText(a, "#page-info", "Page 1 of 5", "the pager");
  assert((await a.locator("#studies tbody tr").count()) === 50, "only the page's 50 rows are in the DOM");

  // Pages: next, next, back (keyset: `after` is the frame's `next`, previous ones are a stack).
  let t = Date.now();
  await a.click("#page-next");
  await within("next page", t, () => showsLabels(a, pageLabels("true", byLabel, 50), "page 2"));
  await a.click("#page-next");
  await showsLabels(a, pageLabels("true", byLabel, 100), "page 3");
  await showsText(a, "#page-info", "Page 3 of 5", "the pager on page 3");
  await a.click("#page-prev");
  await showsLabels(a, pageLabels("true", byLabel, 50), "back to page 2");
  await a.click("#page-prev");
  await showsLabels(a, pageLabels("true", byLabel), "back to page 1");
  assert(await a.locator("#page-prev").isDisabled(), "no previous page on page 1");

  // Sort on every column, by the server (again to reverse).
  for (const [col, order, clicks] of [
    ["title", `title collate "C", id`, 1],
    ["title", `title collate "C" desc, id`, 1],
    ["status", `status collate "C", title collate "C", id`, 1],
    ["status", `status collate "C" desc, title collate "C" desc, id`, 1],
    ["updated_at", "updated_at desc, id", 1],
    ["version", "version desc, id", 1],
    ["label", `label collate "C" desc, id`, 2],
  ]) {
    for (let i = 0; i < clicks; i += 1) await a.locator(`#studies th[data-sort="${col}"] button`).click();
    t = Date.now();
    await within(`sort by ${order}`, t, () => showsLabels(a, pageLabels("true", order), `sorted by ${order}`));
  }
  await a.locator('#studies th[data-sort="label"] button').click(); // label ascending again
  await showsLabels(a, pageLabels("true", byLabel), "label ascending again");

  // The status filter and the search (label or title), by the server; the total follows.
  await a.selectOption("#status-filter", "active");
  t = Date.now();
  await within("filter: active", t, () => showsLabels(a, pageLabels("status = 'active'", byLabel), "active only"));
  await showsText(a, "#study-count", "(60)", "the total of active studies");
  await a.fill("#search", "s01");
  await a.waitForTimeout(500); // the search waits for typing to pause; a refusal comes at once
  assert((await a.getAttribute("#search", "placeholder")) === "Search label or title",
    "the server takes the search's two-column filter key \"title|label\" (it refused it, so the page fell back to titles only)");
  await showsLabels(a, pageLabels("status = 'active' and (label ilike '%s01%' or title ilike '%s01%')", byLabel), "active, searching s01");
  await a.fill("#search", "");
  await showsLabels(a, pageLabels("status = 'active'", byLabel), "active, search cleared");

  // A row leaving the filter disappears, and the next one fills in at the bottom of the page.
  const first = psql("select id || '|' || label from studies where status = 'active' order by label collate \"C\", id limit 1").split("|");
  const filler = psql("select label from studies where status = 'active' order by label collate \"C\", id offset 50 limit 1");
  await a.locator(row(first[0])).evaluate((tr) => { tr.dataset.marker = "leaving"; });
  psql(`update studies set status = 'closed' where id = ${first[0]}`);
  t = Date.now();
  await within("a row leaves the filter, the next fills in", t, () => showsLabels(a, pageLabels("status = 'active'", byLabel), "after a row left the filter"));
  assert((await shownLabels(a)).split(",").at(-1) === filler, `${filler} filled the last slot`);
  await showsText(a, "#study-count", "(59)", "the total after a row left");

  // A psql change landing in the visible page: a new active study sorts first; the last row overflows.
  await a.selectOption("#status-filter", "");
  await showsLabels(a, pageLabels("true", byLabel), "all statuses again");
  const marker = await a.locator("#studies tbody tr[data-id]").nth(1).evaluate((tr) => { tr.dataset.marker = "kept"; return tr.dataset.id; });
  t = Date.now();
  const id = psql("insert into studies (label, title, status) values ('s000', 'Inserted by psql', 'active') returning id");
  await within("psql INSERT lands in the page", t, () => showsLabels(a, pageLabels("true", byLabel), "after the insert"));
  await showsText(a, "#study-count", "(241)", "the total after the insert");
  assert(await flashed(a, id), "the new row is highlighted");
  assert((await a.locator(row(marker)).getAttribute("data-marker")) === "kept", "rows that stay keep their element");
  psql(`update studies set title = 'Updated in place' where id = ${marker}`);
  await a.locator(`${row(marker)} td.title`, { hasText: "Updated in place" }).waitFor({ timeout: LIVE_MS });
  assert((await a.locator(row(marker)).getAttribute("data-marker")) === "kept", "an update is made in place");
  psql(`delete from studies where id = ${id}`);
  await showsLabels(a, pageLabels("true", byLabel), "after the delete");
  await showsText(a, "#study-count", "(240)", "the total after the delete");

  // A bulk UPDATE of every row: one delta for the page, which stays responsive.
  await a.evaluate(() => { window.__longestTask = 0; });
  t = Date.now();
  psql("update studies set title = title || ' (bulk)'");
  await within("bulk UPDATE of 240 rows", t, () => a.locator("#studies tbody tr[data-id] td.title", { hasText: "(bulk)" }).nth(49).waitFor({ timeout: LIVE_MS }));
  const longTasks = await a.evaluate(() => window.__longestTask || 0);
  log(`longest main-thread task seen: ${longTasks} ms`);
  return { rows: 50 };
}

async function roomViewsScenario() {
  const id = Number(psql("insert into studies (label, title) values ('busy-1', 'A busy room') returning id"));
  psql(`insert into messages (study_id, author, body) select ${id}, 'bot', 'message ' || lpad(i::text, 3, '0') from generate_series(1, 60) i`);
  psql(`insert into files (study_id, name, content_type, size_bytes, sha256)
          select ${id}, 'file-' || lpad(i::text, 3, '0') || '.txt', 'text/plain', i, md5(i::text) from generate_series(1, 55) i`);
  const a = await openPage("A", `#/studies/${id}`);
  const bodies = () => a.$$eval("#thread li .body", (ps) => ps.map((p) => p.textContent));
  const names = () => a.$$eval("#file-rows tr td.name a", (as) => as.map((x) => x.textContent));
  await a.waitForFunction(() => document.querySelectorAll("#thread li").length === 50, null, { timeout: LIVE_MS });
  let got = await bodies();
  assert(got[0] === "message 011" && got[49] === "message 060", `the newest 50, oldest first: ${got[0]} … ${got[49]}`);
  await showsText(a, "#message-count", "(60)", "the message total");
  await a.waitForFunction(() => document.querySelectorAll("#file-rows tr").length === 50, null, { timeout: LIVE_MS });
  let files = await names();
  assert(files[0] === "file-055.txt" && files[49] === "file-006.txt", `the newest 50 files, newest first: ${files[0]} … ${files[49]}`);
  await showsText(a, "#file-count", "(55)", "the file total");

  // A psql message lands at the bottom; the oldest shown leaves the window.
  psql(`insert into messages (study_id, author, body) values (${id}, 'psql', 'message 061')`);
  await a.locator("#thread li", { hasText: "message 061" }).waitFor({ timeout: LIVE_MS });
  await a.waitForFunction(() => document.querySelector("#thread li .body").textContent === "message 012", null, { timeout: LIVE_MS });
  await showsText(a, "#message-count", "(61)", "the message total after a post");

  // "Load older": the rest, in order.
  await a.click("#load-older-messages");
  await a.waitForFunction(() => document.querySelectorAll("#thread li").length === 61, null, { timeout: LIVE_MS });
  got = await bodies();
  assert(got[0] === "message 001" && got[60] === "message 061", `all 61 in order: ${got[0]} … ${got[60]}`);
  assert(await a.locator("#load-older-messages").isHidden(), "nothing older to load");
  await a.click("#load-older-files");
  await a.waitForFunction(() => document.querySelectorAll("#file-rows tr").length === 55, null, { timeout: LIVE_MS });
  files = await names();
  assert(files[54] === "file-001.txt", `all 55 files: ${files.at(-1)}`);

  // A message deleted by psql leaves; a file deleted leaves.
  psql(`delete from messages where study_id = ${id} and body = 'message 030'`);
  await a.locator("#thread li", { hasText: "message 030" }).waitFor({ state: "detached", timeout: LIVE_MS });
  psql(`delete from files where study_id = ${id} and name = 'file-055.txt'`);
  await a.locator("#file-rows tr", { hasText: "file-055.txt" }).waitFor({ state: "detached", timeout: LIVE_MS });
  await showsText(a, "#file-count", "(54)", "the file total after a delete");
  return { messages: 60 };
}

/**
 * Without WebSockets (SSE), and without SSE either (long-polling): the table's and a room's views
 * work the same, a psql change lands, a sort and a page change are served, nothing is doubled.
 */
async function fallbackScenario() {
  psql(`insert into studies (label, title) select 'f' || lpad(i::text, 3, '0'), 'Fallback ' || i from generate_series(1, 60) i`);
  const room = Number(psql("select id from studies where label = 'f001'"));
  const byLabel = `label collate "C", id`;
  for (const [blocked, transport] of [["ws", "sse"], ["sse", "poll"]]) {
    const p = await openPage(`no-${blocked}`, "", undefined, true, blocked);
    assert((await p.getAttribute("#conn", "data-transport")) === transport, `on ${transport}`);
    await showsLabels(p, pageLabels("true", byLabel), `first page over ${transport}`);
    const id = psql(`insert into studies (label, title) values ('f000-${transport}', 'Inserted over ${transport}') returning id`);
    let t = Date.now();
    await within(`psql INSERT → page over ${transport}`, t, () => p.locator(row(id)).waitFor({ timeout: LIVE_MS }));
    await showsLabels(p, pageLabels("true", byLabel), `after the insert over ${transport}`);
    await p.locator('#studies th[data-sort="label"] button').click();
    await showsLabels(p, pageLabels("true", `label collate "C" desc, id`), `sorted over ${transport}`);
    await p.click("#page-next");
    await showsLabels(p, pageLabels("true", `label collate "C" desc, id`, 50), `page 2 over ${transport}`);
    await p.goto(`${serverUrl}/#/studies/${room}`);
    await p.locator('#conn[data-status="fallback"]').waitFor({ timeout: PATIENCE_MS });
    await p.locator("#room-title", { hasText: "Fallback 1" }).waitFor({ timeout: LIVE_MS });
    psql(`insert into messages (study_id, author, body) values (${room}, 'psql', 'over ${transport}')`);
    await p.locator("#thread li", { hasText: `over ${transport}` }).waitFor({ timeout: LIVE_MS });
    await p.context().close();
  }
  return { rows: 60 };
}

// ---- a study's room ----------------------------------------------------------------------------

async function roomScenario() {
  const id = Number(psql(`insert into studies (label, title, description, status) values ('sleep-2026', 'Sleep and memory consolidation',
    'Does a nap after learning help recall a week later? 60 participants, two sessions.', 'active') returning id`));
  psql(`insert into messages (study_id, author, body) values (${id}, 'ana', 'Recruitment starts Monday.'),
          (${id}, 'ben', 'Ethics approval is in; the consent form is in the files.')`);
  const hash = `#/studies/${id}`;
  const a = await openPage("A", hash);
  const b = await openPage("B", hash);
  for (const p of [a, b]) await p.locator("#thread li").nth(1).waitFor({ timeout: LIVE_MS });

  // A message posted in A's room appears in B's.
  await a.fill("#message-author", "carla");
  await a.fill("#message-body", "Pilot session went well: 45 minutes per participant.");
  let t = Date.now();
  await a.click("#message-form button[type=submit]");
  await within("message posted in A → room B", t, () => b.locator("#thread li", { hasText: "Pilot session went well" }).waitFor({ timeout: LIVE_MS }));
  assert((await a.inputValue("#message-body")) === "", "A's message field is cleared after posting");

  // A psql writer's message appears in both.
  psql(`insert into messages (study_id, author, body) values (${id}, 'psql', 'Room booked for the whole of March.')`);
  t = Date.now();
  await Promise.all([a, b].map((p) => within(`psql message → room ${p.name}`, t, () =>
    p.locator("#thread li", { hasText: "Room booked" }).waitFor({ timeout: LIVE_MS }))));
  for (const p of [a, b]) assert((await p.locator("#thread li").count()) === 4, `${p.name} has each message once`);

  // An empty message is refused next to the field.
  await b.fill("#message-author", "dan");
  await b.fill("#message-body", "   ");
  await b.click("#message-form button[type=submit]");
  await b.locator("#message-body-error", { hasText: "Write something" }).waitFor({ timeout: LIVE_MS });

  // A file uploaded in A (with a progress bar) is downloaded from B.
  const bytes = Buffer.from(Array.from({ length: 300 * 1024 }, (_, i) => `participant ${i % 997},score ${(i * 7) % 101}\n`).join("").slice(0, 300 * 1024));
  await a.setInputFiles("#upload-file", { name: "scores.csv", mimeType: "text/csv", buffer: bytes });
  t = Date.now();
  await a.click("#upload-form button[type=submit]");
  await a.locator("#upload-progress-wrap").waitFor({ timeout: LIVE_MS });
  await within("file uploaded in A → room B", t, () => b.locator("#file-rows tr", { hasText: "scores.csv" }).waitFor({ timeout: LIVE_MS }));
  await a.locator("#upload-progress-text", { hasText: "Uploaded scores.csv" }).waitFor({ timeout: LIVE_MS });
  assert((await a.locator("#upload-progress").evaluate((p) => p.value)) === 100, "the progress bar reached 100%");
  const [download] = await Promise.all([b.waitForEvent("download"), b.getByRole("link", { name: "Download scores.csv" }).click()]);
  const got = readFileSync(await download.path());
  assert(download.suggestedFilename() === "scores.csv", `download named ${download.suggestedFilename()}`);
  assert(Buffer.compare(got, bytes) === 0, `B downloaded the same ${bytes.length} bytes (got ${got.length})`);
  log(`B downloaded scores.csv: ${got.length} bytes, identical`);

  // A second, small file; then B deletes it and it leaves A's room.
  await a.setInputFiles("#upload-file", { name: "consent-form.txt", mimeType: "text/plain", buffer: Buffer.from("I agree to take part.\n") });
  await a.click("#upload-form button[type=submit]");
  await b.locator("#file-rows tr", { hasText: "consent-form.txt" }).waitFor({ timeout: LIVE_MS });
  await b.locator("#file-rows tr", { hasText: "consent-form.txt" }).getByRole("button", { name: "Delete consent-form.txt" }).click();
  t = Date.now();
  await b.click("#confirm-ok");
  await within("file deleted in B → room A", t, () => a.locator("#file-rows tr", { hasText: "consent-form.txt" }).waitFor({ state: "detached", timeout: LIVE_MS }));

  // The study changes under the room (psql): the details follow.
  psql(`update studies set status = 'closed' where id = ${id}`);
  t = Date.now();
  await Promise.all([a, b].map((p) => within(`psql study UPDATE → room ${p.name}`, t, () => p.locator("#room-status", { hasText: "Closed" }).waitFor({ timeout: LIVE_MS }))));
  psql(`update studies set status = 'active' where id = ${id}`);
  await a.locator("#room-status", { hasText: "Active" }).waitFor({ timeout: LIVE_MS });

  await a.fill("#message-body", "");
  await screenshot(a, "room.png");
  const phone = await openPage("phone", hash, { width: 390, height: 844 });
  await phone.locator("#thread li").nth(3).waitFor({ timeout: LIVE_MS });
  await screenshot(phone, "room-phone.png");

  // Deleting the study (psql) closes the room in both pages.
  psql(`delete from studies where id = ${id}`);
  t = Date.now();
  await Promise.all([a, b].map((p) => within(`psql study DELETE → room ${p.name}`, t, () => p.locator("#room-banner", { hasText: "deleted" }).waitFor({ timeout: LIVE_MS }))));
  return { messages: 4 };
}


// ---- refresh_needed: the log no longer holds the pages' cursors --------------------------------

async function refreshScenario() {
  const ids = psql(`insert into studies (label, title) values ('keep-1', 'Kept'), ('gone-1', 'Deleted while down'), ('room-1', 'A room')
                    returning id`).split("\n").map(Number);
  const [keep, gone, roomId] = ids;
  psql(`insert into messages (study_id, author, body) values (${roomId}, 'ana', 'before')`);
  const a = await openPage("A");
  const b = await openPage("B", `#/studies/${roomId}`);
  await a.locator(row(gone)).waitFor({ timeout: LIVE_MS });
  await b.locator("#thread li", { hasText: "before" }).waitFor({ timeout: LIVE_MS });

  // While the server is down, rows change and retention deletes the whole log, so the pages'
  // cursors are gone: the server answers refresh_needed, and the pages reload their snapshots.
  await need("stop");
  psql(`insert into studies (label, title) values ('new-1', 'Created while down');
        update studies set title = 'Kept, renamed' where id = ${keep};
        delete from studies where id = ${gone};
        insert into messages (study_id, author, body) values (${roomId}, 'ben', 'while down');`);
  // (A transaction of its own: psql -c runs its statements as one, and the commits above must be
  // stamped before they can be pruned.)
  psql("select pgfeed.prune('0 seconds', 1000000)");
  assert(psql("select count(*) from pgfeed.commits") === "0", "the whole log was pruned");
  await need("start");
  const t = Date.now();
  await within("refresh_needed → table reloaded", t, async () => {
    await a.locator("#studies td.label", { hasText: "new-1" }).waitFor({ timeout: PATIENCE_MS });
    await a.locator(row(gone)).waitFor({ state: "detached", timeout: PATIENCE_MS });
    await a.locator(`${row(keep)} td.title`, { hasText: "renamed" }).waitFor({ timeout: PATIENCE_MS });
  });
  await within("refresh_needed → room reloaded", t, () => b.locator("#thread li", { hasText: "while down" }).waitFor({ timeout: PATIENCE_MS }));
  const shown = await shownIds(a);
  assert(JSON.stringify([...shown].sort((x, y) => x - y)) === JSON.stringify(dbIds()), `A shows the database's rows: ${shown}`);
  assert((await b.locator("#thread li").count()) === 2, "B shows each message once");
  // And live again from the snapshot's cursor.
  psql(`insert into messages (study_id, author, body) values (${roomId}, 'carla', 'after')`);
  await b.locator("#thread li", { hasText: "after" }).waitFor({ timeout: LIVE_MS });
  return { rows: shown.length };
}

// ---- auth: the token prompt and a member's view --------------------------------------------------

async function memberScenario() {
  const memberToken = process.env.ADMIN_TEST_MEMBER_TOKEN;
  psql(`insert into studies (id, label, title) overriding system value values
          (1, 'mine-1', 'Member study one'), (2, 'theirs-2', 'Not the member''s'), (3, 'mine-3', 'Member study three')`);
  const a = await openPage("member", "", { width: 1280, height: 800 }, false);
  // Auth is on and there is no token: the page asks for one.
  await a.locator("#login-view").waitFor({ timeout: LIVE_MS });
  await a.fill("#login-token", "not-a-token");
  await a.press("#login-token", "Enter");
  await a.locator("#login-token-error", { hasText: "not a JWT" }).waitFor({ timeout: LIVE_MS });
  await a.fill("#login-token", memberToken);
  await a.press("#login-token", "Enter");
  await a.locator('#conn[data-status="connected"]').waitFor({ timeout: PATIENCE_MS });
  await a.waitForFunction(() => document.querySelectorAll("#studies tbody tr[data-id]").length === 2, null, { timeout: LIVE_MS });
  assert(JSON.stringify(await shownIds(a)) === "[1,3]", `the member sees only studies 1 and 3: ${await shownIds(a)}`);
  assert(!(await a.locator("#new-study").isVisible()), "a member is not offered to create studies");
  // Live, for the member's studies only.
  psql("update studies set title = 'Not the member''s, renamed' where id = 2");
  psql("update studies set title = 'Member study one, renamed' where id = 1");
  await a.locator(`${row(1)} td.title`, { hasText: "renamed" }).waitFor({ timeout: LIVE_MS });
  assert(!(await a.locator(row(2)).count()), "study 2 never shows");
  // The token is remembered for the tab.
  await a.reload();
  await a.locator('#conn[data-status="connected"]').waitFor({ timeout: PATIENCE_MS });
  await a.waitForFunction(() => document.querySelectorAll("#studies tbody tr[data-id]").length === 2, null, { timeout: LIVE_MS });
  assert(await a.locator("#login-view").isHidden(), "no prompt after a reload");
  // The member's room.
  await a.click(`${row(3)} td.label a`);
  await a.locator("#room-title", { hasText: "Member study three" }).waitFor({ timeout: LIVE_MS });
  psql("insert into messages (study_id, author, body) values (3, 'psql', 'hello member')");
  await a.locator("#thread li", { hasText: "hello member" }).waitFor({ timeout: LIVE_MS });
  // Signing out forgets the token.
  await a.click("#signout");
  await a.locator("#login-view").waitFor({ timeout: LIVE_MS });
  assert(await a.evaluate(() => sessionStorage.getItem("pgfeed.token") === null), "the token is forgotten");
  return { rows: 2 };
}

// ---- a token that expires while the page is open (README "Security: auth and limits") --------------------------------

async function expiryScenario() {
  const shortToken = process.env.ADMIN_TEST_SHORT_TOKEN;
  const freshToken = process.env.ADMIN_TEST_MEMBER_TOKEN;
  psql(`insert into studies (id, label, title) overriding system value values
          (1, 'mine-1', 'Member study one'), (2, 'theirs-2', 'Not the member''s')`);
  const a = await openPage("expiry", "", { width: 1280, height: 800 }, false);
  await a.locator("#login-view").waitFor({ timeout: LIVE_MS });
  await a.fill("#login-token", shortToken);
  await a.press("#login-token", "Enter");
  await a.locator('#conn[data-status="connected"]').waitFor({ timeout: PATIENCE_MS });
  await a.locator(`${row(1)} td.title`, { hasText: "Member study one" }).waitFor({ timeout: LIVE_MS });
  // At `exp` the server closes the feed (4001); the page asks for a fresh token.
  await a.locator("#login-token-error", { hasText: "expired" }).waitFor({ timeout: PATIENCE_MS });
  psql("update studies set title = 'Renamed while signed out' where id = 1");
  await a.fill("#login-token", freshToken);
  await a.press("#login-token", "Enter");
  // Back in the same view, resumed from its cursor: the change made meanwhile shows, live goes on.
  await a.locator(`${row(1)} td.title`, { hasText: "Renamed while signed out" }).waitFor({ timeout: PATIENCE_MS });
  assert(await a.locator("#login-view").isHidden(), "the prompt is gone");
  psql("update studies set title = 'And live again' where id = 1");
  await a.locator(`${row(1)} td.title`, { hasText: "And live again" }).waitFor({ timeout: LIVE_MS });
  assert(!(await a.locator(row(2)).count()), "study 2 never shows");
  return { rows: 1 };
}

try {
  const scenarios = {
    table: tableScenario, room: roomScenario, refresh: refreshScenario, member: memberScenario, expiry: expiryScenario,
    views: viewsScenario, "room-views": roomViewsScenario, fallback: fallbackScenario,
  };
  if (!scenarios[scenario]) throw new Error(`unknown scenario ${scenario}`);
  const summary = await scenarios[scenario]();
  out({ done: { ...summary, delays, slowest_ms: Math.max(0, ...delays.map((d) => d.ms)) } });
} catch (e) {
  out({ error: String((e && e.stack) || e) });
  process.exitCode = 1;
} finally {
  await browser.close();
  process.exit();
}
