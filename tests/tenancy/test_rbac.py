"""Roles, designations, overrides and the guarded edits, through the real host."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid
from typing import Any

import httpx
import pytest

from shared.audit import chain as audit
from shared.core import db
from shared.tenancy.rbac import PERMISSIONS, ROLE_PERMISSIONS, Role, effective_permissions
from shared.tenancy.tenants import Tenant
from tests.conftest import ROOT, Person, PersonFactory, auth, token_for


def events(tenant_id: str, action: str) -> list[dict[str, Any]]:
    with db.tenant_tx(tenant_id) as conn:
        return audit.list_events(conn, action=action)


def patch_user(client: httpx.Client, actor: Person, target_id: str, **body: Any) -> httpx.Response:
    return client.patch(f"/api/users/{target_id}", json={"reason": "access review", **body}, headers=auth(actor.token))


# --- the model ----------------------------------------------------------------------------


def test_deny_wins_over_role_designation_and_grant() -> None:
    perms = effective_permissions("MANAGER", {"audit.export"}, {"audit.export", "records.read"}, {"audit.export", "records.read"})
    assert "audit.export" not in perms and "records.read" not in perms
    assert "users.invite" in perms


def test_unknown_permissions_never_become_effective() -> None:
    assert "root.everything" not in effective_permissions("VIEWER", {"root.everything"}, {"root.everything"}, set())


def test_readme_role_table_matches_code() -> None:
    readme = (ROOT / "README.md").read_text()
    lines = readme.split("<!-- roles:start -->")[1].split("<!-- roles:end -->")[0].strip().splitlines()
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header[0] == "Permission" and header[1:-1] == [r.value for r in Role]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        table[cells[0].strip("`")] = {role for role, cell in zip(header[1:-1], cells[1:-1], strict=True) if cell == "✓"}
    assert set(table) == set(PERMISSIONS)
    for permission, roles in table.items():
        assert roles == {r.value for r in Role if permission in ROLE_PERMISSIONS[r]}, permission


# --- /api/me, designations, overrides -------------------------------------------------------------


def test_me_shows_role_designations_and_effective_permissions(
    client: httpx.Client, tenant: Tenant, make_person: PersonFactory
) -> None:
    admin, viewer = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "VIEWER")
    d = client.post("/api/designations", json={"name": "QA Lead", "permissions": ["audit.read"], "reason": "QA needs audit"},
                    headers=auth(admin.token))
    assert d.status_code == 201, d.text
    assert client.get("/api/audit", headers=auth(viewer.token)).status_code == 403
    assert patch_user(client, admin, viewer.id, designations=[d.json()["id"]]).status_code == 200
    me = client.get("/api/me", headers=auth(viewer.token)).json()
    assert me["role"] == "VIEWER"
    assert [x["name"] for x in me["designations"]] == ["QA Lead"]
    assert set(me["permissions"]) == {"records.read", "audit.read"}
    assert client.get("/api/audit", headers=auth(viewer.token)).status_code == 200
    # deleting the designation takes the permission away on the next request
    assert client.delete(f"/api/designations/{d.json()['id']}", params={"reason": "reorg"}, headers=auth(admin.token)).status_code == 204
    assert client.get("/api/audit", headers=auth(viewer.token)).status_code == 403
    deleted = events(tenant.id, "designation.deleted")[-1]
    assert deleted["before"]["holders"] == [viewer.id] and deleted["reason"] == "reorg"


def test_deny_override_beats_role(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, manager = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "MANAGER")
    assert client.get("/api/users", headers=auth(manager.token)).status_code == 200
    resp = client.put(f"/api/users/{manager.id}/overrides",
                      json={"overrides": [{"permission": "users.read", "effect": "deny"}], "reason": "least privilege"},
                      headers=auth(admin.token))
    assert resp.status_code == 200, resp.text
    assert client.get("/api/users", headers=auth(manager.token)).status_code == 403
    changed = events(tenant.id, "user.overrides_changed")[-1]
    assert changed["before"] == {} and changed["after"] == {"users.read": "deny"}


def test_grant_override_adds_a_permission(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, viewer = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "VIEWER")
    client.put(f"/api/users/{viewer.id}/overrides", json={"overrides": [{"permission": "users.read", "effect": "grant"}],
               "reason": "directory access"}, headers=auth(admin.token))
    assert client.get("/api/users", headers=auth(viewer.token)).status_code == 200


def test_overrides_reject_unknown_and_duplicate_permissions(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, viewer = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "VIEWER")
    for overrides in ([{"permission": "root.all", "effect": "grant"}],
                      [{"permission": "users.read", "effect": "grant"}, {"permission": "users.read", "effect": "deny"}],
                      [{"permission": "users.read", "effect": "maybe"}]):
        resp = client.put(f"/api/users/{viewer.id}/overrides", json={"overrides": overrides, "reason": "x" * 5},
                          headers=auth(admin.token))
        assert resp.status_code == 422, resp.text


# --- guarded edits ------------------------------------------------------------------------


@pytest.mark.requirement("21CFR11.10(g)")
def test_nobody_grants_a_permission_they_do_not_hold(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, manager, viewer = (make_person(tenant.id, r) for r in ("ADMIN", "MANAGER", "VIEWER"))
    # MANAGER may invite, but not as REVIEWER (signatures.review/approve are not theirs)
    resp = client.post("/api/users", json={"email": "rev@example.test", "role": "REVIEWER", "reason": "new hire"},
                       headers=auth(manager.token))
    assert resp.status_code == 403 and "signatures.approve" in resp.json()["detail"]
    ok = client.post("/api/users", json={"email": "view@example.test", "role": "VIEWER", "reason": "new hire"},
                     headers=auth(manager.token))
    assert ok.status_code == 201
    # a designation holding a permission the creator lacks is refused; so is granting it by override
    client.put(f"/api/users/{manager.id}/overrides", json={"overrides": [{"permission": "designations.manage", "effect": "grant"},
               {"permission": "overrides.manage", "effect": "grant"}], "reason": "delegation"}, headers=auth(admin.token))
    resp = client.post("/api/designations", json={"name": "Approver", "permissions": ["signatures.approve"], "reason": "x" * 5},
                       headers=auth(manager.token))
    assert resp.status_code == 403
    resp = client.put(f"/api/users/{viewer.id}/overrides", json={"overrides": [{"permission": "audit.export", "effect": "grant"}],
                      "reason": "sneaky"}, headers=auth(manager.token))
    assert resp.status_code == 403


def test_only_an_admin_makes_an_admin(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, manager, viewer = (make_person(tenant.id, r) for r in ("ADMIN", "MANAGER", "VIEWER"))
    every = [{"permission": p, "effect": "grant"} for p in PERMISSIONS]
    assert client.put(f"/api/users/{manager.id}/overrides", json={"overrides": every, "reason": "deputy"},
                      headers=auth(admin.token)).status_code == 200
    resp = patch_user(client, manager, viewer.id, role="ADMIN")
    assert resp.status_code == 403 and "only an ADMIN" in resp.json()["detail"]
    assert patch_user(client, manager, admin.id, role="VIEWER").status_code == 403  # nor unmakes one
    resp = patch_user(client, admin, viewer.id, role="ADMIN")
    assert resp.status_code == 200 and resp.json()["role"] == "ADMIN"
    changed = events(tenant.id, "user.role_changed")[-1]
    assert (changed["before"], changed["after"], changed["reason"]) == ({"role": "VIEWER"}, {"role": "ADMIN"}, "access review")
    assert changed["actor_id"] == admin.id


def test_a_user_cannot_change_their_own_role(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    make_person(tenant.id, "ADMIN")
    admin = make_person(tenant.id, "ADMIN")
    resp = patch_user(client, admin, admin.id, role="VIEWER")
    assert resp.status_code == 403 and "own role" in resp.json()["detail"]
    assert patch_user(client, admin, admin.id, display_name="New Name").status_code == 200


def test_last_active_admin_cannot_be_deactivated(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    resp = client.post(f"/api/users/{admin.id}/deactivate", json={"reason": "leaving"}, headers=auth(admin.token))
    assert resp.status_code == 409 and "last active ADMIN" in resp.json()["detail"]


def test_two_admins_removing_each_other_leave_one(client: httpx.Client, make_person: PersonFactory) -> None:
    """Raced several times: neither a deadlock (the admin rows are locked in one order) nor two
    winners (the second sees the first one's change)."""
    from tests.conftest import create_tenant

    for _ in range(6):
        with db.platform_tx() as conn:
            tenant = create_tenant(conn, slug=f"race-{uuid.uuid4().hex[:10]}", name="Race", region="uksouth")
        a, b = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "ADMIN")
        results: list[int] = []
        refusals: list[str] = []

        def deactivate(actor: Person, target: Person, results: list[int] = results, refusals: list[str] = refusals) -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
                resp = c.post(f"/api/users/{target.id}/deactivate", json={"reason": "coup"}, headers=auth(actor.token))
                results.append(resp.status_code)
                if resp.status_code == 409:
                    refusals.append(resp.json()["detail"])

        threads = [threading.Thread(target=deactivate, args=pair) for pair in ((a, b), (b, a))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) in ([200, 401], [200, 409])
        assert all("last active ADMIN" in r for r in refusals), refusals  # not a deadlock victim
        with db.tenant_tx(tenant.id) as conn:
            active = conn.execute("select count(*) as n from users where role = 'ADMIN' and status = 'active'").fetchone()["n"]
        assert active == 1


@pytest.mark.requirement("21CFR11.100(a)", "21CFR11.300(c)", "21CFR11.10(d)")
def test_deactivation_takes_effect_on_the_next_request(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, viewer = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "VIEWER")
    assert client.get("/api/me", headers=auth(viewer.token)).status_code == 200
    resp = client.post(f"/api/users/{viewer.id}/deactivate", json={"reason": "left the company"}, headers=auth(admin.token))
    assert resp.status_code == 200 and resp.json()["status"] == "deactivated"
    assert client.get("/api/me", headers=auth(viewer.token)).status_code == 401
    ev = events(tenant.id, "user.deactivated")[-1]
    assert (ev["before"], ev["after"], ev["reason"]) == ({"status": "active"}, {"status": "deactivated"}, "left the company")
    assert patch_user(client, admin, viewer.id, display_name="Ghost").status_code == 409


def test_role_change_takes_effect_on_the_next_request(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, manager = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "MANAGER")
    assert client.get("/api/users", headers=auth(manager.token)).status_code == 200
    assert patch_user(client, admin, manager.id, role="VIEWER").status_code == 200
    assert client.get("/api/users", headers=auth(manager.token)).status_code == 403


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "no"}, {"role": "VIEWER"}, {"role": "GOD", "reason": "because"},
                                  {"reason": "because", "tenant_id": "x"}])
def test_edits_require_a_reason_and_valid_fields(client: httpx.Client, tenant: Tenant, make_person: PersonFactory, body: dict) -> None:
    admin, viewer = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "VIEWER")
    resp = client.patch(f"/api/users/{viewer.id}", json=body, headers=auth(admin.token))
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"


@pytest.mark.requirement("21CFR11.300(a)", "21CFR11.100(a)")
def test_invite_and_list_users(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    for n in range(3):
        resp = client.post("/api/users", json={"email": f" Person{n}@Example.TEST ", "role": "VIEWER", "reason": "team growth"},
                           headers=auth(admin.token))
        assert resp.status_code == 201, resp.text
        assert resp.json()["user"]["email"] == f"person{n}@example.test"
        assert resp.json()["user"]["status"] == "invited"
        assert "token" not in json.dumps(resp.json())
    dup = client.post("/api/users", json={"email": "person0@example.test", "role": "VIEWER", "reason": "again"},
                      headers=auth(admin.token))
    assert dup.status_code == 409
    bad = client.post("/api/users", json={"email": "not an email", "role": "VIEWER", "reason": "typo"}, headers=auth(admin.token))
    assert bad.status_code == 422
    seen, after = [], None
    while True:
        page = client.get("/api/users", params={"limit": 2, **({"after": after} if after else {})}, headers=auth(admin.token)).json()
        seen += [u["email"] for u in page["users"]]
        after = page["next"]
        if not after:
            break
    assert seen == sorted(seen) and len(seen) == 4
    assert client.get("/api/users", params={"after": "garbage!"}, headers=auth(admin.token)).status_code == 422
    invited = events(tenant.id, "user.invited")
    assert [e["after"]["email"] for e in invited] == [f"person{n}@example.test" for n in range(3)]
    with db.tenant_tx(tenant.id) as conn:
        mails = conn.execute("select to_address from outbox where kind = 'invitation' order by created_at").fetchall()
        hashes = conn.execute("select token_hash from invitations").fetchall()
    assert [m["to_address"] for m in mails] == [f"person{n}@example.test" for n in range(3)]
    assert all(re.fullmatch("[0-9a-f]{64}", h["token_hash"]) for h in hashes)


def test_designation_edits_are_audited(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    d = client.post("/api/designations", json={"name": "Auditor", "permissions": ["audit.read"], "reason": "SOX"},
                    headers=auth(admin.token)).json()
    dup = client.post("/api/designations", json={"name": "auditor", "permissions": [], "reason": "dup"}, headers=auth(admin.token))
    assert dup.status_code == 409
    resp = client.patch(f"/api/designations/{d['id']}", json={"permissions": ["audit.read", "audit.export"], "reason": "exports too"},
                        headers=auth(admin.token))
    assert resp.status_code == 200 and resp.json()["permissions"] == ["audit.export", "audit.read"]
    ev = events(tenant.id, "designation.updated")[-1]
    assert ev["before"] == {"permissions": ["audit.read"]} and ev["after"] == {"permissions": ["audit.export", "audit.read"]}
    assert client.get("/api/designations", headers=auth(admin.token)).json()["designations"][0]["name"] == "Auditor"


# --- operators and support access ---------------------------------------------------------------


def test_operator_creates_tenant_and_sees_no_tenant_data(client: httpx.Client, make_person: PersonFactory) -> None:
    op = make_person(None)
    slug = f"op-{uuid.uuid4().hex[:10]}"
    resp = client.post("/api/platform/tenants", json={"slug": slug, "name": "Acme", "admin_email": "boss@acme.test"},
                       headers=auth(op.token))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["admin"]["role"] == "ADMIN" and body["admin"]["status"] == "invited"
    assert "token" not in json.dumps(body)
    tid = body["tenant"]["id"]
    created = events(tid, "user.invited")
    assert created[0]["actor_id"] == op.id and created[0]["actor_type"] == "operator"
    for path in ("/api/users", "/api/audit", "/api/tenant/settings", "/api/me"):
        assert client.get(path, headers=auth(op.token)).status_code == 403, path
    assert client.post(f"/api/platform/tenants/{tid}/support-token", headers=auth(op.token)).status_code == 404


def test_support_access_is_granted_limited_audited_and_revocable(
    client: httpx.Client, tenant: Tenant, make_person: PersonFactory
) -> None:
    admin, manager, op = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "MANAGER"), make_person(None)
    grant = {"operator_email": op.email, "hours": 2, "reason": "ticket 4711"}
    assert client.post("/api/support-access", json=grant, headers=auth(manager.token)).status_code == 403
    resp = client.post("/api/support-access", json=grant, headers=auth(admin.token))
    assert resp.status_code == 201, resp.text
    grant_id = resp.json()["id"]
    support = client.post(f"/api/platform/tenants/{tenant.id}/support-token", headers=auth(op.token))
    assert support.status_code == 200, support.text
    token = support.json()["access_token"]
    assert client.get("/api/users", headers=auth(token)).status_code == 200
    assert client.put("/api/tenant/settings/display.time_zone", json={"value": "UTC", "reason": "support"},
                      headers=auth(token)).status_code == 403
    assert client.post("/api/users", json={"email": "x@y.test", "role": "VIEWER", "reason": "support"},
                       headers=auth(token)).status_code == 403
    reads = events(tenant.id, "support.accessed")
    assert [(e["actor_id"], e["actor_type"], e["after"]["path"]) for e in reads] == [(op.id, "operator", "/api/users")]
    assert client.get("/api/audit", params={"action": "support.accessed"}, headers=auth(admin.token)).json()["events"]
    assert client.delete(f"/api/support-access/{grant_id}", params={"reason": "ticket closed"},
                         headers=auth(admin.token)).status_code == 200
    assert client.get("/api/users", headers=auth(token)).status_code == 401
    assert client.post(f"/api/platform/tenants/{tenant.id}/support-token", headers=auth(op.token)).status_code == 404


def test_support_token_for_another_tenant_is_refused(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, op = make_person(tenant.id, "ADMIN"), make_person(None)
    client.post("/api/support-access", json={"operator_email": op.email, "hours": 1, "reason": "ticket"}, headers=auth(admin.token))
    grant_id = client.get("/api/support-access", headers=auth(admin.token)).json()["grants"][0]["id"]
    other = make_person(None)
    forged = token_for(other.id, tenant.id, "SUPPORT", session_id=grant_id)  # someone else's grant
    assert client.get("/api/users", headers=auth(token_for(op.id, tenant.id, "SUPPORT", session_id=grant_id))).status_code == 200
    assert client.get("/api/users", headers=auth(forged)).status_code == 401


# --- CLI ---------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_cli_creates_operator_and_tenant_with_admin_invitation() -> None:
    email = f"ops-{uuid.uuid4().hex[:8]}@custos.test"
    out = _cli("create-operator", "--email", email, "--name", "Oscar Ops")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["operator"]["email"] == email
    assert _cli("create-operator", "--email", email).returncode == 2
    slug = f"cli-{uuid.uuid4().hex[:10]}"
    out = _cli("create-tenant", "--slug", slug, "--name", "Beta", "--admin-email", "first@beta.test")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    token = result["invitation"]["token"]
    assert len(token) >= 43 and result["admin"]["role"] == "ADMIN"
    import hashlib

    with db.tenant_tx(result["tenant"]["id"]) as conn:
        stored = conn.execute("select token_hash from invitations").fetchone()["token_hash"]
    assert stored == hashlib.sha256(token.encode()).hexdigest()


def _support_token(client: httpx.Client, tenant: Tenant, admin: Person, op: Person) -> tuple[str, str]:
    resp = client.post("/api/support-access", json={"operator_email": op.email, "hours": 2, "reason": "ticket 99"},
                       headers=auth(admin.token))
    assert resp.status_code == 201, resp.text
    support = client.post(f"/api/platform/tenants/{tenant.id}/support-token", headers=auth(op.token))
    assert support.status_code == 200, support.text
    return resp.json()["id"], support.json()["access_token"]


def test_every_support_request_is_audited_refused_and_failed_ones_included(
    client: httpx.Client, tenant: Tenant, make_person: PersonFactory
) -> None:
    admin, op = make_person(tenant.id, "ADMIN"), make_person(None)
    grant_id, token = _support_token(client, tenant, admin, op)
    attempts = [
        ("PUT", "/api/tenant/settings/display.time_zone", {"value": "UTC", "reason": "support"}, 403),
        ("POST", "/api/users", {"email": "x@y.test", "role": "VIEWER", "reason": "support"}, 403),
        ("GET", f"/api/records/{uuid.uuid4()}", None, 404),
        ("GET", "/api/audit?limit=0", None, 422),
        ("POST", "/api/auth/password/change", {"current_password": "a" * 12, "new_password": "b" * 16}, 403),
        ("POST", "/api/mfa/totp/enroll", {}, 403),
    ]
    for method, path, body, status in attempts:
        resp = client.request(method, path, json=body, headers=auth(token))
        assert resp.status_code == status, (path, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
    refused = events(tenant.id, "support.refused")
    assert [(e["after"]["method"], e["after"]["path"].split("?")[0], e["after"]["status"]) for e in refused] == [
        (m, p.split("?")[0], s) for m, p, _, s in attempts]
    assert {(e["actor_id"], e["actor_type"], e["target_id"]) for e in refused} == {(op.id, "operator", grant_id)}
    assert events(tenant.id, "support.accessed") == []
    # After the grant is revoked, the token's attempts are refused and still on the record.
    assert client.delete(f"/api/support-access/{grant_id}", params={"reason": "done"},
                         headers=auth(admin.token)).status_code == 200
    assert client.get("/api/users", headers=auth(token)).status_code == 401
    last = events(tenant.id, "support.refused")[-1]
    assert last["after"] == {"method": "GET", "path": "/api/users", "status": 401}


def test_a_support_tokens_logout_ends_that_support_access(
    client: httpx.Client, tenant: Tenant, make_person: PersonFactory
) -> None:
    admin, op = make_person(tenant.id, "ADMIN"), make_person(None)
    grant_id, token = _support_token(client, tenant, admin, op)
    assert client.get("/api/users", headers=auth(token)).status_code == 200
    assert client.post("/api/auth/logout", headers=auth(token)).status_code == 204
    assert client.get("/api/users", headers=auth(token)).status_code == 401
    ended = events(tenant.id, "support.ended")
    assert [(e["actor_id"], e["target_id"]) for e in ended] == [(op.id, grant_id)]
    grants = client.get("/api/support-access", headers=auth(admin.token)).json()["grants"]
    assert [g["revoked_at"] is not None for g in grants if g["id"] == grant_id] == [True]


def test_users_of_a_cancelled_tenant_can_still_sign_out_and_revoke_sessions(
    client: httpx.Client, tenant: Tenant, make_person: PersonFactory
) -> None:
    from shared.tenancy.tenants import cancel_tenant
    from tests.conftest import create_session_row

    admin, viewer = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "VIEWER")
    other_session = create_session_row(tenant.id, viewer.id)
    cancel_tenant(tenant.id, reason="contract ended", actor=audit.Actor(None, "ops", "system"), meta=None)
    assert client.post("/api/designations", json={"name": "X", "permissions": [], "reason": "locked?"},
                       headers=auth(admin.token)).status_code == 423
    assert client.delete(f"/api/users/{viewer.id}/sessions/{other_session}",
                         headers=auth(admin.token)).status_code == 204
    assert client.delete(f"/api/sessions/{_session_of(admin)}", headers=auth(admin.token)).status_code == 204
    assert client.post("/api/auth/logout", headers=auth(viewer.token)).status_code == 204
    assert client.get("/api/me", headers=auth(viewer.token)).status_code == 401


def _session_of(person: Person) -> str:
    import jwt

    return str(jwt.decode(person.token, options={"verify_signature": False})["sid"])
