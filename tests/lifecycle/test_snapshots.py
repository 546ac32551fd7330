"""Attachment snapshots against real Azurite and PostgreSQL: runs, retention, restore (CLI)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from shared.audit import chain as audit
from shared.core import db, storage
from shared.lifecycle import snapshots
from shared.lifecycle.errors import SnapshotContentMismatch, SnapshotNotFound
from shared.records import attachments
from shared.tenancy.tenants import Tenant

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = audit.Actor(id=None, name="test operator", type="operator")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())


ORIGINALS: dict[str, bytes] = {}


def _store(tenant: Tenant, text: str) -> str:
    data = f"{text} {uuid.uuid4()}".encode()
    sha = attachments.store(tenant.id, data, content_type="text/plain", filename="a.txt").sha256
    ORIGINALS[sha] = data
    return sha


def _heal(tenant: Tenant, sha: str) -> None:
    """Put a test's tampered blob right again, so later runs (and tests) see a sound container."""
    _blob(tenant, sha).upload_blob(ORIGINALS[sha], overwrite=True)


def _blob(tenant: Tenant, sha256: str):  # noqa: ANN202 - azure's BlobClient, loaded lazily
    return storage.blob_service().get_blob_client(attachments.CONTAINER, attachments.blob_name(tenant.id, sha256))


def _sha(blob) -> str:  # noqa: ANN001
    return hashlib.sha256(blob.download_blob().readall()).hexdigest()


def _tamper(tenant: Tenant, sha256: str) -> None:
    """What an attacker with storage rights does: rewrite the content behind the name."""
    _blob(tenant, sha256).upload_blob(b"forged content " + uuid.uuid4().bytes, overwrite=True)


def _events(tenant: Tenant, action: str) -> list[dict]:
    with db.tenant_tx(tenant.id) as conn:
        rows = conn.execute("select seq, action, target_id, reason, before, after from audit_events"
                            " where action = %s order by seq", (action,)).fetchall()
    return [dict(r) for r in rows]


def _last_run() -> dict:
    with db.platform_tx() as conn:
        row = conn.execute("select * from snapshot_runs order by id desc limit 1").fetchone()
    assert row is not None
    return dict(row)


def test_a_run_snapshots_a_new_attachment_once_and_verifies_its_content(tenant: Tenant) -> None:
    snapshots.run()  # takes in whatever earlier tests left in the shared container (tampered blobs included)
    sha = _store(tenant, "first")
    assert snapshots.run().ok
    listed = snapshots.list_snapshots(tenant.id, blob=sha)
    assert [(s["sha256"], s["content_sha256"], s["verified"]) for s in listed] == [(sha, sha, True)]
    row = _last_run()
    assert row["snapshots_taken"] >= 1 and row["finished_at"] is not None and row["watermark"] is not None

    snapshots.run()  # unchanged since: no second snapshot of the same content
    assert len(snapshots.list_snapshots(tenant.id, blob=sha)) == 1
    assert _last_run()["since"] == row["watermark"]


@pytest.mark.requirement("21CFR11.10(c)", "ALCOA+:Enduring")
def test_a_rewritten_blob_fails_the_timer_and_a_restore_brings_the_content_back(
        tenant: Tenant, client: httpx.Client) -> None:
    sha = _store(tenant, "evidence")
    snapshots.run()
    good = snapshots.list_snapshots(tenant.id, blob=sha)[0]["snapshot"]
    _tamper(tenant, sha)

    resp = client.post("/admin/functions/snapshot_blobs", json={"input": ""})
    assert resp.status_code == 500, resp.text
    with db.platform_tx() as conn:
        beat = conn.execute("select ok, detail from job_heartbeats where name = 'snapshot_blobs'").fetchone()
    assert beat is not None and beat["ok"] is False and "mismatched" in beat["detail"]
    run = _last_run()
    assert run["ok"] is False and run["mismatched"] >= 1 and "content address" in run["error"]
    mismatch = _events(tenant, "integrity.attachment_mismatch")
    assert [e["target_id"] for e in mismatch] == [sha]
    evidence = [s for s in snapshots.list_snapshots(tenant.id, blob=sha) if not s["verified"]]
    assert len(evidence) == 1 and evidence[0]["content_sha256"] != sha

    dry = _cli("snapshots", "restore", "--tenant", tenant.id, "--blob", sha, "--snapshot", good,
               "--reason", "drill", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["restore"]["restored"] is False
    assert _sha(_blob(tenant, sha)) != sha  # a dry run changes nothing

    done = _cli("snapshots", "restore", "--tenant", tenant.id, "--blob", sha, "--snapshot", good,
                "--reason", "INC-42: attachment rewritten outside the app")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)["restore"]
    assert out["restored"] is True and out["restored_sha256"] == sha
    assert _sha(_blob(tenant, sha)) == sha
    [event] = _events(tenant, "attachment.restored_from_snapshot")
    assert event["reason"] == "INC-42: attachment rewritten outside the app" and event["target_id"] == sha
    assert event["after"] == {"sha256": sha, "snapshot": good}
    assert event["before"]["sha256"] == evidence[0]["content_sha256"]
    # the forged content replaced by the restore is kept as a snapshot too
    kept = {s["snapshot"] for s in snapshots.list_snapshots(tenant.id, blob=sha) if not s["verified"]}
    assert event["before"]["evidence_snapshot"] in kept

    # The restored blob is new content to the next run: snapshotted, verified, the timer healthy again.
    assert client.post("/admin/functions/snapshot_blobs", json={"input": ""}).status_code == 202
    with db.platform_tx() as conn:
        beat = conn.execute("select ok from job_heartbeats where name = 'snapshot_blobs'").fetchone()
    assert beat is not None and beat["ok"] is True
    assert sum(s["verified"] for s in snapshots.list_snapshots(tenant.id, blob=sha)) == 2


def test_restore_refuses_a_snapshot_whose_content_does_not_hash_to_the_name(tenant: Tenant) -> None:
    sha = _store(tenant, "forged snapshot")
    _tamper(tenant, sha)
    snapshots.run()
    [forged] = snapshots.list_snapshots(tenant.id, blob=sha)
    assert forged["verified"] is False
    before = _sha(_blob(tenant, sha))
    with pytest.raises(SnapshotContentMismatch):
        snapshots.restore(tenant.id, sha, forged["snapshot"], reason="try", actor=OPERATOR)
    assert _sha(_blob(tenant, sha)) == before
    assert _events(tenant, "attachment.restored_from_snapshot") == []

    cli = _cli("snapshots", "restore", "--tenant", tenant.id, "--blob", sha, "--snapshot", forged["snapshot"],
               "--reason", "try")
    assert cli.returncode == 2
    assert json.loads(cli.stderr)["error"]["type"] == "urn:custos:problem:snapshot-content-mismatch"
    _heal(tenant, sha)


def test_restore_cannot_reach_another_tenants_blob_or_a_made_up_snapshot(tenant: Tenant) -> None:
    from shared.tenancy.tenants import create_tenant

    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    theirs = _store(other, "theirs")
    snapshots.run()
    [their_snapshot] = snapshots.list_snapshots(other.id, blob=theirs)

    # Their blob named in full under our tenant: refused as input, not looked up.
    cli = _cli("snapshots", "restore", "--tenant", tenant.id, "--blob", attachments.blob_name(other.id, theirs),
               "--snapshot", their_snapshot["snapshot"], "--reason", "x")
    assert cli.returncode == 2 and json.loads(cli.stderr)["error"]["type"] == "urn:custos:problem:invalid-value"
    # Their hash under our tenant: our namespace holds no such snapshot.
    with pytest.raises(SnapshotNotFound):
        snapshots.restore(tenant.id, theirs, their_snapshot["snapshot"], reason="x", actor=OPERATOR)
    assert snapshots.list_snapshots(tenant.id, blob=theirs) == []
    # A well-formed snapshot id that does not exist, and garbage ones.
    with pytest.raises(SnapshotNotFound):
        snapshots.restore(other.id, theirs, "2001-01-01T00:00:00.0000000Z", reason="x", actor=OPERATOR)
    for bad in ("", "yesterday", "2001-01-01T00:00:00Z&comp=list", "../x"):
        cli = _cli("snapshots", "restore", "--tenant", other.id, "--blob", theirs, "--snapshot", bad, "--reason", "x")
        assert cli.returncode == 2 and json.loads(cli.stderr)["error"]["type"] == "urn:custos:problem:invalid-value"
    blank = _cli("snapshots", "restore", "--tenant", other.id, "--blob", theirs,
                 "--snapshot", their_snapshot["snapshot"], "--reason", "  ")
    assert blank.returncode == 2 and json.loads(blank.stderr)["error"]["type"] == "urn:custos:problem:blank-value"
    unknown = _cli("snapshots", "list", "--tenant", str(uuid.uuid4()))
    assert unknown.returncode == 2 and json.loads(unknown.stderr)["error"]["type"] == "urn:custos:problem:not-found"
    assert _events(other, "attachment.restored_from_snapshot") == []


def test_retention_deletes_old_snapshots_but_keeps_the_newest_verified_one(tenant: Tenant) -> None:
    sha = _store(tenant, "kept")
    snapshots.run()
    _tamper(tenant, sha)
    snapshots.run()
    listed = snapshots.list_snapshots(tenant.id, blob=sha)
    assert sorted(s["verified"] for s in listed) == [False, True]

    snapshots.run(now=datetime.now(UTC) + timedelta(days=10))  # inside retention: nothing goes
    assert len(snapshots.list_snapshots(tenant.id, blob=sha)) == 2

    snapshots.run(now=datetime.now(UTC) + timedelta(days=400))
    [kept] = snapshots.list_snapshots(tenant.id, blob=sha)
    assert kept["verified"] is True and kept["content_sha256"] == sha
    assert _blob(tenant, sha).exists()  # never the base blob
    # The kept copy is what makes a late restore possible.
    assert snapshots.restore(tenant.id, sha, kept["snapshot"], reason="late find", actor=OPERATOR)["restored"]
    assert _sha(_blob(tenant, sha)) == sha


def test_a_run_does_nothing_while_another_is_under_way_unless_that_one_is_stale(tenant: Tenant) -> None:
    """Two runs at once (a second instance's timer, a manual run) would snapshot the same blobs
    twice: the second finds the first's unfinished row and does nothing; a row left unfinished
    by a worker that died stops blocking after RUN_STALE_AFTER."""
    snapshots.run()
    sha = _store(tenant, "while another runs")
    with db.platform_tx() as conn:
        running = conn.execute("insert into snapshot_runs (watermark) values (now()) returning id").fetchone()["id"]
    try:
        with pytest.raises(snapshots.SnapshotRunInProgress):
            snapshots.run()
        assert snapshots.scheduled_run() is None
        assert snapshots.list_snapshots(tenant.id, blob=sha) == []
        with db.platform_tx() as conn:  # the worker of that run died hours ago
            conn.execute("update snapshot_runs set started_at = now() - %s - interval '1 minute' where id = %s",
                         (snapshots.RUN_STALE_AFTER, running))
        assert snapshots.run().ok
        assert len(snapshots.list_snapshots(tenant.id, blob=sha)) == 1
    finally:
        with db.platform_tx() as conn:
            conn.execute("update snapshot_runs set finished_at = greatest(now(), started_at), ok = false,"
                         " error = 'test' where id = %s and finished_at is null", (running,))


def test_a_run_starting_while_another_is_being_recorded_waits_for_it_and_does_nothing() -> None:
    """Starting a run is serialised: while another start holds the lock and has not committed
    its row (which a second start could not see yet), the second waits, then sees it."""
    from concurrent.futures import ThreadPoolExecutor

    running = None
    try:
        with ThreadPoolExecutor(1) as pool:
            with db.platform_tx() as conn:
                conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (snapshots.RUN_LOCK,))
                running = conn.execute("insert into snapshot_runs (watermark) values (now()) returning id").fetchone()["id"]
                second = pool.submit(snapshots._start_run)
                time.sleep(0.5)
                assert not second.done()  # waiting for the lock, not racing past the uncommitted row
            with pytest.raises(snapshots.SnapshotRunInProgress):
                second.result(timeout=10)
    finally:
        with db.platform_tx() as c:
            c.execute("update snapshot_runs set finished_at = greatest(now(), started_at), ok = false, error = 'test'"
                      " where id = %s and finished_at is null", (running,))
