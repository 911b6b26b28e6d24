// The admin page's shared pieces: DOM helpers, formatting, toasts, form errors and the
// connection indicator. Imports nothing of the page, so every screen may use it from the start.

export const TOKEN_KEY = "pgfeed.token";
export const AUTHOR_KEY = "pgfeed.author";
export const SORT_KEY = "pgfeed.sort";
export const STATUSES = ["draft", "active", "closed", "archived"];

export const $ = (id) => document.getElementById(id);

/** Creates an element: h("td", {class: "x", dataset: {id: 1}}, "text", child). */
export function h(tag, attrs = {}, ...children) {
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
export function setText(el, text) {
  const t = text == null ? "" : String(text);
  if (el.textContent !== t) el.textContent = t;
}

export function flash(el) {
  el.classList.remove("flash");
  void el.offsetWidth; // restart the animation
  el.classList.add("flash");
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
export function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : dateFormat.format(d);
}

export function formatSize(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function statusLabel(s) {
  return s ? s[0].toUpperCase() + s.slice(1) : "";
}

export function toast(text, kind = "info") {
  const el = h("div", { class: `toast ${kind}` }, text);
  $("toasts").append(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

// ---- form errors -------------------------------------------------------------------------------

export function setFieldError(fieldId, message) {
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
export function showApiError(err, prefix, fields, formErrorId) {
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

export function setConn(status, detail, text) {
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
