"""The restore drill on a small dataset: real pg_dump/pg_restore, real Azurite containers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.audit import chain as audit
from shared.audit import checkpoints
from shared.core import db, storage
from shared.core.errors import InvalidValue
from shared.lifecycle import drill
from shared.records import attachments
from shared.tenancy.tenants import Tenant

ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = os.environ["DATABASE_ADMIN_URL"]
APP_ROLE = os.environ.get("DATABASE_APP_ROLE", "custos_app")
ACTOR = audit.Actor(id=None, name="drill test", type="operator")


@pytest.fixture
def dataset(tenant: Tenant) -> dict[str, Any]:
    """A tenant with a few audit events, a signed checkpoint and two attachments."""
    with db.tenant_tx(tenant.id) as conn:
        for i in range(3):
            audit.append(conn, tenant_id=tenant.id, actor=ACTOR, action="drill.seed", target_id=str(i))
    checkpoints.checkpoint_tenant(tenant.id)
    shas = [attachments.store(tenant.id, f"drill {i} {uuid.uuid4()}".encode(), content_type="text/plain",
                              filename=f"{i}.txt").sha256 for i in range(2)]
    with db.tenant_tx(tenant.id) as conn:
        newest = conn.execute("select max(occurred_at) as at, count(*) as n from audit_events").fetchone()
    assert newest is not None
    return {"tenant": tenant, "shas": shas, "newest": newest["at"], "events": newest["n"]}


def _scratch_left(run: str) -> tuple[list[str], list[str]]:
    with psycopg.connect(ADMIN_URL) as conn:
        dbs = [r[0] for r in conn.execute("select datname from pg_database where datname like %s", (f"%{run}%",))]
    containers = [c.name for c in storage.blob_service().list_containers(name_starts_with=f"drill-{run}")]
    return dbs, containers


@pytest.mark.requirement("ALCOA+:Enduring", "ALCOA+:Available")
def test_the_drill_restores_and_verifies_a_small_dataset_and_measures_rpo(dataset: dict[str, Any]) -> None:
    tenant = dataset["tenant"]
    pinned = dataset["newest"] + timedelta(minutes=7)
    report = drill.run_drill(admin_url=ADMIN_URL, app_role=APP_ROLE, tenants=[tenant.id], now=lambda: pinned)

    assert report.failures == [] and report.ok
    assert report.tenants_verified == 1 and report.events == dataset["events"]
    assert report.blobs_verified == 2 and report.blobs_copied >= 3  # two attachments, one checkpoint at least
    assert report.newest_event == dataset["newest"]
    assert report.rpo_s == pytest.approx(420.0)
    assert [name for name, _ in report.phases] == ["pg_dump", "copy blob containers", "restore database",
                                                   "verify audit chains", "verify attachments", "clean up"]
    assert report.rto_s >= sum(s for name, s in report.phases if name.startswith(("pg_", "copy", "restore", "verify")))
    assert "RPO (now - newest restored event)  420.0 s" in report.table() and "PASS" in report.table()
    assert _scratch_left(report.run) == ([], [])


def test_a_blob_tampered_in_the_scratch_copy_fails_the_drill_with_a_clear_line(dataset: dict[str, Any]) -> None:
    tenant, sha = dataset["tenant"], dataset["shas"][0]
    name = attachments.blob_name(tenant.id, sha)

    def tamper(copies: dict[str, Any]) -> None:
        copies["attachments"].get_blob_client(name).upload_blob(b"not the original", overwrite=True)

    report = drill.run_drill(admin_url=ADMIN_URL, app_role=APP_ROLE, tenants=[tenant.id], after_copy=tamper)
    assert not report.ok
    assert [line.split(":")[0] for line in report.failures] == [f"attachment {name}"]
    assert "not its name" in report.failures[0] and "FAIL attachment" in report.table()
    # the source was never touched
    source = storage.blob_service().get_blob_client(attachments.CONTAINER, name)
    assert attachments.sha256_of([source.download_blob().readall()])[0] == sha


def test_a_forged_checkpoint_in_the_copied_container_is_reported(dataset: dict[str, Any]) -> None:
    tenant = dataset["tenant"]

    def forge(copies: dict[str, Any]) -> None:
        doc = {"tenant_id": tenant.id, "seq": 999, "checksum": "0" * 64, "created_at": "2030-01-01T00:00:00Z",
               "key_id": "forged", "signature": "AAAA"}
        copies["audit-checkpoints"].upload_blob(checkpoints.blob_name(tenant.id, 999), json.dumps(doc).encode())

    report = drill.run_drill(admin_url=ADMIN_URL, app_role=APP_ROLE, tenants=[tenant.id], after_copy=forge)
    assert any(line.startswith(f"chain {tenant.id}: checkpoint") and "rejected" in line for line in report.failures)


def test_a_tenant_not_in_the_restored_database_is_a_failure(dataset: dict[str, Any]) -> None:
    ghost = str(uuid.uuid4())
    report = drill.run_drill(admin_url=ADMIN_URL, app_role=APP_ROLE, tenants=[dataset["tenant"].id, ghost])
    assert report.failures == [f"tenant {ghost}: not in the restored database"]


def test_a_malformed_tenant_is_refused_before_anything_is_copied() -> None:
    before = {c.name for c in storage.blob_service().list_containers(name_starts_with="drill-")}
    with pytest.raises(InvalidValue):
        drill.run_drill(admin_url=ADMIN_URL, app_role=APP_ROLE, tenants=["x' or 1=1 --"])
    assert {c.name for c in storage.blob_service().list_containers(name_starts_with="drill-")} == before


def test_the_cli_prints_the_table_and_exits_non_zero_on_a_tampered_source_blob(dataset: dict[str, Any]) -> None:
    tenant, sha = dataset["tenant"], dataset["shas"][1]
    blob = storage.blob_service().get_blob_client(attachments.CONTAINER, attachments.blob_name(tenant.id, sha))
    original = blob.download_blob().readall()

    def cli(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shared.cli", "restore-drill", "--tenant", tenant.id, *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ.copy())

    ok = cli()
    assert ok.returncode == 0, ok.stderr
    assert "result" in ok.stdout and "PASS" in ok.stdout and "RTO (backup start - verified)" in ok.stdout

    blob.upload_blob(b"rewritten by someone with storage rights", overwrite=True)
    try:
        bad = cli()
    finally:
        blob.upload_blob(original, overwrite=True)
    assert bad.returncode == 2
    assert f"FAIL attachment {attachments.blob_name(tenant.id, sha)}: content hashes to" in bad.stdout
    assert json.loads(bad.stderr)["error"]["type"] == "urn:custos:problem:restore-drill-failed"

    kept = cli("--keep", "--format", "json")
    assert kept.returncode == 0, kept.stderr
    out = json.loads(kept.stdout)["drill"]
    assert out["ok"] and out["kept"]["database"].startswith("custos_drill_")
    try:
        assert _scratch_left(out["run"])[0] == [out["kept"]["database"]]
    finally:
        drill._clean_up(ADMIN_URL, out["kept"]["database"],
                        {c: storage.blob_service().get_container_client(c) for c in out["kept"]["containers"]})
