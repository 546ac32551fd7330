"""The audit retention cut under attack: the oldest events archived and removed only up to a
signed retention checkpoint, with verify (API and offline) still proving the rest, and every
forged cut, extra deletion or edit after it still caught."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ed25519

from shared.audit import chain as audit
from shared.audit import checkpoints, retention
from shared.core import db, storage
from shared.core.settings import get_settings
from shared.tenancy.tenants import Tenant, create_tenant
from tests.audit.test_chain import add_events, checkpoint_now
from tests.conftest import ROOT, TokenFactory, auth

WINDOW = get_settings().audit_retention_min_days


@contextmanager
def superuser() -> Iterator[psycopg.Connection]:
    """A database superuser with the append-only triggers disabled: what retention must not be mistaken for."""
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"]) as conn:
        conn.execute("alter table audit_events disable trigger user")
        yield conn
        conn.execute("alter table audit_events enable trigger user")


def occurred(tenant_id: str, seq: int) -> datetime:
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute("select occurred_at from audit_events where seq = %s", (seq,)).fetchone()
    assert row is not None
    return row["occurred_at"]


def just_after(tenant_id: str, seq: int) -> datetime:
    """A `now` at which event `seq` is the newest event older than the minimum window."""
    return occurred(tenant_id, seq) + timedelta(days=WINDOW, microseconds=1)


def seqs(tenant_id: str) -> list[int]:
    with db.tenant_tx(tenant_id) as conn:
        return [r["seq"] for r in conn.execute("select seq from audit_events order by seq").fetchall()]


def verify(client: httpx.Client, tenant_id: str, token: str, *, full: bool) -> dict[str, Any]:
    resp = client.get("/api/audit/verify", params={"full": str(full).lower()}, headers=auth(token))
    assert resp.status_code == 200, resp.text
    return resp.json()


def failure_code(client: httpx.Client, tenant_id: str, token: str, *, full: bool = True) -> str | None:
    result = verify(client, tenant_id, token, full=full)
    return None if result["valid"] else result["first_failure"]["code"]


@pytest.fixture
def cut(client: httpx.Client, tenant: Tenant) -> retention.Cut:
    """A tenant with events 1..6 signed, 7..9 not yet, cut at 6 (the newest signed event)."""
    add_events(tenant.id, 5)
    checkpoint_now(client)
    add_events(tenant.id, 3)
    made = retention.cut_tenant(tenant.id, window_days=WINDOW, now=just_after(tenant.id, 9))
    assert made is not None
    return made


def published_keys(client: httpx.Client) -> dict[str, ed25519.Ed25519PublicKey]:
    keys = {}
    for jwk in client.get("/.well-known/audit-keys.json").json()["keys"]:
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        keys[jwk["kid"]] = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    return keys


def blob_bytes(container: str, name: str) -> bytes:
    return storage.blob_service().get_blob_client(container, name).download_blob().readall()


def forged_retention(tenant_id: str, seq: int, checksum: str) -> dict[str, Any]:
    """A retention checkpoint that looks right but is signed by a key that is not ours."""
    key = ed25519.Ed25519PrivateKey.generate()
    doc = {"tenant_id": tenant_id, "seq": seq, "checksum": checksum, "kind": checkpoints.RETENTION_KIND,
           "key_id": checkpoints.audit_keys().signing_kid, "from_seq": 1, "cut_at": "2030-01-01T00:00:00.000000Z"}
    doc["signature"] = base64.urlsafe_b64encode(key.sign(rfc8785.dumps(doc))).rstrip(b"=").decode()
    return doc


def plant_retention(tenant_id: str, seq: int, doc: dict[str, Any]) -> None:
    storage.blob_service().get_blob_client(
        checkpoints.CONTAINER, checkpoints.retention_blob_name(tenant_id, seq)
    ).upload_blob(json.dumps(doc).encode(), overwrite=True)


def export_files(client: httpx.Client, tenant_id: str, token: str, tmp_path: Path) -> tuple[Path, Path]:
    resp = client.get("/api/audit/export", headers=auth(token))
    assert resp.status_code == 200, resp.text
    export, keys = tmp_path / "export.jsonl", tmp_path / "keys.json"
    export.write_bytes(resp.content)
    keys.write_text(client.get("/.well-known/audit-keys.json").text)
    return export, keys


def offline(export: Path, keys: Path, *archives: Path) -> subprocess.CompletedProcess[str]:
    extra = [arg for a in archives for arg in ("--archive", str(a))]
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "verify_audit_export.py"), str(export), "--keys", str(keys), *extra],
        capture_output=True, text=True, timeout=60,
    )


# --- the cut ---------------------------------------------------------------------------------


def test_nothing_is_cut_without_a_signed_checkpoint(tenant: Tenant) -> None:
    add_events(tenant.id, 3)
    assert retention.cut_tenant(tenant.id, window_days=WINDOW, now=just_after(tenant.id, 4)) is None
    assert seqs(tenant.id) == [1, 2, 3, 4]


def test_nothing_is_cut_before_the_window(client: httpx.Client, tenant: Tenant) -> None:
    add_events(tenant.id, 3)
    checkpoint_now(client)
    # One microsecond short of the window for the first event: nothing is old enough.
    now = occurred(tenant.id, 1) + timedelta(days=WINDOW)
    assert retention.cut_tenant(tenant.id, window_days=WINDOW, now=now) is None
    assert seqs(tenant.id) == [1, 2, 3, 4]


def test_a_window_below_the_platform_minimum_is_held_to_it(client: httpx.Client, tenant: Tenant) -> None:
    add_events(tenant.id, 3)
    checkpoint_now(client)
    # A stored window of 1 day (set before the minimum was raised) at a time 2 days on cuts nothing.
    assert retention.cut_tenant(tenant.id, window_days=1, now=occurred(tenant.id, 4) + timedelta(days=2)) is None
    assert seqs(tenant.id) == [1, 2, 3, 4]


def test_cut_stops_at_the_window(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    add_events(tenant.id, 5)
    checkpoint_now(client)
    made = retention.cut_tenant(tenant.id, window_days=WINDOW, now=just_after(tenant.id, 3))
    assert made is not None and (made.from_seq, made.seq) == (1, 3)
    assert seqs(tenant.id)[:4] == [4, 5, 6, 7]  # 7: the cut's own event
    token = make_token(tenant.id, "VIEWER")
    assert verify(client, tenant.id, token, full=True)["valid"] is True


def test_cut_never_passes_the_newest_signed_checkpoint(cut: retention.Cut) -> None:
    # Events 7..9 are older than the window too, but were never signed: they stay.
    assert cut.seq == 6
    assert seqs(cut.tenant_id) == [7, 8, 9, 10]


def test_cut_keeps_verify_valid_through_the_api(client: httpx.Client, cut: retention.Cut,
                                                make_token: TokenFactory) -> None:
    token = make_token(cut.tenant_id, "VIEWER")
    full = verify(client, cut.tenant_id, token, full=True)
    assert full["valid"] is True and full["from_seq"] == 7 and full["head"]["seq"] >= 10
    assert verify(client, cut.tenant_id, token, full=False)["valid"] is True
    # The checkpoint timer carries on from the cut, and verify agrees with what it signs.
    checkpoint_now(client)
    newest = checkpoints.newest_signed(cut.tenant_id).ref
    assert newest is not None and newest.seq == seqs(cut.tenant_id)[-1]
    incremental = verify(client, cut.tenant_id, token, full=False)
    assert incremental["valid"] is True and incremental["from_seq"] == newest.seq


def test_the_cut_is_recorded_in_the_chain_and_the_index(cut: retention.Cut) -> None:
    with db.tenant_tx(cut.tenant_id) as conn:
        events = audit.list_events(conn, action="audit.retention_cut")
        row = conn.execute("select seq, from_seq, checksum, archive_blob from audit_retention_cuts").fetchone()
    assert [(e["after"]["from_seq"], e["after"]["seq"], e["actor_type"]) for e in events] == [(1, 6, "timer")]
    assert row is not None and (row["from_seq"], row["seq"], row["checksum"]) == (1, 6, cut.checksum)
    assert row["archive_blob"] == retention.archive_name(cut.tenant_id, 1, 6)
    # The cut's own event is signed at once, so the chain can no longer end at the cut unnoticed.
    newest = checkpoints.newest_signed(cut.tenant_id).ref
    assert newest is not None and newest.seq == events[0]["seq"] == 10


def test_removing_everything_after_the_cut_is_caught(client: httpx.Client, cut: retention.Cut,
                                                     make_token: TokenFactory) -> None:
    with superuser() as conn:
        conn.execute("delete from audit_events where tenant_id = %s", (cut.tenant_id,))
    result = verify(client, cut.tenant_id, make_token(cut.tenant_id, "VIEWER"), full=True)
    assert not result["valid"] and result["first_failure"]["code"] == "chain_truncated"
    assert result["first_failure"]["seq"] == 7


def test_archive_holds_the_removed_events_its_hash_and_signature_verify(client: httpx.Client,
                                                                          cut: retention.Cut) -> None:
    data = blob_bytes(retention.ARCHIVE_CONTAINER, cut.archive)
    assert cut.archive == f"tenants/{cut.tenant_id}/audit-retention/{1:020d}-{6:020d}.jsonl"
    assert hashlib.sha256(data).hexdigest() == cut.archive_sha256
    lines = [json.loads(line) for line in data.splitlines()]
    events = [line for line in lines if line["type"] == "event"]
    # Re-derived independently with rfc8785: events 1..6 link from genesis to the signed checksum.
    previous = audit.GENESIS
    for expected, event in enumerate(events, start=1):
        fields = {name: event[name] for name in audit.FIELDS}
        assert event["seq"] == expected and event["previous_checksum"] == previous
        previous = hashlib.sha256(rfc8785.dumps(fields)).hexdigest()
        assert previous == event["checksum"]
    assert len(events) == 6 and previous == cut.checksum
    doc = json.loads(blob_bytes(checkpoints.CONTAINER, cut.checkpoint_blob))
    manifest = json.loads(blob_bytes(retention.ARCHIVE_CONTAINER, retention.manifest_name(cut.tenant_id, 1, 6)))
    assert manifest == doc
    assert (doc["seq"], doc["checksum"], doc["archive"]["sha256"]) == (6, cut.checksum, cut.archive_sha256)
    signature = base64.urlsafe_b64decode(doc["signature"] + "=" * (-len(doc["signature"]) % 4))
    payload = rfc8785.dumps({k: v for k, v in doc.items() if k != "signature"})
    published_keys(client)[doc["key_id"]].verify(signature, payload)  # raises if it does not verify


def test_offline_verifier_proves_the_chain_after_a_cut(client: httpx.Client, cut: retention.Cut,
                                                       make_token: TokenFactory, tmp_path: Path) -> None:
    export, keys = export_files(client, cut.tenant_id, make_token(cut.tenant_id, "ADMIN"), tmp_path)
    out = offline(export, keys)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["from_seq"] == 7 and summary["retention_cuts"] == 1
    # With the archive, the whole chain from genesis.
    archive = tmp_path / "archive.jsonl"
    archive.write_bytes(blob_bytes(retention.ARCHIVE_CONTAINER, cut.archive))
    out = offline(export, keys, archive)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["from_seq"] == 1


def test_offline_verifier_rejects_an_export_missing_the_event_after_the_cut(
    client: httpx.Client, cut: retention.Cut, make_token: TokenFactory, tmp_path: Path
) -> None:
    export, keys = export_files(client, cut.tenant_id, make_token(cut.tenant_id, "ADMIN"), tmp_path)
    lines = export.read_text().splitlines()
    export.write_text("\n".join(line for line in lines if '"seq":7,' not in line or '"type":"event"' not in line))
    out = offline(export, keys)
    assert out.returncode == 1 and json.loads(out.stdout)["first_failure"]["seq"] == 7


def test_offline_verifier_rejects_a_forged_retention_line(
    client: httpx.Client, cut: retention.Cut, make_token: TokenFactory, tmp_path: Path
) -> None:
    export, keys = export_files(client, cut.tenant_id, make_token(cut.tenant_id, "ADMIN"), tmp_path)
    forged = {"type": "retention", **forged_retention(cut.tenant_id, 7, "0" * 64)}
    export.write_text(export.read_text() + json.dumps(forged) + "\n")
    out = offline(export, keys)
    assert out.returncode == 1
    assert "retention checkpoint signature" in json.loads(out.stdout)["first_failure"]["reason"]


# --- tampering after a cut -------------------------------------------------------------------


def test_edited_event_after_the_cut_is_caught(client: httpx.Client, cut: retention.Cut,
                                              make_token: TokenFactory) -> None:
    with superuser() as conn:
        conn.execute("update audit_events set reason = 'rewritten' where tenant_id = %s and seq = 8", (cut.tenant_id,))
    assert failure_code(client, cut.tenant_id, make_token(cut.tenant_id, "VIEWER")) == "checksum_mismatch"


def test_deleting_the_event_right_after_the_cut_is_caught(client: httpx.Client, cut: retention.Cut,
                                                          make_token: TokenFactory) -> None:
    with superuser() as conn:
        conn.execute("delete from audit_events where tenant_id = %s and seq = 7", (cut.tenant_id,))
    token = make_token(cut.tenant_id, "VIEWER")
    result = verify(client, cut.tenant_id, token, full=True)
    assert not result["valid"] and result["first_failure"] == {
        "seq": 7, "code": "missing_event", "reason": "missing event"}
    # The incremental walk starts at the checkpoint signed after the cut (seq 10) and, as for
    # any deletion under a checkpoint not carried through it, leaves this to the full walk,
    # which the nightly timer runs (docs/audit.md, "Incremental verify").


def test_a_forged_retention_row_does_not_excuse_a_deletion(client: httpx.Client, cut: retention.Cut,
                                                           make_token: TokenFactory) -> None:
    """The table is an index for people: a row claiming a longer cut changes nothing."""
    with superuser() as conn:
        conn.execute("delete from audit_events where tenant_id = %s and seq <= 8", (cut.tenant_id,))
        conn.execute(
            """insert into audit_retention_cuts (tenant_id, seq, from_seq, checksum, window_days, cut_at,
                   checkpoint_blob, archive_blob, archive_sha256) values (%s, 8, 7, %s, 1, now(), 'x', 'y', %s)""",
            (cut.tenant_id, "a" * 64, "b" * 64),
        )
    assert failure_code(client, cut.tenant_id, make_token(cut.tenant_id, "VIEWER")) == "missing_event"


def test_a_forged_retention_blob_is_caught(client: httpx.Client, cut: retention.Cut,
                                           make_token: TokenFactory) -> None:
    """A cut that removed more than the signed checkpoint says, dressed up with a blob signed by another key."""
    with db.tenant_tx(cut.tenant_id) as conn:
        eighth = conn.execute("select checksum from audit_events where seq = 8").fetchone()["checksum"]
    with superuser() as conn:
        conn.execute("delete from audit_events where tenant_id = %s and seq <= 8", (cut.tenant_id,))
    plant_retention(cut.tenant_id, 8, forged_retention(cut.tenant_id, 8, eighth))
    token = make_token(cut.tenant_id, "VIEWER")
    assert failure_code(client, cut.tenant_id, token) == "retention_invalid"
    assert failure_code(client, cut.tenant_id, token, full=False) == "retention_invalid"


def test_a_genuine_retention_checkpoint_copied_to_another_tenant_is_caught(
    client: httpx.Client, cut: retention.Cut, make_token: TokenFactory
) -> None:
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    add_events(other.id, 2)
    doc = json.loads(blob_bytes(checkpoints.CONTAINER, cut.checkpoint_blob))
    plant_retention(other.id, cut.seq, doc)
    assert failure_code(client, other.id, make_token(other.id, "VIEWER")) == "retention_invalid"


def test_deleting_events_without_any_retention_checkpoint_is_caught(
    client: httpx.Client, tenant: Tenant, make_token: TokenFactory
) -> None:
    add_events(tenant.id, 5)
    checkpoint_now(client)
    with superuser() as conn:
        conn.execute("delete from audit_events where tenant_id = %s and seq <= 3", (tenant.id,))
    result = verify(client, tenant.id, make_token(tenant.id, "VIEWER"), full=True)
    assert not result["valid"] and result["first_failure"]["seq"] == 1
    assert result["first_failure"]["code"] == "missing_event"


def test_a_cut_that_crashed_before_its_delete_still_verifies_and_then_completes(
    client: httpx.Client, tenant: Tenant, make_token: TokenFactory
) -> None:
    add_events(tenant.id, 5)
    checkpoint_now(client)
    with db.tenant_tx(tenant.id) as conn:
        fourth = conn.execute("select checksum from audit_events where seq = 4").fetchone()["checksum"]
    # What a crash leaves: the signed retention checkpoint written, the events not yet deleted.
    assert checkpoints.write_retention(checkpoints.sign_retention({"tenant_id": tenant.id, "seq": 4, "checksum": fourth}))
    token = make_token(tenant.id, "VIEWER")
    assert verify(client, tenant.id, token, full=True)["valid"] is True
    # ...and the checkpoint must still agree with the event it names.
    with superuser() as conn:
        conn.execute("update audit_events set reason = 'x' where tenant_id = %s and seq = 4", (tenant.id,))
    assert failure_code(client, tenant.id, token) == "retention_mismatch"
    with retention_refused():
        retention.cut_tenant(tenant.id, window_days=WINDOW, now=just_after(tenant.id, 6))
    assert seqs(tenant.id)[0] == 1  # a chain that does not verify is never cut


@contextmanager
def retention_refused() -> Iterator[None]:
    with pytest.raises(retention.RetentionRefused, match="does not verify"):
        yield


def test_a_retried_cut_completes_after_a_crash(client: httpx.Client, tenant: Tenant,
                                               make_token: TokenFactory) -> None:
    add_events(tenant.id, 5)
    checkpoint_now(client)
    with db.tenant_tx(tenant.id) as conn:
        fourth = conn.execute("select checksum from audit_events where seq = 4").fetchone()["checksum"]
    assert checkpoints.write_retention(checkpoints.sign_retention({"tenant_id": tenant.id, "seq": 4, "checksum": fourth}))
    made = retention.cut_tenant(tenant.id, window_days=WINDOW, now=just_after(tenant.id, 4))
    assert made is not None and (made.from_seq, made.seq) == (1, 4)
    assert seqs(tenant.id)[0] == 5
    assert verify(client, tenant.id, make_token(tenant.id, "VIEWER"), full=True)["valid"] is True


def test_a_second_cut_starts_where_the_first_ended(client: httpx.Client, cut: retention.Cut,
                                                   make_token: TokenFactory, tmp_path: Path) -> None:
    checkpoint_now(client)
    second = retention.cut_tenant(cut.tenant_id, window_days=WINDOW, now=just_after(cut.tenant_id, 9))
    assert second is not None and (second.from_seq, second.seq) == (7, 9)
    token = make_token(cut.tenant_id, "ADMIN")
    assert verify(client, cut.tenant_id, token, full=True)["valid"] is True
    export, keys = export_files(client, cut.tenant_id, token, tmp_path)
    archives = []
    for n, made in enumerate((cut, second)):
        path = tmp_path / f"archive-{n}.jsonl"
        path.write_bytes(blob_bytes(retention.ARCHIVE_CONTAINER, made.archive))
        archives.append(path)
    out = offline(export, keys, *archives)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["from_seq"] == 1


def test_another_tenant_is_unaffected(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    add_events(tenant.id, 3)
    add_events(other.id, 3)
    checkpoint_now(client)
    before = seqs(other.id)
    made = retention.cut_tenant(tenant.id, window_days=WINDOW, now=just_after(tenant.id, 4))
    assert made is not None and made.seq == 4
    assert seqs(other.id) == before == [1, 2, 3, 4]
    assert verify(client, other.id, make_token(other.id, "VIEWER"), full=True)["valid"] is True
    assert not list(storage.blob_service().get_container_client(retention.ARCHIVE_CONTAINER)
                    .list_blobs(name_starts_with=retention.archive_prefix(other.id)))


# --- the tenant setting ------------------------------------------------------------------------


def test_retention_setting_below_the_platform_minimum_is_refused(client: httpx.Client, tenant: Tenant,
                                                                 make_token: TokenFactory) -> None:
    token = make_token(tenant.id, "ADMIN")
    url = "/api/tenant/settings/audit.retention_days"
    for bad in (WINDOW - 1, 0, -5, "3000", 1.5, True, 100_000):
        resp = client.put(url, json={"value": bad, "reason": "too short"}, headers=auth(token))
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["type"] == "urn:custos:problem:validation"
    with db.tenant_tx(tenant.id) as conn:
        assert conn.execute("select 1 from tenant_settings where key = 'audit.retention_days'").fetchone() is None
    ok = client.put(url, json={"value": WINDOW, "reason": "seven years"}, headers=auth(token))
    assert ok.status_code == 200 and ok.json()["value"] == WINDOW
    forever = client.put(url, json={"value": None, "reason": "keep forever"}, headers=auth(token))
    assert forever.status_code == 200 and forever.json() == {"key": "audit.retention_days", "value": None,
                                                             "previous": WINDOW}
    with db.tenant_tx(tenant.id) as conn:
        changes = audit.list_events(conn, action="tenant.setting_changed", target_id="audit.retention_days")
    assert [(e["before"], e["after"]) for e in changes] == [(None, WINDOW), (WINDOW, None)]


def test_only_an_admin_sets_the_retention_window(client: httpx.Client, tenant: Tenant,
                                                 make_token: TokenFactory) -> None:
    url = "/api/tenant/settings/audit.retention_days"
    for role in ("MANAGER", "REVIEWER", "VIEWER"):
        resp = client.put(url, json={"value": WINDOW, "reason": "try"}, headers=auth(make_token(tenant.id, role)))
        assert resp.status_code == 403, role


def test_two_racing_cuts_of_one_tenant_cut_once(client: httpx.Client, tenant: Tenant,
                                                make_token: TokenFactory) -> None:
    from concurrent.futures import ThreadPoolExecutor

    add_events(tenant.id, 5)
    checkpoint_now(client)
    now = just_after(tenant.id, 6)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: retention.cut_tenant(tenant.id, window_days=WINDOW, now=now), range(2)))
    made = [r for r in results if r is not None]
    assert len(made) == 1 and (made[0].from_seq, made[0].seq) == (1, 6)
    with db.tenant_tx(tenant.id) as conn:
        assert len(audit.list_events(conn, action="audit.retention_cut")) == 1
    assert verify(client, tenant.id, make_token(tenant.id, "VIEWER"), full=True)["valid"] is True
