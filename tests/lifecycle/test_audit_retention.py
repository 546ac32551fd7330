"""The audit retention timer: tenants with a window are cut, tenants without are left alone,
one tenant's refusal is reported without stopping the others, and the run is visible."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import httpx
import psycopg
import pytest

from shared.audit import chain as audit
from shared.core import db, health
from shared.lifecycle import audit_retention as retention
from shared.tenancy.tenant_settings import put_setting
from shared.tenancy.tenants import Tenant, create_tenant
from tests.audit.test_chain import add_events, checkpoint_now
from tests.audit.test_retention import WINDOW, occurred, seqs


def new_tenant() -> Tenant:
    with db.platform_tx() as conn:
        return create_tenant(conn, slug=f"r-{uuid.uuid4().hex[:12]}", name="Retained", region="uksouth")


def set_window(tenant_id: str, days: int | None) -> None:
    with db.tenant_tx(tenant_id) as conn:
        put_setting(conn, tenant_id=tenant_id, key=retention.SETTING, value=days, actor_id=None)


@pytest.fixture(autouse=True)
def no_windows_left_behind() -> None:
    """Each test starts from no windows in the database, so a run here sees only its own tenants."""
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"]) as conn:
        conn.execute("delete from tenant_settings where key = %s", (retention.SETTING,))


def test_run_cuts_tenants_with_a_window_and_leaves_the_others(client: httpx.Client) -> None:
    kept, cut, forever = new_tenant(), new_tenant(), new_tenant()
    for tenant in (kept, cut, forever):
        add_events(tenant.id, 3)
    set_window(cut.id, WINDOW)
    set_window(forever.id, None)  # null: keep forever
    checkpoint_now(client)
    now = occurred(cut.id, 4) + timedelta(days=WINDOW, microseconds=1)
    result = retention.run(now=now)
    assert [(c.tenant_id, c.from_seq, c.seq) for c in result.cuts] == [(cut.id, 1, 4)]
    assert result.windows == 1 and not result.refused
    assert seqs(cut.id)[0] == 5
    assert seqs(kept.id) == [1, 2, 3, 4] and seqs(forever.id)[0] == 1
    assert health.heartbeats()["audit_retention"]["ok"] is True


def test_a_refused_tenant_fails_the_run_after_the_others_are_cut(client: httpx.Client) -> None:
    broken, fine = new_tenant(), new_tenant()
    for tenant in (broken, fine):
        add_events(tenant.id, 3)
        set_window(tenant.id, WINDOW)
    checkpoint_now(client)
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"]) as conn:
        conn.execute("alter table audit_events disable trigger user")
        conn.execute("update audit_events set reason = 'x' where tenant_id = %s and seq = 2", (broken.id,))
        conn.execute("alter table audit_events enable trigger user")
    now = max(occurred(t.id, 4) for t in (broken, fine)) + timedelta(days=WINDOW, microseconds=1)
    with pytest.raises(RuntimeError, match="refused 1 tenant"):
        retention.run(now=now)
    assert seqs(fine.id)[0] == 5  # the other tenant was cut
    assert seqs(broken.id)[0] == 1  # the broken chain keeps its evidence
    assert health.heartbeats()["audit_retention"]["ok"] is False
    with db.tenant_tx(broken.id) as conn:  # nothing of the refused cut was recorded
        assert not audit.list_events(conn, action="audit.retention_cut")


def test_the_timer_runs_on_demand_through_the_host(client: httpx.Client) -> None:
    tenant = new_tenant()
    set_window(tenant.id, WINDOW)
    assert client.post("/admin/functions/audit_retention").status_code == 202
    beat = health.heartbeats()["audit_retention"]
    assert beat["ok"] is True
    assert seqs(tenant.id)[0] == 1  # nothing is older than seven years yet
