// A study's room: its details, messages (thread) and files (list, upload, download), each a live
// view (PROTOCOL §9) of the newest rows, with "Load older" for more.
import { $, AUTHOR_KEY, flash, formatSize, formatTime, h, setFieldError, setText, showApiError, statusLabel, toast } from "./common.js";
import { openView } from "../admin.js";
import { api, ApiError } from "./api.js";
import { confirmDelete, confirmDeleteStudy } from "./confirm.js";
import { LiveList } from "./list.js";
import { setView } from "./route.js";
import { authHeaders, claims, showLogin, token } from "./signin.js";
import { openStudyDialog } from "./study.js";

/** Rows a room's thread and file list show at first; "Load older" adds as many again. */
const ROOM_PAGE = 50;
/** The most a view may hold (PROTOCOL §9 `limit`): older rows than that are not shown. */
const MAX_LIMIT = 1000;

export const room = {
  id: null,
  study: null,
  loaded: false,
  /** The room's three views: the study (`id=eq.N`), its messages and its files (newest first). */
  views: [],
  messageLimit: ROOM_PAGE,
  fileLimit: ROOM_PAGE,
};

const thread = new LiveList($("thread"), { create: messageItem, fill: fillMessage, reverse: true });
const files = new LiveList($("file-rows"), { create: fileRow, fill: fillFile });

export function stopRoom() {
  for (const v of room.views) v.close();
  room.views = [];
  room.id = null;
  room.study = null;
  room.loaded = false;
  room.messageLimit = ROOM_PAGE;
  room.fileLimit = ROOM_PAGE;
  thread.clear();
  files.clear();
}

const messagesOf = (id) => ({ topic: "messages", filter: { study_id: `eq.${id}` }, order: "id.desc", limit: room.messageLimit, count: true });
const filesOf = (id) => ({ topic: "files", filter: { study_id: `eq.${id}` }, order: "id.desc", limit: room.fileLimit, count: true });

export function openRoom(id) {
  setView({ room: id });
  $("table-view").hidden = true;
  $("room-view").hidden = false;
  if (room.id === id && room.views.length && !room.views[0].stale) return;
  stopRoom();
  room.id = id;
  setText($("room-title"), `Study ${id}`);
  $("room-banner").hidden = true;
  $("message-author").value = localStorage.getItem(AUTHOR_KEY) || (claims && claims.sub) || "";
  let first = true;
  const study = openView({ topic: "studies", filter: { id: `eq.${id}` }, limit: 1 }, (rows, change) => {
    setRoomStudy(rows[0] || null, !first);
    if (change.type === "view") first = false;
    room.loaded = true;
    roomCounts();
  });
  let firstMessages = true;
  const messages = openView(messagesOf(id), (rows, change) => {
    const t = $("thread");
    const stick = firstMessages || nearBottom(t);
    thread.apply(rows, change, !firstMessages);
    firstMessages = false;
    roomCounts();
    if (stick) scrollThreadToEnd();
  });
  let firstFiles = true;
  const fileView = openView(filesOf(id), (rows, change) => {
    files.apply(rows, change, !firstFiles);
    firstFiles = false;
    roomCounts();
  });
  room.views = [study, messages, fileView];
}

$("load-older-messages").addEventListener("click", () => {
  if (!room.views[1]) return;
  room.messageLimit = Math.min(MAX_LIMIT, room.messageLimit + ROOM_PAGE);
  // Older rows come in above; keep the messages the user was reading where they are.
  const t = $("thread");
  const fromBottom = t.scrollHeight - t.scrollTop;
  const keep = new MutationObserver(() => { t.scrollTop = t.scrollHeight - fromBottom; });
  keep.observe(t, { childList: true });
  setTimeout(() => keep.disconnect(), 3000);
  room.views[1].update(messagesOf(room.id));
});
$("load-older-files").addEventListener("click", () => {
  if (!room.views[2]) return;
  room.fileLimit = Math.min(MAX_LIMIT, room.fileLimit + ROOM_PAGE);
  room.views[2].update(filesOf(room.id));
});

function setRoomStudy(s, highlight) {
  const prev = room.study;
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

function messageItem() {
  const author = h("span", { class: "author" });
  const time = h("time");
  const body = h("p", { class: "body" });
  const el = h("li", {}, h("div", { class: "meta" }, author, time), body);
  return { el, author, time, body };
}

function fillMessage(entry) {
  const m = entry.row;
  setText(entry.author, m.author);
  setText(entry.time, formatTime(m.created_at) + (m.version > 1 ? " (edited)" : ""));
  entry.time.dateTime = m.created_at;
  setText(entry.body, m.body);
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

function fileRow(f) {
  const link = h("a", { href: fileUrl(f), download: f.name, onclick: (e) => download(e, files.get(f.id)?.row) });
  const type = h("span", { class: "type" });
  const size = h("td", { class: "num", dataset: { col: "Size" } });
  const time = h("time");
  const del = h("button", { type: "button", class: "small danger", onclick: () => confirmDeleteFile(files.get(f.id)?.row) }, "Delete");
  const el = h("tr", {}, h("td", { class: "name" }, link, type), size, h("td", { dataset: { col: "Uploaded" } }, time), h("td", { class: "actions" }, del));
  return { el, link, type, size, time, del };
}

function fillFile(entry) {
  const f = entry.row;
  setText(entry.link, f.name);
  entry.link.download = f.name;
  entry.link.setAttribute("aria-label", `Download ${f.name}`);
  setText(entry.type, f.content_type);
  setText(entry.size, formatSize(Number(f.size_bytes)));
  setText(entry.time, formatTime(f.created_at));
  entry.del.setAttribute("aria-label", `Delete ${f.name}`);
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

const number = new Intl.NumberFormat();

function roomCounts() {
  const [, messages, fileView] = room.views;
  const m = messages && messages.loaded ? messages.count ?? thread.order.length : 0;
  const f = fileView && fileView.loaded ? fileView.count ?? files.order.length : 0;
  setText($("message-count"), m ? `(${number.format(m)})` : "");
  setText($("file-count"), f ? `(${number.format(f)})` : "");
  $("thread-empty").hidden = !(messages && messages.loaded) || m > 0;
  $("files-empty").hidden = !(fileView && fileView.loaded) || f > 0;
  document.querySelector(".file-list").hidden = f === 0;
  // "Load older" while the view holds fewer rows than match, up to the most a view may hold.
  $("load-older-messages").hidden = !(m > thread.order.length && room.messageLimit < MAX_LIMIT);
  $("load-older-files").hidden = !(f > files.order.length && room.fileLimit < MAX_LIMIT);
}
