"""Signed checkpoints of each audit chain head, kept outside the database.

A checkpoint is `{tenant_id, seq, checksum, created_at, key_id}` signed with Ed25519 over
its RFC 8785 canonical JSON, written as a new blob in `audit-checkpoints` that is never
overwritten (the container is immutable in Azure). Someone with database rights can rewrite
the chain, but not these blobs: a cut tail or a recomputed chain then disagrees with the
newest checkpoint.

What has been checkpointed is read only from these blobs, signature verified, never from a
table the app can write (`audit_checkpoint_log` is a log for people, nothing decides on it).
Blobs are named `<tenant>/desc/<10^20-1-seq, 20 digits>.json`, so the first blob a listing
returns is the newest, however many years of checkpoints lie behind it. Tenants first
checkpointed before that layout also have `<tenant>/<seq, 20 digits>.json` blobs, read when
no newer-layout blob verifies.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from shared.audit import chain as audit
from shared.core import db, storage
from shared.core.keys import (
    dev_private_key_pem,
    ed25519_public_jwk,
    jwk_thumbprint,
    load_pem_private,
    split_pem_public,
)
from shared.core.settings import SettingsError, get_settings

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

CONTAINER = "audit-checkpoints"
STALE_INTERVALS = 2
"""Uncovered events older than this many checkpoint intervals fail verify as checkpoint_stale."""
_SEQ_CEILING = 10**20 - 1
log = logging.getLogger("custos.audit")


@dataclass(frozen=True)
class AuditKeys:
    signing: ed25519.Ed25519PrivateKey
    signing_kid: str
    verifying: dict[str, ed25519.Ed25519PublicKey]

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {**ed25519_public_jwk(pub), "kid": kid, "use": "sig", "alg": "EdDSA"}
                for kid, pub in self.verifying.items()
            ]
        }


@functools.cache
def audit_keys() -> AuditKeys:
    """This worker's checkpoint keys: one signs, retired ones still verify.

    Raises:
        SettingsError: AUDIT_SIGNING_KEY or AUDIT_VERIFY_KEYS is not Ed25519 PEM.
    """
    s = get_settings()
    pem = s.audit_signing_key or dev_private_key_pem(s, "audit-ed25519", ed25519.Ed25519PrivateKey.generate)
    signing = load_pem_private(pem, "audit_signing_key")
    if not isinstance(signing, ed25519.Ed25519PrivateKey):
        raise SettingsError("AUDIT_SIGNING_KEY: must be an Ed25519 private key")
    kid = jwk_thumbprint(ed25519_public_jwk(signing.public_key()))
    verifying = {kid: signing.public_key()}
    for pub in split_pem_public(s.audit_verify_keys, "audit_verify_keys"):
        if not isinstance(pub, ed25519.Ed25519PublicKey):
            raise SettingsError("AUDIT_VERIFY_KEYS: every key must be Ed25519")
        verifying[jwk_thumbprint(ed25519_public_jwk(pub))] = pub
    return AuditKeys(signing=signing, signing_kid=kid, verifying=verifying)


def signed_payload(doc: dict[str, Any]) -> bytes:
    return rfc8785.dumps({k: doc[k] for k in ("tenant_id", "seq", "checksum", "created_at", "key_id")})


def sign(tenant_id: str, seq: int, checksum: str, created_at: str) -> dict[str, Any]:
    keys = audit_keys()
    doc: dict[str, Any] = {
        "tenant_id": tenant_id,
        "seq": seq,
        "checksum": checksum,
        "created_at": created_at,
        "key_id": keys.signing_kid,
    }
    doc["signature"] = base64.urlsafe_b64encode(keys.signing.sign(signed_payload(doc))).rstrip(b"=").decode()
    return doc


class CheckpointInvalid(ValueError):
    """A checkpoint blob is malformed, signed by an unknown key, or its signature fails."""


def check_signature(
    doc: Any, keys: AuditKeys, *, expected_tenant_id: str, expected_seq: int | None = None
) -> audit.CheckpointRef:
    """The checkpoint a document attests, once its signature and its place are checked.

    Raises:
        CheckpointInvalid: the document is malformed, names an unknown key, its signature
            does not verify, or it belongs to another tenant or another blob name.
    """
    if not isinstance(doc, dict):
        raise CheckpointInvalid("checkpoint is not a JSON object")
    try:
        pub = keys.verifying[doc["key_id"]]
        sig = base64.urlsafe_b64decode(doc["signature"] + "=" * (-len(doc["signature"]) % 4))
        pub.verify(sig, signed_payload(doc))
        ref = audit.CheckpointRef(seq=int(doc["seq"]), checksum=str(doc["checksum"]), created_at=str(doc["created_at"]))
    except KeyError as exc:
        raise CheckpointInvalid(f"checkpoint lacks {exc} or names an unknown key") from None
    except (InvalidSignature, ValueError, TypeError):
        raise CheckpointInvalid("checkpoint signature does not verify") from None
    # A validly signed checkpoint copied to another tenant's or another seq's name.
    if doc["tenant_id"] != expected_tenant_id:
        raise CheckpointInvalid("checkpoint of another tenant")
    if expected_seq is not None and ref.seq != expected_seq:
        raise CheckpointInvalid("checkpoint seq differs from its blob name")
    return ref


def blob_name(tenant_id: str, seq: int) -> str:
    """Where a checkpoint is written: names sort newest first."""
    return f"{tenant_id}/desc/{_SEQ_CEILING - seq:020d}.json"


def _seq_of(name: str) -> int | None:
    stem = name.rsplit("/", 1)[-1].removesuffix(".json")
    if len(stem) != 20 or not stem.isdigit():
        return None
    return _SEQ_CEILING - int(stem) if "/desc/" in name or "/retention/" in name else int(stem)


def _names_newest_first(tenant_id: str, container: ContainerClient | None = None) -> Iterator[str]:
    container = container or storage.blob_service().get_container_client(CONTAINER)
    # Pages are fetched lazily: the newest checkpoint costs one short listing.
    yield from (item.name for item in container.list_blobs(name_starts_with=f"{tenant_id}/desc/", results_per_page=16))
    legacy = [item.name for item in container.list_blobs(name_starts_with=f"{tenant_id}/0")]
    yield from reversed(legacy)


def _download(name: str, container: ContainerClient | None = None) -> Any:
    container = container or storage.blob_service().get_container_client(CONTAINER)
    return json.loads(container.download_blob(name).readall())


def write(doc: dict[str, Any]) -> bool:
    """Store a checkpoint as a new blob; False if one for that seq already exists."""
    blob = storage.blob_service().get_blob_client(CONTAINER, blob_name(doc["tenant_id"], doc["seq"]))
    from azure.core.exceptions import ResourceExistsError  # loaded with the client, not at import

    try:
        blob.upload_blob(json.dumps(doc, indent=1).encode(), overwrite=False)
    except ResourceExistsError:
        return False
    return True


@dataclass(frozen=True)
class Newest:
    """The newest checkpoint whose signature verifies, and the blobs newer than it that did not."""

    ref: audit.CheckpointRef | None
    rejected: list[dict[str, Any]] = field(default_factory=list)


def newest_signed(tenant_id: str, *, container: ContainerClient | None = None) -> Newest:
    """The tenant's newest signed checkpoint, read from blob storage and verified.

    Blobs that sort newer but do not verify (forged, unsigned, moved from another tenant or
    name) are skipped and returned in `rejected`; they never count as checkpointed.
    `container` reads another copy of the checkpoints (the restore drill's scratch container).
    """
    keys = audit_keys()
    rejected: list[dict[str, Any]] = []
    for name in _names_newest_first(tenant_id, container):
        seq = _seq_of(name)
        try:
            if seq is None:
                raise CheckpointInvalid("blob name is not a checkpoint name")
            try:
                doc = _download(name, container)
            except ValueError:
                raise CheckpointInvalid("checkpoint is not JSON") from None
            ref = check_signature(doc, keys, expected_tenant_id=tenant_id, expected_seq=seq)
        except CheckpointInvalid as exc:
            rejected.append({"name": name, "seq": seq, "reason": str(exc)})
            continue
        return Newest(ref=ref, rejected=rejected)
    return Newest(ref=None, rejected=rejected)


def all_checkpoints(tenant_id: str) -> list[dict[str, Any]]:
    """Every checkpoint document of a tenant, unverified (the export's auditor verifies), oldest first."""
    names = sorted(_names_newest_first(tenant_id), key=lambda name: _seq_of(name) or 0)
    return [_download(name) for name in names]


def checkpoint_interval() -> timedelta:
    """The longest gap between two runs of the checkpoint timer (AUDIT_CHECKPOINT_SCHEDULE)."""
    return timedelta(seconds=get_settings().audit_checkpoint_interval_s)


def verify_tenant(tenant_id: str, *, full: bool = False, now: datetime | None = None) -> audit.Verification:
    """Verify the tenant's chain against its newest signed checkpoint, and that checkpoints
    keep up: events older than STALE_INTERVALS intervals must be covered by one.

    Incremental unless `full`: from the newest signed checkpoint's event to the head (what
    that proves, and what only a full walk catches: docs/audit.md)."""
    tid = audit.normal_tenant_id(tenant_id)
    newest = newest_signed(tid)
    if newest.rejected:
        bad = newest.rejected[0]
        return _failed(bad["seq"], "checkpoint_invalid", bad["reason"])
    with db.tenant_tx(tid) as conn:
        first = _first_seq(conn)
    cut = chain_base(tid, first)
    failure = cut.failure(tid, newest.ref)
    if failure is not None:
        return failure
    return audit.verify_tenant(
        tid, newest.ref, full=full, stale_after=STALE_INTERVALS * checkpoint_interval(), now=now, base=cut.base
    )


def _failed(seq: int | None, code: str, reason: str) -> audit.Verification:
    return audit.Verification(
        valid=False, events_checked=0, head=None, checkpoint={"seq": seq, "created_at": None},
        first_failure={"seq": seq, "code": code, "reason": reason}, duration_ms=0.0,
    )


def chain_ids() -> list[str]:
    """Every chain: each tenant that is not purged or being purged, and the platform chain."""
    with db.platform_tx() as conn:
        rows = conn.execute("select id::text as id from tenants where status not in ('PURGING', 'PURGED') order by created_at").fetchall()
    return [audit.PLATFORM_CHAIN, *(r["id"] for r in rows)]


# What this worker itself signed or verified from storage, per chain: worker memory is out of
# a database attacker's reach, and it spares the timer a blob listing per unchanged chain.
_signed_by_this_worker: dict[str, audit.CheckpointRef] = {}


def checkpoint_tenant(tenant_id: str) -> dict[str, Any] | None:
    """Sign and store the chain's head if it moved past the newest signed checkpoint.

    Only a head that still links back to that checkpoint is signed, so a checkpoint never
    vouches for a chain someone has cut or rewritten since the last one (verify reports it).
    Returns the new checkpoint, or None when there was nothing to sign or it was refused.
    """
    tid = audit.normal_tenant_id(tenant_id)
    last = _signed_by_this_worker.get(tid)
    with db.tenant_tx(tid) as conn:
        head = conn.execute("select seq, checksum, now() as now from audit_events order by seq desc limit 1").fetchone()
        if head is None or (last is not None and (head["seq"], head["checksum"]) == (last.seq, last.checksum)):
            return None
    if last is None or head["seq"] < last.seq:
        newest = newest_signed(tid)
        for bad in newest.rejected:
            log.error("audit checkpoint blob rejected tenant=%s blob=%s reason=%s", tid, bad["name"], bad["reason"])
        last = newest.ref
    start, first_link = (last.seq if last else 1), None
    with db.tenant_tx(tid) as conn:
        first = _first_seq(conn)
    if first is not None and first > start:  # a retention cut removed the checkpoint's event
        cut = chain_base(tid, first)
        refused = cut.failure(tid, last)
        if refused is not None:
            failure = refused.first_failure or {}
            log.error("audit checkpoint refused tenant=%s seq=%s reason=%s", tid, failure.get("seq"),
                      failure.get("reason"))
            return None
        if cut.base.seq + 1 > start:
            start, first_link = cut.base.seq + 1, cut.base.checksum
    with db.tenant_tx(tid) as conn:
        segment = audit.verify_segment(conn, tenant_id=tid, checkpoint=last, start_seq=start, first_link=first_link)
        if not segment.valid:
            failure = segment.first_failure or {}
            log.error(
                "audit checkpoint refused tenant=%s seq=%s reason=%s", tid, failure.get("seq"), failure.get("reason")
            )
            return None
        if segment.head is None or (last is not None and segment.head["seq"] <= last.seq):
            if last is not None:
                _signed_by_this_worker[tid] = last
            return None
        doc = sign(tid, int(segment.head["seq"]), segment.head["checksum"], audit.format_time(head["now"]))
        written = write(doc)
        if written:
            _signed_by_this_worker[tid] = audit.CheckpointRef(
                seq=doc["seq"], checksum=doc["checksum"], created_at=doc["created_at"]
            )
        else:  # another worker signed this seq first: read what it wrote next time
            _signed_by_this_worker.pop(tid, None)
        conn.execute(
            "insert into audit_checkpoint_log (tenant_id, seq, checksum, created_at) values (%s, %s, %s, now())"
            " on conflict do nothing",
            (tid, doc["seq"], doc["checksum"]),
        )
    return doc if written else None


T = TypeVar("T")
CHAIN_WORKERS = 4
"""Chains checkpointed or verified at once by a timer run (bounded by the database pool)."""


def _each_chain(work: Callable[[str], T]) -> list[tuple[str, T]]:
    """`work` for every chain, a few at a time (each is I/O: a blob listing, a database walk),
    in chain order. One chain's failure is logged and does not stop the others; the first
    failure is raised once every chain has had its turn, so the timer run still fails."""
    ids = chain_ids()
    workers = max(1, min(CHAIN_WORKERS, get_settings().db_pool_max - 1, len(ids)))
    results: list[tuple[str, T]] = []
    first_error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chains") as pool:
        futures = [(tid, pool.submit(work, tid)) for tid in ids]
        for tid, future in futures:
            try:
                results.append((tid, future.result()))
            except Exception as exc:  # noqa: BLE001 - logged here, re-raised below
                log.exception("audit chain work failed tenant=%s", tid)
                first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results


def checkpoint_all() -> list[dict[str, Any]]:
    """Write a checkpoint for every chain whose head moved since its newest signed checkpoint."""
    return [doc for _, doc in _each_chain(checkpoint_tenant) if doc is not None]


_ALERTS = {"checkpoint_stale": "platform.audit_checkpoint_stale"}


def verify_all(*, now: datetime | None = None) -> list[tuple[str, audit.Verification]]:
    """Verify every chain in full (every event from 1: the only walk that sees an edit
    before the newest checkpoint that was not recomputed through it); a failure is logged
    and raised as a platform alert event (`platform.audit_checkpoint_stale` when
    checkpoints stopped, else `platform.audit_chain_invalid`)."""
    results = _each_chain(lambda tid: verify_tenant(tid, full=True, now=now))
    for tenant_id, result in results:
        if not result.valid:
            failure = result.first_failure or {}
            log.error(
                "audit chain verification failed tenant=%s seq=%s code=%s reason=%s",
                tenant_id, failure.get("seq"), failure.get("code"), failure.get("reason"),
            )
            with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
                audit.append(
                    conn,
                    tenant_id=audit.PLATFORM_CHAIN,
                    actor=audit.Actor(id=None, name="audit verifier", type="timer"),
                    action=_ALERTS.get(str(failure.get("code")), "platform.audit_chain_invalid"),
                    target_type="tenant",
                    target_id=tenant_id,
                    after={"first_failure": failure, "events_checked": result.events_checked},
                )
    return results


# --- retention checkpoints ------------------------------------------------------------------
#
# A retention checkpoint says: the tenant's events up to `seq` were archived (to `archive`)
# and removed; the last of them had checksum `checksum`. The remaining chain must begin at
# seq + 1 linking to that checksum. Signed like a checkpoint, over every field but the
# signature, and with `kind` among them, so neither kind of document verifies as the other.

RETENTION_KIND = "custos-audit-retention/1"


def retention_blob_name(tenant_id: str, seq: int) -> str:
    """Where a retention checkpoint is written: names sort newest first."""
    return f"{tenant_id}/retention/{_SEQ_CEILING - seq:020d}.json"


def retention_payload(doc: dict[str, Any]) -> bytes:
    return rfc8785.dumps({k: v for k, v in doc.items() if k != "signature"})


def sign_retention(fields: dict[str, Any]) -> dict[str, Any]:
    """A retention checkpoint document: `fields` (tenant_id, seq, checksum, ...) with `kind`
    and `key_id`, signed with the audit signing key."""
    keys = audit_keys()
    doc: dict[str, Any] = {**fields, "kind": RETENTION_KIND, "key_id": keys.signing_kid}
    doc["signature"] = base64.urlsafe_b64encode(keys.signing.sign(retention_payload(doc))).rstrip(b"=").decode()
    return doc


def check_retention(doc: Any, keys: AuditKeys, *, expected_tenant_id: str, expected_seq: int | None = None) -> audit.Base:
    """The chain base a retention checkpoint attests, once its signature and place are checked.

    Raises:
        CheckpointInvalid: the document is malformed, not a retention checkpoint, names an
            unknown key, its signature does not verify, or it belongs to another tenant or blob name.
    """
    if not isinstance(doc, dict) or doc.get("kind") != RETENTION_KIND:
        raise CheckpointInvalid("not a retention checkpoint")
    try:
        pub = keys.verifying[doc["key_id"]]
        sig = base64.urlsafe_b64decode(doc["signature"] + "=" * (-len(doc["signature"]) % 4))
        pub.verify(sig, retention_payload({k: v for k, v in doc.items()}))
        seq, checksum = doc["seq"], doc["checksum"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 or not isinstance(checksum, str):
            raise ValueError("malformed")
    except KeyError as exc:
        raise CheckpointInvalid(f"retention checkpoint lacks {exc} or names an unknown key") from None
    except (InvalidSignature, ValueError, TypeError):
        raise CheckpointInvalid("retention checkpoint signature does not verify") from None
    if doc.get("tenant_id") != expected_tenant_id:
        raise CheckpointInvalid("retention checkpoint of another tenant")
    if expected_seq is not None and seq != expected_seq:
        raise CheckpointInvalid("retention checkpoint seq differs from its blob name")
    return audit.Base(seq=seq, checksum=checksum)


def write_retention(doc: dict[str, Any]) -> bool:
    """Store a retention checkpoint as a new blob; False if one for that seq already exists."""
    from azure.core.exceptions import ResourceExistsError  # loaded with the client, not at import

    blob = storage.blob_service().get_blob_client(CONTAINER, retention_blob_name(doc["tenant_id"], doc["seq"]))
    try:
        blob.upload_blob(json.dumps(doc, indent=1).encode(), overwrite=False)
    except ResourceExistsError:
        return False
    return True


def read_retention(tenant_id: str, seq: int) -> audit.Base | None:
    """The retention checkpoint stored for `seq`, verified; None if there is none.

    Raises:
        CheckpointInvalid: a blob is there but does not verify.
    """
    from azure.core.exceptions import ResourceNotFoundError

    try:
        doc = _download(retention_blob_name(tenant_id, seq))
    except ResourceNotFoundError:
        return None
    except ValueError:
        raise CheckpointInvalid("retention checkpoint is not JSON") from None
    return check_retention(doc, audit_keys(), expected_tenant_id=tenant_id, expected_seq=seq)


@dataclass(frozen=True)
class ChainBase:
    """Where a tenant's remaining chain begins, read from the signed retention checkpoints.

    `base` is the newest signed cut below the first remaining event (GENESIS_BASE if none);
    `newest` the newest signed cut; `rejected` the retention blobs read that did not verify.
    """

    base: audit.Base
    newest: audit.Base | None
    first_seq: int | None
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def failure(self, tenant_id: str, checkpoint: audit.CheckpointRef | None) -> audit.Verification | None:
        """A failed verification if the cuts themselves do not hold, else None: a retention
        blob that does not verify (`retention_invalid`); a cut whose last event is still
        there (the cut crashed before its delete) but differs from what was signed
        (`retention_mismatch`); a checkpoint at the cut's seq that disagrees with it."""
        if self.rejected:
            bad = self.rejected[0]
            return _failed(bad["seq"], "retention_invalid", bad["reason"])
        newest = self.newest
        if newest is not None and self.first_seq is not None and newest.seq >= self.first_seq:
            with db.tenant_tx(tenant_id) as conn:
                row = conn.execute(
                    f"select {audit.SQL_CHECKSUM} as computed from audit_events where seq = %s", (newest.seq,)  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
                ).fetchone()
            if row is None or row["computed"] != newest.checksum:
                return _failed(newest.seq, "retention_mismatch", "event differs from the signed retention checkpoint")
        if checkpoint is not None and checkpoint.seq == self.base.seq and checkpoint.checksum != self.base.checksum:
            return _failed(checkpoint.seq, "checkpoint_mismatch", "retention checkpoint differs from the signed checkpoint")
        return None


def chain_base(tenant_id: str, first_seq: int | None) -> ChainBase:
    """Where the tenant's chain begins, given its first remaining event (None: no events).

    Retention blobs are read newest first and only until the base is found, so a verify
    costs one short listing however many cuts lie behind it.
    """
    keys = audit_keys()
    container = storage.blob_service().get_container_client(CONTAINER)
    rejected: list[dict[str, Any]] = []
    newest: audit.Base | None = None
    base = audit.GENESIS_BASE
    for item in container.list_blobs(name_starts_with=f"{tenant_id}/retention/", results_per_page=16):
        seq = _seq_of(item.name)
        try:
            if seq is None:
                raise CheckpointInvalid("blob name is not a retention checkpoint name")
            try:
                doc = _download(item.name)
            except ValueError:
                raise CheckpointInvalid("retention checkpoint is not JSON") from None
            mark = check_retention(doc, keys, expected_tenant_id=tenant_id, expected_seq=seq)
        except CheckpointInvalid as exc:
            rejected.append({"name": item.name, "seq": seq, "reason": str(exc)})
            continue
        newest = newest or mark
        if first_seq is None or mark.seq < first_seq:
            base = mark
            break
    return ChainBase(base=base, newest=newest, first_seq=first_seq, rejected=rejected)


def all_retention(tenant_id: str) -> list[dict[str, Any]]:
    """Every retention checkpoint document of a tenant, unverified (the export's auditor verifies), oldest first."""
    container = storage.blob_service().get_container_client(CONTAINER)
    names = [item.name for item in container.list_blobs(name_starts_with=f"{tenant_id}/retention/")]
    return [_download(name) for name in sorted(names, key=lambda name: _seq_of(name) or 0)]


def _first_seq(conn: db.Conn) -> int | None:
    """The tenant's first remaining event (None: it has none)."""
    row = conn.execute("select min(seq) as seq from audit_events").fetchone()
    return None if row is None or row["seq"] is None else int(row["seq"])
