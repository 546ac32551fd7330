import { get, post, qs, raw } from "../api";
import { field, h, input, select, when, type Child } from "../dom";
import type { Ctx } from "../main";
import { actionButton, errorBox, form, json, notice, pager, table } from "../ui";

interface Signature { id: string; version: number; printed_name: string; meaning: string; reason: string; signed_at: string; comment: string | null }
interface Attachment { sha256?: string; size: number; content_type: string; filename: string }
interface Version {
  version: number; payload: Record<string, unknown>; checksum: string; references: { name: string; record_id: string }[];
  frozen_context: Record<string, unknown>; attachments: Attachment[]; created_at: string; created_by_name: string; reason: string | null;
}
interface Rec {
  id: string; type: string; status: string; current_version: number; created_at: string; updated_at: string;
  version: Version & { signatures: Signature[] }; signatures: Signature[]; changed_after_signing: boolean;
}
interface Summary { id: string; type: string; status: string; current_version: number; updated_at: string; last_changed_by: string }
interface Manifest {
  title: string; generated_at: string; record: { id: string; type: string; status: string; current_version: number };
  version: { version: number; checksum: string; created_by_name: string; created_at: string; payload: unknown };
  signatures: Signature[];
}
interface Vocabulary { meanings: { code: string; description: string }[]; reasons: { code: string; text: string }[] }

const STATUSES: [string, string][] = [["", "any"], ...["DRAFT", "IN_REVIEW", "APPROVED", "REJECTED", "RETIRED"].map((s): [string, string] => [s, s])];

export async function recordsPage(ctx: Ctx): Promise<Node> {
  const type = ctx.query.get("type") ?? "";
  const status = ctx.query.get("status") ?? "";
  const after = ctx.query.get("after");
  const page = await get<{ records: Summary[]; next: string | null }>(`/api/records${qs({ type, status, after, limit: 20 })}`);
  return h("section", {},
    h("h1", {}, "Records"),
    form([field("Type", input("type", { value: type, maxlength: 63 })), field("Status", select("status", STATUSES, status))],
      "Filter", async (d) => ctx.go(`records${qs(d)}`), { class: "filters", "aria-label": "Filter records" }),
    table(["Record", "Type", "Status", "Version", "Changed"], page.records.map((r) => [
      h("a", { href: `/console/records/${r.id}` }, r.id.slice(0, 8)), r.type, r.status, String(r.current_version),
      h("span", {}, when(r.updated_at), ` by ${r.last_changed_by}`),
    ]), "Records"),
    pager(page.next, !after, (c) => ctx.go(`records${qs({ type, status, after: c })}`)));
}

function diff(a: Record<string, unknown>, b: Record<string, unknown>, va: number, vb: number): HTMLElement {
  const keys = [...new Set([...Object.keys(a ?? {}), ...Object.keys(b ?? {})])].sort();
  return h("div", { class: "table-wrap" }, h("table", { class: "diff" },
    h("caption", {}, `Version ${va} beside version ${vb}`),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Field"), h("th", { scope: "col" }, `Version ${va}`),
      h("th", { scope: "col" }, `Version ${vb}`))),
    h("tbody", {}, keys.map((k) => {
      const l = JSON.stringify(a?.[k]);
      const r = JSON.stringify(b?.[k]);
      const changed = l !== r;
      return h("tr", { class: changed ? "changed" : undefined },
        h("th", { scope: "row" }, k, changed ? h("span", { class: "tag" }, " changed") : null),
        h("td", {}, l ?? "—"), h("td", {}, r ?? "—"));
    }))));
}

export async function recordPage(ctx: Ctx): Promise<Node> {
  const id = ctx.params[0];
  const [rec, { versions }] = await Promise.all([get<Rec>(`/api/records/${id}`), get<{ versions: Version[] }>(`/api/records/${id}/versions`)]);
  const v = rec.version;
  const sideBySide = h("div", {});
  const nums: [string, string][] = versions.map((x) => [String(x.version), `Version ${x.version}`]);
  const left = select("left", nums, String(Math.max(1, rec.current_version - 1)));
  const right = select("right", nums, String(rec.current_version));
  const redraw = () => {
    const a = versions.find((x) => x.version === Number(left.value));
    const b = versions.find((x) => x.version === Number(right.value));
    sideBySide.replaceChildren(a && b ? diff(a.payload, b.payload, a.version, b.version) : "");
  };
  left.addEventListener("change", redraw);
  right.addEventListener("change", redraw);
  redraw();
  const refs = await Promise.all(v.references.map(async (r) => {
    const frozen = v.frozen_context?.[r.name] as { version?: number; checksum?: string } | undefined;
    let now: Child = "";
    try {
      const cur = await get<Rec>(`/api/records/${r.record_id}`);
      const changed = frozen?.version !== undefined ? cur.current_version !== frozen.version
        : frozen?.checksum !== undefined ? cur.version.checksum !== frozen.checksum : false;
      now = changed ? h("strong", { class: "tag warn" }, "source changed") : "unchanged";
    } catch {
      now = "not readable";
    }
    return [r.name, h("a", { href: `/console/records/${r.record_id}` }, r.record_id.slice(0, 8)),
      frozen?.version !== undefined ? `version ${frozen.version}` : "", now];
  }));
  const canSign = rec.status !== "RETIRED";
  return h("section", {},
    h("h1", {}, `${rec.type} ${rec.id.slice(0, 8)}`),
    ctx.message ? notice(ctx.message) : null,
    rec.changed_after_signing ? notice("Changed after it was signed: earlier signatures apply to earlier versions.", "info") : null,
    h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", {}, rec.status), h("dt", {}, "Current version"), h("dd", {}, String(rec.current_version)),
      h("dt", {}, "Created"), h("dd", {}, when(rec.created_at)), h("dt", {}, "Last changed"),
      h("dd", {}, when(v.created_at), ` by ${v.created_by_name}`), h("dt", {}, "Checksum"), h("dd", { class: "mono" }, v.checksum)),
    h("h2", {}, "Content"), json(v.payload),
    canSign ? h("button", { type: "button", onclick: () => void signDialog(ctx, rec) }, `Sign version ${rec.current_version}`) : null,
    h("h2", {}, "Signatures"),
    table(["Version", "Signed by", "Meaning", "Reason", "When"], rec.signatures.map((s) => [
      String(s.version), s.printed_name, s.meaning, s.reason, when(s.signed_at)]), "Signatures"),
    h("h2", {}, "Versions side by side"),
    h("div", { class: "filters" }, field("Left", left), field("Right", right)), sideBySide,
    h("h2", {}, "Frozen references"),
    table(["Name", "Record", "Frozen at", "Now"], refs, "References frozen with this version"),
    h("h2", {}, "Attachments"),
    table(["File", "Type", "Size", ""], v.attachments.map((a) => [a.filename, a.content_type, `${a.size} bytes`,
      a.sha256 ? actionButton("Download", async () => {
        const blob = await (await raw("GET", `/api/records/${id}/attachments/${a.sha256}`)).blob();
        return h("a", { href: URL.createObjectURL(blob), download: a.filename }, `Save ${a.filename}`);
      }) : ""]), "Attachments of this version"));
}

async function signDialog(ctx: Ctx, rec: Rec): Promise<void> {
  const dialog = h("dialog", { "aria-labelledby": "sign-title" });
  document.body.append(dialog);
  dialog.addEventListener("close", () => dialog.remove());
  const body = h("div", {}, h("progress", { "aria-label": "Loading" }));
  dialog.append(h("h2", { id: "sign-title" }, `Sign ${rec.type} version ${rec.current_version}`), body);
  dialog.showModal();
  try {
    const [m, vocab] = await Promise.all([
      get<Manifest>(`/api/records/${rec.id}/versions/${rec.current_version}/manifest`),
      get<Vocabulary>("/api/signature-vocabulary"),
    ]);
    const me = ctx.me!;
    body.replaceChildren(
      h("div", { class: "manifest", role: "region", "aria-label": "Signature manifestation" },
        h("h3", {}, m.title),
        h("p", {}, "Your signature will show:"),
        h("dl", { class: "facts" },
          h("dt", {}, "Printed name"), h("dd", {}, me.user.display_name ?? ""),
          h("dt", {}, "Date and time"), h("dd", {}, "the moment you sign, in your time zone (", me.user.time_zone ?? "", ")"),
          h("dt", {}, "Record"), h("dd", {}, `${m.record.type} ${m.record.id}, version ${m.version.version}`),
          h("dt", {}, "Content checksum"), h("dd", { class: "mono" }, m.version.checksum),
          h("dt", {}, "Existing signatures"), h("dd", {}, m.signatures.map((s) => `${s.printed_name} (${s.meaning})`).join(", ") || "none"))),
      form([
        field("Meaning", select("meaning", vocab.meanings.map((x) => [x.code, `${x.code} — ${x.description}`]), "REVIEWED")),
        field("Reason", select("reason", vocab.reasons.map((x) => [x.code, x.text]))),
        field("Comment (optional)", h("textarea", { name: "comment", maxlength: 1000 })),
        field("Your password", input("password", { type: "password", required: true, autocomplete: "current-password" }),
          "Entering it again is your signature."),
        field("Authenticator code (if you have one)", input("code", { inputmode: "numeric", autocomplete: "one-time-code", maxlength: 8 })),
      ], "Sign", async (d) => {
        await post(`/api/records/${rec.id}/versions/${rec.current_version}/signatures`, {
          password: d.password, meaning: d.meaning, reason: d.reason, comment: d.comment || null, code: d.code || null,
        });
        dialog.close();
        ctx.go(`records/${rec.id}`, `Signed as ${d.meaning}.`);
      }, { "aria-label": "Sign" }),
      h("button", { type: "button", class: "secondary", onclick: () => dialog.close() }, "Cancel"));
    (body.querySelector("select") as HTMLElement).focus();
  } catch (err) {
    body.replaceChildren(errorBox(err), h("button", { type: "button", onclick: () => dialog.close() }, "Close"));
  }
}
