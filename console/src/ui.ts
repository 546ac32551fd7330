import { Problem, SignedOut } from "./api";
import { h, type Child } from "./dom";

/** The problem's title and detail, announced to screen readers. */
export function errorBox(err: unknown): HTMLElement {
  if (err instanceof Problem) {
    return h("div", { class: "error", role: "alert" }, h("strong", {}, err.title), err.detail ? h("p", {}, err.detail) : null);
  }
  const message = err instanceof Error ? err.message : String(err);
  return h("div", { class: "error", role: "alert" }, h("strong", {}, "Something went wrong"), h("p", {}, message));
}

export function notice(text: string, kind: "ok" | "info" = "ok"): HTMLElement {
  return h("div", { class: `notice ${kind}`, role: "status" }, text);
}

/**
 * A form whose submit runs `action` while showing progress (the button disabled and a
 * <progress>); a failure shows the problem above the button, a result replaces `out`.
 */
export function form(children: Child[], label: string, action: (data: Record<string, string>, f: HTMLFormElement) => Promise<Child | void>,
                     attrs: Record<string, string> = {}): HTMLFormElement {
  const button = h("button", { type: "submit" }, label);
  const slot = h("div", { class: "slot" });
  const f = h("form", { novalidate: false, ...attrs }, children, slot, h("div", { class: "actions" }, button));
  f.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data: Record<string, string> = {};
    for (const [k, v] of new FormData(f).entries()) data[k] = String(v);
    void run(button, slot, () => action(data, f));
  });
  return f;
}

export async function run(button: HTMLButtonElement, slot: HTMLElement, action: () => Promise<Child | void>): Promise<void> {
  button.disabled = true;
  slot.replaceChildren(h("progress", { "aria-label": "Working" }));
  slot.setAttribute("aria-busy", "true");
  try {
    const result = await action();
    slot.replaceChildren();
    if (result) slot.append(typeof result === "string" || typeof result === "number" ? notice(String(result)) : result);
  } catch (err) {
    if (err instanceof SignedOut) return;
    slot.replaceChildren(errorBox(err));
  } finally {
    slot.removeAttribute("aria-busy");
    button.disabled = false;
  }
}

/** A button that runs `action` with progress and shows its outcome beside it. */
export function actionButton(label: string, action: () => Promise<Child | void>, attrs: Record<string, string> = {}): HTMLElement {
  const button = h("button", { type: "button", ...attrs }, label);
  const slot = h("span", { class: "slot" });
  button.addEventListener("click", () => void run(button, slot, action));
  return h("span", { class: "action" }, button, slot);
}

/** Cursor pagination: "Next page" while the API returns a cursor, "First page" after the first. */
export function pager(cursor: string | null | undefined, atStart: boolean, go: (after: string | null) => void): HTMLElement {
  return h("nav", { class: "pager", "aria-label": "Pages" },
    atStart ? null : h("button", { type: "button", onclick: () => go(null) }, "First page"),
    cursor ? h("button", { type: "button", onclick: () => go(cursor) }, "Next page") : h("span", {}, "End of list"));
}

export function table(headers: string[], rows: Child[][], caption: string): HTMLElement {
  return h("div", { class: "table-wrap" },
    h("table", {}, h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))
        : h("tr", {}, h("td", { colspan: headers.length }, "Nothing to show.")))));
}

export function json(value: unknown): HTMLElement {
  return h("pre", { class: "json" }, value === undefined ? "" : JSON.stringify(value, null, 2));
}
