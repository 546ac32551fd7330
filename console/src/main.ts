import "./style.css";
import { forget, get, logout, refresh, setSignedOutHandler, SignedOut, signedIn } from "./api";
import { clear, h } from "./dom";
import { accountPage } from "./pages/account";
import { auditPage } from "./pages/audit";
import { exportPage, exportsPage } from "./pages/exports";
import { invitationPage, resetPage } from "./pages/landing";
import { recordPage, recordsPage } from "./pages/records";
import { settingsPage } from "./pages/settings";
import { signInPage, takeSsoCode } from "./pages/signin";
import { ssoPage } from "./pages/sso";
import { userPage, usersPage } from "./pages/users";
import { errorBox } from "./ui";

export interface Me {
  user: { id: string; display_name: string | null; email?: string | null; time_zone?: string | null; role?: string | null };
  role: string;
  permissions: string[];
  designations: { id: string; name: string }[];
}

export interface Ctx {
  me: Me | null;
  params: string[];
  query: URLSearchParams;
  go: (path: string, message?: string) => void;
  message?: string;
}

type Page = (ctx: Ctx) => Promise<Node>;

const PUBLIC: Record<string, Page> = { signin: signInPage, invitation: invitationPage, reset: resetPage };
const ROUTES: [RegExp, Page, string | null][] = [
  [/^account$/, accountPage, null],
  [/^users$/, usersPage, "users.read"],
  [/^users\/([0-9a-f-]{36})$/, userPage, "users.read"],
  [/^records$/, recordsPage, "records.read"],
  [/^records\/([0-9a-f-]{36})$/, recordPage, "records.read"],
  [/^audit$/, auditPage, "audit.read"],
  [/^settings$/, settingsPage, "tenant.settings.read"],
  [/^exports$/, exportsPage, "tenant.export"],
  [/^exports\/([0-9a-f-]{36})$/, exportPage, "tenant.export"],
  [/^sso$/, ssoPage, "sso.manage"],
];
const NAV: [string, string, string | null][] = [
  ["account", "My account", null], ["users", "Users", "users.read"], ["records", "Records", "records.read"],
  ["audit", "Audit trail", "audit.read"], ["settings", "Settings", "tenant.settings.read"],
  ["exports", "Exports", "tenant.export"], ["sso", "Identity providers", "sso.manage"],
];

const main = document.getElementById("main") as HTMLElement;
const nav = document.getElementById("nav") as HTMLElement;
let me: Me | null = null;

function route(): string {
  return location.pathname.replace(/^\/console\/?/, "").replace(/\/$/, "");
}

function go(path: string, message?: string): void {
  history.pushState({}, "", `/console/${path}`);
  void render(message);
}

async function renderNav(): Promise<void> {
  clear(nav);
  if (!me) return;
  const here = route().split("/")[0];
  const items = NAV.filter(([, , perm]) => !perm || me?.permissions.includes(perm));
  nav.append(h("ul", {},
    items.map(([path, label]) => h("li", {}, h("a", {
      href: `/console/${path}`, "aria-current": here === path ? "page" : undefined,
    }, label))),
    h("li", {}, h("button", { type: "button", class: "link", onclick: () => void signOut() }, "Sign out"))),
  h("span", { class: "who" }, `${me.user.display_name ?? ""} · ${me.role}`));
}

async function signOut(): Promise<void> {
  await logout();
  me = null;
  go("signin", "You are signed out.");
}

export async function loadMe(): Promise<Me> {
  me = await get<Me>("/api/me");
  return me;
}

// Only the newest navigation may fill the page: a slower, older one (e.g. a page whose request
// found the session revoked and so already showed the sign-in page) must not paint over it.
let renders = 0;

async function render(message?: string): Promise<void> {
  const generation = ++renders;
  const show = (node: Node): void => {
    if (generation === renders) paint(node);
  };
  const path = route();
  const query = new URLSearchParams(location.search);
  const ctx: Ctx = { me, params: [], query, go, message };
  let page: Page | undefined = PUBLIC[path];
  if (!page) {
    if (!signedIn()) {
      if (!(await refresh())) {
        history.replaceState({}, "", "/console/signin");
        return render(message);
      }
    }
    if (!me) {
      try {
        ctx.me = await loadMe();
      } catch (err) {
        forget();
        return show(errorBox(err));
      }
    }
    ctx.me = me;
    if (path === "") {
      history.replaceState({}, "", "/console/account");
      return render(message);
    }
    for (const [re, fn, perm] of ROUTES) {
      const m = re.exec(path);
      if (m && (!perm || me?.permissions.includes(perm))) {
        page = fn;
        ctx.params = m.slice(1);
        break;
      }
    }
  }
  await renderNav();
  if (!page) return show(h("section", {}, h("h1", { tabindex: "-1" }, "Page not found"),
    h("p", {}, "There is no such page, or your role does not show it.")));
  try {
    show(await page(ctx));
  } catch (err) {
    if (err instanceof SignedOut) return;
    show(h("section", {}, h("h1", { tabindex: "-1" }, "This page could not be shown"), errorBox(err)));
  }
}

function paint(node: Node): void {
  main.replaceChildren(node);
  // Focus after navigation: the page's heading, so a screen reader announces where we are.
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus();
    document.title = `${heading.textContent ?? ""} · Custos console`;
  }
}

setSignedOutHandler((why) => {
  me = null;
  forget();
  go("signin", why);
});

export function signedInAs(next: Me): void {
  me = next;
}

document.addEventListener("click", (ev) => {
  const a = (ev.target as Element | null)?.closest("a");
  if (!a || a.target || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/console/") || a.hasAttribute("download")) return;
  ev.preventDefault();
  history.pushState({}, "", url.pathname + url.search);
  if (takeSsoCode(location.hash)) history.replaceState({}, "", "/console/signin");
void render();
});
window.addEventListener("popstate", () => void render());
// A session revoked elsewhere ends here as soon as the person comes back to the tab.
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && me) void get("/api/me").catch(() => undefined);
});

if (takeSsoCode(location.hash)) history.replaceState({}, "", "/console/signin");
void render();
