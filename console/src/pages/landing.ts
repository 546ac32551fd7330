import { post, type Tokens } from "../api";
import { field, h, input } from "../dom";
import type { Ctx } from "../main";
import { form, notice } from "../ui";
import { finish } from "./signin";

// The pages the invitation and reset mails link to (PUBLIC_APP_URL + /invitation, /reset).
// A code may also arrive in the fragment (#code=...), which never reaches a server log.
function codeFromFragment(): string {
  return new URLSearchParams(location.hash.slice(1)).get("code") ?? "";
}

export async function invitationPage(ctx: Ctx): Promise<Node> {
  return h("section", { class: "narrow" },
    h("h1", {}, "Accept your invitation"),
    h("p", {}, "Enter the invitation code from your mail, your name and a new password."),
    form([
      field("Invitation code", input("token", { required: true, autocomplete: "off", value: codeFromFragment() })),
      field("Your name", input("display_name", { required: true, autocomplete: "name", maxlength: 200 })),
      field("New password", input("password", { type: "password", required: true, autocomplete: "new-password" }),
        "At least 12 characters; common passwords are refused."),
    ], "Accept and sign in", async (d) => finish(ctx, await post<Tokens>("/api/auth/invitations/accept", d))));
}

export async function resetPage(ctx: Ctx): Promise<Node> {
  return h("section", { class: "narrow" },
    h("h1", {}, "Reset your password"),
    h("h2", {}, "1. Ask for a code"),
    form([
      field("Organisation (tenant)", input("tenant", { required: true, value: localStorage.getItem("custos.tenant") ?? "" })),
      field("Email", input("email", { type: "email", required: true, autocomplete: "username" })),
    ], "Send me a code", async (d) => (await post<{ status: string }>("/api/auth/password/reset/request", d)).status),
    h("h2", {}, "2. Set a new password"),
    form([
      field("Reset code", input("token", { required: true, autocomplete: "off", value: codeFromFragment() })),
      field("New password", input("new_password", { type: "password", required: true, autocomplete: "new-password" })),
    ], "Set password", async (d) => {
      await post("/api/auth/password/reset/confirm", d);
      ctx.go("signin", "Your password is changed. Sign in with it.");
    }),
    ctx.message ? notice(ctx.message) : null);
}
