import { api, get, post, qs } from "../api";
import { field, h, input, select, when } from "../dom";
import type { Ctx } from "../main";
import { actionButton, form, notice, table } from "../ui";

interface Provider {
  id: string; kind: string; name: string; enabled: boolean; required: boolean; jit: boolean;
  config: Record<string, unknown>; has_client_secret: boolean; created_at: string; updated_at: string;
}
interface BreakGlass { user_id: string; email: string; display_name: string; role: string; status: string; created_at: string }
interface UserRow { id: string; email: string; display_name: string }

const reason = () => field("Reason", input("reason", { required: true, minlength: 3, maxlength: 500 }), "Recorded in the audit trail.");
const yes = (b: boolean) => (b ? "yes" : "no");

/** What the create form's fields become: only the keys of the chosen protocol, none empty. */
function configOf(d: Record<string, string>): Record<string, unknown> {
  if (d.kind === "oidc") return { issuer: d.issuer, client_id: d.client_id };
  const config: Record<string, unknown> = {};
  if (d.metadata_url) config.metadata_url = d.metadata_url;
  if (d.idp_entity_id) config.idp_entity_id = d.idp_entity_id;
  if (d.idp_sso_url) config.idp_sso_url = d.idp_sso_url;
  if (d.idp_certificate?.trim()) config.idp_certificates = [d.idp_certificate.trim()];
  return config;
}

export async function ssoPage(ctx: Ctx): Promise<Node> {
  const [{ providers }, { accounts }, admins] = await Promise.all([
    get<{ providers: Provider[] }>("/api/sso/providers"),
    get<{ accounts: BreakGlass[] }>("/api/sso/break-glass"),
    get<{ users: UserRow[] }>(`/api/users${qs({ role: "ADMIN", status: "active", limit: 100 })}`),
  ]);
  const kind = select("kind", [["oidc", "OpenID Connect"], ["saml", "SAML 2.0"]], "oidc");
  const oidcFields = h("fieldset", {}, h("legend", {}, "OpenID Connect"),
    field("Issuer URL", input("issuer", { type: "url", maxlength: 2048 }), "e.g. https://login.microsoftonline.com/<directory>/v2.0"),
    field("Client id", input("client_id", { maxlength: 512 })),
    field("Client secret", input("client_secret", { type: "password", autocomplete: "off", maxlength: 2048 }),
      "Stored encrypted; never shown again."));
  const samlFields = h("fieldset", { hidden: true }, h("legend", {}, "SAML 2.0"),
    field("Metadata URL", input("metadata_url", { type: "url", maxlength: 2048 }), "Or fill in the three fields below."),
    field("IdP entity id", input("idp_entity_id", { maxlength: 1024 })),
    field("IdP sign-in URL", input("idp_sso_url", { type: "url", maxlength: 2048 })),
    field("IdP signing certificate (PEM)", h("textarea", { name: "idp_certificate", rows: 4 })));
  kind.addEventListener("change", () => {
    oidcFields.hidden = kind.value !== "oidc";
    samlFields.hidden = kind.value !== "saml";
  });

  const rows = providers.map((p) => [
    p.name, p.kind.toUpperCase(), yes(p.enabled), yes(p.required), yes(p.jit), when(p.updated_at),
    form([
      field(`Reason for changing ${p.name}`, input("reason", { required: true, minlength: 3, maxlength: 500 })),
    ], p.enabled ? "Disable" : "Enable", async (d) => {
      await api("PATCH", `/api/sso/providers/${p.id}`, { enabled: !p.enabled, reason: d.reason });
      ctx.go("sso", `${p.name} ${p.enabled ? "disabled" : "enabled"}.`);
    }, { class: "inline", "aria-label": `${p.enabled ? "Disable" : "Enable"} ${p.name}` }),
    form([
      field(`Reason for the requirement of ${p.name}`, input("reason", { required: true, minlength: 3, maxlength: 500 })),
    ], p.required ? "Make optional" : "Require", async (d) => {
      await api("PATCH", `/api/sso/providers/${p.id}`, { required: !p.required, reason: d.reason });
      ctx.go("sso", p.required ? `${p.name} is optional.` : `${p.name} is required: passwords are refused except break-glass.`);
    }, { class: "inline", "aria-label": `${p.required ? "Make optional" : "Require"} ${p.name}` }),
  ]);

  const listed = new Set(accounts.map((a) => a.user_id));
  const candidates = admins.users.filter((u) => !listed.has(u.id));
  return h("section", {},
    h("h1", {}, "Identity providers"),
    ctx.message ? notice(ctx.message) : null,
    table(["Name", "Protocol", "Enabled", "Required", "Creates users", "Changed", "Enable", "Require"], rows,
      "Identity providers of this organisation"),
    h("h2", {}, "Add a provider"),
    form([
      field("Protocol", kind),
      field("Name", input("name", { required: true, maxlength: 100 }), "Shown on the sign-in button."),
      oidcFields, samlFields,
      field("Create users at their first sign-in", h("input", { type: "checkbox", name: "jit" })),
      reason(),
    ], "Add provider", async (d) => {
      const created = await post<Provider>("/api/sso/providers", {
        kind: d.kind, name: d.name, enabled: false, jit: d.jit === "on", config: configOf(d),
        client_secret: d.kind === "oidc" && d.client_secret ? d.client_secret : null, reason: d.reason,
      });
      ctx.go("sso", `${created.name} added (disabled until you enable it).`);
    }, { "aria-label": "Add an identity provider" }),
    h("h2", {}, "Break-glass accounts"),
    h("p", {}, "ADMINs who keep their password and second factor when a provider is required."),
    table(["Name", "Email", "Since", ""], accounts.map((a) => [
      a.display_name, a.email, when(a.created_at),
      actionButton("Remove", async () => {
        const why = prompt(`Reason for removing ${a.display_name} from break-glass`);
        if (!why) return;
        await api("DELETE", `/api/sso/break-glass/${a.user_id}${qs({ reason: why })}`);
        ctx.go("sso", `${a.display_name} is no longer a break-glass account.`);
      }, { "aria-label": `Remove ${a.display_name} from break-glass` }),
    ]), "Break-glass accounts"),
    candidates.length ? form([
      field("ADMIN", select("user_id", candidates.map((u) => [u.id, `${u.display_name || u.email} (${u.email})`]))),
      reason(),
    ], "Add break-glass account", async (d) => {
      await api("PUT", `/api/sso/break-glass/${d.user_id}`, { reason: d.reason });
      ctx.go("sso", "Break-glass account added.");
    }, { "aria-label": "Add a break-glass account" }) : null);
}
