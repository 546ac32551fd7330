"""Operators cancel and reinstate tenants: only before the purge date, with a reason, recorded
in the tenant's chain and the platform's; a purged tenant cannot come back."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta

import httpx
import psycopg
import pytest

from shared.audit import chain as audit
from shared.core import db
from shared.lifecycle import purge
from shared.tenancy.errors import PurgeDue
from shared.tenancy.tenants import Tenant, get_tenant, reinstate_tenant
from tests.conftest import PersonFactory, auth

PROBLEM = "urn:custos:problem:"


def _cancel(client: httpx.Client, op_token: str, tenant_id: str) -> httpx.Response:
    return client.post(f"/api/platform/tenants/{tenant_id}/cancel", json={"reason": "contract ended"},
                       headers=auth(op_token))


def _reinstate(client: httpx.Client, op_token: str, tenant_id: str, body: object = None) -> httpx.Response:
    return client.post(f"/api/platform/tenants/{tenant_id}/reinstate",
                       json={"reason": "customer renewed"} if body is None else body, headers=auth(op_token))


def test_an_operator_reinstates_a_cancelled_tenant_before_its_purge_date(
    client: httpx.Client, tenant: Tenant, make_person: PersonFactory
) -> None:
    op = make_person(None)
    admin = make_person(tenant.id, "ADMIN")
    cancelled = _cancel(client, op.token, tenant.id)
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "CANCELLED" and body["purge_after"] is not None
    assert client.post("/api/record-types", json={"name": "x1"}, headers=auth(admin.token)).status_code == 423

    back = _reinstate(client, op.token, tenant.id)

    assert back.status_code == 200, back.text
    assert back.json()["status"] == "ACTIVE" and back.json()["cancelled_at"] is None and back.json()["purge_after"] is None
    assert client.post("/api/record-types", json={"name": "x1"}, headers=auth(admin.token)).status_code != 423
    with db.tenant_tx(tenant.id) as conn:
        own = audit.list_events(conn, action="tenant.reinstated")
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        platform = audit.list_events(conn, action="platform.tenant_reinstated", target_id=tenant.id)
    assert [e["reason"] for e in own] == ["customer renewed"] and [e["reason"] for e in platform] == ["customer renewed"]
    assert own[0]["actor_id"] == op.id and platform[0]["actor_id"] == op.id
    # once is enough: an active tenant is not cancelled
    again = _reinstate(client, op.token, tenant.id)
    assert again.status_code == 409 and again.json()["type"] == PROBLEM + "tenant-not-cancelled"


def test_reinstating_needs_an_operator_a_reason_and_an_existing_tenant(
    client: httpx.Client, tenant: Tenant, make_person: PersonFactory
) -> None:
    op = make_person(None)
    _cancel(client, op.token, tenant.id)
    admin_of_tenant = make_person(tenant.id, "ADMIN")
    assert _reinstate(client, admin_of_tenant.token, tenant.id).status_code == 403
    missing = _reinstate(client, op.token, tenant.id, body={})
    assert missing.status_code == 422 and missing.headers["content-type"].startswith("application/problem+json")
    assert _reinstate(client, op.token, str(uuid.uuid4())).status_code == 404
    assert _reinstate(client, op.token, "not-a-uuid").status_code == 404
    assert get_tenant(tenant.id).status == "CANCELLED"  # type: ignore[union-attr]


def test_reinstating_after_the_purge_date_is_refused(client: httpx.Client, tenant: Tenant,
                                                     make_person: PersonFactory) -> None:
    op = make_person(None)
    cancelled = _cancel(client, op.token, tenant.id).json()
    actor = audit.Actor(op.id, "Olive Operator", "operator")
    due = get_tenant(tenant.id).purge_after  # type: ignore[union-attr]
    with pytest.raises(PurgeDue):
        reinstate_tenant(tenant.id, reason="too late", actor=actor, meta=None, now=due)
    # the same through the route, with the dates moved into the past
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True) as conn:
        conn.execute("update tenants set cancelled_at = now() - interval '31 days', purge_after = now() - interval '1 day'"
                     " where id = %s", (tenant.id,))
    late = _reinstate(client, op.token, tenant.id)
    assert late.status_code == 409 and late.json()["type"] == PROBLEM + "tenant-purge-due"
    assert get_tenant(tenant.id).status == "CANCELLED" and cancelled["status"] == "CANCELLED"  # type: ignore[union-attr]


def test_a_purged_tenant_cannot_be_reinstated(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    op = make_person(None)
    _cancel(client, op.token, tenant.id)
    purge.purge_tenant(tenant.id, now=get_tenant(tenant.id).purge_after + timedelta(seconds=1))  # type: ignore[operator,union-attr]
    refused = _reinstate(client, op.token, tenant.id)
    assert refused.status_code == 409 and refused.json()["type"] == PROBLEM + "tenant-purge-started"
    assert get_tenant(tenant.id).status == "PURGED"  # type: ignore[union-attr]


def test_the_operator_list_shows_purge_dates_and_when_a_tenant_was_purged(
    client: httpx.Client, tenant: Tenant, make_person: PersonFactory
) -> None:
    from shared.tenancy.tenants import create_tenant

    op = make_person(None)
    with db.platform_tx() as conn:
        waiting = create_tenant(conn, slug=f"w-{uuid.uuid4().hex[:12]}", name="Waiting", region="uksouth")
    assert _cancel(client, op.token, tenant.id).status_code == 200
    assert _cancel(client, op.token, waiting.id).status_code == 200
    purge_after = get_tenant(tenant.id).purge_after  # type: ignore[union-attr]
    assert purge_after is not None
    purge.purge_tenant(tenant.id, now=purge_after + timedelta(seconds=1))
    listed = client.get("/api/platform/tenants", headers=auth(op.token))
    assert listed.status_code == 200, listed.text
    shown = {t["id"]: t for t in listed.json()["tenants"]}
    purged, cancelled = shown[tenant.id], shown[waiting.id]
    assert purged["status"] == "PURGED" and purged["purged_at"] is not None
    assert datetime.fromisoformat(purged["purge_after"]) == purge_after
    assert datetime.fromisoformat(purged["purged_at"]) == purge_after + timedelta(seconds=1)
    assert cancelled["status"] == "CANCELLED" and cancelled["purge_after"] is not None and cancelled["purged_at"] is None
