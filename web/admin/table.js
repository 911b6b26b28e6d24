// The studies table: one live view (PROTOCOL §9) of 50 rows: sorted, filtered, searched and paged
// by the server, whatever the table's size; the page holds only the rows it shows.
import { $, formatTime, h, setConn, setText, SORT_KEY, statusLabel } from "./common.js";
import { openView } from "../admin.js";
import { confirmDeleteStudy } from "./confirm.js";
import { LiveList } from "./list.js";
import { stopRoom } from "./room.js";
import { setView } from "./route.js";
import { claims, mode } from "./signin.js";
import { openStudyDialog } from "./study.js";

export const PAGE = 50;
const COLUMNS = ["label", "title", "status", "version", "updated_at"];

const sort = loadSort();
const filter = { status: "", q: "" };
/** The `after` tokens of the pages before this one (for "Previous"); this page's is `after`. */
let pagesBefore = [];
let after = null;
/** The view and the feed it lives on (a sign-out or a new token starts a new feed). */
let studies = null;
/** A new definition was asked for: its first window replaces the rows without highlights. */
let quiet = true;
/**
 * The filter key of the search: label or title. A server that knows no such two-column selector
 * refuses it (`bad_request`); the search then looks at titles only, and says so.
 */
let searchKey = "title|label";
/** The server's refusal of the current definition, shown in place of the rows. */
let refused = null;

const list = new LiveList(document.querySelector("#studies tbody"), { create: studyRow, fill: fillRow, fade: true });

/** The study with this id, when the table shows it. */
export function shownStudy(id) {
  return list.get(id)?.row;
}

function loadSort() {
  try {
    const s = JSON.parse(sessionStorage.getItem(SORT_KEY));
    if (s && COLUMNS.includes(s.key) && (s.dir === 1 || s.dir === -1)) return s;
  } catch { /* default */ }
  return { key: "label", dir: 1 };
}

/** The member's studies, from the token (a member's view must name them: PROTOCOL §9 "Auth"). */
function memberIds() {
  return (claims.studies || []).map(Number).filter(Number.isFinite);
}

function definition() {
  const f = {};
  if (mode === "member") f.id = `in.(${memberIds().join(",")})`;
  if (filter.status) f.status = `eq.${filter.status}`;
  // Filters are ANDed; one selector over two columns searches either (`*` is the wildcard, so a
  // typed one is dropped rather than widened).
  if (filter.q) f[searchKey] = `ilike.*${filter.q.replace(/\*/g, "")}*`;
  return { topic: "studies", filter: f, order: orderOf(sort), limit: PAGE, after, count: true };
}

/**
 * The view's order for a column's sort. Status has four values: within each, studies go by title
 * (one index serves both, migrations/0004_admin_sort_indexes.sql), not by the key a lone status
 * sort would fall back on.
 */
function orderOf({ key, dir }) {
  const d = dir === 1 ? "asc" : "desc";
  return key === "status" ? `status.${d},title.${d}` : `${key}.${d}`;
}

export function openTable() {
  setView("table");
  $("room-view").hidden = true;
  $("table-view").hidden = false;
  document.title = "Studies · pgfeed admin";
  stopRoom();
  if (mode === "member" && !memberIds().length) {
    list.clear();
    studies = null;
    setConn("offline", null, "No studies in this token");
    return render();
  }
  if (studies && !studies.stale) return;
  quiet = true;
  studies = openView(definition(), (rows, change) => {
    refused = null;
    list.apply(rows, change, !quiet);
    quiet = false;
    render();
  }, (error) => {
    if (error.code === "bad_request" && searchKey !== "title" && error.message.includes(searchKey)) {
      searchKey = "title";
      $("search").placeholder = "Search title";
      $("search").closest("label").querySelector(".visually-hidden").textContent = "Search by title";
      return redefine();
    }
    refused = error;
    render();
  });
  render();
}

/** Sort, filter, search or page changed: the same view, a new definition. */
function redefine() {
  updateSortHeaders();
  if (!studies || studies.stale) return;
  quiet = true;
  studies.update(definition());
  render();
}

function firstPage() {
  pagesBefore = [];
  after = null;
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
  const edit = h("button", { type: "button", class: "small admin-only", onclick: () => openStudyDialog(shownStudy(s.id)) }, "Edit");
  const del = h("button", { type: "button", class: "small danger admin-only", onclick: () => confirmDeleteStudy(shownStudy(s.id)) }, "Delete");
  const actions = h("td", { class: "actions" }, edit, " ", del);
  const el = h("tr", {}, cells.label, cells.title, cells.status, cells.version, cells.updated_at, actions);
  return { el, cells, link, badge, time, edit, del };
}

function fillRow(entry) {
  const s = entry.row;
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

const number = new Intl.NumberFormat();

/** The count, the pager and the empty-table line, from the view. */
function render() {
  const loaded = Boolean(studies && studies.loaded);
  const count = studies ? studies.count : null;
  setText($("study-count"), loaded && count != null ? `(${number.format(count)})` : "");
  const page = pagesBefore.length + 1;
  const pages = count != null ? Math.max(1, Math.ceil(count / PAGE)) : null;
  setText($("page-info"), loaded ? `Page ${number.format(page)}${pages != null && page <= pages ? ` of ${number.format(pages)}` : ""}` : "");
  $("page-prev").disabled = !pagesBefore.length;
  $("page-next").disabled = !(studies && studies.next);
  $("pager").hidden = !loaded || (!pagesBefore.length && !(studies && studies.next));
  const shown = list.order.length;
  const empty = $("table-empty");
  empty.hidden = !refused && (!loaded || shown > 0);
  if (refused) return setText(empty, `The server refused this table view: ${refused.message}`);
  const narrowed = filter.status || filter.q;
  setText(empty, narrowed ? "No study matches the search and filter."
    : pagesBefore.length ? "No more studies: go back a page."
    : mode === "member" ? "None of your studies exists." : "No studies yet. Create one with “New study”.");
  $("table-view").setAttribute("aria-busy", loaded ? "false" : "true");
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
    firstPage();
    redefine();
  });
}
updateSortHeaders();

// A search is asked for once typing pauses, not per keystroke.
let searchTimer = null;
$("search").addEventListener("input", (e) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    const q = e.target.value.trim();
    if (q === filter.q) return;
    filter.q = q;
    firstPage();
    redefine();
  }, 200);
});
$("status-filter").addEventListener("change", (e) => { filter.status = e.target.value; firstPage(); redefine(); });
$("page-next").addEventListener("click", () => {
  if (!studies || !studies.next) return;
  pagesBefore.push(after);
  after = studies.next;
  redefine();
});
$("page-prev").addEventListener("click", () => {
  if (!pagesBefore.length) return;
  after = pagesBefore.pop();
  redefine();
});
$("new-study").addEventListener("click", () => openStudyDialog(null));
