import { api, get } from "../api";
import { field, h, input } from "../dom";
import type { Ctx } from "../main";
import { form, notice, table } from "../ui";

export async function settingsPage(ctx: Ctx): Promise<Node> {
  const s = await get<{ settings: Record<string, unknown>; catalogue: Record<string, string> }>("/api/tenant/settings");
  const canEdit = ctx.me!.permissions.includes("tenant.settings.manage");
  const keys = Object.keys({ ...s.catalogue, ...s.settings }).sort();
  return h("section", {},
    h("h1", {}, "Settings"),
    ctx.message ? notice(ctx.message) : null,
    table(["Setting", "Meaning", "Value"], keys.map((k) => [h("code", {}, k), s.catalogue[k] ?? "", JSON.stringify(s.settings[k])]),
      "Organisation settings"),
    canEdit ? h("div", {}, h("h2", {}, "Change a setting"), form([
      field("Setting", input("key", { required: true, list: "setting-keys" })),
      h("datalist", { id: "setting-keys" }, keys.map((k) => h("option", { value: k }))),
      field("New value (JSON)", input("value", { required: true }), "e.g. 15, true or \"text\""),
      field("Reason", input("reason", { required: true, minlength: 3 })),
    ], "Save", async (d) => {
      let value: unknown;
      try {
        value = JSON.parse(d.value);
      } catch {
        throw new Error("The value is not valid JSON.");
      }
      await api("PUT", `/api/tenant/settings/${encodeURIComponent(d.key)}`, { value, reason: d.reason });
      ctx.go("settings", `${d.key} changed.`);
    }, { "aria-label": "Change a setting" })) : null);
}
