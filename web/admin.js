// pgfeed admin page (GET /): the studies table and each study's room, kept live by /client.js.
//
// No framework and no build step. Every list is keyed by row id and updated in place: a change
// rewrites the cells of the existing element, so sorting, filters, scroll position, focus and
// half-typed input survive any number of live updates. Snapshots (on connect, and after
// `refresh_needed`) are merged into what is shown the same way, so a reconnect never duplicates
// or drops a row.
import { connect } from "/client.js";

const TOKEN_KEY = "pgfeed.token";
const AUTHOR_KEY = "pgfeed.author";
const SORT_KEY = "pgfeed.sort";
const STATUSES = ["draft", "active", "closed", "archived"];

const $ = (id) => document.getElementById(id);

/** Creates an element: h("td", {class: "x", dataset: {id: 1}}, "text", child). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...children.filter((c) => c != null));
  return el;
}

/** Sets text only when it differs (no needless layout, no lost selection). */
function setText(el, text) {
  const t = text == null ? "" : String(text);
  if (el.textContent !== t) el.textContent = t;
}

function flash(el) {
  el.classList.remove("flash");
  void el.offsetWidth; // restart the animation
  el.classList.add("flash");
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : dateFormat.format(d);
}

function formatSize(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

function statusLabel(s) {
  return s ? s[0].toUpperCase() + s.slice(1) : "";
}

function toast(text, kind = "info") {
  const el = h("div", { class: `toast ${kind}` }, text);
  $("toasts").append(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

// ---- auth --------------------------------------------------------------------------------------

let token = sessionStorage.getItem(TOKEN_KEY) || null;
/** `{role, studies, exp}` from the token's payload (not verified here: the server does that). */
let claims = null;
/** "admin": the whole `studies` topic; "member": one room topic per study in the token. */
let mode = "admin";

function decodeJwt(t) {
  try {
    const part = t.split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return payload && typeof payload === "object" ? payload : null;
  } catch {
    return null;
  }
}

function authHeaders() {
  return token ? { authorization: `Bearer ${token}` } : {};
}

function showLogin(message) {
  stopFeed();
  closeDialogs();
  setConn("offline", null, "Not signed in");
  for (const v of ["table-view", "room-view"]) $(v).hidden = true;
  $("login-view").hidden = false;
  $("signout").hidden = !token;
  setFieldError("login-token", message || "");
  const input = $("login-token");
  input.value = "";
  input.focus();
}

/** The feed's connections waiting for a fresh token (see `feedToken`). */
let tokenWaiters = [];

/**
 * The token for each of the feed's connections. The server ends a stream when its token expires, so
 * its rights never outlive it; the feed then asks here, and an expired token is exchanged for a
 * fresh one from the sign-in form. The page keeps its view meanwhile, and the feed resumes from its
 * cursors.
 */
function feedToken() {
  const c = token ? decodeJwt(token) : null;
  if (!c || typeof c.exp !== "number" || c.exp * 1000 > Date.now()) return token;
  return new Promise((resolve) => {
    tokenWaiters.push(resolve);
    if (tokenWaiters.length > 1) return;
    setConn("offline", null, "Token expired");
    for (const v of ["table-view", "room-view"]) $(v).hidden = true;
    $("login-view").hidden = false;
    setFieldError("login-token", "Your token has expired: paste a new one to carry on where you were.");
    $("login-token").value = "";
    $("login-token").focus();
  });
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("login-token").value.trim().replace(/^Bearer\s+/i, "");
  if (!value) return setFieldError("login-token", "Paste the token you were given.");
  if (!decodeJwt(value)) return setFieldError("login-token", "That is not a JWT (three base64url parts separated by dots).");
  token = value;
  sessionStorage.setItem(TOKEN_KEY, token);
  if (tokenWaiters.length && feed) {
    // The feed asked for a fresh token: back to the same view, and the feed resumes.
    $("login-view").hidden = true;
    setFieldError("login-token", "");
    $(view === "table" ? "table-view" : "room-view").hidden = false;
    const waiting = tokenWaiters;
    tokenWaiters = [];
    for (const resolve of waiting) resolve(token);
    return;
  }
  tokenWaiters = [];
  boot();
});

$("signout").addEventListener("click", () => {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin("Signed out.");
});

/**
 * Finds out what this page may do: no auth or an admin token read the `studies` topic; a member
 * token is refused it (403) and builds its table from the token's `studies` claim instead.
 */
async function boot() {
  claims = token ? decodeJwt(token) : null;
  if (claims && typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
    return showLogin("Your token has expired: paste a new one.");
  }
  let status = 0;
  try {
    const res = await fetch("/api/changes?topics=studies&wait=0", { headers: authHeaders(), cache: "no-store" });
    status = res.status;
  } catch {
    status = 0; // the server is down: go on, the feed shows "offline" and keeps trying
  }
  if (status === 401) {
    return showLogin(token ? "The server refused this token (wrong or expired): paste another." : "");
  }
  const member = Boolean(claims && claims.role === "member" && Array.isArray(claims.studies));
  if (status === 403) {
    // A member may not read the whole table: build it from the studies the token names.
    if (!member) return showLogin("This token may not read studies: paste another.");
    mode = "member";
  } else {
    // 200: no auth, or an admin token. Unknown (server down): trust the token's claim for now.
    mode = status !== 200 && member ? "member" : "admin";
  }
  $("login-view").hidden = true;
  $("signout").hidden = !token;
  const who = $("who");
  who.hidden = !claims;
  if (claims) setText(who, claims.role === "member" ? `Member of ${claims.studies.length} ${claims.studies.length === 1 ? "study" : "studies"}` : statusLabel(claims.role || "signed in"));
  document.body.classList.toggle("member", mode === "member");
  route();
}

// ---- REST --------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || (status ? `The server answered ${status}.` : "Cannot reach the server."));
    this.status = status;
    this.code = e.code || (status ? `http_${status}` : "network");
    this.details = e.details || null;
  }
}

async function api(method, path, { json, ifMatch } = {}) {
  const headers = { ...authHeaders() };
  if (json !== undefined) headers["content-type"] = "application/json";
  if (ifMatch != null) headers["if-match"] = `"${ifMatch}"`;
  let res;
  try {
    res = await fetch(path, { method, headers, body: json === undefined ? undefined : JSON.stringify(json), cache: "no-store" });
  } catch {
    throw new ApiError(0, { error: { message: "Cannot reach the server: check the connection and try again." } });
  }
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!res.ok) {
    const err = new ApiError(res.status, body);
    if (res.status === 401) showLogin("The server asks for a token (yours is missing, wrong or expired).");
    throw err;
  }
  return body;
}

// ---- form errors -------------------------------------------------------------------------------

function setFieldError(fieldId, message) {
  const input = $(fieldId);
  const out = $(`${fieldId}-error`);
  if (out) setText(out, message);
  if (input) {
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
}

/**
 * Shows an API error next to the fields it names (`details` of a 422; the label for a 409) and
 * the rest in the form's error line; focuses the first field at fault.
 */
function showApiError(err, prefix, fields, formErrorId) {
  for (const f of fields) setFieldError(`${prefix}-${f}`, "");
  let first = null;
  let rest = [];
  if (err.details) {
    for (const [field, problem] of Object.entries(err.details)) {
      if (fields.includes(field)) {
        setFieldError(`${prefix}-${field}`, `${statusLabel(field)} ${problem}.`.replace(/\.\.$/, "."));
        first = first || $(`${prefix}-${field}`);
      } else {
        rest.push(field ? `${field}: ${problem}` : problem);
      }
    }
  } else if (err.code === "conflict" && fields.includes("label")) {
    setFieldError(`${prefix}-label`, err.message);
    first = $(`${prefix}-label`);
  } else {
    rest.push(err.message);
  }
  setText($(formErrorId), rest.join(" "));
  if (first) first.focus();
}

// ---- connection indicator ----------------------------------------------------------------------

const CONN_TEXT = {
  connected: "Connected",
  connecting: "Connecting…",
  offline: "Offline, retrying…",
  fallback: "Fallback",
};

function setConn(status, detail, text) {
  const el = $("conn");
  el.dataset.status = status;
  el.dataset.transport = detail || "";
  const name = detail === "sse" ? "Server-Sent Events" : detail === "poll" ? "long-polling" : detail;
  setText(el.querySelector(".conn-text"), text || (status === "fallback" ? `Fallback: ${name}` : CONN_TEXT[status] || status));
  el.title = {
    connected: "Live over WebSocket",
    connecting: "Connecting to the server",
    offline: "The server cannot be reached; the page catches up when it is back",
    fallback: `WebSockets are unavailable; live over ${name}`,
  }[status] || "";
}

// ---- the feed ----------------------------------------------------------------------------------

let feed = null;

function stopFeed() {
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
function startFeed(topics, onSnapshot, onEvent, reload) {
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

// ---- routing -----------------------------------------------------------------------------------

let view = null; // "table" | {room: id}

function route() {
  if (!$("login-view").hidden) return;
  const m = /^#\/studies\/(\d+)$/.exec(location.hash);
  closeDialogs();
  if (m) openRoom(Number(m[1]));
  else openTable();
}
window.addEventListener("hashchange", () => { if (!$("login-view").hidden) return; route(); });

function closeDialogs() {
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
}

// ---- the studies table -------------------------------------------------------------------------

/** id → {study, tr, cells}. */
const rows = new Map();
let tableLoaded = false;
const sort = loadSort();
const filter = { status: "", q: "" };
const tbody = document.querySelector("#studies tbody");

function loadSort() {
  try {
    const s = JSON.parse(sessionStorage.getItem(SORT_KEY));
    if (s && ["label", "title", "status", "version", "updated_at"].includes(s.key) && (s.dir === 1 || s.dir === -1)) return s;
  } catch { /* default */ }
  return { key: "label", dir: 1 };
}

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

function compare(a, b) {
  let r;
  switch (sort.key) {
    case "version": r = a.version - b.version; break;
    case "status": r = STATUSES.indexOf(a.status) - STATUSES.indexOf(b.status); break;
    case "updated_at": r = Date.parse(a.updated_at) - Date.parse(b.updated_at); break;
    default: r = collator.compare(a[sort.key] || "", b[sort.key] || "");
  }
  return (r || a.id - b.id) * sort.dir;
}

function matches(s) {
  if (filter.status && s.status !== filter.status) return false;
  if (filter.q) {
    const q = filter.q.toLowerCase();
    return s.label.toLowerCase().includes(q) || s.title.toLowerCase().includes(q);
  }
  return true;
}

function openTable() {
  view = "table";
  $("room-view").hidden = true;
  $("table-view").hidden = false;
  document.title = "Studies · pgfeed admin";
  stopRoom();
  const onEvent = (e) => {
    if (e.table !== "studies") return;
    if (e.op === "delete") removeStudy(e.id, true);
    else upsertStudy(e.data, true);
  };
  if (mode === "member") {
    const ids = claims.studies.map(Number).filter(Number.isFinite);
    for (const id of [...rows.keys()]) if (!ids.includes(id)) removeStudy(id, false);
    if (!ids.length) {
      tableLoaded = true;
      updateCount();
      setConn("offline", null, "No studies in this token");
      return;
    }
    startFeed(
      ids.map((id) => `studies:${id}`),
      (topic, data) => {
        const id = Number(topic.split(":")[1]);
        if (data && data.study) upsertStudy(data.study, tableLoaded);
        else removeStudy(id, tableLoaded);
        tableLoaded = true;
        updateCount();
      },
      onEvent,
    );
  } else {
    startFeed(
      ["studies"],
      (_topic, list) => mergeStudies(list),
      onEvent,
      reloadStudiesOverRest,
    );
  }
}

/** A snapshot: update rows in place, add new ones, drop vanished ones; flash only real changes. */
function mergeStudies(list, guard = null) {
  const seen = new Set();
  for (const s of list) {
    seen.add(s.id);
    if (guard && guard.deleted.has(`studies:${s.id}`)) continue;
    upsertStudy(s, tableLoaded);
  }
  for (const id of [...rows.keys()]) {
    if (!seen.has(id) && !(guard && guard.touched.has(`studies:${id}`))) removeStudy(id, tableLoaded);
  }
  tableLoaded = true;
  updateCount();
}

/** On a fallback transport a snapshot waits for the WebSocket; meanwhile reload over REST. */
async function reloadStudiesOverRest(guard) {
  try {
    const all = [];
    let after = null;
    for (;;) {
      const page = await api("GET", `/api/studies?limit=500${after ? `&after=${after}` : ""}`);
      all.push(...page.items);
      if (page.items.length < 500) break;
      after = page.items[page.items.length - 1].id;
    }
    mergeStudies(all, guard);
    return true;
  } catch (e) {
    console.warn("reloading studies:", e.message);
    return false;
  }
}

function studyRow(s) {
  const cells = {
    label: h("td", { class: "label", dataset: { col: "Label" } }),
    title: h("td", { class: "title", dataset: { col: "Title" } }),
    status: h("td", { class: "status-cell", dataset: { col: "Status" } }),
    version: h("td", { class: "num version", dataset: { col: "Version" } }),
    updated_at: h("td", { class: "updated", dataset: { col: "Updated" } }),
  };
  const link = h("a", { href: `#/studies/${s.id}` });
  cells.label.append(link);
  const badge = h("span", { class: "status" });
  cells.status.append(badge);
  const time = h("time");
  cells.updated_at.append(time);
  const edit = h("button", { type: "button", class: "small admin-only", onclick: () => openStudyDialog(rows.get(s.id)?.study) }, "Edit");
  const del = h("button", { type: "button", class: "small danger admin-only", onclick: () => confirmDeleteStudy(rows.get(s.id)?.study) }, "Delete");
  const actions = h("td", { class: "actions" }, edit, " ", del);
  const tr = h("tr", { dataset: { id: s.id } }, cells.label, cells.title, cells.status, cells.version, cells.updated_at, actions);
  tr.addEventListener("animationend", () => tr.classList.remove("flash"));
  return { tr, cells, link, badge, time, edit, del };
}

function fillRow(entry) {
  const s = entry.study;
  setText(entry.link, s.label);
  entry.link.setAttribute("aria-label", `Open study ${s.label}`);
  setText(entry.cells.title, s.title);
  setText(entry.badge, statusLabel(s.status));
  entry.badge.dataset.status = s.status;
  setText(entry.cells.version, s.version);
  setText(entry.time, formatTime(s.updated_at));
  entry.time.dateTime = s.updated_at;
  entry.time.title = s.updated_at;
  entry.edit.setAttribute("aria-label", `Edit ${s.label}`);
  entry.del.setAttribute("aria-label", `Delete ${s.label}`);
}

function upsertStudy(s, highlight) {
  let entry = rows.get(s.id);
  if (entry && entry.study.version > s.version) return; // older than what is shown (a REST reload raced an event)
  const changed = !entry || entry.study.version !== s.version || JSON.stringify(entry.study) !== JSON.stringify(s);
  if (!entry) {
    entry = { study: s, ...studyRow(s) };
    rows.set(s.id, entry);
  }
  entry.study = s;
  if (changed) fillRow(entry);
  place(entry);
  if (changed && highlight && entry.tr.isConnected) flash(entry.tr);
  if (changed) {
    studyDialogSawChange(s);
    updateCount();
  }
}

function removeStudy(id, animate) {
  const entry = rows.get(id);
  if (!entry) return;
  rows.delete(id);
  studyDialogSawChange(null, id);
  const tr = entry.tr;
  if (animate && tr.isConnected) {
    tr.classList.add("leaving");
    tr.removeAttribute("data-id");
    setTimeout(() => tr.remove(), 600);
  } else {
    tr.remove();
  }
  updateCount();
}

/** Rows in the table in order, without those fading out. */
function liveRowElements() {
  return [...tbody.children].filter((tr) => !tr.classList.contains("leaving"));
}

/** Puts the row where the sort says, moving it only if it is out of place (moving loses focus). */
function place(entry) {
  const tr = entry.tr;
  if (!matches(entry.study)) {
    if (tr.isConnected) tr.remove();
    return;
  }
  const others = liveRowElements().filter((el) => el !== tr);
  let before = null;
  for (const el of others) {
    const other = rows.get(Number(el.dataset.id));
    if (other && compare(entry.study, other.study) < 0) { before = el; break; }
  }
  if (tr.isConnected) {
    // Already in place? Then leave it alone.
    let next = tr.nextElementSibling;
    while (next && next.classList.contains("leaving")) next = next.nextElementSibling;
    if (next === before) return;
  }
  const focused = tr.contains(document.activeElement) ? document.activeElement : null;
  tbody.insertBefore(tr, before);
  if (focused) focused.focus({ preventScroll: true });
}

/** Sort or filter changed: re-order everything at once. */
function reorder() {
  const shown = [...rows.values()].filter((e) => matches(e.study)).sort((a, b) => compare(a.study, b.study));
  for (const e of rows.values()) if (!matches(e.study) && e.tr.isConnected) e.tr.remove();
  for (const e of shown) tbody.append(e.tr);
  updateSortHeaders();
  updateCount();
}

function updateCount() {
  const total = rows.size;
  const shown = [...rows.values()].filter((e) => matches(e.study)).length;
  setText($("study-count"), tableLoaded ? (shown === total ? `(${total})` : `(${shown} of ${total})`) : "");
  const empty = $("table-empty");
  empty.hidden = !tableLoaded || shown > 0;
  setText(empty, total ? "No study matches the search and filter." : mode === "member" ? "None of your studies exists." : "No studies yet. Create one with “New study”.");
}

function updateSortHeaders() {
  for (const th of document.querySelectorAll("#studies th[data-sort]")) {
    if (th.dataset.sort === sort.key) th.setAttribute("aria-sort", sort.dir === 1 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
}

for (const th of document.querySelectorAll("#studies th[data-sort]")) {
  th.querySelector("button").addEventListener("click", () => {
    if (sort.key === th.dataset.sort) sort.dir = -sort.dir;
    else { sort.key = th.dataset.sort; sort.dir = sort.key === "updated_at" || sort.key === "version" ? -1 : 1; }
    sessionStorage.setItem(SORT_KEY, JSON.stringify(sort));
    reorder();
  });
}
updateSortHeaders();

$("search").addEventListener("input", (e) => { filter.q = e.target.value.trim(); reorder(); });
$("status-filter").addEventListener("change", (e) => { filter.status = e.target.value; reorder(); });
$("new-study").addEventListener("click", () => openStudyDialog(null));

// ---- create / edit a study ---------------------------------------------------------------------

const STUDY_FIELDS = ["label", "title", "status", "description"];
/** The study being edited as it was loaded into the form (null: creating). */
let editing = null;
/** Whether the study being edited has been deleted meanwhile (nothing left to save). */
let editingGone = false;

function openStudyDialog(study) {
  if (study === undefined) return;
  editing = study ? { ...study } : null;
  editingGone = false;
  const form = $("study-form");
  form.reset();
  for (const f of STUDY_FIELDS) setFieldError(`study-${f}`, "");
  setText($("study-form-error"), "");
  hideNotice();
  setText($("study-dialog-title"), study ? `Edit ${study.label}` : "New study");
  setText($("study-save"), study ? "Save" : "Create");
  $("study-save").disabled = false;
  if (study) fillStudyForm(study);
  else $("study-status").value = "draft";
  $("study-dialog").showModal();
  $("study-label").focus();
}

function fillStudyForm(s) {
  $("study-label").value = s.label;
  $("study-title").value = s.title;
  $("study-status").value = s.status;
  $("study-description").value = s.description || "";
}

function formValues() {
  return {
    label: $("study-label").value.trim(),
    title: $("study-title").value.trim(),
    status: $("study-status").value,
    description: $("study-description").value,
  };
}

function hideNotice() {
  const n = $("study-notice");
  n.hidden = true;
  n.replaceChildren();
}

/** Shows someone else's version of the study in the dialog, with a way to continue from it. */
function showConflict(current, saved) {
  const n = $("study-notice");
  n.hidden = false;
  if (!current) {
    n.replaceChildren(h("p", {}, h("strong", {}, "This study has been deleted by someone else."), " Your changes cannot be saved."));
    editingGone = true;
    $("study-save").disabled = true;
    return;
  }
  const mine = formValues();
  const diff = h("dl", { class: "current" });
  for (const f of STUDY_FIELDS) {
    const differs = (current[f] || "") !== (mine[f] || "");
    diff.append(h("div", { class: differs ? "differs" : "" }, h("dt", {}, statusLabel(f)), h("dd", {}, f === "status" ? statusLabel(current[f]) : current[f] || "—")));
  }
  const intro = saved
    ? [h("strong", {}, `Not saved: someone else changed this study meanwhile.`), ` Your edit was made on version ${editing.version}; the current version is ${current.version}:`]
    : [h("strong", {}, `Someone else changed this study while you were editing it.`), ` The current version is ${current.version}; saving your edit will be refused until you choose:`];
  const useTheirs = h("button", { type: "button", onclick: () => { editing = { ...current }; fillStudyForm(current); hideNotice(); $("study-label").focus(); } }, "Discard mine, use current");
  // Keep what this user changed; take everything else from the current version.
  const keepMine = h("button", {
    type: "button",
    onclick: () => {
      const now = formValues();
      for (const f of STUDY_FIELDS) if ((now[f] || "") === (editing[f] || "")) $(`study-${f}`).value = current[f] || "";
      editing = { ...current };
      hideNotice();
      setText($("study-form-error"), "");
      $("study-save").focus();
    },
  }, `Keep my changes on version ${current.version}`);
  n.replaceChildren(h("p", {}, ...intro), diff, h("div", { class: "notice-actions" }, useTheirs, keepMine));
}

/** A live change of some study, while the dialog may be editing it. */
function studyDialogSawChange(study, deletedId) {
  if (!editing || !$("study-dialog").open) return;
  if (deletedId != null && deletedId === editing.id) return showConflict(null, false);
  if (study && study.id === editing.id && study.version > editing.version) showConflict(study, false);
}

$("study-cancel").addEventListener("click", () => $("study-dialog").close());
$("study-dialog").addEventListener("close", () => { editing = null; });

$("study-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = formValues();
  for (const f of STUDY_FIELDS) setFieldError(`study-${f}`, "");
  setText($("study-form-error"), "");
  // The checks the server makes, said before asking it.
  let bad = false;
  if (!v.label) { setFieldError("study-label", "Label is required."); bad = true; }
  if (!v.title) { setFieldError("study-title", "Title is required."); bad = true; }
  if (bad) return (v.label ? $("study-title") : $("study-label")).focus();
  const save = $("study-save");
  save.disabled = true;
  const base = editing;
  try {
    if (!base) {
      const created = await api("POST", "/api/studies", { json: v });
      $("study-dialog").close();
      toast(`Created ${created.label}.`);
    } else {
      const changes = {};
      for (const f of STUDY_FIELDS) if ((v[f] || "") !== (base[f] || "")) changes[f] = v[f];
      if (Object.keys(changes).length) {
        // If-Match: only if nobody changed it since the version this form shows.
        const saved = await api("PATCH", `/api/studies/${base.id}`, { json: changes, ifMatch: base.version });
        toast(`Saved ${saved.label} (version ${saved.version}).`);
      }
      $("study-dialog").close();
    }
  } catch (err) {
    if (err.status === 412 && base) {
      try {
        const current = await api("GET", `/api/studies/${base.id}`);
        showConflict(current, true);
      } catch (e) {
        if (e.status === 404) showConflict(null, true);
        else setText($("study-form-error"), e.message);
      }
    } else if (err.status === 404 && base) {
      showConflict(null, true);
    } else if (err.status !== 401) {
      showApiError(err, "study", STUDY_FIELDS, "study-form-error");
    }
  } finally {
    save.disabled = editingGone;
  }
});

// ---- delete (studies and files) ----------------------------------------------------------------

let confirmAction = null;

function confirmDelete(title, text, action) {
  confirmAction = action;
  setText($("confirm-title"), title);
  setText($("confirm-text"), text);
  setText($("confirm-error"), "");
  $("confirm-ok").disabled = false;
  $("confirm-dialog").showModal();
  $("confirm-cancel").focus();
}

$("confirm-cancel").addEventListener("click", () => $("confirm-dialog").close());
$("confirm-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!confirmAction) return;
  $("confirm-ok").disabled = true;
  try {
    await confirmAction();
    $("confirm-dialog").close();
  } catch (err) {
    if (err.status !== 401) setText($("confirm-error"), err.message);
  } finally {
    $("confirm-ok").disabled = false;
  }
});

function confirmDeleteStudy(study) {
  if (!study) return;
  const version = study.version;
  confirmDelete(`Delete ${study.label}?`, `“${study.title}” will be deleted with all its messages and files.`, async () => {
    try {
      await api("DELETE", `/api/studies/${study.id}`, { ifMatch: version });
      toast(`Deleted ${study.label}.`);
    } catch (err) {
      if (err.status === 412) {
        const now = rows.get(study.id)?.study || room.study;
        throw new Error(`Not deleted: someone changed this study meanwhile${now ? ` (now version ${now.version}, “${now.title}”)` : ""}. Look at the change, then delete again if you still mean to.`);
      }
      if (err.status === 404) return toast(`${study.label} was already deleted.`);
      throw err;
    }
  });
}

// ---- a study's room ----------------------------------------------------------------------------

const room = {
  id: null,
  study: null,
  loaded: false,
  messages: new Map(), // id → {message, li}
  files: new Map(), // id → {file, tr}
};

function stopRoom() {
  room.id = null;
  room.study = null;
  room.loaded = false;
  room.messages.clear();
  room.files.clear();
  $("thread").replaceChildren();
  $("file-rows").replaceChildren();
}

function openRoom(id) {
  view = { room: id };
  $("table-view").hidden = true;
  $("room-view").hidden = false;
  if (room.id !== id) stopRoom();
  room.id = id;
  setText($("room-title"), `Study ${id}`);
  $("room-banner").hidden = true;
  $("message-author").value = localStorage.getItem(AUTHOR_KEY) || (claims && claims.sub) || "";
  startFeed(
    [`studies:${id}`],
    (_topic, data) => mergeRoom(data),
    (e) => roomEvent(e),
    (guard) => reloadRoomOverRest(id, guard),
  );
}

function mergeRoom(data, guard = null) {
  const again = room.loaded;
  const deleted = (key) => guard && guard.deleted.has(key);
  const touched = (key) => guard && guard.touched.has(key);
  if (data.study ? !deleted(`studies:${data.study.id}`) : !touched(`studies:${room.id}`)) setRoomStudy(data.study, again);
  const mseen = new Set();
  for (const m of data.messages) { mseen.add(m.id); if (!deleted(`messages:${m.id}`)) upsertMessage(m, again); }
  for (const id of [...room.messages.keys()]) if (!mseen.has(id) && !touched(`messages:${id}`)) removeMessage(id);
  const fseen = new Set();
  for (const f of data.files) { fseen.add(f.id); if (!deleted(`files:${f.id}`)) upsertFile(f, again); }
  for (const id of [...room.files.keys()]) if (!fseen.has(id) && !touched(`files:${id}`)) removeFile(id);
  room.loaded = true;
  roomCounts();
  if (!again) scrollThreadToEnd();
}

async function reloadRoomOverRest(id, guard) {
  try {
    const [study, messages, files] = await Promise.all([
      api("GET", `/api/studies/${id}`).catch((e) => { if (e.status === 404) return null; throw e; }),
      api("GET", `/api/studies/${id}/messages?limit=500`).catch(() => ({ items: [] })),
      api("GET", `/api/studies/${id}/files?limit=500`).catch(() => ({ items: [] })),
    ]);
    if (room.id !== id) return false;
    mergeRoom({ study, messages: messages.items, files: files.items }, guard);
    return true;
  } catch (e) {
    console.warn("reloading the room:", e.message);
    return false;
  }
}

function roomEvent(e) {
  if (e.table === "studies") setRoomStudy(e.op === "delete" ? null : e.data, true);
  else if (e.table === "messages") {
    if (e.op === "delete") removeMessage(e.id);
    else upsertMessage(e.data, true);
  } else if (e.table === "files") {
    if (e.op === "delete") removeFile(e.id);
    else upsertFile(e.data, true);
  }
  roomCounts();
}

function setRoomStudy(s, highlight) {
  const prev = room.study;
  if (s && prev && prev.version > s.version) return;
  room.study = s;
  const banner = $("room-banner");
  const details = $("room-details");
  if (!s) {
    banner.hidden = false;
    banner.className = "banner error";
    setText(banner, room.loaded || prev ? "This study has been deleted." : `There is no study ${room.id} (or you may not see it).`);
    for (const b of [$("room-edit"), $("room-delete")]) b.disabled = true;
    for (const f of document.querySelectorAll("#message-form, #upload-form")) f.inert = true;
    details.classList.add("gone");
    document.title = "Deleted study · pgfeed admin";
    return;
  }
  banner.hidden = true;
  details.classList.remove("gone");
  for (const b of [$("room-edit"), $("room-delete")]) b.disabled = false;
  for (const f of document.querySelectorAll("#message-form, #upload-form")) f.inert = false;
  setText($("room-title"), s.title);
  setText($("room-label"), s.label);
  const badge = $("room-status");
  setText(badge, statusLabel(s.status));
  badge.dataset.status = s.status;
  setText($("room-version"), s.version);
  setText($("room-created"), formatTime(s.created_at));
  setText($("room-updated"), formatTime(s.updated_at));
  setText($("room-description"), s.description || "No description.");
  $("room-description").classList.toggle("none", !s.description);
  document.title = `${s.label} · pgfeed admin`;
  if (highlight && prev && prev.version !== s.version) flash(details);
  studyDialogSawChange(s);
}

$("room-edit").addEventListener("click", () => openStudyDialog(room.study));
$("room-delete").addEventListener("click", () => confirmDeleteStudy(room.study));

// messages

function nearBottom(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 40;
}

function scrollThreadToEnd() {
  const t = $("thread");
  t.scrollTop = t.scrollHeight;
}

function upsertMessage(m, highlight) {
  const thread = $("thread");
  let entry = room.messages.get(m.id);
  if (entry && entry.message.version > m.version) return;
  const stick = nearBottom(thread);
  if (!entry) {
    const author = h("span", { class: "author" });
    const time = h("time");
    const body = h("p", { class: "body" });
    const li = h("li", { dataset: { id: m.id } }, h("div", { class: "meta" }, author, time), body);
    li.addEventListener("animationend", () => li.classList.remove("flash"));
    entry = { message: m, li, author, time, body };
    room.messages.set(m.id, entry);
    // In id order (the order they were posted), wherever they commit.
    let before = null;
    for (const el of thread.children) if (Number(el.dataset.id) > m.id) { before = el; break; }
    thread.insertBefore(li, before);
  } else if (entry.message.version === m.version && entry.message.body === m.body) {
    return;
  }
  entry.message = m;
  setText(entry.author, m.author);
  setText(entry.time, formatTime(m.created_at) + (m.version > 1 ? " (edited)" : ""));
  entry.time.dateTime = m.created_at;
  setText(entry.body, m.body);
  if (highlight) flash(entry.li);
  if (stick) scrollThreadToEnd();
}

function removeMessage(id) {
  const entry = room.messages.get(id);
  if (!entry) return;
  room.messages.delete(id);
  entry.li.remove();
}

$("message-body").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    $("message-form").requestSubmit();
  }
});

$("message-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const author = $("message-author").value.trim();
  const body = $("message-body").value;
  setFieldError("message-author", "");
  setFieldError("message-body", "");
  setText($("message-form-error"), "");
  if (!author) { setFieldError("message-author", "Say who you are."); return $("message-author").focus(); }
  if (!body.trim()) { setFieldError("message-body", "Write something first."); return $("message-body").focus(); }
  localStorage.setItem(AUTHOR_KEY, author);
  const button = ev.target.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await api("POST", `/api/studies/${room.id}/messages`, { json: { author, body } });
    $("message-body").value = "";
    $("message-body").focus();
    scrollThreadToEnd();
  } catch (err) {
    if (err.status !== 401) showApiError(err, "message", ["author", "body"], "message-form-error");
  } finally {
    button.disabled = false;
  }
});

// files

function fileUrl(f) {
  return `/api/files/${f.id}/content`;
}

function upsertFile(f, highlight) {
  let entry = room.files.get(f.id);
  if (!entry) {
    const link = h("a", { href: fileUrl(f), download: f.name, onclick: (e) => download(e, room.files.get(f.id)?.file) });
    const size = h("td", { class: "num", dataset: { col: "Size" } });
    const time = h("time");
    const del = h("button", { type: "button", class: "small danger", onclick: () => confirmDeleteFile(room.files.get(f.id)?.file) }, "Delete");
    const tr = h("tr", { dataset: { id: f.id } }, h("td", { class: "name" }, link, h("span", { class: "type" })), size, h("td", { dataset: { col: "Uploaded" } }, time), h("td", { class: "actions" }, del));
    tr.addEventListener("animationend", () => tr.classList.remove("flash"));
    entry = { file: f, tr, link, size, time, del };
    room.files.set(f.id, entry);
    const rows = $("file-rows");
    let before = null;
    for (const el of rows.children) if (Number(el.dataset.id) > f.id) { before = el; break; }
    rows.insertBefore(tr, before);
    if (highlight) flash(tr);
  }
  entry.file = f;
  setText(entry.link, f.name);
  entry.link.download = f.name;
  entry.link.setAttribute("aria-label", `Download ${f.name}`);
  setText(entry.tr.querySelector(".type"), f.content_type);
  setText(entry.size, formatSize(Number(f.size_bytes)));
  setText(entry.time, formatTime(f.created_at));
  entry.del.setAttribute("aria-label", `Delete ${f.name}`);
}

function removeFile(id) {
  const entry = room.files.get(id);
  if (!entry) return;
  room.files.delete(id);
  entry.tr.remove();
}

/** With a token the link cannot carry the header: fetch the bytes and save them from a blob. */
async function download(ev, f) {
  if (!token || !f) return; // a plain link does it
  ev.preventDefault();
  try {
    const res = await fetch(fileUrl(f), { headers: authHeaders() });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    const url = URL.createObjectURL(await res.blob());
    const a = h("a", { href: url, download: f.name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    toast(`Download failed: ${err.message}`, "error");
  }
}

function confirmDeleteFile(f) {
  if (!f) return;
  confirmDelete(`Delete ${f.name}?`, `The file (${formatSize(Number(f.size_bytes))}) will be deleted for everyone.`, async () => {
    try {
      await api("DELETE", `/api/files/${f.id}`, { ifMatch: f.sha256 });
    } catch (err) {
      if (err.status === 404) return;
      throw err;
    }
  });
}

$("upload-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("upload-file");
  setFieldError("upload-file", "");
  const file = input.files && input.files[0];
  if (!file) { setFieldError("upload-file", "Choose a file first."); return input.focus(); }
  const button = ev.target.querySelector("button[type=submit]");
  const wrap = $("upload-progress-wrap");
  const bar = $("upload-progress");
  const text = $("upload-progress-text");
  const body = new FormData();
  body.append("file", file, file.name);
  // XMLHttpRequest rather than fetch: it reports upload progress.
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/studies/${room.id}/files`);
  if (token) xhr.setRequestHeader("authorization", `Bearer ${token}`);
  wrap.hidden = false;
  bar.value = 0;
  setText(text, `0% of ${formatSize(file.size)}`);
  button.disabled = true;
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    const pct = Math.round((e.loaded / e.total) * 100);
    bar.value = pct;
    setText(text, `${pct}% of ${formatSize(file.size)}`);
  };
  const done = (message) => {
    button.disabled = false;
    if (message) {
      wrap.hidden = true;
      setFieldError("upload-file", message);
      input.focus();
    }
  };
  xhr.onload = () => {
    if (xhr.status === 201 || xhr.status === 200) {
      bar.value = 100;
      setText(text, `Uploaded ${file.name}`);
      input.value = "";
      setTimeout(() => { wrap.hidden = true; }, 1500);
      return done(null);
    }
    let err;
    try { err = new ApiError(xhr.status, JSON.parse(xhr.responseText)); } catch { err = new ApiError(xhr.status, null); }
    if (xhr.status === 401) return showLogin("The server asks for a token (yours is missing, wrong or expired).");
    done(err.message);
  };
  xhr.onerror = () => done("The upload failed: the server could not be reached (or closed the connection, e.g. the file is over its size limit).");
  xhr.send(body);
});

function roomCounts() {
  const m = room.messages.size;
  const f = room.files.size;
  setText($("message-count"), m ? `(${m})` : "");
  setText($("file-count"), f ? `(${f})` : "");
  $("thread-empty").hidden = !room.loaded || m > 0;
  $("files-empty").hidden = !room.loaded || f > 0;
  document.querySelector(".file-list").hidden = f === 0;
}

// ---- start -------------------------------------------------------------------------------------

boot();
