import { get, post } from "../api";
import { field, h, input, put, when } from "../dom";
import type { Ctx } from "../main";
import { errorBox, form, notice, table } from "../ui";

interface ExportFile { path: string; sha256: string; bytes: number; url: string; expires_at: string }
interface Export {
  id: string; state: string; progress: { done: number; total: number | null };
  error: { type: string; detail: string | null } | null; attempts: number;
  created_at: string; started_at: string | null; finished_at: string | null;
  tables: Record<string, number> | null; files: ExportFile[] | null;
}

const FINISHED = new Set(["DONE", "FAILED"]);
// Polling with backoff: quick at first (small tenants finish in seconds), then at most every
// 15 s, so a long export left open in a tab costs the API little.
const FIRST_POLL_MS = 1000;
const MAX_POLL_MS = 15000;

function bar(e: Export): HTMLElement {
  const { done, total } = e.progress;
  const label = total ? `${done} of ${total} items` : e.state === "QUEUED" ? "waiting in the queue" : `${done} items`;
  return h("div", { class: "job-progress" },
    h("progress", { "aria-label": `Export progress: ${label}`, max: total ?? undefined, value: total ? done : undefined }),
    h("span", {}, ` ${e.state.toLowerCase()}: ${label}`));
}

export async function exportsPage(ctx: Ctx): Promise<Node> {
  const { exports } = await get<{ exports: Export[] }>("/api/exports?limit=20");
  return h("section", {},
    h("h1", {}, "Exports"),
    ctx.message ? notice(ctx.message) : null,
    h("p", {}, "A signed archive of every table, attachment and audit event of this organisation. ",
      "Links to download it last a short while and each download is recorded in the audit trail."),
    h("h2", {}, "Start an export"),
    form([field("Reason", input("reason", { required: true, minlength: 3, maxlength: 500 }), "Recorded in the audit trail.")],
      "Start export", async (d) => {
        const started = await post<Export>("/api/exports", { reason: d.reason });
        ctx.go(`exports/${started.id}`, "Export started.");
      }, { "aria-label": "Start an export" }),
    table(["Started", "State", "Progress", "Finished"], exports.map((e) => [
      h("a", { href: `/console/exports/${e.id}` }, when(e.created_at)), e.state, bar(e), when(e.finished_at),
    ]), "Recent exports"));
}

export async function exportPage(ctx: Ctx): Promise<Node> {
  const id = ctx.params[0];
  const status = h("div", { "aria-live": "polite" });
  const section = h("section", {},
    h("h1", {}, "Export"),
    ctx.message ? notice(ctx.message) : null,
    status,
    h("p", {}, h("a", { href: "/console/exports" }, "All exports")));
  const first = await get<Export>(`/api/exports/${id}`);
  show(status, first);
  if (!FINISHED.has(first.state)) void poll(section, status, id, FIRST_POLL_MS);
  return section;
}

async function poll(section: HTMLElement, status: HTMLElement, id: string, delay: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, delay));
  if (!section.isConnected) return; // the person went elsewhere: stop asking
  try {
    const e = await get<Export>(`/api/exports/${id}`);
    if (!section.isConnected) return;
    show(status, e);
    if (!FINISHED.has(e.state)) void poll(section, status, id, Math.min(delay * 1.5, MAX_POLL_MS));
  } catch (err) {
    if (section.isConnected) status.append(errorBox(err));
  }
}

function show(slot: HTMLElement, e: Export): void {
  const facts = h("dl", { class: "facts" },
    h("dt", {}, "State"), h("dd", {}, e.state),
    h("dt", {}, "Started"), h("dd", {}, when(e.started_at ?? e.created_at)),
    h("dt", {}, "Finished"), h("dd", {}, when(e.finished_at)));
  if (e.state === "FAILED") {
    put(slot, facts, h("div", { class: "error", role: "alert" }, h("strong", {}, "The export failed"),
      h("p", {}, [e.error?.detail, e.error?.type].filter(Boolean).join(" — "))));
    return;
  }
  if (e.state !== "DONE") {
    put(slot, facts, bar(e));
    return;
  }
  const files = e.files ?? [];
  put(slot, facts, notice("The export is ready."),
    h("p", {}, "Check manifest.json first: it lists every file with its SHA-256 and is signed. Links expire ",
      files[0] ? when(files[0].expires_at) : "soon", "."),
    table(["File", "Size", "SHA-256"], files.map((f) => [
      h("a", { href: f.url, download: f.path.split("/").pop() ?? "file", "aria-label": `Download ${f.path}` }, f.path),
      `${f.bytes} bytes`, h("code", { class: "mono hash" }, f.sha256),
    ]), "Files of this export"),
    e.tables ? table(["Table", "Rows"], Object.entries(e.tables).map(([t, n]) => [t, n]), "Rows per table") : null);
}
