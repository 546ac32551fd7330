"""The purge of a cancelled tenant: everything of it goes, other tenants stay, the attestation
verifies offline, a purge stopped half way resumes with the right totals, nothing happens early."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from shared.audit import chain as audit
from shared.audit import checkpoints
from shared.core import db, storage
from shared.identity.mfa import passkeys
from shared.lifecycle import purge
from shared.lifecycle.errors import PurgeNotDue
from shared.tenancy.tenants import Tenant, cancel_tenant, get_tenant
from tests.conftest import PersonFactory, auth, create_session_row
from tests.records.test_records import attach
from tests.records.test_signatures import new_record, person, sign

ROOT = Path(__file__).resolve().parents[2]
OPS = audit.Actor(None, "ops", "operator")


def _admin() -> psycopg.Connection[dict[str, Any]]:
    """A superuser connection: sees every row whatever row-level security says, to count."""
    return psycopg.connect(os.environ["DATABASE_ADMIN_URL"], autocommit=True, row_factory=dict_row)


def rows_of(tenant_id: str) -> dict[str, int]:
    """Rows of the tenant in every table with a tenant_id column, from the catalog."""
    with _admin() as conn:
        tables = [r["table_name"] for r in conn.execute(
            """select table_name from information_schema.columns
                where table_schema = current_schema() and column_name = 'tenant_id'""").fetchall()]
        return {t: conn.execute(f'select count(*) as n from "{t}" where tenant_id = %s', (tenant_id,)).fetchone()["n"]
                for t in tables}


def blobs_of(tenant_id: str) -> dict[str, list[str]]:
    """Every blob of every container whose name mentions the tenant anywhere."""
    service = storage.blob_service()
    return {c: sorted(b.name for b in service.get_container_client(c).list_blobs() if tenant_id in b.name)
            for c in (c.name for c in service.list_containers())}


def entities_of(tenant_id: str) -> dict[str, int]:
    service = storage.table_service()
    return {t.name: sum(1 for e in service.get_table_client(t.name).list_entities() if tenant_id in json.dumps(e, default=str))
            for t in service.list_tables()}


def populate(client: httpx.Client, tenant: Tenant, make_person: PersonFactory, *, extra_blobs: bool = True) -> dict[str, Any]:
    """Users (with TOTP), sessions, a signed record with an attachment, settings, a passkey
    challenge, a checkpoint, and blobs in the export and snapshot containers."""
    author = person(make_person, tenant, "OPERATOR", "Alice Author")
    admin = person(make_person, tenant, "ADMIN", "Ada Admin")
    create_session_row(tenant.id, admin.id)
    rec = new_record(client, author)
    assert sign(client, author, rec["id"], 1, "AUTHORED", "authorship").status_code == 201
    data = f"report of {tenant.id}".encode()
    assert attach(client, author, rec["id"], data).status_code in (200, 201)
    put = client.put("/api/tenant/settings/ui.theme", json={"value": "dark", "reason": "preference"},
                     headers=auth(admin.token))
    with db.tenant_tx(tenant.id) as conn:
        if put.status_code >= 300:  # the settings route's shape is not what this test is about
            conn.execute("insert into tenant_settings (tenant_id, key, value) values (%s, 'ui.theme', '\"dark\"')",
                         (tenant.id,))
    passkeys.new_challenge(purpose="register", tenant_id=tenant.id, user_id=admin.id)
    checkpoints.checkpoint_tenant(tenant.id)
    if extra_blobs:
        service = storage.blob_service()
        service.get_blob_client("exports", f"{tenant.id}/export-1.zip").upload_blob(b"zip", overwrite=True)
        service.get_blob_client("snapshots", f"tenants/{tenant.id}/snap/1.json").upload_blob(b"{}", overwrite=True)
    return {"admin": admin, "author": author, "record": rec}


def make_due(tenant_id: str) -> None:
    """Time injected into the data: the tenant was cancelled 31 days ago, its purge date passed a
    day ago. (Calling the timer with a far-future `now` would also purge other tests' tenants.)"""
    with _admin() as conn:
        conn.execute("update tenants set cancelled_at = now() - interval '31 days',"
                     " purge_after = now() - interval '1 day' where id = %s", (tenant_id,))


def with_purge_start(before: dict[str, int]) -> dict[str, int]:
    """The counts a purge deletes: what was there, plus its own last event and that event's checkpoint log row."""
    return {t: n for t, n in {**before, "audit_events": before["audit_events"] + 1,
                              "audit_checkpoint_log": before["audit_checkpoint_log"] + 1}.items() if n}


def cancel(tenant: Tenant) -> Tenant:
    done = cancel_tenant(tenant.id, reason="contract ended", actor=OPS, meta=None)
    assert done.purge_after is not None and done.purge_after - done.cancelled_at == timedelta(days=30)  # type: ignore[operator]
    return done


@pytest.fixture
def other(tenant: Tenant) -> Tenant:
    from shared.tenancy.tenants import create_tenant

    with db.platform_tx() as conn:
        return create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other Tenant", region="uksouth")


def offline(tmp_path: Path, doc: dict[str, Any], client: httpx.Client) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"att-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(doc))
    keys = tmp_path / "keys.json"
    keys.write_text(client.get("/.well-known/audit-keys.json").text)
    return subprocess.run([sys.executable, str(ROOT / "tools" / "verify_attestation.py"), str(path), "--keys", str(keys)],
                          capture_output=True, text=True, timeout=60)


def test_a_due_tenant_is_purged_completely_attested_and_other_tenants_are_untouched(
    client: httpx.Client, tenant: Tenant, other: Tenant, make_person: PersonFactory, tmp_path: Path
) -> None:
    victim = populate(client, tenant, make_person)
    kept = populate(client, other, make_person)
    cancelled = cancel(tenant)
    before = rows_of(tenant.id)
    other_before, other_blobs, other_entities = rows_of(other.id), blobs_of(other.id), entities_of(other.id)
    victim_blobs = blobs_of(tenant.id)
    assert before["users"] >= 2 and before["signatures"] == 1 and before["audit_events"] > 3 and before["mfa_totp"] >= 1
    assert victim_blobs["attachments"] and victim_blobs["exports"] and victim_blobs["audit-checkpoints"]
    assert entities_of(tenant.id)["webauthnchallenges"] == 1

    make_due(tenant.id)
    results = purge.purge_due()

    # (a tenant another test left due would be purged too: the timer purges them all)
    mine = [r for r in results if r.tenant_id == tenant.id]
    assert len(mine) == 1 and other.id not in [r.tenant_id for r in results]
    doc = mine[0].attestation
    # nothing of the tenant remains in any table with a tenant_id, or in storage but WORM blobs
    assert {t: n for t, n in rows_of(tenant.id).items() if n} == {}
    after = blobs_of(tenant.id)
    # WORM: kept, and said so; the purge signed the final head as one more checkpoint
    assert set(victim_blobs["audit-checkpoints"]) < set(after["audit-checkpoints"])
    assert after["attestations"] == [purge.attestation_blob_name(tenant.id)]
    assert {c: n for c, n in after.items() if n and c not in purge.WORM_CONTAINERS} == {}
    assert {t: n for t, n in entities_of(tenant.id).items() if n} == {}
    # the attestation counts what was there: every row, every blob, by name
    assert {t: n for t, n in doc["rows_deleted"].items() if n} == with_purge_start(before)
    deleted_names = [f"{c}/{n}" for c, ns in victim_blobs.items() if c not in purge.WORM_CONTAINERS for n in ns]
    assert doc["blobs"]["deleted"] == {
        "count": len(deleted_names), "names_sha256": purge.names_hash(deleted_names),
        "containers": {c: len(victim_blobs.get(c, [])) for c in storage.CONTAINERS if c not in purge.WORM_CONTAINERS},
    }
    assert doc["blobs"]["retained"] == [{
        "container": "audit-checkpoints", "count": len(after["audit-checkpoints"]),
        "names_sha256": purge.names_hash([f"audit-checkpoints/{n}" for n in after["audit-checkpoints"]]),
        "reason": purge.WORM_CONTAINERS["audit-checkpoints"]}]
    assert doc["table_entities"]["deleted"]["webauthnchallenges"] == 1
    head = doc["audit_chain"]["final_head"]
    assert head["seq"] == before["audit_events"] + 1 and doc["audit_chain"]["newest_checkpoint"]["checksum"] == head["checksum"]
    assert doc["slug"] == tenant.slug and doc["tenant_id"] == tenant.id
    assert doc["audit_chain"]["verified"] == {"valid": True, "events_checked": head["seq"], "first_failure": None}
    assert doc["cancelled_at"] < doc["purge_after"] <= doc["purge_started_at"] <= doc["purged_at"]
    # the tenant is PURGED, can no longer sign in, and the platform chain and outbox say so
    assert get_tenant(tenant.id).status == "PURGED"  # type: ignore[union-attr]
    assert client.get("/api/records", headers=auth(victim["admin"].token)).status_code == 401
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        events = audit.list_events(conn, action="tenant.purged", target_id=tenant.id)
        mails = conn.execute("select to_address, body from outbox where tenant_id = %s and kind = 'tenant_purged'",
                             (audit.PLATFORM_CHAIN,)).fetchall()
    assert len(events) == 1 and events[0]["after"]["attestation_blob"] == purge.attestation_blob_name(tenant.id)
    assert [m["to_address"] for m in mails if tenant.slug in m["body"]] == [victim["admin"].email]
    # the stored blob is the returned document, and it verifies offline with the published keys
    stored = json.loads(storage.blob_service().get_blob_client("attestations", mine[0].attestation_blob)
                        .download_blob().readall())
    assert stored == doc
    out = offline(tmp_path, stored, client)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["rows_deleted_total"] == sum(with_purge_start(before).values())
    # the other tenant: every row, blob and entity still there, its chain verifies
    assert rows_of(other.id) == other_before and blobs_of(other.id) == other_blobs
    assert entities_of(other.id) == other_entities
    assert checkpoints.verify_tenant(other.id, full=True).valid
    sha = kept["record"]["id"]
    assert client.get(f"/api/records/{sha}", headers=auth(kept["author"].token)).status_code == 200
    # running again changes nothing and returns the same attestation
    assert purge.purge_tenant(tenant.id).attestation == doc
    assert tenant.id not in purge.due_tenants()
    assert cancelled.status == "CANCELLED"


def test_a_tampered_or_forged_attestation_fails_offline(client: httpx.Client, tenant: Tenant,
                                                         make_person: PersonFactory, tmp_path: Path) -> None:
    populate(client, tenant, make_person, extra_blobs=False)
    cancelled = cancel(tenant)
    doc = purge.purge_tenant(tenant.id, now=cancelled.purge_after).attestation
    assert offline(tmp_path, doc, client).returncode == 0
    # a count lowered, its total kept consistent: only the signature catches it
    fewer = json.loads(json.dumps(doc))
    fewer["rows_deleted"]["users"] -= 1
    fewer["rows_deleted_total"] -= 1
    out = offline(tmp_path, fewer, client)
    assert out.returncode == 1 and "signature does not verify" in json.loads(out.stdout)["reason"]
    # moved to another tenant
    moved = {**doc, "tenant_id": str(uuid.uuid4())}
    assert offline(tmp_path, moved, client).returncode == 1
    # signed by a key that is not published
    import base64

    from cryptography.hazmat.primitives.asymmetric import ed25519

    forged = {**doc, "key_id": "not-published"}
    body = purge.signed_payload(forged)
    forged["signature"] = base64.urlsafe_b64encode(ed25519.Ed25519PrivateKey.generate().sign(body)).rstrip(b"=").decode()
    out = offline(tmp_path, forged, client)
    assert out.returncode == 1 and "not among the given keys" in json.loads(out.stdout)["reason"]
    # a planted blob at the attestation's name is not taken for the attestation
    with pytest.raises(ValueError):
        purge.check_attestation(fewer, expected_tenant_id=tenant.id)


def test_a_purge_stopped_half_way_resumes_and_reports_the_full_totals(
    client: httpx.Client, tenant: Tenant, other: Tenant, make_person: PersonFactory
) -> None:
    populate(client, tenant, make_person)
    populate(client, other, make_person, extra_blobs=False)
    cancelled = cancel(tenant)
    before = rows_of(tenant.id)
    other_before = rows_of(other.id)
    batches: list[tuple[str, int]] = []

    def die_after_five(table: str, deleted: int) -> None:
        batches.append((table, deleted))
        if len(batches) == 5:
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        purge.purge_tenant(tenant.id, now=cancelled.purge_after, batch_rows=1, on_batch=die_after_five)
    half = rows_of(tenant.id)
    assert get_tenant(tenant.id).status == "PURGING"  # type: ignore[union-attr]
    assert 0 < sum(half.values()) < sum(before.values())  # some rows gone, some left
    # PURGING: no sign-in, no reads of half a tenant; the checkpoint and verify timers skip it
    assert tenant.id not in checkpoints.chain_ids()

    result = purge.purge_due()  # the next timer run resumes it (the purge date is long past by then)

    result = [r for r in result if r.tenant_id == tenant.id]
    assert len(result) == 1
    assert {t: n for t, n in rows_of(tenant.id).items() if n} == {}
    assert {t: n for t, n in result[0].attestation["rows_deleted"].items() if n} == with_purge_start(before)
    assert rows_of(other.id) == other_before


def test_nothing_is_purged_before_the_date_or_while_active(client: httpx.Client, tenant: Tenant, other: Tenant,
                                                          make_person: PersonFactory) -> None:
    populate(client, tenant, make_person, extra_blobs=False)
    cancelled = cancel(tenant)
    before, blobs = rows_of(tenant.id), blobs_of(tenant.id)
    early = cancelled.purge_after - timedelta(seconds=1)  # type: ignore[operator]
    assert tenant.id not in purge.due_tenants(now=early)
    with pytest.raises(PurgeNotDue):
        purge.purge_tenant(tenant.id, now=early)
    with pytest.raises(PurgeNotDue):
        purge.purge_tenant(other.id, now=cancelled.purge_after + timedelta(days=400))  # type: ignore[operator]
    with pytest.raises(PurgeNotDue):
        purge.purge_tenant(str(uuid.uuid4()))
    assert rows_of(tenant.id) == before and blobs_of(tenant.id) == blobs
    assert get_tenant(tenant.id).status == "CANCELLED" and get_tenant(other.id).status == "ACTIVE"  # type: ignore[union-attr]


def test_only_the_purge_of_a_purging_tenant_may_delete_immutable_rows(client: httpx.Client, tenant: Tenant,
                                                                     make_person: PersonFactory) -> None:
    populate(client, tenant, make_person, extra_blobs=False)
    cancel(tenant)
    owner = psycopg.connect(os.environ["DATABASE_OWNER_URL"], autocommit=True, row_factory=dict_row)
    with owner:
        # the owner, naming the tenant, but the tenant is only CANCELLED: refused
        with pytest.raises(psycopg.errors.InsufficientPrivilege), owner.transaction():
            owner.execute("select set_config('app.tenant_id', %s, true), set_config('custos.purge_tenant', %s, true)",
                          (tenant.id, tenant.id))
            owner.execute("delete from signatures where tenant_id = %s", (tenant.id,))
    # the app role may not move a tenant into the purge states
    with pytest.raises(Exception, match="purge"), db.tenant_tx(tenant.id) as conn:
        conn.execute("update tenants set status = 'PURGING' where id = %s", (tenant.id,))
    assert rows_of(tenant.id)["signatures"] == 1


def test_the_purge_timer_runs_on_demand_and_records_its_heartbeat(client: httpx.Client) -> None:
    assert client.post("/admin/functions/purge_cancelled_tenants").status_code == 202
    with db.platform_tx() as conn:
        beat = conn.execute("select ok from job_heartbeats where name = 'purge_cancelled_tenants'").fetchone()
    assert beat is not None


KILLER = """
import os, signal, sys
from shared.lifecycle import purge
done = []
def kill(table, deleted):
    done.append(table)
    if len(done) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no rollback handler: a worker killed
purge.purge_tenant(sys.argv[1], batch_rows=1, on_batch=kill)
"""


def test_a_purge_whose_worker_is_killed_mid_batch_resumes_with_exact_totals(
    client: httpx.Client, tenant: Tenant, make_person: PersonFactory
) -> None:
    populate(client, tenant, make_person)
    cancel(tenant)
    make_due(tenant.id)
    before = rows_of(tenant.id)
    killed = subprocess.run([sys.executable, "-c", KILLER, tenant.id, "9"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert get_tenant(tenant.id).status == "PURGING"  # type: ignore[union-attr]
    assert 0 < sum(rows_of(tenant.id).values()) < sum(with_purge_start(before).values())

    again = purge.purge_tenant(tenant.id)

    assert {t: n for t, n in rows_of(tenant.id).items() if n} == {}
    assert {t: n for t, n in again.attestation["rows_deleted"].items() if n} == with_purge_start(before)


def test_tables_are_found_in_the_catalog_and_deleted_children_first() -> None:
    """A table a future migration adds is purged with no code change, before the table it references."""
    with psycopg.connect(os.environ["DATABASE_OWNER_URL"], autocommit=True, row_factory=dict_row) as conn:
        with pytest.raises(_Rollback), conn.transaction():
            conn.execute("""create table zz_future_notes (tenant_id uuid not null, user_id uuid not null,
                              foreign key (tenant_id, user_id) references users (tenant_id, id))""")
            conn.execute("create table aa_future_replies (tenant_id uuid not null, note int)")
            order = purge.tenant_tables(conn)
            raise _Rollback
    assert {"zz_future_notes", "aa_future_replies", "users", "audit_events", "signatures"} <= set(order)
    assert order.index("zz_future_notes") < order.index("users")
    assert order.index("signatures") < order.index("record_versions") < order.index("records")
    assert order.index("sessions") < order.index("users") and "tenants" not in order and "tenant_purges" not in order


class _Rollback(Exception):
    pass


def test_a_tampered_chain_is_still_purged_and_the_attestation_says_it_did_not_verify(
    client: httpx.Client, tenant: Tenant, make_person: PersonFactory
) -> None:
    populate(client, tenant, make_person, extra_blobs=False)
    cancel(tenant)
    with _admin() as conn, conn.transaction():
        conn.execute("alter table audit_events disable trigger audit_events_no_update")
        conn.execute("update audit_events set reason = 'rewritten' where tenant_id = %s and seq = 2", (tenant.id,))
        conn.execute("alter table audit_events enable trigger audit_events_no_update")
    make_due(tenant.id)

    doc = purge.purge_tenant(tenant.id).attestation

    verified = doc["audit_chain"]["verified"]
    assert verified["valid"] is False and verified["first_failure"]["seq"] == 2
    # (an edit before the newest checkpoint is caught only by the full walk, which the purge runs)
    assert {t: n for t, n in rows_of(tenant.id).items() if n} == {}


def test_two_purges_of_one_tenant_never_run_at_once(client: httpx.Client, tenant: Tenant,
                                                     make_person: PersonFactory) -> None:
    from shared.lifecycle.errors import PurgeInProgress

    populate(client, tenant, make_person, extra_blobs=False)
    cancel(tenant)
    make_due(tenant.id)
    before = rows_of(tenant.id)
    with psycopg.connect(os.environ["DATABASE_OWNER_URL"], autocommit=True) as other_worker:
        other_worker.execute("select pg_advisory_lock(hashtextextended('custos.purge:' || %s, 0))", (tenant.id,))
        with pytest.raises(PurgeInProgress):
            purge.purge_tenant(tenant.id)
        assert tenant.id not in [r.tenant_id for r in purge.purge_due()]  # skipped, not failed
        assert rows_of(tenant.id) == before and get_tenant(tenant.id).status == "CANCELLED"  # type: ignore[union-attr]
    # the lock goes with the connection that held it (a dead worker's too)
    assert purge.purge_tenant(tenant.id).tenant_id == tenant.id
