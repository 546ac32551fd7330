import { describedPaths, get, post, useTokens, type Tokens } from "../api";
import { field, h, input, put } from "../dom";
import type { Ctx } from "../main";
import { loadMe } from "../main";
import { actionButton, errorBox, form, notice } from "../ui";
import * as webauthn from "../webauthn";

interface LoginResult extends Partial<Tokens> {
  mfa_required?: boolean | null;
  mfa_ticket?: string | null;
  methods?: string[] | null;
}

interface Options { challenge_id: string; options: Record<string, unknown> }
interface Provider { id: string; name: string; kind: string; required: boolean }

// A finished SSO sign-in lands on the console with `#sso_code=...` (and the HttpOnly binding
// cookie). main.ts hands the code over before the first render, with the fragment already
// gone from the address bar and the history, so a reload or the back button cannot replay it.
let pendingSsoCode: string | null = null;

/** Keep the one-time SSO code of the landing URL for the sign-in page; true when there was one. */
export function takeSsoCode(hash: string): boolean {
  const code = new URLSearchParams(hash.replace(/^#/, "")).get("sso_code");
  if (!code) return false;
  pendingSsoCode = code;
  return true;
}

/** The start URL of a provider's sign-in, or null when this deployment has no route for its kind. */
export function startUrl(paths: Set<string>, tenant: string, p: Provider): string | null {
  const t = encodeURIComponent(tenant);
  const id = encodeURIComponent(p.id);
  if (p.kind === "oidc" && paths.has("/api/sso/oidc/{tenant}/{provider}/start")) return `/api/sso/oidc/${t}/${id}/start`;
  if (p.kind === "saml" && paths.has("/api/sso/saml/{tenant}/login")) return `/api/sso/saml/${t}/login?provider=${id}`;
  return null;
}

/** After tokens: load who we are, then the account page (which asks for a factor if one is due). */
export async function finish(ctx: Ctx, tokens: Tokens): Promise<void> {
  useTokens(tokens);
  await loadMe();
  ctx.go("account", tokens.mfa_enrolment_required ? "Your role needs a second factor: set one up below." : "Signed in.");
}

export async function signInPage(ctx: Ctx): Promise<Node> {
  const section = h("section", { class: "narrow" });
  const tenant = input("tenant", { required: true, autocomplete: "organization", maxlength: 63, value: localStorage.getItem("custos.tenant") ?? "" });
  const sso = h("div", { class: "sso" });
  const step = h("div", {});

  const passwordForm = form([
    field("Organisation (tenant)", tenant),
    field("Email", input("email", { type: "email", required: true, autocomplete: "username" })),
    field("Password", input("password", { type: "password", required: true, autocomplete: "current-password" })),
  ], "Sign in", async (d) => {
    localStorage.setItem("custos.tenant", d.tenant);
    const result = await post<LoginResult>("/api/auth/login", { tenant: d.tenant, email: d.email, password: d.password });
    if (result.mfa_required && result.mfa_ticket) {
      secondStep(ctx, step, result.mfa_ticket, result.methods ?? []);
      passwordForm.hidden = true;
      return;
    }
    await finish(ctx, result as Tokens);
  }, { "aria-label": "Sign in with password" });

  const passkeyButton = webauthn.supported() ? actionButton("Sign in with a passkey", async () => {
    if (!tenant.value) throw new Error("Enter your organisation first.");
    const o = await post<Options>("/api/auth/passkey/options", { tenant: tenant.value });
    const assertion = await webauthn.get(o.options);
    await finish(ctx, await post<Tokens>("/api/auth/passkey/verify", { challenge_id: o.challenge_id, assertion }));
  }) : null;

  // Single sign-on: one button per enabled provider of the tenant typed above.
  tenant.addEventListener("change", () => {
    localStorage.setItem("custos.tenant", tenant.value);
    void ssoButtons(tenant.value, sso);
  });
  if (tenant.value) void ssoButtons(tenant.value, sso);

  const code = pendingSsoCode;
  pendingSsoCode = null;
  if (code) {
    // Back from the identity provider: trade the code (the binding cookie goes along) like a login.
    try {
      const result = await post<LoginResult>("/api/auth/sso/exchange", { code });
      if (result.mfa_required && result.mfa_ticket) {
        secondStep(ctx, step, result.mfa_ticket, result.methods ?? []);
        passwordForm.hidden = true;
      } else {
        await finish(ctx, result as Tokens);
        return section;
      }
    } catch (err) {
      step.replaceChildren(errorBox(err));
    }
  }

  put(section,
    h("h1", {}, "Sign in"),
    ctx.message ? notice(ctx.message, "info") : null,
    passwordForm, step,
    h("div", { class: "alt" }, passkeyButton, sso),
    h("p", {}, h("a", { href: "/console/reset" }, "Forgot your password?"), " · ",
      h("a", { href: "/console/invitation" }, "Accept an invitation")),
  );
  return section;
}

async function ssoButtons(tenant: string, slot: HTMLElement): Promise<void> {
  slot.replaceChildren();
  const paths = await describedPaths();
  if (!tenant || !paths.has("/api/sso/tenants/{tenant}/providers")) return;
  try {
    const { providers } = await get<{ providers: Provider[] }>(`/api/sso/tenants/${encodeURIComponent(tenant)}/providers`);
    const links = providers.flatMap((p) => {
      const href = startUrl(paths, tenant, p);
      return href ? [h("a", { class: "button", href }, `Sign in with ${p.name}`)] : [];
    });
    slot.replaceChildren(...links);
  } catch {
    /* an unknown tenant has no buttons; the password form says the rest */
  }
}

function secondStep(ctx: Ctx, slot: HTMLElement, ticket: string, methods: string[]): void {
  const totp = form([
    field("Code from your authenticator app", input("code", {
      inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6,8}", required: true, maxlength: 8,
    })),
  ], "Verify", async (d) => finish(ctx, await post<Tokens>("/api/auth/mfa/verify", { mfa_ticket: ticket, code: d.code })),
  { "aria-label": "Authenticator code" });
  const recovery = form([
    field("Recovery code", input("recovery_code", { required: true, autocomplete: "off", maxlength: 40 })),
  ], "Use recovery code", async (d) => finish(ctx, await post<Tokens>("/api/auth/mfa/verify", {
    mfa_ticket: ticket, recovery_code: d.recovery_code,
  })), { "aria-label": "Recovery code" });
  const passkey = methods.includes("passkey") && webauthn.supported() ? actionButton("Use a passkey", async () => {
    const o = await post<Options>("/api/auth/mfa/passkey/options", { mfa_ticket: ticket });
    const assertion = await webauthn.get(o.options);
    await finish(ctx, await post<Tokens>("/api/auth/mfa/verify", { mfa_ticket: ticket, challenge_id: o.challenge_id, assertion }));
  }) : null;
  put(slot, h("h2", {}, "Second step"),
    methods.includes("totp") ? totp : null, passkey,
    h("details", {}, h("summary", {}, "Use a recovery code instead"), recovery));
  const first = slot.querySelector("input");
  if (first) first.focus();
  else if (!passkey) slot.append(errorBox(new Error("No second factor is available for this account.")));
}
