// A live view's rows on the page: one element per row of the window, keyed by primary key, changed
// in place. A `view_delta` is applied op by op (PROTOCOL §9), touching only the rows it names, so
// a commit that changes 100,000 rows costs the page at most 2 × limit small DOM changes; a whole
// `view` (first load, a new sort or page, a resume) is merged by key, so rows that stay keep their
// element, and with it focus, selection and half-typed input.
import { flash } from "./common.js";

export class LiveList {
  /**
   * `create(row)` makes `{el, …}` for a new row, `fill(entry)` writes `entry.row` into it.
   * `reverse`: the page shows the view's order upside down (a thread: newest last).
   * `fade`: a row that leaves fades out instead of vanishing.
   */
  constructor(container, { create, fill, reverse = false, fade = false, onChange = () => {} }) {
    this.container = container;
    this.create = create;
    this.fill = fill;
    this.reverse = reverse;
    this.fade = fade;
    this.onChange = onChange;
    /** key → entry, for the rows in the window. */
    this.entries = new Map();
    /** The entries in the view's order (mirrors the view's `rows`). */
    this.order = [];
  }

  get(key) {
    return this.entries.get(String(key));
  }

  /** Applies what client.js passed to the view's onChange; `highlight` flashes what changed. */
  apply(rows, change, highlight) {
    if (change.type === "view") return this.replace(rows, highlight);
    const exited = new Map(); // an exit and an enter of the same row in one delta keep its element
    for (const op of change.ops) {
      if (op.op === "exit") {
        const [entry] = this.order.splice(op.from, 1);
        if (!entry) continue;
        this.entries.delete(entry.key);
        exited.set(entry.key, entry);
        this.leave(entry);
      } else if (op.op === "enter") {
        let entry = exited.get(op.key);
        if (entry) this.stay(entry);
        else entry = this.make(op.row);
        const changed = this.set(entry, op.row);
        this.order.splice(op.to, 0, entry);
        this.entries.set(entry.key, entry);
        this.place(op.to);
        if (highlight && (changed || !exited.has(op.key))) flash(entry.el);
      } else if (op.op === "update") {
        const [entry] = this.order.splice(op.from, 1);
        if (!entry) continue;
        this.order.splice(op.to, 0, entry);
        const changed = this.set(entry, op.row);
        if (op.from !== op.to) this.place(op.to);
        if (highlight && changed) flash(entry.el);
      }
    }
    for (const entry of exited.values()) {
      if (!this.entries.has(entry.key)) this.onChange(null, entry.key);
    }
  }

  /** A whole window: keep the elements of rows that stay, put everything in order. */
  replace(rows, highlight) {
    const order = [];
    const keep = new Set();
    for (const row of rows) {
      const key = String(row.id);
      let entry = this.entries.get(key);
      const fresh = !entry;
      if (fresh) entry = this.make(row);
      const changed = this.set(entry, row);
      order.push(entry);
      keep.add(key);
      if (highlight && changed) flash(entry.el);
    }
    for (const [key, entry] of this.entries) {
      if (!keep.has(key)) {
        entry.el.remove();
        this.onChange(null, key);
      }
    }
    for (const el of [...this.container.querySelectorAll(":scope > .leaving")]) el.remove();
    this.order = order;
    this.entries = new Map(order.map((e) => [e.key, e]));
    const dom = this.reverse ? [...order].reverse() : order;
    dom.forEach((entry, i) => {
      const at = this.container.children[i] || null;
      if (at !== entry.el) this.move(entry.el, at);
    });
  }

  clear() {
    this.entries.clear();
    this.order = [];
    this.container.replaceChildren();
  }

  make(row) {
    const entry = this.create(row);
    entry.key = String(row.id);
    entry.row = null;
    entry.el.dataset.id = entry.key;
    entry.el.addEventListener("animationend", () => entry.el.classList.remove("flash"));
    return entry;
  }

  /** Writes `row` into the entry; whether anything shown changed. */
  set(entry, row) {
    const changed = !entry.row || JSON.stringify(entry.row) !== JSON.stringify(row);
    entry.row = row;
    if (changed) {
      this.fill(entry);
      this.onChange(row, entry.key);
    }
    return changed;
  }

  /** Puts order[i]'s element before the element that follows it on the page. */
  place(i) {
    const entry = this.order[i];
    const follower = this.reverse ? this.order[i - 1] : this.order[i + 1];
    const before = follower ? follower.el : null;
    if (entry.el.isConnected && entry.el.nextElementSibling === before && before) return;
    this.move(entry.el, before);
  }

  /** Moves an element, keeping the focus inside it (moving an element drops its focus). */
  move(el, before) {
    const focused = el.contains(document.activeElement) ? document.activeElement : null;
    this.container.insertBefore(el, before);
    if (focused) focused.focus({ preventScroll: true });
  }

  leave(entry) {
    const el = entry.el;
    if (this.fade && el.isConnected) {
      el.classList.add("leaving");
      el.removeAttribute("data-id");
      entry.leaving = setTimeout(() => el.remove(), 600);
    } else {
      el.remove();
    }
  }

  stay(entry) {
    clearTimeout(entry.leaving);
    entry.el.classList.remove("leaving");
    entry.el.dataset.id = entry.key;
  }
}
