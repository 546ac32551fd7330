"""SCIM 2.0 through the real host: scim2-tester's compliance checks, and our own attacks."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

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
