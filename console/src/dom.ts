// The console's only way to build DOM: elements, attributes and text nodes. No innerHTML,
// no style attributes (the CSP forbids inline style and Trusted Types forbid HTML sinks).

export type Child = Node | string | number | null | undefined | false;
type Attr = string | number | boolean | null | undefined | ((ev: Event) => void);

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, Attr> = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "style" || key.toLowerCase().includes("html")) throw new Error(`refusing attribute ${key}`);
    if (typeof value === "function") el.addEventListener(key.slice(2).toLowerCase(), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(parent: Node, children: (Child | Child[])[]): void {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
}

export function clear(el: Element): void {
  el.replaceChildren();
}

let ids = 0;
export function uid(prefix: string): string {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A labelled form field: <label for> + control. */
export function field(label: string, control: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement,
                      hint?: string): HTMLDivElement {
  control.id = control.id || uid("f");
  const hintEl = hint ? h("small", { id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control, hintEl);
}

export function input(name: string, attrs: Record<string, Attr> = {}): HTMLInputElement {
  return h("input", { name, type: "text", ...attrs });
}

export function select(name: string, options: [string, string][], value = ""): HTMLSelectElement {
  const el = h("select", { name }, options.map(([v, text]) => h("option", { value: v }, text)));
  if (options.some(([v]) => v === value)) el.value = value; // else the first option stays selected
  return el;
}

/** Form values by name (text controls, selects, checkboxes as "on"/""). */
export function values(form: HTMLFormElement): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of new FormData(form).entries()) out[k] = String(v);
  return out;
}

const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const fmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** Every timestamp as a <time>, in the user's zone, with the zone named. */
export function when(iso: string | null | undefined): Child {
  if (!iso) return "—";
  const d = new Date(iso);
  return h("time", { datetime: iso, title: iso }, `${fmt.format(d)} (${zone})`);
}

export function timeZone(): string {
  return zone;
}

/** Replace an element's children (nulls and falses skipped). */
export function put(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}
