import { api, get, post, SignedOut, signedIn } from "../api";
import { field, h, input, put, when } from "../dom";
import type { Ctx } from "../main";
import { qrSvg } from "../qr";
import { actionButton, errorBox, form, notice, table } from "../ui";
import * as webauthn from "../webauthn";

interface Passkey { id: string; name: string | null; created_at: string; last_used_at: string | null }
interface MfaStatus {
  required: boolean; enrolled: boolean; enrolment_required: boolean;
  totp: { confirmed_at: string; last_used_at: string | null } | null;
  passkeys: Passkey[]; recovery_codes_remaining: number;
}
export interface Session {
  id: string; created_at: string; last_seen_at: string; expires_at: string; ip: string | null;
  device_label: string | null; revoked_at: string | null; current?: boolean;
}

export function recoveryCodes(codes: string[]): HTMLElement {
  return h("div", { class: "codes", role: "region", "aria-label": "Recovery codes" },
    h("h3", {}, "Your recovery codes"),
    h("p", {}, "Store them somewhere safe now: they are shown only this once. Each works one time."),
    h("ul", { class: "mono" }, codes.map((c) => h("li", {}, c))));
}

export async function accountPage(ctx: Ctx): Promise<Node> {
  const me = ctx.me!;
  const section = h("section", {}, h("h1", {}, "My account"), ctx.message ? notice(ctx.message, "info") : null);
  section.append(
    h("dl", { class: "facts" },
      h("dt", {}, "Name"), h("dd", {}, me.user.display_name ?? ""),
      h("dt", {}, "Email"), h("dd", {}, me.user.email ?? ""),
      h("dt", {}, "Role"), h("dd", {}, me.role),
      h("dt", {}, "Time zone"), h("dd", {}, me.user.time_zone ?? "")),
  );
  const factors = h("div", {});
  const sessions = h("div", {});
  section.append(h("h2", {}, "Second factor"), factors, h("h2", {}, "My sessions"), sessions,
    h("h2", {}, "Change password"),
    form([
      field("Current password", input("current_password", { type: "password", required: true, autocomplete: "current-password" })),
      field("New password", input("new_password", { type: "password", required: true, autocomplete: "new-password" })),
    ], "Change password", async (d) => {
      const r = await post<{ other_sessions_ended: number }>("/api/auth/password/change", d);
      return `Password changed; ${r.other_sessions_ended} other session(s) ended.`;
    }));
  // Each part on its own: a user who must still enrol a factor may read /api/mfa but not yet
  // /api/sessions, and the enrolment must stay usable.
  await Promise.all([
    renderFactors(ctx, factors).catch((err) => put(factors, errorBox(err))),
    renderSessions(ctx, sessions).catch((err) => put(sessions, errorBox(err))),
  ]);
  if (!signedIn()) throw new SignedOut("signed out while the page loaded");
  return section;
}

async function renderFactors(ctx: Ctx, slot: HTMLElement): Promise<void> {
  const mfa = await get<MfaStatus>("/api/mfa");
  const enrolArea = h("div", {});
  const totp = mfa.totp
    ? h("p", {}, "Authenticator app set up ", when(mfa.totp.confirmed_at), ".")
    : h("div", {}, h("p", {}, "No authenticator app is set up."), actionButton("Set up an authenticator app", async () => {
      const e = await post<{ secret: string; otpauth_uri: string; expires_in: number }>("/api/mfa/totp/enroll");
      enrolArea.replaceChildren(
        h("p", {}, "Scan this code with your authenticator app, or type the key by hand."),
        qrSvg(e.otpauth_uri, "QR code of your authenticator key"),
        h("p", {}, "Key: ", h("code", { class: "mono", "data-secret": "" }, e.secret)),
        form([field("Code shown by the app", input("code", { inputmode: "numeric", required: true, autocomplete: "one-time-code", maxlength: 8 }))],
          "Confirm", async (d) => {
            const r = await post<{ recovery_codes: string[] | null }>("/api/mfa/totp/confirm", d);
            enrolArea.replaceChildren(notice("Authenticator app confirmed."), r.recovery_codes ? recoveryCodes(r.recovery_codes) : "",
              h("button", { type: "button", onclick: () => ctx.go("account") }, "I have stored them"));
          }, { "aria-label": "Confirm authenticator app" }));
      enrolArea.querySelector("input")?.focus();
    }));
  const passkeyRows = mfa.passkeys.map((p) => [
    p.name ?? "(unnamed)", when(p.created_at), when(p.last_used_at),
    h("span", {},
      form([field(`New name for ${p.name ?? "passkey"}`, input("name", { required: true, maxlength: 100 }))], "Rename",
        async (d) => { await api("PATCH", `/api/mfa/passkeys/${p.id}`, d); ctx.go("account", "Passkey renamed."); },
        { class: "inline" }),
      actionButton("Remove", async () => {
        if (!confirm(`Remove the passkey ${p.name ?? ""}?`)) return;
        await api("DELETE", `/api/mfa/passkeys/${p.id}`);
        ctx.go("account", "Passkey removed.");
      })),
  ]);
  const add = webauthn.supported() ? form([field("Name for the new passkey", input("name", { maxlength: 100, value: "My passkey" }))],
    "Add a passkey", async (d) => {
      const o = await post<{ challenge_id: string; options: Record<string, unknown> }>("/api/mfa/passkeys/registration/options");
      const credential = await webauthn.create(o.options);
      const r = await post<{ recovery_codes: string[] | null }>("/api/mfa/passkeys/registration/verify",
        { challenge_id: o.challenge_id, credential, name: d.name || null });
      enrolArea.replaceChildren(notice("Passkey added."), r.recovery_codes ? recoveryCodes(r.recovery_codes) : "",
        h("button", { type: "button", onclick: () => ctx.go("account") }, "Continue"));
    }, { "aria-label": "Add a passkey" }) : h("p", {}, "This browser cannot use passkeys.");
  put(slot,
    mfa.enrolment_required ? notice("Your role requires a second factor. Set one up to continue.", "info") : null,
    totp,
    table(["Passkey", "Added", "Last used", ""], passkeyRows, "Passkeys"),
    add, enrolArea,
    h("p", {}, `Recovery codes left: ${mfa.recovery_codes_remaining}`),
    mfa.enrolled ? regenerate(ctx) : null);
}

async function renderSessions(ctx: Ctx, slot: HTMLElement): Promise<void> {
  const { sessions } = await get<{ sessions: Session[] }>("/api/sessions");
  slot.replaceChildren(table(["Device", "IP", "Signed in", "Last seen", ""], sessions.map((s) => [
    s.device_label ?? "unknown device", s.ip ?? "", when(s.created_at), when(s.last_seen_at),
    s.current ? h("strong", {}, "This session") : actionButton("Revoke", async () => {
      await api("DELETE", `/api/sessions/${s.id}`);
      ctx.go("account", "Session revoked.");
    }, { "aria-label": `Revoke session on ${s.device_label ?? "unknown device"}` }),
  ]), "Active sessions"));
}

/** New recovery codes (the old set stops working): a current authenticator code, or none
 * right after proving a factor (the API decides, and says so in its problem if not). */
function regenerate(ctx: Ctx): HTMLElement {
  const out = h("div", {});
  return h("div", {}, h("h3", {}, "New recovery codes"), form([
    field("Authenticator code (not needed just after signing in with a second factor)", input("code", {
      inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6,8}", maxlength: 8,
    })),
  ], "Make new recovery codes", async (d) => {
    const r = await post<{ recovery_codes: string[] }>("/api/mfa/recovery-codes", d.code ? { code: d.code } : {});
    out.replaceChildren(notice("New recovery codes made; the old ones no longer work."), recoveryCodes(r.recovery_codes),
      h("button", { type: "button", onclick: () => ctx.go("account") }, "I have stored them"));
  }, { "aria-label": "Make new recovery codes" }), out);
}
