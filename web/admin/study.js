// The create / edit study dialog, with If-Match and someone else's concurrent changes shown.
import { $, h, setFieldError, setText, showApiError, statusLabel, toast } from "./common.js";
import { openView } from "../admin.js";
import { api } from "./api.js";

const STUDY_FIELDS = ["label", "title", "status", "description"];
/** The study being edited as it was loaded into the form (null: creating). */
let editing = null;
/** Whether the study being edited has been deleted meanwhile (nothing left to save). */
let editingGone = false;
/**
 * A view of just the study being edited (`id=eq.N`), so that someone else's change is seen
 * whether or not the table's page or the room shows that study.
 */
let watch = null;

function unwatch() {
  if (watch) watch.close();
  watch = null;
}

export function openStudyDialog(study) {
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
  unwatch();
  if (study) {
    fillStudyForm(study);
    watch = openView({ topic: "studies", filter: { id: `eq.${study.id}` }, limit: 1 }, (rows) => {
      if (rows.length) studyDialogSawChange(rows[0]);
      else studyDialogSawChange(null, study.id);
    });
  } else {
    $("study-status").value = "draft";
  }
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

/** The watched study as it is now (null: deleted), while the dialog may be editing it. */
function studyDialogSawChange(study, deletedId) {
  if (!editing || !$("study-dialog").open) return;
  if (deletedId != null && deletedId === editing.id) return showConflict(null, false);
  if (study && study.id === editing.id && study.version > editing.version) showConflict(study, false);
}

$("study-cancel").addEventListener("click", () => $("study-dialog").close());
$("study-dialog").addEventListener("close", () => { editing = null; unwatch(); });

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
