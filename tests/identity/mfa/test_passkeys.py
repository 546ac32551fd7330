"""Passkeys made by a software authenticator: enrolment, second factor, passwordless sign-in,
counter regression, other users' keys; server-side challenges taken once, expiring, purged."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from shared.core import db
from shared.identity.mfa import passkeys
from shared.tenancy.tenants import Tenant
from tests.conftest import Host, PersonFactory, auth
from tests.identity.mfa.helpers import (
    SOFT_AAGUID,
    SoftAuthenticator,
    code_at,
    password_user,
    problem_type,
    register_passkey,
    second_step,
    ticket_for,
)
from tests.identity.test_signin import client_from, events, login


def test_passkey_enrolment_then_second_factor_and_passwordless(host: Host, tenant: Tenant) -> None:
    admin = password_user(tenant, "ADMIN", mfa_factor=False)
    device = SoftAuthenticator()
    with client_from(host) as c:
        token = login(c, tenant, admin["email"]).json()["access_token"]
        registered = register_passkey(c, token, device, name="Laptop")
        assert registered["passkey"]["name"] == "Laptop" and len(registered["recovery_codes"]) == 10
        assert registered["passkey"]["discoverable"] is True
        assert c.get("/api/users", headers=auth(token)).status_code == 200  # enrolled: no longer blocked
        listed = c.get("/api/mfa/passkeys", headers=auth(token)).json()["passkeys"]
        assert [(k["name"], sorted(k["transports"])) for k in listed] == [("Laptop", ["hybrid", "internal"])]
        assert "public_key" not in str(listed) and device.id not in str(listed)
        renamed = c.patch(f"/api/mfa/passkeys/{listed[0]['id']}", json={"name": "Work laptop"}, headers=auth(token))
        assert renamed.status_code == 200 and renamed.json()["name"] == "Work laptop"

        # as the second factor after the password
        ticket = ticket_for(c, tenant, admin["email"])
        assert ticket["methods"] == ["passkey", "recovery_code"]
        options = c.post("/api/auth/mfa/passkey/options", json={"mfa_ticket": ticket["mfa_ticket"]})
        assert options.status_code == 200, options.text
        o = options.json()
        assert [d["id"] for d in o["options"]["allowCredentials"]] == [device.id]
        resp = second_step(c, ticket["mfa_ticket"], challenge_id=o["challenge_id"], assertion=device.get(o["options"]))
        assert resp.status_code == 200, resp.text
        assert resp.json()["mfa_method"] == "passkey"

        # passwordless, the tenant named by its slug
        options = c.post("/api/auth/passkey/options", json={"tenant": tenant.slug}).json()
        assert options["options"]["allowCredentials"] == [] and options["options"]["userVerification"] == "required"
        assertion = device.get(options["options"])
        signed_in = c.post("/api/auth/passkey/verify", json={"challenge_id": options["challenge_id"], "assertion": assertion})
        assert signed_in.status_code == 200, signed_in.text
        me = c.get("/api/me", headers=auth(signed_in.json()["access_token"]))
        assert me.status_code == 200 and me.json()["user"]["id"] == admin["id"]
        # the same assertion again: its challenge is gone
        replay = c.post("/api/auth/passkey/verify", json={"challenge_id": options["challenge_id"], "assertion": assertion})
        assert replay.status_code == 401 and problem_type(replay) == "mfa-failed"
    with db.tenant_tx(tenant.id) as conn:
        stored = conn.execute("select sign_count, aaguid, last_used_at from webauthn_credentials where user_id = %s",
                              (admin["id"],)).fetchone()
    assert stored["sign_count"] == 2 and stored["aaguid"] == str(uuid.UUID(bytes=SOFT_AAGUID)) and stored["last_used_at"]
    logins = events(tenant.id, "auth.login_succeeded")
    assert [(e["after"].get("mfa"), e["after"].get("passwordless")) for e in logins] == [
        (None, None), ("passkey", None), ("passkey", True)]
    assert [e["action"] for e in events(tenant.id, "mfa.passkey_registered") + events(tenant.id, "mfa.passkey_renamed")] == [
        "mfa.passkey_registered", "mfa.passkey_renamed"]


@pytest.mark.requirement("21CFR11.300(e)")
def test_passkey_counter_regression_is_refused(host: Host, tenant: Tenant) -> None:
    user = password_user(tenant, "ADMIN")
    device = SoftAuthenticator()
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        token = second_step(c, ticket, code=code_at(user["totp_secret"])).json()["access_token"]
        register_passkey(c, token, device)

        def passwordless(**kw: Any) -> httpx.Response:
            o = c.post("/api/auth/passkey/options", json={"tenant": tenant.slug}).json()
            return c.post("/api/auth/passkey/verify",
                          json={"challenge_id": o["challenge_id"], "assertion": device.get(o["options"], **kw)})

        assert passwordless(counter=5).status_code == 200
        cloned = passwordless(counter=3)
        assert cloned.status_code == 401 and "counter" in cloned.json()["detail"]
        assert passwordless(counter=5).status_code == 401  # equal is no better
        assert passwordless(counter=6).status_code == 200
        wrong_origin = passwordless(origin="https://evil.example")
        assert wrong_origin.status_code == 401
        no_uv = passwordless(user_verified=False)  # passwordless needs the PIN or biometric
        assert no_uv.status_code == 401
    regressions = events(tenant.id, "security.passkey_counter_regression")
    assert [(e["after"]["stored"], e["after"]["presented"]) for e in regressions] == [(5, 3), (5, 5)]
    reasons = [e["after"]["reason"] for e in events(tenant.id, "auth.passkey_login_failed")]
    assert reasons == ["sign_count_regression", "sign_count_regression", "invalid_response", "invalid_response"]


def test_passkey_of_another_user_or_tenant_does_not_sign_in(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    from shared.tenancy.tenants import create_tenant

    user = password_user(tenant, "ADMIN")
    device = SoftAuthenticator()
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        token = second_step(c, ticket, code=code_at(user["totp_secret"])).json()["access_token"]
        key_id = register_passkey(c, token, device)["passkey"]["id"]
        # the credential exists only in its own tenant
        o = c.post("/api/auth/passkey/options", json={"tenant": other.slug}).json()
        assert c.post("/api/auth/passkey/verify", json={"challenge_id": o["challenge_id"],
                                                         "assertion": device.get(o["options"])}).status_code == 401
        # an unknown tenant gets options all the same, that never verify
        o = c.post("/api/auth/passkey/options", json={"tenant": "no-such-tenant"})
        assert o.status_code == 200
        assert c.post("/api/auth/passkey/verify", json={"challenge_id": o.json()["challenge_id"],
                                                         "assertion": device.get(o.json()["options"])}).status_code == 401
        # someone else cannot rename or remove it
        stranger = make_person(tenant.id, "OPERATOR")
        assert c.patch(f"/api/mfa/passkeys/{key_id}", json={"name": "mine"}, headers=auth(stranger.token)).status_code == 404
        assert c.delete(f"/api/mfa/passkeys/{key_id}", headers=auth(stranger.token)).status_code == 404
        # a second-factor challenge of one ticket does not serve another ticket
        first, second = (ticket_for(c, tenant, user["email"])["mfa_ticket"] for _ in range(2))
        o = c.post("/api/auth/mfa/passkey/options", json={"mfa_ticket": first}).json()
        crossed = second_step(c, second, challenge_id=o["challenge_id"], assertion=device.get(o["options"]))
        assert crossed.status_code == 401
        # the owner removes it: the TOTP remains, so the role's requirement still holds
        assert c.delete(f"/api/mfa/passkeys/{key_id}", headers=auth(token)).status_code == 204
        assert c.get("/api/mfa/passkeys", headers=auth(token)).json()["passkeys"] == []
    assert [e["after"]["reason"] for e in events(tenant.id, "auth.mfa_failed")] == ["challenge_mismatch"]


def test_challenge_is_taken_once_even_by_racing_requests() -> None:
    challenge = passkeys.new_challenge(purpose="passwordless")
    results: list[str] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        try:
            passkeys.take_challenge(challenge.id, purpose="passwordless")
            results.append("taken")
        except passkeys.ChallengeUnknown:
            results.append("refused")

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused"] * 7 + ["taken"]
    with pytest.raises(passkeys.ChallengeUnknown, match="unknown or used"):
        passkeys.take_challenge(challenge.id, purpose="passwordless")


def test_challenge_expires_and_keeps_its_purpose() -> None:
    old = passkeys.new_challenge(purpose="passwordless", now=time.time() - 3600)
    with pytest.raises(passkeys.ChallengeExpired):
        passkeys.take_challenge(old.id, purpose="passwordless")
    registration = passkeys.new_challenge(purpose="register", tenant_id=str(uuid.uuid4()), user_id=str(uuid.uuid4()))
    with pytest.raises(passkeys.ChallengeMismatch, match="purpose"):
        passkeys.take_challenge(registration.id, purpose="passwordless")
    stale = passkeys.new_challenge(purpose="passwordless", now=time.time() - 3600)
    assert passkeys.purge_expired_challenges() >= 1
    with pytest.raises(passkeys.ChallengeUnknown):
        passkeys.take_challenge(stale.id, purpose="passwordless")


