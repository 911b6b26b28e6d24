// A study's room: its messages (thread) and files (list, upload, download), kept live.
import { $, AUTHOR_KEY, flash, formatSize, formatTime, h, setFieldError, setText, showApiError, statusLabel, toast } from "./common.js";
import { startFeed } from "../admin.js";
import { api, ApiError } from "./api.js";
import { confirmDelete, confirmDeleteStudy } from "./confirm.js";
import { setView } from "./route.js";
import { authHeaders, claims, showLogin, token } from "./signin.js";
import { openStudyDialog, studyDialogSawChange } from "./study.js";

export const room = {
  id: null,
  study: null,
  loaded: false,
  messages: new Map(), // id → {message, li}
  files: new Map(), // id → {file, tr}
};

export function stopRoom() {
  room.id = null;
  room.study = null;
  room.loaded = false;
  room.messages.clear();
  room.files.clear();
  $("thread").replaceChildren();
  $("file-rows").replaceChildren();
}

export function openRoom(id) {
  setView({ room: id });
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
