"""The two-step sign-in with TOTP: tickets, replay, forged tickets, one factor per attempt,
throttling. Through the real host; each test's client has its own IP."""

from __future__ import annotations

import uuid

import httpx
import pytest

from shared.core import db
from shared.tenancy.tenants import Tenant
from tests.conftest import Host, auth
from tests.identity.mfa.helpers import code_at, password_user, problem_type, second_step, ticket_for
from tests.identity.test_signin import client_from, events


def test_login_with_totp_and_replay_refused(host: Host, tenant: Tenant) -> None:
    user = password_user(tenant, "ADMIN")
    with client_from(host) as c:
        first = ticket_for(c, tenant, user["email"], remember_me=True)
        assert first["methods"] == ["totp"] and first["expires_in"] == 300
        assert first["mfa_ticket"].startswith(f"mfa.{uuid.UUID(tenant.id).hex}.")
        code = code_at(user["totp_secret"])
        ok = second_step(c, first["mfa_ticket"], code=code)
        assert ok.status_code == 200, ok.text
        tokens = ok.json()
        assert tokens["mfa_method"] == "totp" and tokens["expires_in"] == 900
        assert c.get("/api/users", headers=auth(tokens["access_token"])).status_code == 200
        # the ticket is single-use
        again = second_step(c, first["mfa_ticket"], code=code_at(user["totp_secret"], 30))
        assert again.status_code == 401 and problem_type(again) == "mfa-ticket-invalid"
        # the same code on a new ticket: refused, it was used
        second = ticket_for(c, tenant, user["email"])
        replay = second_step(c, second["mfa_ticket"], code=code)
        assert replay.status_code == 401 and problem_type(replay) == "mfa-failed"
        assert "already used" in replay.json()["detail"]
        # the next step's code works
        assert second_step(c, second["mfa_ticket"], code=code_at(user["totp_secret"], 30)).status_code == 200
    with db.tenant_tx(tenant.id) as conn:
        session = conn.execute("select remember_me, mfa_method, mfa_verified_at from sessions where id = %s",
                               (tokens["session_id"],)).fetchone()
    assert session["remember_me"] is True and session["mfa_method"] == "totp" and session["mfa_verified_at"]
    assert [e["after"]["methods"] for e in events(tenant.id, "auth.mfa_challenged")] == [["totp"], ["totp"]]
    assert [e["after"]["mfa"] for e in events(tenant.id, "auth.login_succeeded")] == ["totp", "totp"]
    assert [e["after"]["reason"] for e in events(tenant.id, "auth.mfa_failed")] == ["code_reused"]


def test_ticket_expires(host: Host, tenant: Tenant) -> None:
    user = password_user(tenant, "REVIEWER")
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        with db.tenant_tx(tenant.id) as conn:  # five minutes pass, without sleeping
            conn.execute("""update mfa_tickets set created_at = created_at - interval '6 minutes',
                                   expires_at = expires_at - interval '6 minutes' where user_id = %s""", (user["id"],))
        resp = second_step(c, ticket, code=code_at(user["totp_secret"]))
        assert resp.status_code == 401 and problem_type(resp) == "mfa-ticket-invalid"
        assert events(tenant.id, "auth.login_succeeded") == []


@pytest.mark.parametrize("ticket", ["", "mfa.abc", "mfa." + "0" * 32 + "." + "A" * 43, "rt." + "0" * 32 + "." + "A" * 43])
def test_forged_tickets_are_refused(host: Host, ticket: str) -> None:
    with client_from(host) as c:
        resp = c.post("/api/auth/mfa/verify", json={"mfa_ticket": ticket or "x", "code": "123456"})
    assert resp.status_code == 401 and problem_type(resp) == "mfa-ticket-invalid"


def test_exactly_one_factor_per_attempt(client: httpx.Client) -> None:
    resp = client.post("/api/auth/mfa/verify", json={"mfa_ticket": "x", "code": "123456", "recovery_code": "a" * 16})
    assert resp.status_code == 422
    resp = client.post("/api/auth/mfa/verify", json={"mfa_ticket": "x", "assertion": {}})
    assert resp.status_code == 422


def test_wrong_codes_are_throttled(host: Host, tenant: Tenant) -> None:
    user = password_user(tenant, "ADMIN")
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        right = code_at(user["totp_secret"])
        wrong = f"{(int(right) + 500_000) % 1_000_000:06d}"
        statuses = [second_step(c, ticket, code=wrong).status_code for _ in range(6)]
        throttled = second_step(c, ticket, code=right)
    assert statuses[:5] == [401] * 5 and statuses[5] == 429
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    assert problem_type(throttled) == "rate-limited"
    assert len(events(tenant.id, "auth.mfa_failed")) == 5
    assert any(e["after"]["family"] == "mfa" and e["after"]["key"] == "email_ip"
               for e in events(tenant.id, "security.throttled"))
