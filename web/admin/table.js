// The studies table: every study kept live, sorted and filtered in place.
import { $, flash, formatTime, h, setConn, setText, SORT_KEY, STATUSES, statusLabel } from "./common.js";
import { startFeed } from "../admin.js";
import { api } from "./api.js";
import { confirmDeleteStudy } from "./confirm.js";
import { stopRoom } from "./room.js";
import { setView } from "./route.js";
import { claims, mode } from "./signin.js";
import { openStudyDialog, studyDialogSawChange } from "./study.js";

/** id → {study, tr, cells}. */
export const rows = new Map();
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

export function openTable() {
  setView("table");
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
