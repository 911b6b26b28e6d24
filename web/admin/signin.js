// Signing in (README "Admin page: `GET /`" and "Security: auth and limits"): the token, what it
// may read, and a fresh one when the feed's expires; `boot` decides which view comes first.
import { $, setConn, setFieldError, setText, statusLabel, TOKEN_KEY } from "./common.js";
import { feed, stopFeed } from "../admin.js";
import { closeDialogs, route, view } from "./route.js";

export let token = sessionStorage.getItem(TOKEN_KEY) || null;
/** `{role, studies, exp}` from the token's payload (not verified here: the server does that). */
export let claims = null;
/** "admin": the whole `studies` topic; "member": one room topic per study in the token. */
export let mode = "admin";

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

export function authHeaders() {
  return token ? { authorization: `Bearer ${token}` } : {};
}

export function showLogin(message) {
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
 * The token for each of the feed's connections. The server ends a stream when its token expires
 * (README "Security: auth and limits"); the feed then asks here, and an expired token is exchanged
 * for a fresh one from the sign-in form. The page keeps its view meanwhile, and the feed resumes
 * from its cursors.
 */
export function feedToken() {
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
export async function boot() {
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
