"""Platform operators sign in with a password set through a one-time setup token."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx

from shared import audit, db
from shared.tenants import Tenant
from tests.conftest import ROOT, Host, PersonFactory, auth
from tests.test_auth import client_from

PASSWORD = "Operator-Harbour-Lantern-" + uuid.uuid4().hex[:6]


def _create_operator() -> dict:
    out = subprocess.run([sys.executable, "-m", "shared.cli", "create-operator", "--email", f"ops-{uuid.uuid4().hex[:8]}@custos.test",
                          "--name", "Oona Ops"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_operator_setup_login_work_logout(host: Host) -> None:
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
        op_token = resp.json()["access_token"]
        assert c.get("/api/platform/tenants", headers=auth(op_token)).status_code == 200
        assert c.get("/api/users", headers=auth(op_token)).status_code == 403  # no tenant data
        assert c.post("/api/platform/auth/logout", headers=auth(op_token)).status_code == 204
        assert c.get("/api/platform/tenants", headers=auth(op_token)).status_code == 401
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        actions = [e["action"] for e in audit.list_events(conn, target_id=None, limit=1000)
                   if e["actor_id"] == created["operator"]["id"]]
    assert {"platform.operator_password_set", "platform.operator_login_succeeded", "platform.operator_logout"} <= set(actions)


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
