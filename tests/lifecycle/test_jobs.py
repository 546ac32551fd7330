"""Jobs against real PostgreSQL: claim once, leases, failures without traces, tenant isolation.

Messages are handed to `run_message` directly (not sent to the queue): the test host polls
that queue and does not know the kinds these tests register.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PersonFactory, auth

from shared.core import db
from shared.core.errors import ValidationFailed
from shared.core.settings import get_settings
from shared.lifecycle import jobs
from shared.tenancy.tenants import Tenant

ROOT = Path(__file__).resolve().parents[2]
calls: list[str] = []
gate = threading.Event()
entered = threading.Event()


@jobs.register("test.count")
def _count(run: jobs.Run) -> dict[str, Any]:
    run.progress(1, 3)
    calls.append(run.job.id)
    return {"n": len(calls)}


@jobs.register("test.invalid")
def _invalid(run: jobs.Run) -> None:
    raise ValidationFailed("the input was refused")


@jobs.register("test.crash")
def _crash(run: jobs.Run) -> None:
    raise RuntimeError("/srv/secret/path.py line 7: boom")


owner_calls: list[str] = []


@jobs.register("test.owner", owner=True)
def _owner(run: jobs.Run) -> dict[str, Any]:
    owner_calls.append(run.job.id)
    return {"owner": True}


@jobs.register("test.slow")
def _slow(run: jobs.Run) -> None:
    entered.set()
    gate.wait(30)


def _job(tenant_id: str, kind: str) -> jobs.Job:
    with db.tenant_tx(tenant_id) as conn:
        return jobs.create(conn, tenant_id=tenant_id, kind=kind, created_by=None)


def _row(tenant_id: str, job_id: str) -> jobs.Job:
    with db.tenant_tx(tenant_id) as conn:
        return jobs.get(conn, job_id)


def _actions(tenant_id: str, job_id: str) -> list[str]:
    with db.tenant_tx(tenant_id) as conn:
        rows = conn.execute("select action from audit_events where target_id = %s order by seq", (job_id,)).fetchall()
    return [r["action"] for r in rows]


def test_the_message_holds_only_ids() -> None:
    job = jobs.Job(id=str(uuid.uuid4()), tenant_id=str(uuid.uuid4()), kind="test.count", state=jobs.State.QUEUED,
                   params={"secret": "x"}, progress_done=0, progress_total=None, error_type=None, error_detail=None,
                   attempts=0, created_by=None, created_at=None, started_at=None, finished_at=None, result=None)  # type: ignore[arg-type]
    assert json.loads(jobs.message(job)) == {"job_id": job.id, "tenant_id": job.tenant_id}


def test_a_message_delivered_twice_runs_the_job_once(tenant: Tenant) -> None:
    job = _job(tenant.id, "test.count")
    before = len(calls)
    assert jobs.run_message(jobs.message(job)) == "done"
    assert jobs.run_message(jobs.message(job)) == "dropped"
    assert len(calls) == before + 1
    done = _row(tenant.id, job.id)
    assert (done.state, done.attempts, done.progress_done, done.progress_total) == (jobs.State.DONE, 1, 3, 3)
    assert done.result == {"n": len(calls)} and done.finished_at is not None
    assert _actions(tenant.id, job.id) == ["job.started", "job.done"]


def test_concurrent_deliveries_claim_once_and_the_loser_looks_again_later(tenant: Tenant) -> None:
    job = _job(tenant.id, "test.slow")
    gate.clear()
    entered.clear()
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(jobs.run_message(jobs.message(job))))
    worker.start()
    try:
        assert entered.wait(30)
        assert jobs.run_message(jobs.message(job)) == "held"  # re-queued for when the lease ends
    finally:
        gate.set()
        worker.join(30)
    assert outcome == ["done"] and _row(tenant.id, job.id).attempts == 1


def test_a_message_for_a_job_that_is_gone_is_dropped(tenant: Tenant) -> None:
    text = json.dumps({"job_id": str(uuid.uuid4()), "tenant_id": tenant.id})
    assert jobs.run_message(text) == "dropped"


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"job_id": "x", "tenant_id": "y"}', '{"job_id": 1}'])
def test_a_malformed_message_is_dropped_not_retried(text: str) -> None:
    assert jobs.run_message(text) == "malformed"


def test_another_tenants_id_in_a_message_finds_nothing(tenant: Tenant) -> None:
    job = _job(tenant.id, "test.count")
    with db.platform_tx() as conn:
        from shared.tenancy.tenants import create_tenant

        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    forged = json.dumps({"job_id": job.id, "tenant_id": other.id})
    assert jobs.run_message(forged) == "dropped"
    assert _row(tenant.id, job.id).state == jobs.State.QUEUED


def test_an_app_error_fails_the_job_at_once_with_its_problem_type(tenant: Tenant) -> None:
    job = _job(tenant.id, "test.invalid")
    assert jobs.run_message(jobs.message(job)) == "failed"
    failed = _row(tenant.id, job.id)
    assert failed.state == jobs.State.FAILED and failed.attempts == 1
    assert (failed.error_type, failed.error_detail) == ("urn:custos:problem:validation", "the input was refused")


def test_a_crash_is_retried_then_failed_without_its_trace(tenant: Tenant) -> None:
    job = _job(tenant.id, "test.crash")
    for attempt in range(1, jobs.MAX_ATTEMPTS):
        with pytest.raises(RuntimeError):
            jobs.run_message(jobs.message(job))
        again = _row(tenant.id, job.id)
        assert again.state == jobs.State.QUEUED and again.attempts == attempt
        assert again.error_type == "urn:custos:problem:job-crashed" and "secret" not in (again.error_detail or "")
    assert jobs.run_message(jobs.message(job)) == "failed"
    failed = _row(tenant.id, job.id)
    assert failed.state == jobs.State.FAILED and failed.attempts == jobs.MAX_ATTEMPTS
    assert "secret" not in json.dumps(failed.as_dict()) and "boom" not in json.dumps(failed.as_dict())


def test_a_running_job_is_claimed_again_only_after_its_lease(tenant: Tenant) -> None:
    job = _job(tenant.id, "test.count")
    with db.tenant_tx(tenant.id) as conn:
        now = conn.execute("select now() as t").fetchone()["t"]  # type: ignore[index]
    first = jobs.claim(tenant.id, job.id, now=now)
    assert first is not None and first.attempts == 1
    lease = timedelta(seconds=get_settings().job_lease_s)
    assert jobs.claim(tenant.id, job.id, now=now + lease - timedelta(seconds=1)) is None
    second = jobs.claim(tenant.id, job.id, now=now + lease + timedelta(seconds=1))
    assert second is not None and second.attempts == 2
    # The first worker, back from the dead, cannot overwrite the outcome of the one that holds it.
    assert jobs._finish(first, jobs.State.DONE, result={"stale": True}) is False
    assert jobs._finish(second, jobs.State.DONE, result={"fresh": True}) is True
    assert _row(tenant.id, job.id).result == {"fresh": True}


def test_job_kinds_register_once() -> None:
    with pytest.raises(ValueError, match="already has a handler"):
        jobs.register("test.count")(lambda run: None)
    with db.platform_tx() as conn, pytest.raises(ValueError, match="no handler"):
        jobs.create(conn, tenant_id=str(uuid.uuid4()), kind="test.unknown", created_by=None)


def test_max_attempts_is_the_hosts_max_dequeue_count() -> None:
    options = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    assert options["maxDequeueCount"] == jobs.MAX_ATTEMPTS
    assert options.get("messageEncoding", "base64") == "base64"


def test_get_job_through_the_host_is_tenant_scoped(client: httpx.Client, tenant: Tenant,
                                                   make_person: PersonFactory) -> None:
    job = _job(tenant.id, "test.invalid")
    jobs.run_message(jobs.message(job))
    admin = make_person(tenant.id, "ADMIN")
    shown = client.get(f"/api/jobs/{job.id}", headers=auth(admin.token))
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["state"] == "FAILED" and body["error"]["type"] == "urn:custos:problem:validation"
    assert body["progress"] == {"done": 0, "total": None}
    with db.platform_tx() as conn:
        from shared.tenancy.tenants import create_tenant

        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    outsider = make_person(other.id, "ADMIN")
    hidden = client.get(f"/api/jobs/{job.id}", headers=auth(outsider.token))
    assert hidden.status_code == 404 and hidden.json()["type"] == "urn:custos:problem:not-found"
    viewer = make_person(tenant.id, "VIEWER")
    assert client.get(f"/api/jobs/{job.id}", headers=auth(viewer.token)).status_code == 403
    assert client.get("/api/jobs/not-a-uuid", headers=auth(admin.token)).status_code in (400, 404, 422)


def test_start_sends_after_commit_and_the_hosts_trigger_picks_the_message_up(host: Any, tenant: Tenant) -> None:
    """The host's poller takes the message; it has no handler for a test kind, so the job
    ends FAILED with job-kind-unknown: proof that the message reached the real trigger."""
    import time

    job = jobs.start(db.tenant_tx(tenant.id), tenant_id=tenant.id, kind="test.count", created_by=None)
    deadline = time.monotonic() + 60
    while (seen := _row(tenant.id, job.id)).state in (jobs.State.QUEUED, jobs.State.RUNNING):
        assert time.monotonic() < deadline, "the host did not pick the message up"
        time.sleep(0.2)
    assert seen.state == jobs.State.FAILED and seen.error_type == "urn:custos:problem:job-kind-unknown"


def test_start_that_fails_inside_its_transaction_leaves_no_job(tenant: Tenant) -> None:
    def refuse(conn: Any, job: jobs.Job) -> None:
        raise ValidationFailed("refused after the row was written")

    with pytest.raises(ValidationFailed):
        jobs.start(db.tenant_tx(tenant.id), tenant_id=tenant.id, kind="test.count", created_by=None, then=refuse)
    with db.tenant_tx(tenant.id) as conn:
        assert conn.execute("select count(*) as n from jobs").fetchone()["n"] == 0  # type: ignore[index]


def test_a_job_whose_worker_keeps_dying_fails_instead_of_looping(tenant: Tenant) -> None:
    """A dead worker's job is claimed again after its lease; the re-sent message restarts the
    queue's dequeue count, so the row's attempts must stop it."""
    job = _job(tenant.id, "test.count")
    with db.tenant_tx(tenant.id) as conn:
        now = conn.execute("select now() as t").fetchone()["t"]  # type: ignore[index]
    lease = timedelta(seconds=get_settings().job_lease_s + 1)
    for attempt in range(1, jobs.MAX_ATTEMPTS + 1):  # each claim, then the worker vanishes
        claimed = jobs.claim(tenant.id, job.id, now=now + lease * attempt)
        assert claimed is not None and claimed.attempts == attempt
    before = len(calls)
    assert jobs.run_message(jobs.message(job), now=now + lease * (jobs.MAX_ATTEMPTS + 1)) == "failed"
    failed = _row(tenant.id, job.id)
    assert failed.state == jobs.State.FAILED and failed.error_type == "urn:custos:problem:job-crashed"
    assert len(calls) == before  # the handler did not run a sixth time


def test_a_job_whose_message_cannot_be_queued_is_failed_not_left_waiting(tenant: Tenant) -> None:
    """Azurite refuses the queue name (the stand-in for a queue service that is not there)."""
    from shared.core.errors import ServiceUnavailable

    with pytest.raises(ServiceUnavailable):
        jobs.start(db.tenant_tx(tenant.id), tenant_id=tenant.id, kind="test.count", created_by=None,
                   queue="Not_A-Valid--Queue")
    with db.tenant_tx(tenant.id) as conn:
        rows = conn.execute("select id, state, error_type from jobs").fetchall()
    assert len(rows) == 1 and rows[0]["state"] == "FAILED"
    assert rows[0]["error_type"] == "urn:custos:problem:unavailable"
    assert _actions(tenant.id, str(rows[0]["id"])) == ["job.failed"]


def _started(tenant_id: str, job_id: str) -> list[dict[str, Any]]:
    with db.tenant_tx(tenant_id) as conn:
        rows = conn.execute("select after from audit_events where target_id = %s and action = 'job.started' "
                            "order by seq", (job_id,)).fetchall()
    return [r["after"] for r in rows]


def test_owner_kinds_are_sent_to_the_owner_queue_and_the_others_to_the_jobs_queue() -> None:
    settings = get_settings()
    assert settings.owner_jobs_queue != settings.jobs_queue
    assert jobs.queue_for("test.owner") == settings.owner_jobs_queue
    assert jobs.queue_for("test.count") == jobs.queue_for("export") == settings.jobs_queue


def test_the_owner_trigger_runs_an_owner_job_and_records_which_app_ran_it(tenant: Tenant) -> None:
    job = _job(tenant.id, "test.owner")
    assert jobs.run_message(jobs.message(job), owner=True) == "done"
    assert owner_calls[-1] == job.id and _row(tenant.id, job.id).state == jobs.State.DONE
    assert [e["app"] for e in _started(tenant.id, job.id)] == ["owner-jobs"]


def test_the_api_trigger_refuses_an_owner_job_without_running_it_and_audits_the_refusal(tenant: Tenant) -> None:
    """An owner job's message on the API app's queue (an older release sent it there, or
    someone by hand): the API app's role cannot cut, so the job fails at once, clearly."""
    job = _job(tenant.id, "test.owner")
    before = len(owner_calls)
    assert jobs.run_message(jobs.message(job)) == "refused"
    seen = _row(tenant.id, job.id)
    assert seen.state == jobs.State.FAILED and seen.error_type == "urn:custos:problem:job-wrong-app"
    assert seen.error_detail is not None and "owner-jobs app" in seen.error_detail
    assert seen.attempts == 0 and len(owner_calls) == before
    assert _actions(tenant.id, job.id) == ["job.failed"]
    assert jobs.run_message(jobs.message(job)) == "dropped"  # redelivered: acked, nothing more
    assert jobs.run_message(jobs.message(job), owner=True) == "dropped"  # the job failed: its own app does not run it either
    assert len(owner_calls) == before and _actions(tenant.id, job.id) == ["job.failed"]


def test_the_owner_trigger_refuses_an_api_job(tenant: Tenant) -> None:
    """The owner-jobs app runs as the schema owner: it must run nothing but the owner kinds."""
    job = _job(tenant.id, "test.count")
    before = len(calls)
    assert jobs.run_message(jobs.message(job), owner=True) == "refused"
    seen = _row(tenant.id, job.id)
    assert seen.state == jobs.State.FAILED and seen.error_type == "urn:custos:problem:job-wrong-app"
    assert len(calls) == before and _actions(tenant.id, job.id) == ["job.failed"]


def test_a_stray_message_for_an_owner_job_its_own_app_is_running_leaves_it_alone(tenant: Tenant) -> None:
    job = _job(tenant.id, "test.owner")
    claimed = jobs.claim(tenant.id, job.id, owner=True)
    assert claimed is not None
    assert jobs.run_message(jobs.message(job)) == "dropped"
    assert _row(tenant.id, job.id).state == jobs.State.RUNNING


def test_another_tenants_id_on_a_wrong_queue_message_fails_nothing(tenant: Tenant) -> None:
    """A forged message pairing a real owner job with another tenant's id cannot fail the job."""
    from shared.tenancy.tenants import create_tenant

    job = _job(tenant.id, "test.owner")
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    forged = json.dumps({"job_id": job.id, "tenant_id": other.id})
    assert jobs.run_message(forged) == "dropped"
    assert _row(tenant.id, job.id).state == jobs.State.QUEUED
