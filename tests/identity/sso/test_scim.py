"""SCIM 2.0 through the real host: scim2-tester's compliance checks, and our own attacks."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from shared.core import db
from shared.tenancy.tenants import create_tenant
from tests.conftest import Host, PersonFactory, auth

SCIM = "application/scim+json"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def new_scim_token(client: httpx.Client, admin_token: str, name: str = "Entra ID") -> dict[str, Any]:
    r = client.post("/api/scim/tokens", json={"name": name}, headers=auth(admin_token))
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def scim_token(client: httpx.Client, tenant: Any, make_person: PersonFactory) -> str:
    admin = make_person(tenant.id, "ADMIN")
    return str(new_scim_token(client, admin.token)["token"])


def scim_client(host: Host, token: str) -> httpx.Client:
    return httpx.Client(base_url=f"{host.url}/scim/v2", timeout=30,
                        headers={"Authorization": f"Bearer {token}", "Accept": SCIM})


def user_body(user_name: str | None = None, **extra: Any) -> dict[str, Any]:
    user_name = user_name or f"u-{uuid.uuid4().hex[:10]}@example.test"
    return {"schemas": [USER], "userName": user_name, "displayName": "Dana Doe",
            "name": {"givenName": "Dana", "familyName": "Doe"},
            "emails": [{"value": user_name, "type": "work", "primary": True}], **extra}


def test_scim2_tester_reports_no_failures(host: Host, scim_token: str) -> None:
    import httpx2
    from scim2_client.engines.httpx2 import SyncSCIMClient
    from scim2_tester import Status, check_server

    with httpx2.Client(base_url=f"{host.url}/scim/v2", timeout=30,
                       headers={"Authorization": f"Bearer {scim_token}"}) as http:
        results = check_server(SyncSCIMClient(http))
    failures = [(r.title, r.resource_type, r.reason) for r in results if r.status not in (Status.SUCCESS, Status.SKIPPED)]
    skipped = sorted({(r.title, r.reason) for r in results if r.status == Status.SKIPPED})
    print("\n".join(f"SKIPPED {t}: {why}" for t, why in skipped))
    print("\n".join(f"FAILED {t} {rt}: {why}" for t, rt, why in failures))
    assert len(results) > 20
    assert failures == []


def _error(r: httpx.Response, status: int, scim_type: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(SCIM)
    body = r.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status)
    assert body.get("scimType") == scim_type


def test_scim_deactivation_ends_the_users_sessions_at_once(
        host: Host, client: httpx.Client, scim_token: str, tenant: Any) -> None:
    from tests.conftest import create_session_row, token_for

    with scim_client(host, scim_token) as s:
        created = s.post("/Users", json=user_body(), headers={"Content-Type": SCIM})
        assert created.status_code == 201, created.text
        uid = created.json()["id"]
        sid = create_session_row(tenant.id, uid)
        access = token_for(uid, tenant.id, "VIEWER", session_id=sid)
        assert client.get("/api/me", headers=auth(access)).status_code == 200
        r = s.patch(f"/Users/{uid}", json={"schemas": [PATCH], "Operations": [
            {"op": "Replace", "path": "active", "value": "False"}]}, headers={"Content-Type": SCIM})
        assert r.status_code == 200, r.text
        assert r.json()["active"] is False
    assert client.get("/api/me", headers=auth(access)).status_code == 401
    with db.tenant_tx(tenant.id) as conn:
        revoked = conn.execute("select revoked_at from sessions where id = %s", (sid,)).fetchone()
        events = conn.execute("select action, actor_type, actor_id::text as actor_id from audit_events "
                              "where target_id = %s order by seq", (uid,)).fetchall()
    assert revoked["revoked_at"] is not None
    assert [e["action"] for e in events] == ["scim.user_created", "scim.user_patched", "scim.user_deactivated"]
    assert {e["actor_type"] for e in events} == {"scim_token"}


def test_another_tenants_user_is_not_found_and_unchanged(
        host: Host, client: httpx.Client, scim_token: str, make_person: PersonFactory) -> None:
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth").id
    victim = make_person(other, "VIEWER")
    with scim_client(host, scim_token) as s:
        _error(s.get(f"/Users/{victim.id}"), 404)
        _error(s.patch(f"/Users/{victim.id}", json={"schemas": [PATCH], "Operations": [
            {"op": "replace", "path": "active", "value": False}]}, headers={"Content-Type": SCIM}), 404)
        _error(s.delete(f"/Users/{victim.id}"), 404)
        listed = s.get("/Users", params={"filter": f'id eq "{victim.id}"'}).json()
        assert listed["totalResults"] == 0
    assert client.get("/api/me", headers=auth(victim.token)).status_code == 200


def test_revoked_token_and_user_tokens_are_refused(
        host: Host, client: httpx.Client, tenant: Any, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    made = new_scim_token(client, admin.token)
    with scim_client(host, made["token"]) as s:
        assert s.get("/Users").status_code == 200
        assert client.delete(f"/api/scim/tokens/{made['id']}", headers=auth(admin.token)).status_code == 200
        _error(s.get("/Users"), 401)
    with scim_client(host, admin.token) as s:
        _error(s.get("/Users"), 401)
    assert client.get("/api/me", headers=auth(made["token"])).status_code == 401
    listed = client.get("/api/scim/tokens", headers=auth(admin.token)).json()["tokens"]
    assert "token" not in listed[0] and listed[0]["revoked_at"] is not None
    viewer = make_person(tenant.id, "VIEWER")
    assert client.post("/api/scim/tokens", json={"name": "x"}, headers=auth(viewer.token)).status_code == 403


def test_bad_json_and_unknown_schema_are_scim_400s(host: Host, scim_token: str) -> None:
    with scim_client(host, scim_token) as s:
        _error(s.post("/Users", content=b"{not json", headers={"Content-Type": SCIM}), 400, "invalidSyntax")
        _error(s.post("/Users", json={**user_body(), "schemas": ["urn:evil:schema"]},
                      headers={"Content-Type": SCIM}), 400, "invalidSyntax")
        _error(s.post("/Users", json={**user_body(), "userName": 7}, headers={"Content-Type": SCIM}),
               400, "invalidValue")
        _error(s.get("/Users", params={"filter": 'userName eq "a" or'}), 400, "invalidFilter")
        _error(s.get("/Users", params={"filter": 'password eq "x"'}), 400, "invalidFilter")
        _error(s.get("/Users", params={"count": "many"}), 400, "invalidValue")
        _error(s.get("/Nowhere"), 404)


@pytest.mark.parametrize("evil", [
    "x' or '1'='1", "x\") or true --", "%", "_", "\\", "x'; drop table users; --",
])
def test_filter_values_are_data_never_sql(host: Host, scim_token: str, evil: str) -> None:
    with scim_client(host, scim_token) as s:
        mine = s.post("/Users", json=user_body(), headers={"Content-Type": SCIM}).json()
        for op in ("eq", "co", "sw", "ew"):
            r = s.get("/Users", params={"filter": f"userName {op} {json_string(evil)}"})
            assert r.status_code == 200, r.text
            assert r.json()["totalResults"] == 0
        found = s.get("/Users", params={"filter": f'userName eq "{mine["userName"].upper()}"'}).json()
        assert [u["id"] for u in found["Resources"]] == [mine["id"]]


def json_string(text: str) -> str:
    import json

    return json.dumps(text)


def test_pagination_is_one_based_and_capped(host: Host, scim_token: str) -> None:
    with scim_client(host, scim_token) as s:
        ids = [s.post("/Users", json=user_body(), headers={"Content-Type": SCIM}).json()["id"] for _ in range(3)]
        first = s.get("/Users", params={"startIndex": "1", "count": "2"}).json()
        second = s.get("/Users", params={"startIndex": "3", "count": "2"}).json()
        assert first["totalResults"] == second["totalResults"] >= 3
        seen = [u["id"] for u in first["Resources"] + second["Resources"]]
        assert set(ids) <= set(seen) and len(seen) == len(set(seen))
        assert s.get("/Users", params={"count": "100000"}).json()["itemsPerPage"] <= 200


def test_patch_cannot_remove_required_attributes_and_if_match_guards(host: Host, scim_token: str) -> None:
    with scim_client(host, scim_token) as s:
        made = s.post("/Users", json=user_body(), headers={"Content-Type": SCIM})
        uid, etag = made.json()["id"], made.headers["etag"]
        for path in ("userName", "active"):
            _error(s.patch(f"/Users/{uid}", json={"schemas": [PATCH], "Operations": [{"op": "remove", "path": path}]},
                           headers={"Content-Type": SCIM}), 400, "invalidValue")
        ok = s.patch(f"/Users/{uid}", json={"schemas": [PATCH], "Operations": [
            {"op": "replace", "path": 'emails[type eq "work"].value', "value": "new@example.test"}]},
            headers={"Content-Type": SCIM, "If-Match": etag})
        assert ok.status_code == 200, ok.text
        assert ok.json()["emails"][0]["value"] == "new@example.test"
        _error(s.put(f"/Users/{uid}", json=user_body(), headers={"Content-Type": SCIM, "If-Match": etag}), 412)
        _error(s.patch(f"/Users/{uid}", json={"schemas": [PATCH], "Operations": [
            {"op": "replace", "path": 'emails[type eq "home"].value', "value": "x@example.test"}]},
            headers={"Content-Type": SCIM}), 400, "noTarget")
