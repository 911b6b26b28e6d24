// Which view the location hash asks for: the studies table or one study's room.
import { $ } from "./common.js";
import { openRoom } from "./room.js";
import { openTable } from "./table.js";

export let view = null; // "table" | {room: id}

/** Set by the view being opened (an imported binding cannot be assigned). */
export function setView(v) {
  view = v;
}

export function route() {
  if (!$("login-view").hidden) return;
  const m = /^#\/studies\/(\d+)$/.exec(location.hash);
  closeDialogs();
  if (m) openRoom(Number(m[1]));
  else openTable();
}
window.addEventListener("hashchange", () => { if (!$("login-view").hidden) return; route(); });

export function closeDialogs() {
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
}
