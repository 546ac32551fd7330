"""An administrator's reset of another user's second factors: reason, audit, mail, sessions."""

from __future__ import annotations

import uuid

from shared.core import db
from shared.tenancy.tenants import Tenant
from tests.conftest import Host, PersonFactory, auth
from tests.identity.mfa.helpers import code_at, password_user, second_step, ticket_for
from tests.identity.test_signin import client_from, events, login


def test_admin_reset_requires_a_reason_is_audited_and_mails_the_user(host: Host, tenant: Tenant,
                                                                      make_person: PersonFactory) -> None:
    admin, manager = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "MANAGER")
    target = password_user(tenant, "REVIEWER")
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, target["email"])["mfa_ticket"]
        session = second_step(c, ticket, code=code_at(target["totp_secret"])).json()
        url = f"/api/users/{target['id']}/mfa/reset"
        assert c.post(url, json={}, headers=auth(admin.token)).status_code == 422
        assert c.post(url, json={"reason": "lost phone"}, headers=auth(manager.token)).status_code == 403
        assert c.post(f"/api/users/{admin.id}/mfa/reset", json={"reason": "self"}, headers=auth(admin.token)).status_code == 403
        assert c.post(f"/api/users/{uuid.uuid4()}/mfa/reset", json={"reason": "x" * 5}, headers=auth(admin.token)).status_code == 404
        resp = c.post(url, json={"reason": "lost phone, ticket 42"}, headers=auth(admin.token))
        assert resp.status_code == 200, resp.text
        assert resp.json()["removed"] == {"totp": True, "passkeys": 0, "recovery_codes": 0}
        assert resp.json()["sessions_ended"] == 1
        assert c.get("/api/me", headers=auth(session["access_token"])).status_code == 401
        again = login(c, tenant, target["email"]).json()
        assert again["mfa_enrolment_required"] is True and "mfa_ticket" not in again
    reset = events(tenant.id, "mfa.factors_reset")
    assert [(e["actor_id"], e["target_id"], e["reason"]) for e in reset] == [(admin.id, target["id"], "lost phone, ticket 42")]
    with db.tenant_tx(tenant.id) as conn:
        mail = conn.execute("select subject, body from outbox where to_address = %s and kind = 'mfa_reset'",
                            (target["email"],)).fetchall()
    assert len(mail) == 1 and "lost phone, ticket 42" in mail[0]["body"] and "enrol" in mail[0]["body"]
