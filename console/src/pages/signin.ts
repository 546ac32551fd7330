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
interface Provider { id: string; name: string; login_url: string }

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

  // Single sign-on (issue 15) shows its buttons once its endpoint is in the OpenAPI document.
  tenant.addEventListener("change", () => void ssoButtons(tenant.value, sso));
  if (tenant.value) void ssoButtons(tenant.value, sso);

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
  if (!tenant || !paths.has("/api/sso/{tenant}/providers")) return;
  try {
    const { providers } = await get<{ providers: Provider[] }>(`/api/sso/${encodeURIComponent(tenant)}/providers`);
    slot.append(...providers.map((p) => h("a", { class: "button", href: p.login_url }, `Sign in with ${p.name}`)));
  } catch {
    /* no providers for this tenant */
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
