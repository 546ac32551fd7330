import { get, qs, raw } from "../api";
import { field, h, input, when } from "../dom";
import type { Ctx } from "../main";
import { actionButton, form, json, notice, pager, table } from "../ui";

interface Event {
  seq: number; occurred_at: string; actor_name: string; actor_type: string; action: string; target_type: string | null;
  target_id: string | null; before: unknown; after: unknown; reason: string | null; ip: string | null; checksum: string;
}
interface Verified {
  valid: boolean; from_seq: number; events_checked: number; head: { seq: number; checksum: string } | null;
  checkpoint: { seq: number; created_at: string | null } | null; first_failure: { seq: number; code: string; reason: string } | null;
}

const FILTERS = ["action", "actor", "target_type", "target_id", "since", "until"];

export async function auditPage(ctx: Ctx): Promise<Node> {
  const q = Object.fromEntries(FILTERS.map((k) => [k, ctx.query.get(k) ?? ""]));
  const after = ctx.query.get("after");
  const page = await get<{ events: Event[]; next: string | null }>(`/api/audit${qs({ ...q, after, limit: 25 })}`);
  const detail = h("div", { class: "detail", "aria-live": "polite" });
  const verifyOut = h("div", { "aria-live": "polite" });
  const canExport = ctx.me!.permissions.includes("audit.export");
  return h("section", {},
    h("h1", {}, "Audit trail"),
    h("div", { class: "toolbar" },
      actionButton("Verify", async () => { verifyOut.replaceChildren(verified(await get<Verified>("/api/audit/verify"))); }),
      canExport ? actionButton("Export (JSON Lines)", async () => {
        const blob = await (await raw("GET", "/api/audit/export")).blob();
        const a = h("a", { href: URL.createObjectURL(blob), download: "audit.jsonl" }, "Download audit.jsonl");
        return h("span", {}, a);
      }) : null),
    verifyOut,
    form([
      field("Action", input("action", { value: q.action, maxlength: 100 })),
      field("Actor id", input("actor", { value: q.actor, maxlength: 200 })),
      field("Target type", input("target_type", { value: q.target_type, maxlength: 100 })),
      field("Target id", input("target_id", { value: q.target_id, maxlength: 200 })),
      field("Since", input("since", { type: "datetime-local", value: q.since ? q.since.slice(0, 16) : "" })),
      field("Until", input("until", { type: "datetime-local", value: q.until ? q.until.slice(0, 16) : "" })),
    ], "Filter", async (d) => {
      const iso = (v: string) => (v ? new Date(v).toISOString() : "");
      ctx.go(`audit${qs({ ...d, since: iso(d.since), until: iso(d.until) })}`);
    }, { class: "filters", "aria-label": "Filter events" }),
    table(["#", "When", "Who", "Action", "Target", ""], page.events.map((e) => [
      String(e.seq), when(e.occurred_at), e.actor_name, e.action, `${e.target_type ?? ""} ${e.target_id ?? ""}`,
      h("button", { type: "button", onclick: () => show(detail, e), "aria-label": `Details of event ${e.seq}` }, "Details"),
    ]), "Events, oldest first"),
    pager(page.next, !after, (c) => ctx.go(`audit${qs({ ...q, after: c })}`)),
    detail);
}

function show(slot: HTMLElement, e: Event): void {
  slot.replaceChildren(h("h2", { tabindex: "-1" }, `Event ${e.seq}: ${e.action}`),
    h("dl", { class: "facts" },
      h("dt", {}, "When"), h("dd", {}, when(e.occurred_at)), h("dt", {}, "Who"), h("dd", {}, `${e.actor_name} (${e.actor_type})`),
      h("dt", {}, "Reason"), h("dd", {}, e.reason ?? "—"), h("dt", {}, "IP"), h("dd", {}, e.ip ?? "—"),
      h("dt", {}, "Checksum"), h("dd", { class: "mono" }, e.checksum)),
    h("div", { class: "sides" }, h("div", {}, h("h3", {}, "Old value"), json(e.before)), h("div", {}, h("h3", {}, "New value"), json(e.after))));
  (slot.querySelector("h2") as HTMLElement).focus();
}

function verified(v: Verified): HTMLElement {
  return h("div", { class: `notice ${v.valid ? "ok" : "bad"}`, role: "status" },
    h("strong", {}, v.valid ? "The audit chain is intact." : "The audit chain is BROKEN."),
    h("p", {}, `${v.events_checked} event(s) checked from #${v.from_seq}; head #${v.head?.seq ?? 0}.`),
    v.checkpoint ? h("p", {}, `Newest signed checkpoint: #${v.checkpoint.seq}, signed `, when(v.checkpoint.created_at), ".")
      : h("p", {}, "No signed checkpoint yet."),
    v.first_failure ? h("p", {}, `First failure at #${v.first_failure.seq}: ${v.first_failure.code} — ${v.first_failure.reason}`) : null,
    v.valid ? null : notice("Tell your administrator and Custos support now.", "info"));
}
