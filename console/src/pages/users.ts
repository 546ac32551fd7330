import { api, get, post, qs } from "../api";
import { field, h, input, select, timeZone, when } from "../dom";
import type { Ctx } from "../main";
import { actionButton, form, notice, pager, table } from "../ui";
import type { Session } from "./account";

interface User {
  id: string; email: string; display_name: string; role: string; status: string; time_zone: string;
  created_at: string; designations: { id: string; name: string }[];
}
const ROLES: [string, string][] = ["ADMIN", "MANAGER", "REVIEWER", "OPERATOR", "VIEWER"].map((r) => [r, r]);
const reason = () => field("Reason", input("reason", { required: true, minlength: 3, maxlength: 500 }), "Recorded in the audit trail.");

export async function usersPage(ctx: Ctx): Promise<Node> {
  const status = ctx.query.get("status") ?? "";
  const role = ctx.query.get("role") ?? "";
  const after = ctx.query.get("after");
  const page = await get<{ users: User[]; next: string | null }>(`/api/users${qs({ status, role, after, limit: 20 })}`);
  const canInvite = ctx.me!.permissions.includes("users.invite");
  return h("section", {},
    h("h1", {}, "Users"),
    ctx.message ? notice(ctx.message) : null,
    form([
      field("Status", select("status", [["", "any"], ["invited", "invited"], ["active", "active"], ["deactivated", "deactivated"]], status)),
      field("Role", select("role", [["", "any"], ...ROLES], role)),
    ], "Filter", async (d) => ctx.go(`users${qs({ status: d.status, role: d.role })}`), { class: "filters", "aria-label": "Filter users" }),
    table(["Name", "Email", "Role", "Status", "Since"], page.users.map((u) => [
      h("a", { href: `/console/users/${u.id}` }, u.display_name || u.email), u.email, u.role, u.status, when(u.created_at),
    ]), "Users of this organisation"),
    pager(page.next, !after, (c) => ctx.go(`users${qs({ status, role, after: c })}`)),
    canInvite ? h("div", {}, h("h2", {}, "Invite a user"), form([
      field("Email", input("email", { type: "email", required: true })),
      field("Name", input("display_name", { maxlength: 200 })),
      field("Role", select("role", ROLES, "OPERATOR")),
      field("Time zone", input("time_zone", { value: timeZone(), maxlength: 64 })),
      reason(),
    ], "Send invitation", async (d) => {
      const r = await post<{ user: User; invitation: { expires_at: string } }>("/api/users", d);
      return h("div", { class: "notice ok", role: "status" }, `Invitation mailed to ${r.user.email}; it expires `,
        when(r.invitation.expires_at), ".");
    }, { "aria-label": "Invite a user" })) : null);
}

export async function userPage(ctx: Ctx): Promise<Node> {
  const id = ctx.params[0];
  const perms = ctx.me!.permissions;
  const [user, overrides] = await Promise.all([
    get<User>(`/api/users/${id}`),
    get<{ overrides: { permission: string; effect: string }[] }>(`/api/users/${id}/overrides`),
  ]);
  const sessions = perms.includes("sessions.manage")
    ? (await get<{ sessions: Session[] }>(`/api/users/${id}/sessions`)).sessions : null;
  return h("section", {},
    h("h1", {}, user.display_name || user.email),
    ctx.message ? notice(ctx.message) : null,
    h("dl", { class: "facts" },
      h("dt", {}, "Email"), h("dd", {}, user.email), h("dt", {}, "Role"), h("dd", {}, user.role),
      h("dt", {}, "Status"), h("dd", {}, user.status), h("dt", {}, "Time zone"), h("dd", {}, user.time_zone),
      h("dt", {}, "Designations"), h("dd", {}, user.designations.map((d) => d.name).join(", ") || "none"),
      h("dt", {}, "Overrides"), h("dd", {}, overrides.overrides.map((o) => `${o.effect} ${o.permission}`).join(", ") || "none")),
    perms.includes("users.update") && perms.includes("designations.read") ? await designationsForm(ctx, user) : null,
    perms.includes("overrides.manage") ? overridesForm(ctx, user, overrides.overrides) : null,
    perms.includes("users.update") ? h("div", {}, h("h2", {}, "Change role"), form([
      field("Role", select("role", ROLES, user.role)), reason(),
    ], "Change role", async (d) => {
      await api("PATCH", `/api/users/${id}`, d);
      ctx.go(`users/${id}`, "Role changed.");
    }, { "aria-label": "Change role" }),
    h("h2", {}, "Password reset"), form([reason()], "Send reset code", async (d) =>
      (await post<{ status: string }>(`/api/users/${id}/password-reset`, d)).status, { "aria-label": "Send a password reset" })) : null,
    sessions ? h("div", {}, h("h2", {}, "Sessions"), table(["Device", "IP", "Signed in", "Last seen", ""], sessions.map((s) => [
      s.device_label ?? "unknown device", s.ip ?? "", when(s.created_at), when(s.last_seen_at),
      s.revoked_at ? "revoked" : actionButton("Revoke", async () => {
        await api("DELETE", `/api/users/${id}/sessions/${s.id}`);
        ctx.go(`users/${id}`, "Session revoked: it ends on its next request.");
      }, { "aria-label": `Revoke session on ${s.device_label ?? "unknown device"}` }),
    ]), "Sessions of this user")) : null,
    perms.includes("users.deactivate") && user.status !== "deactivated" ? h("div", {}, h("h2", {}, "Deactivate"),
      form([reason()], "Deactivate user", async (d) => {
        await post(`/api/users/${id}/deactivate`, d);
        ctx.go(`users/${id}`, "User deactivated.");
      }, { "aria-label": "Deactivate user" })) : null);
}

interface Designation { id: string; name: string; description: string; permissions: string[] }
interface Override { permission: string; effect: string }

/** Designations as checkboxes; saving sends the whole set (the API replaces it) with a reason. */
async function designationsForm(ctx: Ctx, user: User): Promise<HTMLElement> {
  const { designations } = await get<{ designations: Designation[] }>("/api/designations");
  const held = new Set(user.designations.map((d) => d.id));
  if (!designations.length) return h("div", {}, h("h2", {}, "Designations"), h("p", {}, "This organisation has no designations yet."));
  return h("div", {}, h("h2", {}, "Designations"), form([
    h("fieldset", {}, h("legend", {}, "Designations held"),
      designations.map((d) => h("div", { class: "check" },
        h("input", { type: "checkbox", name: `designation:${d.id}`, id: `designation-${d.id}`, checked: held.has(d.id) }),
        h("label", { for: `designation-${d.id}` }, d.name, d.permissions.length ? ` (${d.permissions.join(", ")})` : "")))),
    reason(),
  ], "Save designations", async (d) => {
    const ids = Object.keys(d).filter((k) => k.startsWith("designation:")).map((k) => k.slice("designation:".length));
    await api("PATCH", `/api/users/${user.id}`, { designations: ids, reason: d.reason });
    ctx.go(`users/${user.id}`, "Designations saved.");
  }, { "aria-label": "Change designations" }));
}

/** Per-user overrides: remove one, or add a grant or deny; each save replaces the whole list. */
function overridesForm(ctx: Ctx, user: User, current: Override[]): HTMLElement {
  const save = async (next: Override[], why: string, done: string): Promise<void> => {
    // Only the two fields the API takes back (the listing adds created_at).
    const overrides = next.map((o) => ({ permission: o.permission, effect: o.effect }));
    await api("PUT", `/api/users/${user.id}/overrides`, { overrides, reason: why });
    ctx.go(`users/${user.id}`, done);
  };
  const known = ctx.me!.permissions.slice().sort();
  return h("div", {}, h("h2", {}, "Permission overrides"),
    h("p", {}, "A grant adds a permission to the role's; a deny removes one, and a deny always wins."),
    table(["Permission", "Effect", ""], current.map((o) => [
      h("code", {}, o.permission), o.effect,
      form([field(`Reason for removing ${o.effect} ${o.permission}`, input("reason", { required: true, minlength: 3, maxlength: 500 }))],
        "Remove", async (d) => save(current.filter((x) => x !== o), d.reason, `Override ${o.effect} ${o.permission} removed.`),
        { class: "inline", "aria-label": `Remove override ${o.effect} ${o.permission}` }),
    ]), "Overrides of this user"),
    form([
      field("Permission", input("permission", { required: true, list: "permission-names", maxlength: 100 })),
      h("datalist", { id: "permission-names" }, known.map((p) => h("option", { value: p }))),
      field("Effect", select("effect", [["grant", "grant"], ["deny", "deny"]], "deny")),
      reason(),
    ], "Add override", async (d) => save([...current.filter((x) => x.permission !== d.permission),
      { permission: d.permission, effect: d.effect }], d.reason, `Override ${d.effect} ${d.permission} saved.`),
    { "aria-label": "Add a permission override" }));
}
