"""Platform operators sign in with a password set through a one-time setup token."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import pyotp

from shared.audit import chain as audit
from shared.core import db
from shared.identity.passwords import hash_password
from shared.tenancy.tenants import Tenant
from tests.conftest import ROOT, Host, PersonFactory, auth
from tests.identity.mfa.helpers import SoftAuthenticator, problem_type
from tests.identity.test_signin import client_from

PASSWORD = "Operator-Harbour-Lantern-" + uuid.uuid4().hex[:6]


def _create_operator() -> dict:
    out = subprocess.run([sys.executable, "-m", "shared.cli", "create-operator", "--email", f"ops-{uuid.uuid4().hex[:8]}@custos.test",
                          "--name", "Oona Ops"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def operator_ticket(c: httpx.Client, email: str) -> dict[str, Any]:
    """The password step of an operator with a second factor: a ticket, never tokens."""
    resp = c.post("/api/platform/auth/login", json={"email": email, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["mfa_required"] is True and "access_token" not in body, body
    assert body["mfa_ticket"].startswith("opmfa.")
    return body


def enrol_totp(c: httpx.Client, token: str) -> dict[str, Any]:
    """Enrol and confirm a TOTP for the operator of `token`; returns the secret and recovery codes."""
    started = c.post("/api/platform/mfa/totp/enroll", headers=auth(token))
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    confirmed = c.post("/api/platform/mfa/totp/confirm", json={"code": pyotp.TOTP(secret).now()}, headers=auth(token))
    assert confirmed.status_code == 200, confirmed.text
    assert len(confirmed.json()["recovery_codes"]) == 10
    return {"secret": secret, "recovery_codes": confirmed.json()["recovery_codes"]}


def set_password(operator_id: str) -> None:
    with db.platform_tx() as conn:
        conn.execute("update platform_operators set password_hash = %s where id = %s", (hash_password(PASSWORD), operator_id))


def test_operator_setup_login_enrol_work_logout(host: Host) -> None:
    created = _create_operator()
    email, token = created["operator"]["email"], created["setup"]["token"]
    with client_from(host) as c:
        assert c.post("/api/platform/auth/login", json={"email": email, "password": PASSWORD}).status_code == 401
        assert c.post("/api/platform/auth/setup", json={"token": token, "password": "short"}).status_code == 422
        assert c.post("/api/platform/auth/setup", json={"token": token, "password": PASSWORD}).status_code == 204
        again = c.post("/api/platform/auth/setup", json={"token": token, "password": PASSWORD + "x"})
        assert again.status_code == 400  # single use
        resp = c.post("/api/platform/auth/login", json={"email": email.upper(), "password": PASSWORD})
        assert resp.status_code == 200, resp.text
        assert resp.json()["mfa_enrolment_required"] is True
        op_token = resp.json()["access_token"]
        # a password alone reaches enrolment only
        for method, path in (("GET", "/api/platform/tenants"), ("POST", f"/api/platform/tenants/{uuid.uuid4()}/cancel"),
                             ("POST", f"/api/platform/tenants/{uuid.uuid4()}/support-token")):
            refused = c.request(method, path, json={"reason": "password only"}, headers=auth(op_token))
            assert refused.status_code == 403 and problem_type(refused) == "mfa-enrolment-required", refused.text
            assert "/api/platform/mfa/totp/enroll" in refused.json()["detail"]
        assert c.get("/api/platform/mfa", headers=auth(op_token)).json()["enrolment_required"] is True
        secret = enrol_totp(c, op_token)["secret"]
        assert c.get("/api/platform/tenants", headers=auth(op_token)).status_code == 200
        assert c.get("/api/users", headers=auth(op_token)).status_code == 403  # no tenant data
        assert c.post("/api/platform/auth/logout", headers=auth(op_token)).status_code == 204
        assert c.get("/api/platform/tenants", headers=auth(op_token)).status_code == 401
        # from now on a password gives a ticket, not a session
        ticket = operator_ticket(c, email)
        assert "totp" in ticket["methods"] and "recovery_code" in ticket["methods"]
        resp = c.post("/api/platform/auth/mfa/verify", json={"mfa_ticket": ticket["mfa_ticket"],
                                                             "code": pyotp.TOTP(secret).at(time.time() + 30)})
        assert resp.status_code == 200, resp.text
        assert c.get("/api/platform/tenants", headers=auth(resp.json()["access_token"])).status_code == 200
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        actions = [e["action"] for e in audit.list_events(conn, actor_id=created["operator"]["id"], limit=1000)]
    assert {"platform.operator_password_set", "platform.operator_login_succeeded", "platform.operator_logout",
            "mfa.totp_enrolled", "mfa.recovery_codes_issued", "platform.operator_mfa_challenged"} <= set(actions)


def test_operator_login_failures_look_alike_and_are_throttled(host: Host) -> None:
    created = _create_operator()
    email, token = created["operator"]["email"], created["setup"]["token"]
    with client_from(host) as c:
        c.post("/api/platform/auth/setup", json={"token": token, "password": PASSWORD})
        wrong = c.post("/api/platform/auth/login", json={"email": email, "password": "nope-" + PASSWORD})
        unknown = c.post("/api/platform/auth/login", json={"email": "nobody@custos.test", "password": PASSWORD})
        assert wrong.status_code == unknown.status_code == 401
        assert {k: v for k, v in wrong.json().items() if k != "request_id"} == \
               {k: v for k, v in unknown.json().items() if k != "request_id"}
        statuses = [c.post("/api/platform/auth/login", json={"email": email, "password": f"guess-{n}"}).status_code
                    for n in range(6)]
        assert 429 in statuses
    with client_from(host) as elsewhere:
        assert elsewhere.post("/api/platform/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200


def test_forged_setup_tokens_are_refused(host: Host) -> None:
    with client_from(host) as client:
        for token in ("", "ops.abc", "ops." + "0" * 32 + "." + "A" * 43, "inv." + uuid.uuid4().hex + "." + "A" * 43):
            assert client.post("/api/platform/auth/setup", json={"token": token, "password": PASSWORD}).status_code in (400, 422)


def test_operator_token_without_a_live_session_is_refused(client: httpx.Client, make_person: PersonFactory,
                                                          tenant: Tenant) -> None:
    from tests.conftest import token_for

    op = make_person(None)
    assert client.get("/api/platform/tenants", headers=auth(op.token)).status_code == 200
    made_up = token_for(op.id, None, "PLATFORM_OPERATOR", session_id=str(uuid.uuid4()))
    assert client.get("/api/platform/tenants", headers=auth(made_up)).status_code == 401
    # a tenant admin can neither see nor end an operator's sessions
    admin = make_person(tenant.id, "ADMIN")
    assert client.get(f"/api/users/{op.id}/sessions", headers=auth(admin.token)).status_code == 404


def test_operator_totp_code_and_recovery_code_work_once(host: Host, make_person: PersonFactory) -> None:
    op = make_person(None)
    assert op.totp_secret is not None
    set_password(op.id)
    with client_from(host) as c:
        codes = c.post("/api/platform/mfa/recovery-codes", json={}, headers=auth(op.token))
        assert codes.status_code == 200, codes.text  # the fixture session proved its TOTP just now
        recovery = codes.json()["recovery_codes"]
        code = pyotp.TOTP(op.totp_secret).now()
        first = c.post("/api/platform/auth/mfa/verify", json={"mfa_ticket": operator_ticket(c, op.email)["mfa_ticket"],
                                                              "code": code})
        assert first.status_code == 200, first.text
        ticket = operator_ticket(c, op.email)["mfa_ticket"]
        replay = c.post("/api/platform/auth/mfa/verify", json={"mfa_ticket": ticket, "code": code})
        assert replay.status_code == 401 and problem_type(replay) == "mfa-failed"
        assert "already used" in replay.json()["detail"]
        # an operator ticket is no tenant ticket, and the ticket survives a wrong factor
        assert problem_type(c.post("/api/auth/mfa/verify", json={"mfa_ticket": ticket, "recovery_code": recovery[0]})) \
            == "mfa-ticket-invalid"
        spent = c.post("/api/platform/auth/mfa/verify", json={"mfa_ticket": ticket, "recovery_code": recovery[0].upper()})
        assert spent.status_code == 200, spent.text
        assert spent.json()["recovery_codes_remaining"] == 9 and spent.json()["mfa_method"] == "recovery_code"
        again = c.post("/api/platform/auth/mfa/verify", json={"mfa_ticket": operator_ticket(c, op.email)["mfa_ticket"],
                                                              "recovery_code": recovery[0]})
        assert again.status_code == 401 and problem_type(again) == "mfa-failed"


def test_tenant_user_tickets_do_not_open_operator_sessions(host: Host, tenant: Tenant) -> None:
    from tests.identity.mfa.helpers import password_user, ticket_for

    user = password_user(tenant, "ADMIN")
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        code = pyotp.TOTP(user["totp_secret"]).now()
        forged_kind = "opmfa." + ticket.split(".", 1)[1]
        for presented in (ticket, forged_kind):
            resp = c.post("/api/platform/auth/mfa/verify", json={"mfa_ticket": presented, "code": code})
            assert resp.status_code == 401 and problem_type(resp) == "mfa-ticket-invalid", resp.text


def test_operator_signs_in_with_a_passkey(host: Host, make_person: PersonFactory) -> None:
    op = make_person(None)
    set_password(op.id)
    device = SoftAuthenticator()
    with client_from(host) as c:
        options = c.post("/api/platform/mfa/passkeys/registration/options", headers=auth(op.token))
        assert options.status_code == 200, options.text
        body = options.json()
        registered = c.post("/api/platform/mfa/passkeys/registration/verify", headers=auth(op.token),
                            json={"challenge_id": body["challenge_id"], "credential": device.create(body["options"])})
        assert registered.status_code == 201, registered.text
        assert c.get("/api/platform/mfa", headers=auth(op.token)).json()["passkeys"][0]["id"] == \
            registered.json()["passkey"]["id"]
        ticket = operator_ticket(c, op.email)
        assert "passkey" in ticket["methods"]
        # the tenant users' passkey endpoint does not know operator tickets
        assert problem_type(c.post("/api/auth/mfa/passkey/options", json={"mfa_ticket": ticket["mfa_ticket"]})) \
            == "mfa-ticket-invalid"
        opts = c.post("/api/platform/auth/mfa/passkey/options", json={"mfa_ticket": ticket["mfa_ticket"]})
        assert opts.status_code == 200, opts.text
        assert [x["id"] for x in opts.json()["options"]["allowCredentials"]] == [device.id]
        assertion = device.get(opts.json()["options"])
        resp = c.post("/api/platform/auth/mfa/verify", json={"mfa_ticket": ticket["mfa_ticket"],
                                                             "challenge_id": opts.json()["challenge_id"],
                                                             "assertion": assertion})
        assert resp.status_code == 200, resp.text
        assert resp.json()["mfa_method"] == "passkey"
        # the same assertion again, and a signature counter that did not grow, are refused
        ticket = operator_ticket(c, op.email)
        replayed = c.post("/api/platform/auth/mfa/verify", json={"mfa_ticket": ticket["mfa_ticket"],
                                                                 "challenge_id": opts.json()["challenge_id"],
                                                                 "assertion": assertion})
        assert replayed.status_code == 401 and problem_type(replayed) == "mfa-failed"
        again = c.post("/api/platform/auth/mfa/passkey/options", json={"mfa_ticket": ticket["mfa_ticket"]}).json()
        cloned = c.post("/api/platform/auth/mfa/verify", json={
            "mfa_ticket": ticket["mfa_ticket"], "challenge_id": again["challenge_id"],
            "assertion": device.get(again["options"], counter=device.counter)})
        assert cloned.status_code == 401 and "counter" in cloned.json()["detail"]
        assert c.get("/api/platform/tenants", headers=auth(resp.json()["access_token"])).status_code == 200


def test_cancel_and_support_token_need_a_recent_second_factor(host: Host, tenant: Tenant,
                                                              make_person: PersonFactory) -> None:
    admin, op = make_person(tenant.id, "ADMIN"), make_person(None)
    assert op.totp_secret is not None
    with client_from(host) as c:
        grant = {"operator_email": op.email, "hours": 2, "reason": "ticket 4712"}
        assert c.post("/api/support-access", json=grant, headers=auth(admin.token)).status_code == 201
        with db.platform_tx() as conn:  # the sign-in's proof is an hour old
            conn.execute("update operator_sessions set mfa_verified_at = now() - interval '1 hour' where operator_id = %s",
                         (op.id,))
        cancel = f"/api/platform/tenants/{tenant.id}/cancel"
        support = f"/api/platform/tenants/{tenant.id}/support-token"
        for path in (cancel, support):
            refused = c.post(path, json={"reason": "contract ended"}, headers=auth(op.token))
            assert refused.status_code == 403 and problem_type(refused) == "mfa-step-up-required", refused.text
        assert c.get(f"/api/platform/tenants?x={uuid.uuid4()}", headers=auth(op.token)).status_code == 200
        wrong = c.post("/api/platform/auth/step-up", json={"code": "000000"}, headers=auth(op.token))
        assert wrong.status_code == 400 and problem_type(wrong) == "mfa-code-invalid"
        assert problem_type(c.post(cancel, json={"reason": "contract ended"}, headers=auth(op.token))) \
            == "mfa-step-up-required"
        code = pyotp.TOTP(op.totp_secret).now()
        stepped = c.post("/api/platform/auth/step-up", json={"code": code}, headers=auth(op.token))
        assert stepped.status_code == 200, stepped.text
        replay = c.post("/api/platform/auth/step-up", json={"code": code}, headers=auth(op.token))
        assert replay.status_code == 400 and problem_type(replay) == "mfa-code-invalid"
        token = c.post(support, headers=auth(op.token))
        assert token.status_code == 200, token.text
        done = c.post(cancel, json={"reason": "contract ended"}, headers=auth(op.token))
        assert done.status_code == 200 and done.json()["status"] == "CANCELLED", done.text
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        actions = [e["action"] for e in audit.list_events(conn, actor_id=op.id, limit=1000)]
    assert {"mfa.step_up", "mfa.step_up_failed"} <= set(actions)


def test_operator_factor_tables_are_platform_tables_with_narrow_grants() -> None:
    with db.platform_tx() as conn:
        rows = conn.execute(
            """select c.relname, c.relrowsecurity,
                      has_table_privilege('custos_app_rw', c.oid, 'SELECT, INSERT, UPDATE, DELETE') as rw,
                      has_table_privilege('custos_app_rw', c.oid, 'TRUNCATE, REFERENCES, TRIGGER') as more,
                      exists(select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id') as tenant_col
                 from pg_class c where c.relname in ('operator_mfa_totp', 'operator_mfa_recovery_codes',
                                                     'operator_webauthn_credentials', 'operator_mfa_tickets')""",
        ).fetchall()
        session_columns = {r["attname"] for r in conn.execute(
            """select a.attname from pg_attribute a where a.attrelid = 'operator_sessions'::regclass and a.attnum > 0
                  and has_column_privilege('custos_app_rw', a.attrelid, a.attnum, 'UPDATE')""").fetchall()}
        operator_columns = {r["attname"] for r in conn.execute(
            """select a.attname from pg_attribute a where a.attrelid = 'platform_operators'::regclass and a.attnum > 0
                  and has_column_privilege('custos_app_rw', a.attrelid, a.attnum, 'UPDATE')""").fetchall()}
    assert len(rows) == 4
    assert all(r["rw"] and not r["more"] and not r["relrowsecurity"] and not r["tenant_col"] for r in rows), rows
    assert session_columns == {"revoked_at", "revoked_reason", "last_seen_at", "mfa_verified_at", "mfa_method"}
    assert "email" not in operator_columns and "status" not in operator_columns
