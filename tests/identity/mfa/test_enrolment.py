"""Self-service enrolment and enforcement: roles that must have a factor can only enrol, the
tenant setting for every role, changing factors needs a recent second factor."""

from __future__ import annotations

import base64

from shared.core import db
from shared.tenancy.tenants import Tenant
from tests.conftest import Host, PersonFactory, auth
from tests.identity.mfa.helpers import code_at, password_user, problem_type, second_step, ticket_for
from tests.identity.test_signin import client_from, events, login


def test_admin_without_a_factor_can_only_enrol(host: Host, tenant: Tenant) -> None:
    admin = password_user(tenant, "ADMIN", mfa_factor=False)
    with client_from(host) as c:
        resp = login(c, tenant, admin["email"])
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["mfa_enrolment_required"] is True and "mfa_ticket" not in body
        token = body["access_token"]
        blocked = c.get("/api/users", headers=auth(token))
        assert blocked.status_code == 403 and problem_type(blocked) == "mfa-enrolment-required"
        assert c.get("/api/tenant", headers=auth(token)).status_code == 403
        assert c.get("/api/me", headers=auth(token)).status_code == 200
        assert c.get("/api/mfa", headers=auth(token)).json()["enrolment_required"] is True

        enrol = c.post("/api/mfa/totp/enroll", headers=auth(token))
        assert enrol.status_code == 200, enrol.text
        e = enrol.json()
        assert len(base64.b32decode(e["secret"])) == 20
        assert e["otpauth_uri"].startswith("otpauth://totp/") and f"secret={e['secret']}" in e["otpauth_uri"]
        assert "issuer=Custos" in e["otpauth_uri"] and e["qr_svg"].startswith("<svg xmlns=")
        assert c.get("/api/users", headers=auth(token)).status_code == 403  # pending is not enrolled
        wrong = c.post("/api/mfa/totp/confirm", json={"code": f"{(int(code_at(e['secret'])) + 1) % 10**6:06d}"},
                       headers=auth(token))
        assert wrong.status_code == 400 and problem_type(wrong) == "mfa-code-invalid"
        confirmed = c.post("/api/mfa/totp/confirm", json={"code": code_at(e["secret"])}, headers=auth(token))
        assert confirmed.status_code == 200, confirmed.text
        codes = confirmed.json()["recovery_codes"]
        assert len(codes) == 10 and len(set(codes)) == 10
        assert c.get("/api/users", headers=auth(token)).status_code == 200  # the very next request
        # the next sign-in asks for the new factor
        assert ticket_for(c, tenant, admin["email"])["methods"] == ["totp", "recovery_code"]
        # the last factor of a role that requires one cannot be removed
        removal = c.delete("/api/mfa/totp", headers=auth(token))
        assert removal.status_code == 409 and problem_type(removal) == "mfa-last-factor"
        assert c.post("/api/auth/logout", headers=auth(token)).status_code == 204
    with db.tenant_tx(tenant.id) as conn:
        stored = conn.execute("select code_hash from mfa_recovery_codes where user_id = %s", (admin["id"],)).fetchall()
    assert len(stored) == 10 and not any(code.replace("-", "") in str(stored) for code in codes)
    actions = [e["action"] for e in events(tenant.id, "mfa.totp_enrolment_started") + events(tenant.id, "mfa.totp_confirm_failed")
               + events(tenant.id, "mfa.totp_enrolled") + events(tenant.id, "mfa.recovery_codes_issued")]
    assert actions == ["mfa.totp_enrolment_started", "mfa.totp_confirm_failed", "mfa.totp_enrolled",
                       "mfa.recovery_codes_issued"]


def test_logout_is_allowed_while_enrolment_is_pending(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    reviewer = make_person(tenant.id, "REVIEWER", mfa=False)
    with client_from(host) as c:
        assert problem_type(c.get("/api/audit", headers=auth(reviewer.token))) == "mfa-enrolment-required"
        assert c.post("/api/auth/logout", headers=auth(reviewer.token)).status_code == 204
        assert c.get("/api/me", headers=auth(reviewer.token)).status_code == 401


def test_tenant_setting_requires_a_factor_of_every_role(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, viewer = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "VIEWER")
    operator = password_user(tenant, "OPERATOR")
    with client_from(host) as c:
        assert c.get("/api/sessions", headers=auth(viewer.token)).status_code == 200
        plain = login(c, tenant, operator["email"]).json()
        assert "access_token" in plain and "mfa_enrolment_required" not in plain
        put = c.put("/api/tenant/settings/mfa.required_for_all_roles", json={"value": True, "reason": "policy"},
                    headers=auth(admin.token))
        assert put.status_code == 200, put.text
        assert problem_type(c.get("/api/sessions", headers=auth(viewer.token))) == "mfa-enrolment-required"
        assert c.get("/api/me", headers=auth(viewer.token)).status_code == 200
        assert login(c, tenant, operator["email"]).json()["mfa_enrolment_required"] is True


def test_operator_may_enrol_and_remove_a_factor_when_not_required(host: Host, tenant: Tenant) -> None:
    user = password_user(tenant, "OPERATOR")
    with client_from(host) as c:
        token = login(c, tenant, user["email"]).json()["access_token"]
        secret = c.post("/api/mfa/totp/enroll", headers=auth(token)).json()["secret"]
        assert c.post("/api/mfa/totp/confirm", json={"code": code_at(secret)}, headers=auth(token)).status_code == 200
        assert ticket_for(c, tenant, user["email"])["methods"] == ["totp", "recovery_code"]
        assert c.delete("/api/mfa/totp", headers=auth(token)).status_code == 204
        assert "access_token" in login(c, tenant, user["email"]).json()  # no factor, no second step
        assert c.get("/api/mfa", headers=auth(token)).json()["recovery_codes_remaining"] == 0
    removed = events(tenant.id, "mfa.totp_removed")
    assert [e["after"]["recovery_codes_voided"] for e in removed] == [10]


def test_changing_factors_needs_a_recent_second_factor(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    stale = make_person(tenant.id, "ADMIN")  # has a TOTP; its session never proved it
    user = password_user(tenant, "ADMIN")
    with client_from(host) as c:
        for method, path in (("POST", "/api/mfa/totp/enroll"), ("POST", "/api/mfa/passkeys/registration/options"),
                             ("DELETE", "/api/mfa/totp")):
            resp = c.request(method, path, headers=auth(stale.token))
            assert resp.status_code == 403 and problem_type(resp) == "mfa-step-up-required", (path, resp.text)
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        fresh = second_step(c, ticket, code=code_at(user["totp_secret"])).json()
        assert c.post("/api/mfa/totp/enroll", headers=auth(fresh["access_token"])).status_code == 200
        with db.tenant_tx(tenant.id) as conn:  # sixteen minutes pass
            conn.execute("update sessions set mfa_verified_at = mfa_verified_at - interval '16 minutes' where id = %s",
                         (fresh["session_id"],))
        late = c.post("/api/mfa/totp/enroll", headers=auth(fresh["access_token"]))
        assert late.status_code == 403 and problem_type(late) == "mfa-step-up-required"
