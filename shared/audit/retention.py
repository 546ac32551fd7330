"""The audit retention cut: a tenant's oldest events removed, up to a signed retention checkpoint.

For a tenant with a retention window, one transaction as the schema owner (the app role has
no DELETE on `audit_events`, and migration 0018 lets the owner delete only when the
transaction names the cut):

1. the cut seq is the newest event older than now − window that is also covered by the
   newest signed checkpoint in blob storage: nothing is removed that the outside world has
   not seen signed;
2. the remaining chain is verified first (from its base to the head, against that
   checkpoint): a chain that does not verify is never archived and cut, its evidence stays;
3. events from the first remaining one to the cut are streamed as JSON Lines into the
   `exports` container (`tenants/<id>/audit-retention/<from>-<to>.jsonl`, 20-digit seqs),
   hashed on the way, in blocks of bounded size;
4. the retention checkpoint (seq, checksum of the last removed event, the archive's name and
   SHA-256, window, cut time) is signed with the audit key and written to
   `audit-checkpoints/<id>/retention/<10^20 − 1 − seq>.json`, with a copy beside the archive
   as its manifest, and a row in `audit_retention_cuts` for people;
5. an `audit.retention_cut` event is appended, the transaction names the cut
   (`custos.audit_delete` = `retention`) and deletes events up to the cut seq; once committed,
   the head (the cut's own event included) is checkpointed at once.

Archive and signature come before the delete; a crash in between leaves a signed cut whose
events still exist, which verify accepts (the event at the cut's seq must still agree with
it) and the next run completes. docs/audit.md, "Retention", is the full description.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

from shared.audit import chain as audit
from shared.audit import checkpoints
from shared.core import entra, storage
from shared.core.db import Conn
from shared.core.settings import SettingsError, get_settings

ARCHIVE_CONTAINER = "exports"
ARCHIVE_FORMAT = "custos-audit-retention-archive/1"
BLOCK_BYTES = 4 * 1024 * 1024
"""Archive bytes held in memory at once: one staged block."""
ACTOR = audit.Actor(id=None, name="audit retention", type="timer")
log = logging.getLogger("custos.audit")


class RetentionRefused(RuntimeError):
    """The cut was not made: the chain or its signed checkpoints do not verify, or what is
    already stored for this cut differs from what it would write."""


@dataclass(frozen=True)
class Cut:
    """One retention cut that was made."""

    tenant_id: str
    from_seq: int
    seq: int
    checksum: str
    archive: str
    archive_sha256: str
    checkpoint_blob: str


def archive_prefix(tenant_id: str) -> str:
    """Where a tenant's retention archives live in the exports container (the tenant export links them)."""
    return f"tenants/{tenant_id}/audit-retention/"


def archive_name(tenant_id: str, from_seq: int, to_seq: int) -> str:
    return f"{archive_prefix(tenant_id)}{from_seq:020d}-{to_seq:020d}.jsonl"


def manifest_name(tenant_id: str, from_seq: int, to_seq: int) -> str:
    return f"{archive_prefix(tenant_id)}{from_seq:020d}-{to_seq:020d}.manifest.json"


@contextmanager
def _owner_tx(tenant_id: str) -> Iterator[Conn]:
    """One transaction as the schema owner, with the tenant set for row-level security.

    Raises:
        SettingsError: DATABASE_OWNER_URL is not set.
    """
    s = get_settings()
    if not s.database_owner_url:
        raise SettingsError("DATABASE_OWNER_URL: the audit retention cut runs as the schema owner")
    params = entra.connect_params(s.database_owner_url, s.database_auth)
    with psycopg.connect(s.database_owner_url, autocommit=True, row_factory=dict_row, **params) as conn:
        with conn.transaction():
            conn.execute("select set_config('app.tenant_id', %s, true)", (tenant_id,))
            yield conn


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _archive_lines(conn: Conn, tenant_id: str, from_seq: int, to_seq: int, link: str) -> Iterator[bytes]:
    """The archive: a header, then one line per event as in the audit export. Nothing in it
    depends on when it is written, so a retried cut produces the same bytes."""
    yield _line({"type": "header", "format": ARCHIVE_FORMAT, "tenant_id": tenant_id, "from_seq": from_seq,
                 "to_seq": to_seq, "previous_checksum": link, "genesis": audit.GENESIS})
    with conn.cursor(name=f"retention_{uuid.uuid4().hex}", row_factory=tuple_row) as cur:
        cur.itersize = 2000
        cur.execute(f"{audit._SELECT} where seq >= %s and seq <= %s order by seq", (from_seq, to_seq))
        for row in cur:
            event: dict[str, Any] = {"type": "event", **dict(zip(audit._COLUMNS, row, strict=True))}
            for name in audit.JSON_FIELDS:
                if event[name] is not None:
                    event[name] = json.loads(event[name])
            yield _line(event)


def _sha256_of_blob(name: str) -> str:
    digest = hashlib.sha256()
    for chunk in storage.blob_service().get_blob_client(ARCHIVE_CONTAINER, name).download_blob().chunks():
        digest.update(chunk)
    return digest.hexdigest()


def _write_archive(name: str, lines: Iterator[bytes]) -> tuple[str, int, int]:
    """Stream `lines` into a new block blob; returns (sha256, bytes, events).

    Raises:
        RetentionRefused: a different archive of that name already exists.
    """
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
    from azure.storage.blob import BlobBlock

    blob = storage.blob_service().get_blob_client(ARCHIVE_CONTAINER, name)
    digest, buffer, blocks = hashlib.sha256(), bytearray(), list[BlobBlock]()
    size = events = 0

    def stage() -> None:
        block_id = base64.b64encode(f"{uuid.uuid4().hex}{len(blocks):08d}".encode()).decode()
        blob.stage_block(block_id, bytes(buffer))
        blocks.append(BlobBlock(block_id=block_id))
        buffer.clear()

    for n, line in enumerate(lines):
        digest.update(line)
        buffer += line
        size += len(line)
        events = n  # the first line is the header
        if len(buffer) >= BLOCK_BYTES:
            stage()
    if buffer:
        stage()
    sha256 = digest.hexdigest()
    try:
        blob.commit_block_list(blocks, match_condition=MatchConditions.IfMissing)
    except (ResourceExistsError, ResourceModifiedError):
        # A cut that crashed after archiving: the same events give the same bytes.
        if _sha256_of_blob(name) != sha256:
            raise RetentionRefused(f"archive {name} already exists with other content") from None
    return sha256, size, events


def cut_tenant(tenant_id: str, *, window_days: int, now: datetime | None = None) -> Cut | None:
    """Archive and remove the tenant's events older than the window, up to its newest signed
    checkpoint; None when there is nothing to remove. `now` defaults to the database clock.

    A window shorter than AUDIT_RETENTION_MIN_DAYS (one stored before the minimum was raised)
    is held to the minimum.

    Raises:
        RetentionRefused: the chain, its checkpoints or its retention checkpoints do not
            verify, or a stored archive or retention checkpoint for this cut differs.
        SettingsError: DATABASE_OWNER_URL is not set.
    """
    tid = audit.normal_tenant_id(tenant_id)
    window = max(int(window_days), get_settings().audit_retention_min_days)
    newest = checkpoints.newest_signed(tid)
    if newest.rejected:
        raise RetentionRefused(f"tenant {tid}: a checkpoint blob does not verify: {newest.rejected[0]['reason']}")
    signed = newest.ref
    if signed is None:
        return None
    with _owner_tx(tid) as conn:
        # One cut per tenant at a time; appends go on meanwhile (they never touch old events).
        conn.execute("select pg_advisory_xact_lock(hashtextextended('custos.audit_retention:' || %s, 0))", (tid,))
        clock = conn.execute("select now() as now, min(seq) as first from audit_events").fetchone()
        if clock is None or clock["first"] is None:
            return None
        first, moment = int(clock["first"]), now or clock["now"]
        cutoff = moment - timedelta(days=window)
        target = conn.execute(
            "select seq, checksum from audit_events where occurred_at < %s and seq <= %s order by seq desc limit 1",
            (cutoff, signed.seq),
        ).fetchone()
        if target is None:
            return None  # nothing both old enough and signed
        cut_base = checkpoints.chain_base(tid, first)
        failed = cut_base.failure(tid, signed)
        if failed is None:
            failed = audit.verify_segment(conn, tenant_id=tid, checkpoint=signed, start_seq=cut_base.base.seq + 1,
                                          first_link=cut_base.base.checksum)
        if not failed.valid:
            failure = failed.first_failure or {}
            raise RetentionRefused(
                f"tenant {tid}: chain does not verify at seq {failure.get('seq')} ({failure.get('code')})"
            )
        seq, checksum = int(target["seq"]), str(target["checksum"])
        name = archive_name(tid, first, seq)
        sha256, size, events = _write_archive(name, _archive_lines(conn, tid, first, seq, cut_base.base.checksum))
        cut_at = audit.format_time(moment)
        doc = checkpoints.sign_retention({
            "tenant_id": tid, "seq": seq, "checksum": checksum, "from_seq": first,
            "previous_checksum": cut_base.base.checksum, "window_days": window, "cut_at": cut_at,
            "archive": {"container": ARCHIVE_CONTAINER, "name": name, "sha256": sha256, "bytes": size,
                        "events": events},
        })
        blob = checkpoints.retention_blob_name(tid, seq)
        if not checkpoints.write_retention(doc):
            stored = checkpoints.read_retention(tid, seq)
            if stored != audit.Base(seq=seq, checksum=checksum):
                raise RetentionRefused(f"tenant {tid}: another retention checkpoint for seq {seq} exists")
        _write_manifest(manifest_name(tid, first, seq), doc)
        conn.execute(
            """insert into audit_retention_cuts (tenant_id, seq, from_seq, checksum, window_days, cut_at,
                   checkpoint_blob, archive_blob, archive_sha256)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing""",
            (tid, seq, first, checksum, window, moment, blob, name, sha256),
        )
        audit.append(conn, tenant_id=tid, actor=ACTOR, action="audit.retention_cut", target_type="tenant",
                     target_id=tid, reason=f"events older than {window} days",
                     after={"from_seq": first, "seq": seq, "checksum": checksum, "archive": name,
                            "archive_sha256": sha256, "events": events, "window_days": window,
                            "checkpoint": f"{checkpoints.CONTAINER}/{blob}"})
        conn.execute("select set_config('custos.audit_delete', 'retention', true)")
        deleted = conn.execute("delete from audit_events where seq <= %s", (seq,)).rowcount
        if deleted != events:
            raise RetentionRefused(f"tenant {tid}: {deleted} events to delete but {events} archived")
    log.info("audit retention cut tenant=%s from=%s to=%s archive=%s", tid, first, seq, name)
    # Sign the cut's own event at once: until a checkpoint covers it, removing it (and all
    # after it) would leave a chain that ends exactly at the signed cut.
    checkpoints.checkpoint_tenant(tid)
    return Cut(tenant_id=tid, from_seq=first, seq=seq, checksum=checksum, archive=name, archive_sha256=sha256,
               checkpoint_blob=blob)


def _write_manifest(name: str, doc: dict[str, Any]) -> None:
    """The signed retention checkpoint beside its archive (a retried cut finds it there)."""
    from azure.core.exceptions import ResourceExistsError

    blob = storage.blob_service().get_blob_client(ARCHIVE_CONTAINER, name)
    try:
        blob.upload_blob(json.dumps(doc, indent=1).encode(), overwrite=False)
    except ResourceExistsError:
        pass
