"""A day with the admin console, in a real browser (Debian's Chromium driven by Playwright)
against the real host: an admin signs in with TOTP and invites a user; the user accepts from
the mail's code, enrols a passkey in Chromium's virtual authenticator and signs in with it;
the admin revokes the user's session and the user's page is signed out; a reviewer signs a
record in the Part 11 dialog; the auditor presses Verify. Then every page is scanned with
axe-core and photographed into docs/console/.

The browser goes to http://localhost:<port>: WebAuthn refuses an IP address as RP id, and
Chromium treats localhost as a secure context (so the Secure refresh cookie is kept).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from shared.core import db
from tests.conftest import ROOT, Host, Tenant, auth, create_session_row, create_user, free_port, token_for
from tests.web.test_console import ensure_built

pw = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, BrowserContext, Page, expect  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "Lantern-Orchid-Quarry-47"
AXE = ROOT / "console" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = ROOT / "docs" / "console"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def console_host() -> Iterator[Host]:
    ensure_built()
    port = free_port()
    origin = f"http://localhost:{port}"
    h = Host(env={"WEBAUTHN_RP_ID": "localhost", "WEBAUTHN_ORIGINS": origin, "PUBLIC_APP_URL": f"{origin}/console",
                  "SSO_PUBLIC_URL": origin, "SSO_CONSOLE_URL": f"{origin}/console/", "SSO_METADATA_ALLOW_LOOPBACK": "true"},
             port=port)
    h.url = origin  # type: ignore[misc]
    yield h
    h.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-component-update",
            "--disable-default-apps", "--disable-sync", "--no-first-run", "--disable-domain-reliability",
            "--metrics-recording-only", "--disable-breakpad",
        ])
        yield b
        b.close()


def person(tenant: Tenant, role: str) -> dict[str, Any]:
    """A user with a password (and, for ADMIN and REVIEWER, a confirmed TOTP)."""
    from shared.identity.passwords import hash_password

    row = create_user(tenant.id, role, name=f"{role.title()} {uuid.uuid4().hex[:4]}")
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update users set password_hash = %s, time_zone = 'Europe/London' where id = %s",
                     (hash_password(PASSWORD), row["id"]))
    return row


def context(browser: Browser, **kw: Any) -> BrowserContext:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="Europe/London", **kw)
    ctx.set_default_timeout(20_000)
    return ctx


def sign_in(page: Page, host: Host, tenant: Tenant, who: dict[str, Any], *, at: float | None = None) -> None:
    page.goto(f"{host.url}/console/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Organisation (tenant)").fill(tenant.slug)
    page.get_by_label("Email", exact=True).fill(who["email"])
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    if who.get("totp_secret"):
        expect(page.get_by_role("heading", name="Second step")).to_be_visible()
        code = pyotp.TOTP(who["totp_secret"]).at(at or time.time())
        page.get_by_label("Code from your authenticator app").fill(code)
        page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()


def outbox_code(tenant_id: str, to: str, prefix: str) -> str:
    with db.tenant_tx(tenant_id) as conn:
        body = conn.execute("select body from outbox where to_address = %s order by created_at desc limit 1",
                            (to,)).fetchone()["body"]
    match = re.search(rf"\b{prefix}\.[0-9a-f]{{32}}\.[A-Za-z0-9_-]{{40,}}", body)
    assert match, body
    return match.group(0)


def test_a_day_with_the_console(console_host: Host, browser: Browser, tenant: Tenant) -> None:
    host = console_host
    admin = person(tenant, "ADMIN")
    reviewer = person(tenant, "REVIEWER")
    author = person(tenant, "OPERATOR")
    author_auth = auth(token_for(author["id"], tenant.id, "OPERATOR", session_id=create_session_row(tenant.id, author["id"])))
    with httpx.Client(base_url=f"http://127.0.0.1:{host.port}") as c:
        record = c.post("/api/records", json={"type": "document", "payload": {"title": "SOP-7 Cleaning"}},
                        headers=author_auth).json()
        assert "id" in record, record
        authored = c.post(f"/api/records/{record['id']}/versions/1/signatures", headers=author_auth,
                          json={"password": PASSWORD, "meaning": "AUTHORED", "reason": "authorship"})
        assert authored.status_code == 201, authored.text

    # The admin signs in with a TOTP code and invites a user.
    admin_ctx = context(browser)
    a = admin_ctx.new_page()
    sign_in(a, host, tenant, admin)
    a.get_by_role("link", name="Users").click()
    expect(a.get_by_role("heading", name="Users")).to_be_visible()
    invitee = f"new-{uuid.uuid4().hex[:8]}@example.test"
    invite = a.get_by_role("form", name="Invite a user")
    invite.get_by_label("Email").fill(invitee)
    invite.get_by_label("Name").fill("Nina New")
    invite.get_by_label("Role").select_option("OPERATOR")
    invite.get_by_label("Reason").fill("joins the QA team")
    invite.get_by_role("button", name="Send invitation").click()
    expect(a.get_by_text(f"Invitation mailed to {invitee}")).to_be_visible()

    # The user accepts from the mail's link and code.
    user_ctx = context(browser)
    u = user_ctx.new_page()
    u.goto(f"{host.url}/console/invitation")
    expect(u.get_by_role("heading", name="Accept your invitation")).to_be_visible()
    u.get_by_label("Invitation code").fill(outbox_code(tenant.id, invitee, "inv"))
    u.get_by_label("Your name").fill("Nina New")
    u.get_by_label("New password").fill(PASSWORD)
    u.get_by_role("button", name="Accept and sign in").click()
    expect(u.get_by_role("heading", name="My account")).to_be_visible()
    expect(u.get_by_text("Nina New").first).to_be_visible()

    # ... enrols a passkey in Chromium's virtual authenticator ...
    cdp = user_ctx.new_cdp_session(u)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})
    add = u.get_by_role("form", name="Add a passkey")
    add.get_by_label("Name for the new passkey").fill("Nina's laptop")
    add.get_by_role("button", name="Add a passkey").click()
    expect(u.get_by_text("Passkey added.")).to_be_visible()
    u.get_by_role("button", name="Continue").click()
    expect(u.get_by_role("cell", name="Nina's laptop", exact=True)).to_be_visible()

    # ... signs out, and back in with the passkey alone.
    u.get_by_role("button", name="Sign out").click()
    expect(u.get_by_text("You are signed out.")).to_be_visible()
    u.get_by_label("Organisation (tenant)").fill(tenant.slug)
    u.get_by_role("button", name="Sign in with a passkey").click()
    expect(u.get_by_role("heading", name="My account")).to_be_visible()
    expect(u.get_by_text("This session")).to_be_visible()

    # The admin revokes the user's session; the user's page is signed out on its next request.
    a.get_by_role("link", name="Users").click()
    a.get_by_role("link", name="Nina New").click()
    expect(a.get_by_role("heading", name="Nina New")).to_be_visible()
    sessions = a.get_by_role("table", name="Sessions of this user")
    live = sessions.get_by_role("button", name=re.compile("Revoke session"))
    expect(live.first).to_be_visible()
    for _ in range(live.count()):
        a.get_by_role("table", name="Sessions of this user").get_by_role("button", name=re.compile("Revoke session")).first.click()
        expect(a.get_by_text("Session revoked")).to_be_visible()
    expect(a.get_by_role("table", name="Sessions of this user").get_by_role("button", name=re.compile("Revoke"))).to_have_count(0)
    u.get_by_role("link", name="My account").click()
    expect(u.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(u.get_by_text("Your session has ended")).to_be_visible()

    # A reviewer signs the record in the dialog that shows the manifestation first.
    rev_ctx = context(browser)
    r = rev_ctx.new_page()
    sign_in(r, host, tenant, reviewer)
    r.goto(f"{host.url}/console/records/{record['id']}")
    expect(r.get_by_role("heading", name=re.compile("document"))).to_be_visible()
    r.get_by_role("button", name="Sign version 1").click()
    dialog = r.get_by_role("dialog")
    manifest = dialog.get_by_role("region", name="Signature manifestation")
    expect(manifest).to_contain_text(reviewer["email"][:0] or "Printed name")
    expect(manifest).to_contain_text(record["version"]["checksum"])
    dialog.get_by_label("Meaning").select_option("REVIEWED")
    dialog.get_by_label("Your password").fill(PASSWORD)
    dialog.get_by_label("Authenticator code (if you have one)").fill(pyotp.TOTP(reviewer["totp_secret"]).at(time.time() + 30))
    dialog.get_by_role("button", name="Sign", exact=True).click()
    expect(r.get_by_text("Signed as REVIEWED.")).to_be_visible()
    expect(r.get_by_role("table", name="Signatures")).to_contain_text("REVIEWED")

    # The auditor (here the reviewer: audit.read) presses Verify and sees the result.
    r.get_by_role("link", name="Audit trail").click()
    expect(r.get_by_role("heading", name="Audit trail")).to_be_visible()
    expect(r.get_by_role("table", name=re.compile("Events"))).to_contain_text("signature")
    r.get_by_role("button", name="Verify").click()
    expect(r.get_by_text("The audit chain is intact.")).to_be_visible()
    expect(r.get_by_text(re.compile(r"event\(s\) checked"))).to_be_visible()
    for c_ in (admin_ctx, user_ctx, rev_ctx):
        c_.close()


PAGES = ["signin", "invitation", "reset", "account", "users", "records", "audit", "settings", "exports", "sso"]


def test_every_page_passes_axe_and_is_photographed(console_host: Host, browser: Browser, tenant: Tenant) -> None:
    """axe-core finds no serious or critical violation on any page (injected into a context
    that bypasses the CSP: the page itself admits no outside script, which is the point)."""
    host = console_host
    admin = person(tenant, "ADMIN")
    with httpx.Client(base_url=f"http://127.0.0.1:{host.port}") as c:
        rec = c.post("/api/records", json={"type": "document", "payload": {"title": "SOP-9 Gowning"}},
                     headers=auth(token_for(admin["id"], tenant.id, "ADMIN",
                                           session_id=create_session_row(tenant.id, admin["id"])))).json()
    assert "id" in rec, rec
    ctx = context(browser, bypass_csp=True)
    page = ctx.new_page()
    SHOTS.mkdir(parents=True, exist_ok=True)
    failures: dict[str, list[str]] = {}

    def scan(name: str) -> None:
        page.add_script_tag(path=str(AXE))
        result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        bad = [f"{v['id']} ({v['impact']}): {v['help']}" for v in result["violations"]
               if v["impact"] in ("serious", "critical")]
        if bad:
            failures[name] = bad
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    for name in ("signin", "invitation", "reset"):
        page.goto(f"{host.url}/console/{name}")
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        scan(name)
    sign_in(page, host, tenant, admin)
    for name in ("account", "users", "records", "audit", "settings", "exports", "sso"):
        page.get_by_role("link", name={"account": "My account", "users": "Users", "records": "Records",
                                       "audit": "Audit trail", "settings": "Settings", "exports": "Exports",
                                       "sso": "Identity providers"}[name]).click()
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        expect(page.locator("main progress")).to_have_count(0)
        scan(name)
    page.goto(f"{host.url}/console/records/{rec['id']}")
    expect(page.get_by_role("heading", name=re.compile("document"))).to_be_visible()
    page.get_by_role("button", name="Sign version 1").click()
    expect(page.get_by_role("region", name="Signature manifestation")).to_be_visible()
    scan("sign-dialog")
    page.set_viewport_size({"width": 320, "height": 800})
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    width = page.evaluate("document.documentElement.scrollWidth")
    page.screenshot(path=str(SHOTS / "record-320px.png"), full_page=True)
    assert width <= 320, f"the record page scrolls sideways at 320 px ({width} px)"
    ctx.close()
    assert not failures, failures


def test_the_strict_csp_blocks_an_injected_inline_script(console_host: Host, browser: Browser) -> None:
    """The served page really runs under its CSP and Trusted Types: inline script does not
    run and an innerHTML assignment throws."""
    ctx = context(browser)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{console_host.url}/console/signin")
    try:
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    except AssertionError:
        raise AssertionError(errors) from None
    ran = page.evaluate("""() => { try { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';
        document.head.appendChild(s); } catch (e) { return 'refused: ' + e.message } return window.__ran === 1; }""")
    assert ran is not True and "TrustedScript" in str(ran)
    threw = page.evaluate("() => { try { document.body.innerHTML = '<b>x</b>'; return false } catch (e) { return true } }")
    assert threw is True
    ctx.close()


@pytest.fixture(scope="module")
def op() -> Iterator[Any]:
    from tests.identity.sso.test_oidc import OpenIdProvider

    provider = OpenIdProvider()
    yield provider
    provider.stop()


def test_sso_sign_in_through_the_openid_provider_lands_signed_in(console_host: Host, browser: Browser, tenant: Tenant,
                                                                 op: Any) -> None:
    """The sign-in page shows the tenant's provider; its button goes through the real OpenID
    Provider (non-interactive login) and back; the console trades the one-time code for tokens
    (refresh token in the HttpOnly cookie) and shows the signed-in page; the code is gone from
    the address bar, and a reload keeps the session."""
    from shared.identity.sso import oidc

    host = console_host
    admin = person(tenant, "ADMIN")
    admin_auth = auth(token_for(admin["id"], tenant.id, "ADMIN", session_id=create_session_row(tenant.id, admin["id"])))
    name = f"Acme IdP {uuid.uuid4().hex[:4]}"
    with httpx.Client(base_url=f"http://127.0.0.1:{host.port}", timeout=30) as c:
        r = c.post("/api/sso/providers", headers=admin_auth, json={
            "kind": "oidc", "name": name, "enabled": False, "reason": "set up OIDC", "config": {"issuer": op.issuer}})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        client_id, secret = op.register(host.url + oidc.callback_path(tenant.slug, pid))
        r = c.patch(f"/api/sso/providers/{pid}", headers=admin_auth, json={
            "enabled": True, "jit": True, "client_secret": secret, "reason": "client registered",
            "config": {"issuer": op.issuer, "client_id": client_id}})
        assert r.status_code == 200, r.text
    email = f"sso-{uuid.uuid4().hex[:6]}@example.test"
    op.mutate(None)
    op.account(sub=f"console-{uuid.uuid4().hex[:6]}", email=email, name="Sam Single")

    ctx = context(browser)
    page = ctx.new_page()
    page.goto(f"{host.url}/console/signin")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Organisation (tenant)").fill(tenant.slug)
    page.get_by_label("Organisation (tenant)").press("Tab")
    page.get_by_role("link", name=f"Sign in with {name}").click()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    expect(page.get_by_text(email)).to_be_visible()
    assert "sso_code" not in page.url
    cookies = {c_["name"]: c_ for c_ in ctx.cookies()}
    assert cookies["custos_refresh"]["httpOnly"] and cookies["custos_refresh"]["path"] == "/api/auth"
    page.reload()
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    expect(page.get_by_text(email)).to_be_visible()
    ctx.close()


def test_an_admin_exports_watches_it_finish_and_downloads_the_manifest(console_host: Host, browser: Browser,
                                                                     tenant: Tenant) -> None:
    """The job runs from the queue (the host polls it); the page polls the export with backoff
    until the download links appear; the manifest downloads through its signed link."""
    import json

    host = console_host
    admin = person(tenant, "ADMIN")
    ctx = context(browser, accept_downloads=True)
    page = ctx.new_page()
    sign_in(page, host, tenant, admin)
    page.get_by_role("link", name="Exports").click()
    expect(page.get_by_role("heading", name="Exports")).to_be_visible()
    start = page.get_by_role("form", name="Start an export")
    start.get_by_label("Reason").fill("quarterly archive")
    start.get_by_role("button", name="Start export").click()
    expect(page.get_by_text("Export started.")).to_be_visible()
    expect(page.get_by_text("The export is ready.")).to_be_visible(timeout=120_000)
    with page.expect_download() as got:
        page.get_by_role("link", name="Download manifest.json", exact=True).click()
    manifest = json.loads(Path(got.value.path()).read_text())
    assert manifest["tenant_id"] == tenant.id and manifest["files"], manifest
    page.get_by_role("link", name="All exports").click()
    expect(page.get_by_role("table", name="Recent exports")).to_contain_text("DONE")
    ctx.close()


def test_an_admin_edits_designations_overrides_providers_and_recovery_codes(console_host: Host, browser: Browser,
                                                                             tenant: Tenant) -> None:
    """The Users page changes a user's designations and overrides (what the API then reports);
    My account makes new recovery codes (the old ones stop working); the Identity providers page
    adds an OIDC provider, enables it and names a break-glass ADMIN."""
    host = console_host
    admin = person(tenant, "ADMIN")
    operator = person(tenant, "OPERATOR")
    admin_auth = auth(token_for(admin["id"], tenant.id, "ADMIN", session_id=create_session_row(tenant.id, admin["id"])))
    with httpx.Client(base_url=f"http://127.0.0.1:{host.port}", timeout=30) as c:
        made = c.post("/api/designations", headers=admin_auth, json={
            "name": "QA approver", "permissions": ["records.read"], "reason": "QA sign-off"})
        assert made.status_code == 201, made.text
    ctx = context(browser)
    page = ctx.new_page()
    sign_in(page, host, tenant, admin)
    page.goto(f"{host.url}/console/users/{operator['id']}")
    expect(page.get_by_role("heading", level=1)).not_to_have_text("Users")
    expect(page.get_by_role("form", name="Change designations")).to_be_visible()
    designations = page.get_by_role("form", name="Change designations")
    designations.get_by_label(re.compile("QA approver")).check()
    designations.get_by_label("Reason").fill("joins QA")
    designations.get_by_role("button", name="Save designations").click()
    expect(page.get_by_text("Designations saved.")).to_be_visible()
    overrides = page.get_by_role("form", name="Add a permission override")
    overrides.get_by_label("Permission").fill("audit.read")
    overrides.get_by_label("Effect").select_option("grant")
    overrides.get_by_label("Reason").fill("temporary audit help")
    overrides.get_by_role("button", name="Add override").click()
    expect(page.get_by_text("Override grant audit.read saved.")).to_be_visible()
    expect(page.get_by_role("table", name="Overrides of this user")).to_contain_text("audit.read")
    overrides = page.get_by_role("form", name="Add a permission override")
    overrides.get_by_label("Permission").fill("records.retire")
    overrides.get_by_label("Reason").fill("not this quarter")
    overrides.get_by_role("button", name="Add override").click()
    expect(page.get_by_text("Override deny records.retire saved.")).to_be_visible()
    removal = page.get_by_role("form", name="Remove override deny records.retire")
    removal.get_by_label("Reason for removing deny records.retire").fill("quarter over")
    removal.get_by_role("button", name="Remove").click()
    expect(page.get_by_text("Override deny records.retire removed.")).to_be_visible()
    with httpx.Client(base_url=f"http://127.0.0.1:{host.port}", timeout=30) as c:
        user = c.get(f"/api/users/{operator['id']}", headers=admin_auth).json()
        assert [d["name"] for d in user["designations"]] == ["QA approver"]
        got = c.get(f"/api/users/{operator['id']}/overrides", headers=admin_auth).json()
        assert [(o["permission"], o["effect"]) for o in got["overrides"]] == [("audit.read", "grant")]

    page.get_by_role("link", name="My account").click()
    regen = page.get_by_role("form", name="Make new recovery codes")
    regen.get_by_role("button", name="Make new recovery codes").click()
    codes = page.get_by_role("region", name="Recovery codes").get_by_role("listitem")
    expect(codes.first).to_be_visible()
    assert codes.count() >= 8

    page.get_by_role("link", name="Identity providers").click()
    add = page.get_by_role("form", name="Add an identity provider")
    add.get_by_label("Name").fill("Contoso Entra")
    add.get_by_label("Issuer URL").fill("https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/v2.0")
    add.get_by_label("Client id").fill("client-abc")
    add.get_by_label("Client secret").fill("s3cret-value")
    add.get_by_label("Reason").fill("staff sign-in")
    add.get_by_role("button", name="Add provider").click()
    expect(page.get_by_text("Contoso Entra added (disabled until you enable it).")).to_be_visible()
    enable = page.get_by_role("form", name="Enable Contoso Entra")
    enable.get_by_label("Reason for changing Contoso Entra").fill("go live")
    enable.get_by_role("button", name="Enable").click()
    expect(page.get_by_text("Contoso Entra enabled.")).to_be_visible()
    glass = page.get_by_role("form", name="Add a break-glass account")
    glass.get_by_label("ADMIN").select_option(admin["id"])
    glass.get_by_label("Reason").fill("keep a way in")
    glass.get_by_role("button", name="Add break-glass account").click()
    expect(page.get_by_role("table", name="Break-glass accounts")).to_contain_text(admin["email"])
    with httpx.Client(base_url=f"http://127.0.0.1:{host.port}", timeout=30) as c:
        [p] = c.get("/api/sso/providers", headers=admin_auth).json()["providers"]
        assert p["enabled"] and p["has_client_secret"] and p["config"]["client_id"] == "client-abc"
        assert "s3cret-value" not in str(p)
        buttons = c.get(f"/api/sso/tenants/{tenant.slug}/providers").json()["providers"]
        assert [b["name"] for b in buttons] == ["Contoso Entra"]
    ctx.close()
