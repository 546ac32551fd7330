"""Daily snapshots of attachment blobs, their retention, and a restore from a snapshot.

Attachments are content-addressed (`tenants/<tenant>/sha256/<hex>`) and written once, so a
blob that changed since the last run is almost always a new one. The exception is the one
worth the snapshots: content rewritten by someone with storage rights. Each run therefore
hashes every changed blob before it snapshots it, under an ETag condition so the hash and the
snapshot are of the same bytes, and writes what it found into the snapshot's metadata
(`custos_sha256`, `custos_verified`). A blob that does not match its name is still
snapshotted (it is evidence), logged, recorded in the tenant's audit chain and fails the run.

"Changed since the last run": the base blob's last-modified time is later than the newest
successful run's watermark (the database time that run started) less `OVERLAP`, and no
snapshot of it carries its current ETag. The watermark lives in the platform table
`snapshot_runs`, not in blob metadata: anyone who can rewrite a blob can rewrite its metadata,
and the run's history (counts, error) belongs beside the job heartbeats. docs/dr.md says why.

Retention: snapshots older than BLOB_SNAPSHOT_RETENTION_DAYS are deleted, never the base
blob, and never a blob's newest snapshot that verified while the base blob exists: it is the
last copy known to be good. The listing is one pass over the container in pages of `PAGE`,
holding only one blob's snapshots at a time.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from shared.audit import chain as audit
from shared.core import db, health, storage
from shared.core.errors import BlankValue, ConcurrentChange, InvalidValue, NotFound
from shared.core.settings import get_settings
from shared.lifecycle.errors import SnapshotContentMismatch, SnapshotNotFound

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient, BlobProperties, ContainerClient

CONTAINER = "attachments"
PAGE = 500
OVERLAP = timedelta(minutes=15)
"""Blobs modified this long before the last watermark still count as changed: PostgreSQL's and
Storage's clocks may disagree, and a snapshot of an unchanged blob is skipped by its ETag anyway."""
SPOOL_BYTES = 8 << 20
TIMER_ACTOR = audit.Actor(id=None, name="blob snapshot timer", type="timer")
ERROR_MAX = 2000

_NAME = re.compile(r"^tenants/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/sha256/([0-9a-f]{64})$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
# An Azure snapshot id is its creation time: 2024-05-01T01:15:00.1234567Z.
_SNAPSHOT_ID = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,7})?Z$")

log = logging.getLogger("custos.lifecycle.snapshots")


@dataclass
class RunReport:
    """What one snapshot run did."""

    run_id: int
    since: datetime | None
    watermark: datetime
    blobs_listed: int = 0
    blobs_changed: int = 0
    snapshots_taken: int = 0
    snapshots_deleted: int = 0
    mismatched: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.mismatched

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _invalid(name: str, message: str) -> InvalidValue:
    return InvalidValue(message, errors=[{"location": [name], "message": message}])


def snapshot_time(snapshot_id: str) -> datetime:
    """The creation time an Azure snapshot id spells (its fraction cut to microseconds).

    Raises:
        InvalidValue: not a snapshot id.
    """
    if not _SNAPSHOT_ID.match(snapshot_id):
        raise _invalid("snapshot", "a snapshot id looks like 2024-05-01T01:15:00.1234567Z")
    head, _, fraction = snapshot_id.removesuffix("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(fraction or '0')[:6].ljust(6, '0')}+00:00")


def _container() -> ContainerClient:
    return storage.blob_service().get_container_client(CONTAINER)


def _hash_to(blob: BlobClient, sink: IO[bytes] | None = None, **conditions: Any) -> str:
    """SHA-256 of a blob's content, streamed (copied into `sink` when given)."""
    digest = hashlib.sha256()
    for chunk in blob.download_blob(**conditions).chunks():
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest()


def _groups(items: Iterable[BlobProperties]) -> Iterator[list[BlobProperties]]:
    """The listing's items grouped by blob name (a name's snapshots and base are adjacent)."""
    group: list[BlobProperties] = []
    for item in items:
        if group and item.name != group[0].name:
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def _integrity_event(tenant_id: str, sha256: str, actual: str, snapshot: str | None) -> None:
    with db.tenant_tx(tenant_id) as conn:
        audit.append(conn, tenant_id=tenant_id, actor=TIMER_ACTOR, action="integrity.attachment_mismatch",
                     target_type="attachment", target_id=sha256,
                     after={"expected_sha256": sha256, "actual_sha256": actual, "evidence_snapshot": snapshot})


def _snapshot_changed(container: ContainerClient, base: BlobProperties, report: RunReport) -> None:
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    blob = container.get_blob_client(base.name)
    try:
        actual = _hash_to(blob, etag=base.etag, match_condition=MatchConditions.IfNotModified)
        name = _NAME.match(base.name)
        verified = bool(name) and actual == (name.group(2) if name else "")
        snap = blob.create_snapshot(
            metadata={"custos_sha256": actual, "custos_verified": str(verified).lower(),
                      "custos_etag": base.etag.strip('"'), "custos_run": str(report.run_id)},
            etag=base.etag, match_condition=MatchConditions.IfNotModified,
        )
    except (ResourceModifiedError, ResourceNotFoundError):
        return  # changed or deleted while this run looked at it: the next run sees it as it is then
    report.snapshots_taken += 1
    if verified:
        return
    report.mismatched.append(base.name)
    log.error("blob snapshot: content does not match its address blob=%s actual_sha256=%s snapshot=%s",
              base.name, actual, str(snap["snapshot"]))
    if name:
        _integrity_event(name.group(1), name.group(2), actual, str(snap["snapshot"]))


def _prune(container: ContainerClient, base: BlobProperties | None, snaps: list[BlobProperties],
           cutoff: datetime, report: RunReport) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    keep = None
    if base is not None:
        verified = [s for s in snaps if (s.metadata or {}).get("custos_verified") == "true"]
        keep = max(verified, key=lambda s: snapshot_time(str(s.snapshot)), default=None)
    for snap in snaps:
        if snap is keep or snapshot_time(str(snap.snapshot)) >= cutoff:
            continue
        try:
            container.get_blob_client(snap.name, snapshot=snap.snapshot).delete_blob()
        except ResourceNotFoundError:
            continue
        report.snapshots_deleted += 1


RUN_STALE_AFTER = timedelta(hours=6)
"""An unfinished run older than this is taken for dead (its worker stopped): it no longer keeps
another from starting."""


RUN_LOCK = "custos.snapshot_runs"
"""The advisory lock (its name's hashtext) that serialises starting a run."""


class SnapshotRunInProgress(RuntimeError):
    """Another snapshot run is under way (two at once would snapshot the same blobs twice)."""


def _start_run() -> tuple[int, datetime | None, datetime]:
    """Record a new run, unless another has started within RUN_STALE_AFTER and not finished;
    the check and the insert are serialised by a transaction-level advisory lock.

    Raises:
        SnapshotRunInProgress.
    """
    with db.platform_tx() as conn:
        conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (RUN_LOCK,))
        running = conn.execute(
            "select id from snapshot_runs where finished_at is null and started_at > now() - %s"
            " order by started_at desc limit 1",
            (RUN_STALE_AFTER,),
        ).fetchone()
        if running is not None:
            raise SnapshotRunInProgress(f"snapshot run {running['id']} is under way")
        last = conn.execute(
            "select watermark from snapshot_runs where ok order by started_at desc limit 1"
        ).fetchone()
        row = conn.execute(
            "insert into snapshot_runs (watermark, since) values (now(), %s) returning id, watermark",
            (last["watermark"] if last else None,),
        ).fetchone()
    assert row is not None
    return int(row["id"]), (last["watermark"] if last else None), row["watermark"]


def _finish_run(report: RunReport) -> None:
    with db.platform_tx() as conn:
        conn.execute(
            """update snapshot_runs set finished_at = greatest(now(), started_at), ok = %s, blobs_listed = %s,
                      blobs_changed = %s, snapshots_taken = %s, snapshots_deleted = %s, mismatched = %s, error = %s
                where id = %s""",
            (report.ok, report.blobs_listed, report.blobs_changed, report.snapshots_taken, report.snapshots_deleted,
             len(report.mismatched), (report.error or "")[:ERROR_MAX] or None, report.run_id),
        )


def run(*, now: datetime | None = None) -> RunReport:
    """Snapshot every attachment blob changed since the last successful run and delete
    snapshots past retention; the run and its counts are recorded in `snapshot_runs`.

    `now` is the retention clock (default: the current time); the watermark is always the
    database's own time, so a pinned clock in a test cannot hide later blobs from later runs.

    Raises:
        SnapshotRunInProgress: another run is under way (nothing was done).
        ServiceUnavailable: the database or storage could not be reached (the run is recorded
            as failed when the database still answers).
        azure.core.exceptions.AzureError: storage failed mid-run (recorded as failed).
    """
    run_id, since, watermark = _start_run()
    report = RunReport(run_id=run_id, since=since, watermark=watermark)
    cutoff = (now or datetime.now(UTC)) - timedelta(days=get_settings().blob_snapshot_retention_days)
    changed_after = None if since is None else since - OVERLAP
    try:
        container = _container()
        items = container.list_blobs(name_starts_with="tenants/", include=["snapshots", "metadata"],
                                     results_per_page=PAGE)
        for group in _groups(items):
            base = next((item for item in group if not item.snapshot), None)
            snaps = [item for item in group if item.snapshot]
            if base is not None:
                report.blobs_listed += 1
                etags = {(s.metadata or {}).get("custos_etag") for s in snaps}
                if (changed_after is None or base.last_modified > changed_after) and base.etag.strip('"') not in etags:
                    report.blobs_changed += 1
                    _snapshot_changed(container, base, report)
            _prune(container, base, snaps, cutoff, report)
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.exception("blob snapshot run failed run=%s", run_id)
        _finish_run(report)
        raise
    if report.mismatched:
        report.error = f"{len(report.mismatched)} blob(s) do not match their content address"
    _finish_run(report)
    return report


class SnapshotRunFailed(RuntimeError):
    """A snapshot run found blobs that do not match their content address (the timer fails)."""


def scheduled_run(*, now: datetime | None = None) -> RunReport | None:
    """The timer's run: `run`, then its heartbeat; a failed run heartbeats ok=False and raises,
    so the host records the invocation as failed (the `blob-snapshot-failed` alert). When
    another run is under way (a second instance, a manual run) this one does nothing and
    returns None: the run under way records its own heartbeat.

    Raises:
        SnapshotRunFailed: blobs did not match their content address.
        Exception: whatever stopped the run (after the heartbeat).
    """
    try:
        report = run(now=now)
    except SnapshotRunInProgress as exc:
        log.info("blob snapshot run skipped: %s", exc)
        return None
    except Exception as exc:
        health.record_heartbeat("snapshot_blobs", ok=False, detail=f"failed: {type(exc).__name__}")
        raise
    detail = (f"{report.blobs_changed} changed, {report.snapshots_taken} snapshots, "
              f"{report.snapshots_deleted} deleted, {len(report.mismatched)} mismatched")
    health.record_heartbeat("snapshot_blobs", ok=report.ok, detail=detail)
    if not report.ok:
        log.error("blob snapshot run failed run=%s %s", report.run_id, report.error)
        raise SnapshotRunFailed(report.error)
    log.info("blob snapshot run %s: %s", report.run_id, detail)
    return report


# --- operators: list and restore ----------------------------------------------------------


def _blob_name(tenant_id: str, blob: str) -> tuple[str, str, str]:
    """(tenant id, sha256, blob name) for a blob given as its hex or its full name.

    Raises:
        InvalidValue: the tenant is not a UUID, or the blob is not one of that tenant's attachments.
    """
    try:
        tid = audit.normal_tenant_id(tenant_id)
    except ValueError:
        raise _invalid("tenant", "the tenant must be a tenant id (UUID)") from None
    sha256 = blob.strip()
    if not _HEX.match(sha256):
        match = _NAME.match(sha256)
        if match is None or match.group(1) != tid:
            raise _invalid("blob", "the blob must be a sha256 (64 hex digits) or tenants/<tenant>/sha256/<hex> "
                               "of this tenant")
        sha256 = match.group(2)
    return tid, sha256, f"tenants/{tid}/sha256/{sha256}"


def _require_tenant(tenant_id: str) -> None:
    with db.platform_tx() as conn:
        if conn.execute("select 1 from tenants where id = %s", (tenant_id,)).fetchone() is None:
            raise NotFound("no such tenant")


def list_snapshots(tenant_id: str, *, blob: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """The tenant's attachment snapshots (one blob's with `blob`), oldest first per blob.

    Raises:
        InvalidValue: a malformed tenant id or blob.
        NotFound: no such tenant.
    """
    tid, _, name = _blob_name(tenant_id, blob or "0" * 64)
    _require_tenant(tid)
    prefix = name if blob else f"tenants/{tid}/sha256/"
    out: list[dict[str, Any]] = []
    for item in _container().list_blobs(name_starts_with=prefix, include=["snapshots", "metadata"],
                                        results_per_page=PAGE):
        if not item.snapshot or (blob and item.name != name):
            continue
        meta = item.metadata or {}
        out.append({"blob": item.name, "sha256": item.name.rsplit("/", 1)[-1], "snapshot": item.snapshot,
                    "size": item.size, "content_sha256": meta.get("custos_sha256"),
                    "verified": meta.get("custos_verified") == "true"})
        if len(out) >= limit:
            break
    return out


def restore(tenant_id: str, blob: str, snapshot: str, *, reason: str, actor: audit.Actor,
            dry_run: bool = False) -> dict[str, Any]:
    """Copy a snapshot back over an attachment blob: the one place an attachment is overwritten.

    Safe because the content address is checked first: the snapshot's bytes must hash to the
    blob's name, and exactly those bytes (spooled while hashed) are written. The content
    being replaced is kept as a snapshot of its own, the write is conditional on the blob not
    changing meanwhile, and the tenant's audit chain records it with the operator's reason in
    a transaction that commits only if the write succeeded.

    Raises:
        InvalidValue: malformed tenant id, blob or snapshot id.
        BlankValue: no reason.
        NotFound: no such tenant.
        SnapshotNotFound: no such snapshot of that blob.
        SnapshotContentMismatch: the snapshot's content does not hash to the blob's name.
        ConcurrentChange: the blob changed while it was being restored.
    """
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
    from azure.storage.blob import ContentSettings

    tid, sha256, name = _blob_name(tenant_id, blob)
    snapshot_time(snapshot)
    if not reason or not reason.strip():
        raise BlankValue("a restore needs the operator's reason",
                         errors=[{"location": ["reason"], "message": "blank"}])
    _require_tenant(tid)
    container = _container()
    source = container.get_blob_client(name, snapshot=snapshot)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        try:
            props = source.get_blob_properties()
            content = _hash_to(source, spool)
        except ResourceNotFoundError:
            raise SnapshotNotFound("no such snapshot of that attachment") from None
        if content != sha256:
            raise SnapshotContentMismatch("the snapshot's content does not hash to the attachment's name; "
                                          "it is not restored", actual_sha256=content)
        target = container.get_blob_client(name)
        try:
            current_props = target.get_blob_properties()
            current: str | None = _hash_to(target, etag=current_props.etag,
                                           match_condition=MatchConditions.IfNotModified)
        except ResourceNotFoundError:
            current_props, current = None, None
        except ResourceModifiedError:
            raise ConcurrentChange("the attachment changed while it was being read; try again") from None
        result: dict[str, Any] = {"tenant_id": tid, "blob": name, "snapshot": snapshot, "current_sha256": current,
                                  "dry_run": dry_run}
        if current == sha256:
            return {**result, "restored": False, "detail": "the attachment already matches its content address"}
        if dry_run:
            return {**result, "restored": False, "detail": "the snapshot verifies; it would be restored"}
        evidence = None
        if current_props is not None:
            evidence = target.create_snapshot(
                metadata={"custos_sha256": current or "", "custos_verified": "false",
                          "custos_etag": current_props.etag.strip('"'), "custos_run": "restore"},
                etag=current_props.etag, match_condition=MatchConditions.IfNotModified,
            )["snapshot"]
        condition: dict[str, Any] = (
            {"overwrite": True, "etag": current_props.etag, "match_condition": MatchConditions.IfNotModified}
            if current_props is not None else {"overwrite": False}
        )
        spool.seek(0)
        with db.tenant_tx(tid) as conn:
            appended = audit.append(
                conn, tenant_id=tid, actor=actor, action="attachment.restored_from_snapshot",
                target_type="attachment", target_id=sha256, reason=reason.strip(),
                before={"sha256": current, "evidence_snapshot": evidence},
                after={"sha256": sha256, "snapshot": snapshot},
            )
            try:
                target.upload_blob(
                    spool, length=props.size, metadata={"sha256": sha256}, max_concurrency=2,
                    content_settings=ContentSettings(content_type=props.content_settings.content_type), **condition,
                )
            except (ResourceModifiedError, ResourceExistsError):
                raise ConcurrentChange("the attachment changed while it was being restored; try again") from None
    after = _hash_to(target)
    return {**result, "restored": True, "evidence_snapshot": evidence, "audit_seq": appended.seq,
            "restored_sha256": after}
