// The REST API (README "REST API") as the page calls it: JSON in and out, errors as `ApiError`.
import { authHeaders, showLogin } from "./signin.js";

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || (status ? `The server answered ${status}.` : "Cannot reach the server."));
    this.status = status;
    this.code = e.code || (status ? `http_${status}` : "network");
    this.details = e.details || null;
  }
}

export async function api(method, path, { json, ifMatch } = {}) {
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
