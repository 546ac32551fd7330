"""Sign-in through the real host: invitations, login, refresh rotation, sessions, resets, throttling."""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import bcrypt
import httpx
import pytest

from shared.audit import chain as audit
from shared.core import db
from shared.core.settings import get_settings
from shared.tenancy.tenants import Tenant
from tests.conftest import Host, PersonFactory, auth, create_user

PASSWORD = "Quiet-Harbour-Lantern-" + uuid.uuid4().hex[:6]


@contextmanager
def client_from(host: Host, ip: str | None = None) -> Iterator[httpx.Client]:
    """A client whose connections come from `ip` (any 127/8 address): the host sees that peer."""
    ip = ip or f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    transport = httpx.HTTPTransport(local_address=ip)
    with httpx.Client(base_url=host.url, timeout=30, transport=transport) as c:
        yield c


def user_with_password(tenant: Tenant, password: str = PASSWORD, role: str = "OPERATOR", hashed: str | None = None) -> dict[str, Any]:
    from shared.identity.passwords import hash_password

    row = create_user(tenant.id, role)
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update users set password_hash = %s where id = %s", (hashed or hash_password(password), row["id"]))
    return row


def login(c: httpx.Client, tenant: Tenant, email: str, password: str = PASSWORD, **extra: Any) -> httpx.Response:
    return c.post("/api/auth/login", json={"tenant": tenant.slug, "email": email, "password": password, **extra})


def events(tenant_id: str, action: str) -> list[dict[str, Any]]:
    with db.tenant_tx(tenant_id) as conn:
        return audit.list_events(conn, action=action)


def outbox_token(tenant_id: str, to: str, prefix: str) -> str:
    with db.tenant_tx(tenant_id) as conn:
        body = conn.execute("select body from outbox where to_address = %s order by created_at desc limit 1", (to,)).fetchone()["body"]
    match = re.search(rf"\b{prefix}\.[0-9a-f]{{32}}\.[A-Za-z0-9_-]{{40,}}", body)
    assert match, body
    return match.group(0)


# --- invitation to logout -------------------------------------------------------------------


def test_invitation_login_refresh_logout(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    with client_from(host) as c:
        email = f"new-{uuid.uuid4().hex[:8]}@example.test"
        assert c.post("/api/users", json={"email": email, "role": "OPERATOR", "reason": "new hire"},
                      headers=auth(admin.token)).status_code == 201
        token = outbox_token(tenant.id, email, "inv")
        accepted = c.post("/api/auth/invitations/accept", json={"token": token, "display_name": "Nia New", "password": PASSWORD})
        assert accepted.status_code == 200, accepted.text
        assert c.get("/api/me", headers=auth(accepted.json()["access_token"])).json()["user"]["status"] == "active"
        again = c.post("/api/auth/invitations/accept", json={"token": token, "display_name": "Evil", "password": PASSWORD})
        assert again.status_code == 400 and again.json()["type"] == "urn:custos:problem:invalid-token"

        resp = login(c, tenant, email.upper())
        assert resp.status_code == 200, resp.text
        tokens = resp.json()
        assert set(tokens) >= {"access_token", "refresh_token", "expires_in", "session_id"}
        assert tokens["expires_in"] == 900
        me = c.get("/api/me", headers=auth(tokens["access_token"]))
        assert me.status_code == 200 and me.json()["user"]["display_name"] == "Nia New"

        rotated = c.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert rotated.status_code == 200
        new = rotated.json()
        assert new["refresh_token"] != tokens["refresh_token"] and new["session_id"] == tokens["session_id"]
        assert c.get("/api/me", headers=auth(new["access_token"])).status_code == 200

        assert c.post("/api/auth/logout", headers=auth(new["access_token"])).status_code == 204
        assert c.get("/api/me", headers=auth(new["access_token"])).status_code == 401
        assert c.post("/api/auth/refresh", json={"refresh_token": new["refresh_token"]}).status_code == 401
    actions = [e["action"] for e in events(tenant.id, "auth.login_succeeded") + events(tenant.id, "auth.logout")]
    assert actions == ["auth.login_succeeded", "auth.logout"]


def test_access_token_claims(host: Host, tenant: Tenant) -> None:
    import jwt

    user = user_with_password(tenant)
    with client_from(host) as c:
        tokens = login(c, tenant, user["email"]).json()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert set(claims) >= {"sub", "tid", "sid", "role", "iat", "exp", "iss", "aud", "jti"}
    assert (claims["sub"], claims["tid"], claims["sid"], claims["role"]) == (user["id"], tenant.id, tokens["session_id"], "OPERATOR")
    assert claims["exp"] - claims["iat"] == 900


def test_remember_me_lengthens_the_refresh_lifetime(host: Host, tenant: Tenant) -> None:
    from datetime import datetime, timedelta

    user = user_with_password(tenant)
    with client_from(host) as c:
        short = login(c, tenant, user["email"]).json()
        long = login(c, tenant, user["email"], remember_me=True).json()
    delta = datetime.fromisoformat(long["refresh_expires_at"]) - datetime.fromisoformat(short["refresh_expires_at"])
    assert timedelta(days=22) < delta < timedelta(days=24)


# --- refresh rotation ---------------------------------------------------------------------


def test_refresh_reuse_revokes_the_session(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant)
    with client_from(host) as c:
        first = login(c, tenant, user["email"]).json()
        second = c.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]}).json()
        third = c.post("/api/auth/refresh", json={"refresh_token": second["refresh_token"]}).json()
        # the first token is two rotations old: reuse, whatever the grace window
        reuse = c.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert reuse.status_code == 401
        assert c.post("/api/auth/refresh", json={"refresh_token": third["refresh_token"]}).status_code == 401
        assert c.get("/api/me", headers=auth(third["access_token"])).status_code == 401
    reused = events(tenant.id, "security.refresh_token_reused")
    assert [e["target_id"] for e in reused] == [first["session_id"]]


def test_refresh_race_within_grace_keeps_the_session(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant)
    with client_from(host) as c:
        first = login(c, tenant, user["email"]).json()
        tab_a = c.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
        tab_b = c.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert tab_a.status_code == tab_b.status_code == 200
        assert c.post("/api/auth/refresh", json={"refresh_token": tab_b.json()["refresh_token"]}).status_code == 200


def test_reuse_after_the_grace_window_revokes(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant)
    with client_from(host) as c:
        first = login(c, tenant, user["email"]).json()
        c.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
        with db.tenant_tx(tenant.id) as conn:  # let the grace window pass without sleeping
            conn.execute("update sessions set rotated_at = rotated_at - interval '1 minute' where id = %s", (first["session_id"],))
        assert c.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]}).status_code == 401
    with db.tenant_tx(tenant.id) as conn:
        row = conn.execute("select revoked_reason from sessions where id = %s", (first["session_id"],)).fetchone()
    assert row["revoked_reason"] == "refresh token reused"


@pytest.mark.parametrize("token", ["", "rt.abc", "rt." + "0" * 32 + "." + "0" * 32 + "." + "A" * 43, "x" * 150])
def test_forged_refresh_tokens_are_refused(client: httpx.Client, token: str) -> None:
    resp = client.post("/api/auth/refresh", json={"refresh_token": token})
    assert resp.status_code in (401, 422)
    assert resp.headers["content-type"] == "application/problem+json"


def test_refresh_token_of_another_tenant_is_refused(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant)
    with client_from(host) as c:
        tokens = login(c, tenant, user["email"]).json()
        kind, _, sid, secret = tokens["refresh_token"].split(".")
        swapped = ".".join([kind, uuid.uuid4().hex, sid, secret])
        assert c.post("/api/auth/refresh", json={"refresh_token": swapped}).status_code == 401
        assert c.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 200


# --- sessions -----------------------------------------------------------------------------


@pytest.mark.requirement("21CFR11.10(h)", "21CFR11.300(c)")
def test_sessions_list_and_revoke(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    user = user_with_password(tenant)
    with client_from(host) as c:
        laptop = login(c, tenant, user["email"], ).json()
        phone_resp = c.post("/api/auth/login", json={"tenant": tenant.slug, "email": user["email"], "password": PASSWORD},
                            headers={"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Safari/604.1"})
        phone = phone_resp.json()
        mine = c.get("/api/sessions", headers=auth(laptop["access_token"])).json()["sessions"]
        assert {s["id"] for s in mine} == {laptop["session_id"], phone["session_id"]}
        assert [s["current"] for s in mine if s["id"] == laptop["session_id"]] == [True]
        assert {s["device_label"] for s in mine} >= {"Safari on iOS"}
        text = str(mine)
        assert "refresh" not in text and laptop["refresh_token"] not in text and phone["refresh_token"] not in text

        # an admin sees and revokes; the revoked access token fails on its very next request
        theirs = c.get(f"/api/users/{user['id']}/sessions", headers=auth(admin.token))
        assert theirs.status_code == 200 and len(theirs.json()["sessions"]) == 2
        assert laptop["refresh_token"] not in theirs.text
        assert c.get("/api/me", headers=auth(phone["access_token"])).status_code == 200
        resp = c.delete(f"/api/users/{user['id']}/sessions/{phone['session_id']}", headers=auth(admin.token))
        assert resp.status_code == 204
        assert c.get("/api/me", headers=auth(phone["access_token"])).status_code == 401
        assert c.post("/api/auth/refresh", json={"refresh_token": phone["refresh_token"]}).status_code == 401
        # a user revokes their own other session; not someone else's
        other = user_with_password(tenant)
        other_tokens = login(c, tenant, other["email"]).json()
        assert c.delete(f"/api/sessions/{other_tokens['session_id']}", headers=auth(laptop["access_token"])).status_code == 404
        assert c.get("/api/me", headers=auth(other_tokens["access_token"])).status_code == 200
        # without sessions.manage, no one else's sessions
        assert c.get(f"/api/users/{other['id']}/sessions", headers=auth(laptop["access_token"])).status_code == 403
    revoked = events(tenant.id, "session.revoked")
    assert revoked[-1]["target_id"] == phone["session_id"] and revoked[-1]["actor_id"] == admin.id


def test_operator_sessions_are_not_visible_to_tenant_admins(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, op = make_person(tenant.id, "ADMIN"), make_person(None)
    assert client.get(f"/api/users/{op.id}/sessions", headers=auth(admin.token)).status_code == 404
    assert client.delete(f"/api/users/{op.id}/sessions/{uuid.uuid4()}", headers=auth(admin.token)).status_code == 404


# --- passwords ----------------------------------------------------------------------------


def test_bcrypt_user_is_rehashed_to_argon2id_at_login(host: Host, tenant: Tenant) -> None:
    legacy = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()
    user = user_with_password(tenant, hashed=legacy)
    with client_from(host) as c:
        assert login(c, tenant, user["email"]).status_code == 200
        with db.tenant_tx(tenant.id) as conn:
            stored = conn.execute("select password_hash from users where id = %s", (user["id"],)).fetchone()["password_hash"]
        assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=1$")
        assert login(c, tenant, user["email"]).status_code == 200
        assert login(c, tenant, user["email"], password="wrong-" + PASSWORD).status_code == 401
    assert events(tenant.id, "auth.login_succeeded")[0]["after"]["rehashed"] is True


@pytest.mark.requirement("21CFR11.200(a)(2)")
@pytest.mark.parametrize(("password", "code"), [("short-pw-11", "password_too_short"), ("x" * 129, "password_too_long"),
                                                ("password1234", "password_breached")])
def test_weak_passwords_are_refused_naming_the_rule(host: Host, tenant: Tenant, password: str, code: str) -> None:
    user = user_with_password(tenant)
    from tests.conftest import create_session_row, token_for

    token = token_for(user["id"], tenant.id, "OPERATOR", session_id=create_session_row(tenant.id, user["id"]))
    with client_from(host) as c:
        resp = c.post("/api/auth/password/change", json={"current_password": PASSWORD, "new_password": password},
                  headers=auth(token))
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert [e["code"] for e in resp.json()["errors"]] == [code]
    assert password not in resp.text


@pytest.mark.requirement("21CFR11.300(c)")
def test_password_change_ends_other_sessions(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant)
    new_password = "Another-Quiet-Harbour-" + uuid.uuid4().hex[:6]
    with client_from(host) as c:
        here, there = login(c, tenant, user["email"]).json(), login(c, tenant, user["email"]).json()
        wrong = c.post("/api/auth/password/change", json={"current_password": "nope-" + PASSWORD, "new_password": new_password},
                       headers=auth(here["access_token"]))
        assert wrong.status_code == 401
        resp = c.post("/api/auth/password/change", json={"current_password": PASSWORD, "new_password": new_password},
                      headers=auth(here["access_token"]))
        assert resp.status_code == 200 and resp.json() == {"other_sessions_ended": 1}
        assert c.get("/api/me", headers=auth(here["access_token"])).status_code == 200
        assert c.get("/api/me", headers=auth(there["access_token"])).status_code == 401
        assert login(c, tenant, user["email"]).status_code == 401
        assert login(c, tenant, user["email"], password=new_password).status_code == 200


def test_failed_logins_all_look_alike(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant)
    deactivated = user_with_password(tenant)
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update users set status = 'deactivated', deactivated_at = now() where id = %s", (deactivated["id"],))
    with client_from(host) as c:
        answers = [
            login(c, tenant, user["email"], password="wrong-" + PASSWORD),
            login(c, tenant, "nobody@example.test"),
            login(c, tenant, deactivated["email"]),
            c.post("/api/auth/login", json={"tenant": "no-such-tenant", "email": user["email"], "password": PASSWORD}),
        ]
    bodies = [{k: v for k, v in r.json().items() if k != "request_id"} for r in answers]
    assert [r.status_code for r in answers] == [401] * 4
    assert all(b == bodies[0] for b in bodies)
    reasons = sorted(e["after"]["reason"] for e in events(tenant.id, "auth.login_failed"))
    assert reasons == ["bad_password", "inactive_user", "unknown_user"]
    assert "password" not in str(events(tenant.id, "auth.login_failed")).replace("bad_password", "")


# --- reset --------------------------------------------------------------------------------


def reset_mail_to(tenant_id: str) -> list[str]:
    with db.tenant_tx(tenant_id) as conn:
        return [r["to_address"] for r in conn.execute("select to_address from outbox where kind = 'password_reset'").fetchall()]


def comparable(resp: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    """Everything an observer sees of an answer, less what differs per request anyway."""
    headers = {k: v for k, v in resp.headers.items() if k not in {"x-request-id", "date"}}
    return resp.status_code, resp.content, headers


def test_reset_request_answers_the_same_for_unknown_accounts(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant)
    inactive = create_user(tenant.id, "OPERATOR", status="invited")
    with client_from(host) as c:
        def ask(slug: str, email: str) -> httpx.Response:
            return c.post("/api/auth/password/reset/request", json={"tenant": slug, "email": email})

        known = ask(tenant.slug, user["email"])
        answers = [ask(tenant.slug, "ghost@example.test"), ask("nope-" + tenant.slug, user["email"]),
                   ask(tenant.slug, inactive["email"]), ask(tenant.slug, user["email"].upper())]
        # The request path decided nothing about the account: no code, no mail, no audit yet.
        assert reset_mail_to(tenant.id) == []
        assert events(tenant.id, "auth.password_reset_requested") == []
        assert c.post("/admin/functions/deliver_mail").status_code == 202
    assert known.status_code == 202
    assert all(comparable(a) == comparable(known) for a in answers)
    assert reset_mail_to(tenant.id) == [user["email"], user["email"]]
    requested = events(tenant.id, "auth.password_reset_requested")
    assert [e["request_id"] for e in requested] == [known.headers["x-request-id"], answers[3].headers["x-request-id"]]


@pytest.mark.requirement("21CFR11.300(c)")
def test_reset_by_mail_through_a_real_smtp_server(tenant: Tenant) -> None:
    from aiosmtpd.controller import Controller

    from tests.conftest import free_port

    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
            received.append(envelope)
            return "250 OK"

    port = free_port()
    smtp = Controller(Handler(), hostname="127.0.0.1", port=port)
    smtp.start()
    h = Host(env={"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "SMTP_STARTTLS": "false"})
    try:
        user = user_with_password(tenant)
        new_password = "Reset-Harbour-Lantern-" + uuid.uuid4().hex[:6]
        with client_from(h) as c:
            old = login(c, tenant, user["email"]).json()
            assert c.post("/api/auth/password/reset/request", json={"tenant": tenant.slug, "email": user["email"]}).status_code == 202
            assert c.post("/admin/functions/deliver_mail").status_code == 202
            mine = [e for e in received if e.rcpt_tos == [user["email"]]]  # other tests' mail goes out too
            assert len(mine) == 1
            text = mine[0].content.decode()
            token = re.search(r"pwr\.[0-9a-f]{32}\.[A-Za-z0-9_-]{40,}", text).group(0)
            bad = c.post("/api/auth/password/reset/confirm", json={"token": token, "new_password": "short"})
            assert bad.status_code == 422
            ok = c.post("/api/auth/password/reset/confirm", json={"token": token, "new_password": new_password})
            assert ok.status_code == 204, ok.text
            assert c.post("/api/auth/password/reset/confirm", json={"token": token, "new_password": new_password}).status_code == 400
            assert c.get("/api/me", headers=auth(old["access_token"])).status_code == 401  # every session ended
            assert login(c, tenant, user["email"], password=new_password).status_code == 200
    finally:
        h.stop()
        smtp.stop()


# --- throttling ---------------------------------------------------------------------------


@pytest.mark.requirement("21CFR11.300(d)")
def test_credential_stuffing_is_throttled_but_the_real_user_gets_in(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant)
    attacker_ip, user_ip = (f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{n}" for n in (10, 20))
    with client_from(host, attacker_ip) as attacker:
        statuses = [login(attacker, tenant, user["email"], password=f"guess-{n}-xxxxxxxx").status_code for n in range(12)]
        throttled = login(attacker, tenant, user["email"])  # even the right password, from the attacker's IP
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1
    assert throttled.json()["type"] == "urn:custos:problem:rate-limited"
    with client_from(host, user_ip) as real_user:
        assert login(real_user, tenant, user["email"]).status_code == 200
    # only the five attempts that were not throttled reached the password check
    assert len(events(tenant.id, "auth.login_failed")) == 5
    crossed = events(tenant.id, "security.throttled")
    assert crossed and crossed[0]["after"]["key"] == "email_ip"


def test_parallel_wrong_passwords_from_one_address_reach_the_password_check_at_most_the_threshold(
    host: Host, tenant: Tenant
) -> None:
    user = user_with_password(tenant)
    ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.30"
    n = 30
    start = threading.Barrier(n)

    def guess(i: int) -> int:
        with client_from(host, ip) as c:
            start.wait()
            return login(c, tenant, user["email"], password=f"guess-{i}-xxxxxxxx").status_code

    with ThreadPoolExecutor(max_workers=n) as pool:
        statuses = list(pool.map(guess, range(n)))
    threshold = get_settings().login_threshold_email_ip
    assert set(statuses) <= {401, 429}, statuses
    assert 1 <= statuses.count(401) <= threshold, statuses
    # every guess that was answered 401 reached the password check, and no other did
    assert len(events(tenant.id, "auth.login_failed")) == statuses.count(401)


def test_throttle_expires_by_itself(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant)
    with client_from(host) as c:
        for n in range(5):
            login(c, tenant, user["email"], password=f"guess-{n}-xxxxxxxx")
        blocked = login(c, tenant, user["email"])
        assert blocked.status_code == 429
        time.sleep(int(blocked.headers["retry-after"]) + 0.2)  # the base delay (2 s): no admin needed
        assert login(c, tenant, user["email"]).status_code == 200


@pytest.mark.requirement("21CFR11.200(a)(2)", "21CFR11.200(a)(3)")
def test_admins_trigger_a_reset_but_never_see_a_password(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, manager = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "MANAGER")
    user = user_with_password(tenant)
    other_admin = make_person(tenant.id, "ADMIN")
    new_password = "Admin-Sent-Lantern-" + uuid.uuid4().hex[:6]
    with client_from(host) as c:
        assert c.post(f"/api/users/{user['id']}/password-reset", json={}, headers=auth(admin.token)).status_code == 422
        resp = c.post(f"/api/users/{user['id']}/password-reset", json={"reason": "user locked out, ticket 88"},
                      headers=auth(admin.token))
        assert resp.status_code == 202
        assert PASSWORD not in resp.text and "pwr." not in resp.text  # the code goes to the user only
        assert c.post(f"/api/users/{other_admin.id}/password-reset", json={"reason": "takeover"},
                      headers=auth(manager.token)).status_code == 403  # MANAGER lacks users.update anyway
        assert c.post(f"/api/users/{uuid.uuid4()}/password-reset", json={"reason": "ghost"},
                      headers=auth(admin.token)).status_code == 404
        token = outbox_token(tenant.id, user["email"], "pwr")
        assert c.post("/api/auth/password/reset/confirm", json={"token": token, "new_password": new_password}).status_code == 204
        assert login(c, tenant, user["email"], password=new_password).status_code == 200
    requested = events(tenant.id, "auth.password_reset_requested")[-1]
    assert requested["actor_id"] == admin.id and requested["reason"] == "user locked out, ticket 88"


# --- single sign-on required (docs/sso.md) ---------------------------------------------------------


def _require_sso(tenant: Tenant) -> None:
    from tests.identity.sso.helpers import insert_provider

    insert_provider(tenant.id, required=True)


def test_a_required_provider_refuses_password_sign_in_after_the_password(client: httpx.Client, tenant: Tenant) -> None:
    user = user_with_password(tenant, role="MANAGER")
    _require_sso(tenant)
    r = login(client, tenant, user["email"])
    assert r.status_code == 403 and r.json()["type"] == "urn:custos:problem:sso-required"
    assert login(client, tenant, user["email"], "wrong-" + PASSWORD).json()["type"] == \
        "urn:custos:problem:invalid-credentials"  # no hint without the password
    assert [e["after"] for e in events(tenant.id, "auth.login_refused")] == [{"reason": "sso_required"}]
    with db.tenant_tx(tenant.id) as conn:
        assert conn.execute("select count(*) as n from sessions").fetchone()["n"] == 0


def test_a_break_glass_admin_keeps_password_and_second_factor(client: httpx.Client, tenant: Tenant) -> None:
    admin = user_with_password(tenant, role="ADMIN")  # with a confirmed TOTP
    other_admin = user_with_password(tenant, role="ADMIN")
    bare = create_user(tenant.id, "ADMIN", mfa=False)
    from shared.identity.passwords import hash_password
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update users set password_hash = %s where id = %s", (hash_password(PASSWORD), bare["id"]))
        for u in (admin, bare):
            conn.execute("insert into sso_break_glass (tenant_id, user_id) values (%s, %s)", (tenant.id, u["id"]))
    _require_sso(tenant)
    r = login(client, tenant, admin["email"])
    assert r.status_code == 200 and r.json()["mfa_required"] is True, r.text
    assert login(client, tenant, other_admin["email"]).json()["type"] == "urn:custos:problem:sso-required"
    assert login(client, tenant, bare["email"]).json()["type"] == "urn:custos:problem:sso-required"
    assert sorted(e["after"]["reason"] for e in events(tenant.id, "auth.login_refused")) == [
        "break_glass_without_second_factor", "sso_required"]


def test_a_disabled_or_optional_provider_leaves_password_sign_in_alone(client: httpx.Client, tenant: Tenant) -> None:
    from tests.identity.sso.helpers import insert_provider

    user = user_with_password(tenant, role="MANAGER")
    insert_provider(tenant.id, enabled=True, required=False)
    insert_provider(tenant.id, enabled=False)
    assert login(client, tenant, user["email"]).status_code == 200


def test_an_invitation_opens_no_password_session_when_sso_is_required(host: Host, tenant: Tenant,
                                                                       make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    with client_from(host) as c:
        email = f"new-{uuid.uuid4().hex[:8]}@example.test"
        assert c.post("/api/users", json={"email": email, "role": "OPERATOR", "reason": "new hire"},
                      headers=auth(admin.token)).status_code == 201
        token = outbox_token(tenant.id, email, "inv")
        _require_sso(tenant)
        r = c.post("/api/auth/invitations/accept", json={"token": token, "display_name": "Nia", "password": PASSWORD})
        assert r.status_code == 403 and r.json()["type"] == "urn:custos:problem:sso-required", r.text
    with db.tenant_tx(tenant.id) as conn:
        user = conn.execute("select status, password_hash from users where email = %s", (email,)).fetchone()
        used = conn.execute("select used_at from invitations i join users u on u.id = i.user_id where u.email = %s",
                            (email,)).fetchone()
    assert user == {"status": "invited", "password_hash": None} and used["used_at"] is None
    assert [e["after"] for e in events(tenant.id, "auth.login_refused")] == [{"reason": "sso_required",
                                                                              "via": "invitation"}]
