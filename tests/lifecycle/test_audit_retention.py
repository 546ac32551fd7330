"""The audit retention timer and its jobs: the timer queues one job per tenant with a window,
the queue trigger (the host polls) cuts it, tenants without are left alone, and one tenant's
refusal fails its own job without stopping the others."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from shared.audit import chain as audit
from shared.core import db, health
from shared.core.settings import get_settings
from shared.lifecycle import audit_retention as retention
from shared.lifecycle import jobs
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


def jobs_of(tenant_id: str) -> list[dict[str, Any]]:
    with db.tenant_tx(tenant_id) as conn:
        return [dict(r) for r in conn.execute(
            "select id::text, state, params, result, error_type from jobs where kind = %s order by created_at",
            (retention.KIND,)).fetchall()]


def wait_finished(tenant_id: str, job_id: str) -> dict[str, Any]:
    """Wait for the host's queue poller to run the job (an event, with a generous deadline)."""
    deadline = time.monotonic() + 120
    while True:
        job = next(j for j in jobs_of(tenant_id) if j["id"] == job_id)
        if job["state"] in ("DONE", "FAILED"):
            return job
        assert time.monotonic() < deadline, f"retention job still {job['state']}"
        time.sleep(0.2)


def test_the_timer_queues_one_job_per_window_and_the_queue_cuts_only_those(client: httpx.Client) -> None:
    kept, cut, forever = new_tenant(), new_tenant(), new_tenant()
    for tenant in (kept, cut, forever):
        add_events(tenant.id, 3)
    set_window(cut.id, WINDOW)
    set_window(forever.id, None)  # null: keep forever
    checkpoint_now(client)
    now = occurred(cut.id, 4) + timedelta(days=WINDOW, microseconds=1)
    queued = retention.enqueue_due(now=now)
    assert queued.windows == 1 and list(queued.jobs) == [cut.id] and not queued.skipped
    assert health.heartbeats()["audit_retention"]["ok"] is True
    job = wait_finished(cut.id, queued.jobs[cut.id])
    assert job["state"] == "DONE", job
    assert job["params"]["window_days"] == WINDOW and (job["result"]["cut"]["from_seq"], job["result"]["cut"]["seq"]) == (1, 4)
    assert seqs(cut.id)[0] == 5
    assert seqs(kept.id) == [1, 2, 3, 4] and seqs(forever.id)[0] == 1
    assert not jobs_of(kept.id) and not jobs_of(forever.id)


def test_a_tenant_with_a_job_still_queued_gets_no_second_one(client: httpx.Client) -> None:
    tenant = new_tenant()
    set_window(tenant.id, WINDOW)
    with db.tenant_tx(tenant.id) as conn:  # a job the queue has not run yet (no message sent)
        from shared.lifecycle import jobs

        waiting = jobs.create(conn, tenant_id=tenant.id, kind=retention.KIND, created_by=None,
                              params={"window_days": WINDOW, "as_of": "2020-01-01T00:00:00.000000Z"})
    queued = retention.enqueue_due()
    assert queued.skipped == [tenant.id] and not queued.jobs
    assert [j["id"] for j in jobs_of(tenant.id)] == [waiting.id]


def test_a_refused_tenant_fails_its_job_and_the_other_is_cut(client: httpx.Client) -> None:
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
    queued = retention.enqueue_due(now=now)
    failed = wait_finished(broken.id, queued.jobs[broken.id])
    assert failed["state"] == "FAILED" and failed["error_type"] == "urn:custos:problem:audit-retention-refused"
    assert wait_finished(fine.id, queued.jobs[fine.id])["state"] == "DONE"
    assert seqs(fine.id)[0] == 5  # the other tenant was cut
    assert seqs(broken.id)[0] == 1  # the broken chain keeps its evidence
    with db.tenant_tx(broken.id) as conn:  # nothing of the refused cut was recorded
        assert not audit.list_events(conn, action="audit.retention_cut")


def test_the_timer_runs_on_demand_through_the_host(client: httpx.Client) -> None:
    tenant = new_tenant()
    set_window(tenant.id, WINDOW)
    assert client.post("/admin/functions/audit_retention").status_code == 202
    beat = health.heartbeats()["audit_retention"]
    assert beat["ok"] is True
    job = wait_finished(tenant.id, jobs_of(tenant.id)[0]["id"])
    assert job["state"] == "DONE" and job["result"] == {"cut": None}  # nothing is older than seven years yet
    assert seqs(tenant.id)[0] == 1


def started_by(tenant_id: str, job_id: str) -> list[str]:
    with db.tenant_tx(tenant_id) as conn:
        rows = conn.execute("select after from audit_events where target_id = %s and action = 'job.started' "
                            "order by seq", (job_id,)).fetchall()
    return [r["after"].get("app") for r in rows]


def test_a_retention_job_goes_to_the_owner_queue_and_the_owner_trigger_cuts_it(client: httpx.Client) -> None:
    tenant = new_tenant()
    add_events(tenant.id, 3)
    set_window(tenant.id, WINDOW)
    checkpoint_now(client)
    assert jobs.queue_for(retention.KIND) == get_settings().owner_jobs_queue
    now = occurred(tenant.id, 4) + timedelta(days=WINDOW, microseconds=1)
    job = wait_finished(tenant.id, retention.enqueue_due(now=now).jobs[tenant.id])
    assert job["state"] == "DONE", job
    assert started_by(tenant.id, job["id"]) == ["owner-jobs"]
    assert seqs(tenant.id)[0] == 5


def test_a_retention_message_on_the_api_queue_is_refused_and_cuts_nothing(client: httpx.Client) -> None:
    """An older release (or someone by hand) put a retention job on the API app's queue: the
    real API trigger fails it (job-wrong-app, audited) and no event is removed."""
    tenant = new_tenant()
    add_events(tenant.id, 3)
    checkpoint_now(client)
    as_of = occurred(tenant.id, 4) + timedelta(days=WINDOW, microseconds=1)
    with db.tenant_tx(tenant.id) as conn:
        job = jobs.create(conn, tenant_id=tenant.id, kind=retention.KIND, created_by=None,
                          params={"window_days": WINDOW, "as_of": audit.format_time(as_of)})
    before = seqs(tenant.id)
    jobs.send(job, queue=get_settings().jobs_queue)
    failed = wait_finished(tenant.id, job.id)
    assert failed["state"] == "FAILED" and failed["error_type"] == "urn:custos:problem:job-wrong-app", failed
    assert started_by(tenant.id, job.id) == []
    assert seqs(tenant.id)[:len(before)] == before
    with db.tenant_tx(tenant.id) as conn:
        refused = audit.list_events(conn, action="job.failed", target_id=job.id)
    assert [e["after"]["error"]["type"] for e in refused] == ["urn:custos:problem:job-wrong-app"]
