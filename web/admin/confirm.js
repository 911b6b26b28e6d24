// Confirming a delete (studies and files).
import { $, setText, toast } from "./common.js";
import { api } from "./api.js";
import { room } from "./room.js";
import { shownStudy } from "./table.js";

let confirmAction = null;

export function confirmDelete(title, text, action) {
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

export function confirmDeleteStudy(study) {
  if (!study) return;
  const version = study.version;
  confirmDelete(`Delete ${study.label}?`, `“${study.title}” will be deleted with all its messages and files.`, async () => {
    try {
      await api("DELETE", `/api/studies/${study.id}`, { ifMatch: version });
      toast(`Deleted ${study.label}.`);
    } catch (err) {
      if (err.status === 412) {
        const now = shownStudy(study.id) || room.study;
        throw new Error(`Not deleted: someone changed this study meanwhile${now ? ` (now version ${now.version}, “${now.title}”)` : ""}. Look at the change, then delete again if you still mean to.`);
      }
      if (err.status === 404) return toast(`${study.label} was already deleted.`);
      throw err;
    }
  });
}
