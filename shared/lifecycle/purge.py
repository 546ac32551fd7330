"""The purge of a cancelled tenant, and its signed deletion attestation (docs/purge.md).

`purge_due` (the daily timer) purges every tenant whose purge date has passed and resumes any
purge that stopped half way; `purge_tenant` purges one. A purge runs as the schema owner (the
app role cannot delete) in phases, each recorded in the platform table `tenant_purges`, so a
run that dies anywhere resumes where it stopped and still reports the right totals:

1. started: the tenant turns PURGING (no more sign-ins or writes), a last event goes into its
   chain, and the chain head and the ADMINs' addresses are read, before anything is deleted.
2. checkpointed: the head is signed as a checkpoint; the newest signed one is kept.
3. listed: every blob under the tenant's prefixes and every Table Storage entity that names it
   is counted, and the blob names hashed.
4. storage_deleted: those blobs (except in WORM containers) and entities are deleted.
5. rows_deleted: every row of every table with a `tenant_id` column, found in the catalog and
   deleted children first (foreign keys from pg_constraint), in batches of
   TENANT_PURGE_BATCH_ROWS, one transaction per batch, each adding its count to the progress row.
6. finished: the attestation is signed (Ed25519, the audit checkpoint key), stored in the WORM
   container `attestations`, mailed to the ADMINs through a platform outbox row and recorded
   as `tenant.purged` in the platform chain; the tenant turns PURGED.
"""

from __future__ import annotations

import base64
import graphlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import rfc8785
from psycopg import sql
from psycopg.rows import dict_row

from shared.audit import chain as audit
from shared.audit import checkpoints
from shared.core import entra, mail, storage
from shared.core.db import Conn
from shared.core.settings import SettingsError, get_settings
from shared.lifecycle.errors import PurgeInProgress, PurgeNotDue

log = logging.getLogger("custos.lifecycle.purge")

ATTESTATION_CONTAINER = "attestations"
ATTESTATION_TYPE = "custos.deletion-attestation"
ATTESTATION_VERSION = 1
WORM_CONTAINERS: dict[str, str] = {
    "audit-checkpoints": (
        "WORM container: blobs cannot be deleted before the immutability period ends; a checkpoint holds "
        "only the tenant id, a sequence number, a chain checksum and a time"
    ),
    "attestations": "WORM container: deletion records are kept for the immutability period",
}
"""Containers that are immutable in Azure (infra/bicep/modules/storage.bicep `wormContainers`)."""
NOT_ATTRIBUTABLE_TABLES: dict[str, str] = {
    "ratelimits": (
        "keys are SHA-256 hashes of email and IP values, not attributable to a tenant; each entity "
        "is forgotten after LOGIN_WINDOW_S"
    ),
}
"""Table Storage tables whose entities carry no tenant id (the others are searched for `tenant_id`)."""
PURGE_ACTOR = audit.Actor(id=None, name="tenant purge", type="timer")
PHASES = ("started", "checkpointed", "listed", "storage_deleted", "rows_deleted", "finished")

OnBatch = Callable[[str, int], None]
"""Called after each committed batch with the table and the rows it deleted (tests stop a run here)."""


@dataclass(frozen=True)
class PurgeResult:
    tenant_id: str
    attestation_blob: str
    attestation: dict[str, Any]


def attestation_blob_name(tenant_id: str) -> str:
    """Where a tenant's deletion attestation is stored (written once, never overwritten)."""
    return f"deletions/{tenant_id}.json"


def names_hash(names: list[str]) -> str:
    """SHA-256 (hex) of the UTF-8 names, sorted by code point and joined by a line feed."""
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()


def signed_payload(doc: dict[str, Any]) -> bytes:
    """What the signature covers: the RFC 8785 canonical JSON of every member but `signature`."""
    return rfc8785.dumps({k: v for k, v in doc.items() if k != "signature"})


def sign_attestation(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with `key_id` and an Ed25519 `signature` (base64url) by the audit checkpoint key."""
    keys = checkpoints.audit_keys()
    signed = {**doc, "key_id": keys.signing_kid}
    signature = keys.signing.sign(signed_payload(signed))
    return {**signed, "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode()}


def check_attestation(doc: Any, *, expected_tenant_id: str) -> None:
    """Raises ValueError unless `doc` is an attestation of that tenant signed by a known audit key."""
    if not isinstance(doc, dict) or doc.get("type") != ATTESTATION_TYPE or doc.get("tenant_id") != expected_tenant_id:
        raise ValueError("not a deletion attestation of this tenant")
    pub = checkpoints.audit_keys().verifying.get(str(doc.get("key_id")))
    if pub is None:
        raise ValueError("attestation names an unknown key")
    from cryptography.exceptions import InvalidSignature

    try:
        sig = str(doc["signature"])
        pub.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), signed_payload(doc))
    except (InvalidSignature, KeyError, ValueError) as exc:
        raise ValueError("attestation signature does not verify") from exc


# --- the owner's connection ----------------------------------------------------------------


@contextmanager
def _owner() -> Iterator[Conn]:
    """One autocommit connection as the schema owner; every unit opens its own transaction.

    Raises:
        SettingsError: DATABASE_OWNER_URL is not set.
    """
    s = get_settings()
    if not s.database_owner_url:
        raise SettingsError("DATABASE_OWNER_URL must be set for the tenant purge (the app role cannot delete)")
    with psycopg.connect(s.database_owner_url, autocommit=True, row_factory=dict_row,
                         **entra.connect_params(s.database_owner_url, s.database_auth)) as conn:
        yield conn


def _scope(conn: Conn, tenant_id: str) -> None:
    """Inside a transaction: RLS admits only this tenant (FORCE applies to the owner too), and
    the immutable tables (migrations 0018, 0020) accept this purge's deletes."""
    conn.execute(
        "select set_config('app.tenant_id', %s, true), set_config('custos.purge_tenant', %s, true),"
        " set_config('custos.audit_delete', 'purge', true)",
        (tenant_id, tenant_id),
    )


# --- the catalog -----------------------------------------------------------------------------


def tenant_tables(conn: Conn) -> list[str]:
    """Every table of the schema with a `tenant_id` column, children before parents (so a batch
    never deletes a row another tenant table still references)."""
    rows = conn.execute(
        """select c.oid::bigint as oid, c.relname
             from pg_class c
             join pg_namespace n on n.oid = c.relnamespace
             join pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
            where n.nspname = current_schema() and c.relkind in ('r', 'p') and not c.relispartition"""
    ).fetchall()
    names = {r["oid"]: r["relname"] for r in rows}
    edges = conn.execute(
        "select conrelid::bigint as child, confrelid::bigint as parent from pg_constraint where contype = 'f'"
    ).fetchall()
    # A parent comes after every table that references it.
    order: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter({name: set() for name in names.values()})
    for e in edges:
        if e["child"] in names and e["parent"] in names and e["child"] != e["parent"]:
            order.add(names[e["parent"]], names[e["child"]])
    return list(order.static_order())


def _self_referencing(conn: Conn) -> set[str]:
    rows = conn.execute(
        "select conrelid::regclass::text as name from pg_constraint where contype = 'f' and conrelid = confrelid"
    ).fetchall()
    return {r["name"] for r in rows}


# --- phases --------------------------------------------------------------------------------


def _now(conn: Conn, now: datetime | None) -> datetime:
    if now is not None:
        return now
    row = conn.execute("select now() as now").fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]


def _start(conn: Conn, tenant_id: str, now: datetime | None) -> dict[str, Any]:
    """Phase 1, or the progress row of a purge already under way.

    Raises:
        PurgeNotDue: no such tenant, it is not cancelled, or its purge date is after `now`.
    """
    with conn.transaction():
        at = _now(conn, now)
        tenant = conn.execute(
            "select id::text as id, slug, status, cancelled_at, purge_after from tenants where id = %s for update",
            (tenant_id,),
        ).fetchone()
        if tenant is None:
            raise PurgeNotDue("no such tenant")
        progress = conn.execute("select * from tenant_purges where tenant = %s", (tenant_id,)).fetchone()
        if tenant["status"] in ("PURGING", "PURGED") and progress is not None:
            return progress
        if tenant["status"] != "CANCELLED":
            raise PurgeNotDue(f"the tenant is {tenant['status'].lower()}, not cancelled")
        if tenant["purge_after"] > at:
            raise PurgeNotDue(f"the tenant's purge date is {audit.format_time(tenant['purge_after'])}")
        conn.execute("update tenants set status = 'PURGING' where id = %s", (tenant_id,))
        _scope(conn, tenant_id)
        audit.append(conn, tenant_id=tenant_id, actor=PURGE_ACTOR, action="tenant.purge_started",
                     target_type="tenant", target_id=tenant_id, before={"status": "CANCELLED"},
                     after={"status": "PURGING"})
        head = conn.execute("select seq, checksum from audit_events order by seq desc limit 1").fetchone()
        admins = [r["email"] for r in conn.execute(
            "select email from users where role = 'ADMIN' and status = 'active' order by email"
        ).fetchall()]
        conn.execute("select set_config('app.tenant_id', %s, true)", (audit.PLATFORM_CHAIN,))
        audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=PURGE_ACTOR, action="platform.tenant_purge_started",
                     target_type="tenant", target_id=tenant_id, before={"status": "CANCELLED"},
                     after={"status": "PURGING", "chain_head": dict(head or {})})
        row = conn.execute(
            """insert into tenant_purges (tenant, slug, cancelled_at, purge_after, started_at, chain_head,
                                          admin_addresses)
               values (%s, %s, %s, %s, %s, %s, %s) returning *""",
            (tenant_id, tenant["slug"], tenant["cancelled_at"], tenant["purge_after"], at,
             json.dumps(dict(head) if head else None), admins),
        ).fetchone()
    assert row is not None
    return row


def _set(conn: Conn, tenant_id: str, **values: Any) -> dict[str, Any]:
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in values
    )
    with conn.transaction():
        row = conn.execute(
            sql.SQL("update tenant_purges set {} where tenant = %(tenant)s returning *").format(assignments),
            {**values, "tenant": tenant_id},
        ).fetchone()
    assert row is not None
    return row


def _checkpoint(conn: Conn, tenant_id: str, now: datetime | None) -> dict[str, Any]:
    """Phase 2: the final head signed, the newest checkpoint that verifies, and a full walk of
    the chain against it (a chain that does not verify is still purged: the attestation says so)."""
    checkpoints.checkpoint_tenant(tenant_id)
    newest = checkpoints.newest_signed(tenant_id)
    ref = None if newest.ref is None else {"seq": newest.ref.seq, "checksum": newest.ref.checksum,
                                           "created_at": newest.ref.created_at}
    result = checkpoints.verify_tenant(tenant_id, full=True, now=now)
    verified = {"valid": result.valid, "events_checked": result.events_checked, "first_failure": result.first_failure}
    if not result.valid:
        log.error("tenant purge: audit chain does not verify tenant=%s failure=%s", tenant_id, result.first_failure)
    return _set(conn, tenant_id, newest_checkpoint=json.dumps(ref), chain_verified=json.dumps(audit.json_safe(verified)),
                phase="checkpointed")


def _prefixes(tenant_id: str) -> tuple[str, ...]:
    return (f"tenants/{tenant_id}/", f"{tenant_id}/")


def _blob_names(tenant_id: str) -> dict[str, list[str]]:
    service = storage.blob_service()
    found: dict[str, list[str]] = {}
    for name in storage.CONTAINERS:
        container = service.get_container_client(name)
        found[name] = [b.name for prefix in _prefixes(tenant_id) for b in container.list_blobs(name_starts_with=prefix)]
    return found


def _entities(tenant_id: str) -> dict[str, list[tuple[str, str]]]:
    service = storage.table_service()
    found: dict[str, list[tuple[str, str]]] = {}
    for name in storage.TABLES:
        if name in NOT_ATTRIBUTABLE_TABLES:
            continue
        table = service.get_table_client(name)
        found[name] = [(e["PartitionKey"], e["RowKey"]) for e in table.query_entities(
            "tenant_id eq @t", parameters={"t": tenant_id}, select=["PartitionKey", "RowKey"])]
    return found


def _list(conn: Conn, tenant_id: str) -> dict[str, Any]:
    """Phase 3: what storage holds of the tenant, counted and hashed before anything goes."""
    names = _blob_names(tenant_id)
    deleted = [f"{c}/{n}" for c, ns in names.items() if c not in WORM_CONTAINERS for n in ns]
    blobs = {
        "deleted": {
            "count": len(deleted),
            "names_sha256": names_hash(deleted),
            "containers": {c: len(ns) for c, ns in names.items() if c not in WORM_CONTAINERS},
        },
        "retained": [
            {"container": c, "count": len(names[c]), "names_sha256": names_hash([f"{c}/{n}" for n in names[c]]),
             "reason": reason}
            for c, reason in WORM_CONTAINERS.items() if names.get(c)
        ],
        "prefixes": list(_prefixes(tenant_id)),
    }
    entities = _entities(tenant_id)
    table_entities = {
        "deleted": {t: len(keys) for t, keys in entities.items()},
        "not_attributable": [{"table": t, "reason": r} for t, r in NOT_ATTRIBUTABLE_TABLES.items()],
    }
    return _set(conn, tenant_id, blobs=json.dumps(blobs), table_entities=json.dumps(table_entities), phase="listed")


def _delete_storage(conn: Conn, tenant_id: str) -> dict[str, Any]:
    """Phase 4: whatever is still there (a resumed run finds less, the counts are phase 3's)."""
    from azure.core.exceptions import ResourceNotFoundError

    service = storage.blob_service()
    for container, names in _blob_names(tenant_id).items():
        if container in WORM_CONTAINERS:
            continue
        client = service.get_container_client(container)
        for name in names:
            try:
                client.delete_blob(name, delete_snapshots="include")
            except ResourceNotFoundError:
                pass
    tables = storage.table_service()
    for table, keys in _entities(tenant_id).items():
        table_client = tables.get_table_client(table)
        for partition, row in keys:
            table_client.delete_entity(partition, row)  # a missing entity is not an error for delete_entity
    return _set(conn, tenant_id, phase="storage_deleted")


def _delete_rows(conn: Conn, tenant_id: str, slug: str, batch: int, on_batch: OnBatch | None) -> dict[str, Any]:
    """Phase 5: every tenant row, one transaction per batch, each adding its count to the progress."""
    tables = tenant_tables(conn)
    whole = _self_referencing(conn)
    for table in tables:
        ident = sql.Identifier(table)
        limit = sql.SQL("") if table in whole else sql.SQL(" limit {}").format(sql.Literal(batch))
        statement = sql.SQL(
            "delete from {t} where tenant_id = %(tid)s and (tableoid, ctid) in"
            " (select tableoid, ctid from {t} where tenant_id = %(tid)s{limit})"
        ).format(t=ident, limit=limit)
        while True:
            with conn.transaction():
                _scope(conn, tenant_id)
                deleted = conn.execute(statement, {"tid": tenant_id}).rowcount
                if deleted:
                    _add_count(conn, tenant_id, table, deleted)
            if on_batch is not None:
                on_batch(table, deleted)
            if table in whole or deleted < batch:
                break
    with conn.transaction():
        # Pending password-reset requests name the tenant by slug (a platform table, migration 0016).
        deleted = conn.execute("delete from reset_requests where tenant_slug = %s", (slug,)).rowcount
        if deleted:
            _add_count(conn, tenant_id, "reset_requests", deleted)
    return _set(conn, tenant_id, phase="rows_deleted")


def _add_count(conn: Conn, tenant_id: str, table: str, deleted: int) -> None:
    conn.execute(
        """update tenant_purges
              set rows_deleted = rows_deleted || jsonb_build_object(%(t)s::text,
                                   coalesce((rows_deleted ->> %(t)s)::bigint, 0) + %(n)s)
            where tenant = %(tenant)s""",
        {"t": table, "n": deleted, "tenant": tenant_id},
    )


def _attestation(progress: dict[str, Any], purged_at: datetime, tables: list[str]) -> dict[str, Any]:
    counts = {t: int(progress["rows_deleted"].get(t, 0)) for t in [*tables, "reset_requests"]}
    return {
        "type": ATTESTATION_TYPE,
        "version": ATTESTATION_VERSION,
        "tenant_id": str(progress["tenant"]),
        "slug": progress["slug"],
        "cancelled_at": audit.format_time(progress["cancelled_at"]),
        "purge_after": audit.format_time(progress["purge_after"]),
        "purge_started_at": audit.format_time(progress["started_at"]),
        "purged_at": audit.format_time(purged_at),
        "rows_deleted": counts,
        "rows_deleted_total": sum(counts.values()),
        "blobs": progress["blobs"],
        "table_entities": progress["table_entities"],
        "queue_messages": "job messages carry only a job id; the jobs rows are deleted above, so they do nothing",
        "audit_chain": {"final_head": progress["chain_head"], "newest_checkpoint": progress["newest_checkpoint"],
                        "verified": progress["chain_verified"]},
        "hash": "SHA-256 over the sorted 'container/name' lines joined by LF; signature: Ed25519 over RFC 8785 JSON",
    }


def _store_attestation(doc: dict[str, Any]) -> dict[str, Any]:
    """Write once; a run that died after writing finds its own signed document and keeps it.

    Raises:
        ValueError: a blob of that name exists that is not this tenant's signed attestation.
    """
    from azure.core.exceptions import ResourceExistsError

    blob = storage.blob_service().get_blob_client(ATTESTATION_CONTAINER, attestation_blob_name(doc["tenant_id"]))
    try:
        blob.upload_blob(json.dumps(doc, indent=1, sort_keys=True).encode(), overwrite=False)
        return doc
    except ResourceExistsError:
        existing = json.loads(blob.download_blob().readall())
        check_attestation(existing, expected_tenant_id=doc["tenant_id"])
        return existing  # type: ignore[no-any-return]


def _finish(conn: Conn, tenant_id: str, progress: dict[str, Any], now: datetime | None) -> PurgeResult:
    tables = tenant_tables(conn)
    purged_at = now or _now(conn, None)
    doc = _store_attestation(sign_attestation(_attestation(progress, purged_at, tables)))
    name = attestation_blob_name(tenant_id)
    digest = hashlib.sha256(rfc8785.dumps(doc)).hexdigest()
    with conn.transaction():
        conn.execute("select set_config('app.tenant_id', %s, true)", (audit.PLATFORM_CHAIN,))
        for address in progress["admin_addresses"]:
            mail.enqueue(conn, tenant_id=mail.PLATFORM_OUTBOX, to=address, kind="tenant_purged",
                         subject=f"Custos: the data of {doc['slug']} has been deleted",
                         body=_mail_body(doc, name, digest))
        audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=PURGE_ACTOR, action="tenant.purged",
                     target_type="tenant", target_id=tenant_id, before={"status": "PURGING"},
                     after={"status": "PURGED", "slug": doc["slug"], "attestation_blob": name,
                            "attestation_sha256": digest, "rows_deleted_total": doc["rows_deleted_total"],
                            "blobs_deleted": doc["blobs"]["deleted"]["count"], "key_id": doc["key_id"]})
        moved = conn.execute("update tenants set status = 'PURGED', purged_at = %s where id = %s and status = 'PURGING'",
                             (datetime.fromisoformat(doc["purged_at"]), tenant_id)).rowcount
        if moved != 1:
            raise PurgeInProgress("the tenant is no longer PURGING: another run finished it")
        conn.execute(
            """update tenant_purges set phase = 'finished', finished_at = %s, attestation_blob = %s,
                                        admin_addresses = '{}' where tenant = %s""",
            (datetime.fromisoformat(doc["purged_at"]), name, tenant_id),
        )
    return PurgeResult(tenant_id=tenant_id, attestation_blob=name, attestation=doc)


def _mail_body(doc: dict[str, Any], name: str, digest: str) -> str:
    return (
        f"As your organisation's administrator: the Custos tenant {doc['slug']} ({doc['tenant_id']}), "
        f"cancelled {doc['cancelled_at']}, was purged at {doc['purged_at']}.\n\n"
        f"Rows deleted: {doc['rows_deleted_total']}. Files deleted: {doc['blobs']['deleted']['count']}.\n"
        f"Final audit chain head: {json.dumps(doc['audit_chain']['final_head'])}.\n\n"
        f"A signed deletion attestation is kept as {name} (SHA-256 of its canonical JSON: {digest}).\n"
        "It is attached below; verify it with tools/verify_attestation.py and the keys published at "
        "/.well-known/audit-keys.json.\n\n" + json.dumps(doc, indent=1, sort_keys=True)
    )


# --- entry points --------------------------------------------------------------------------


def purge_tenant(tenant_id: str, *, now: datetime | None = None, batch_rows: int | None = None,
                 on_batch: OnBatch | None = None) -> PurgeResult:
    """Purge one tenant whose purge date is at or before `now` (database time if None), or
    finish a purge that stopped half way. A purged tenant's result is returned as stored.

    Raises:
        PurgeNotDue: the tenant is not cancelled or not yet due; nothing was deleted.
        PurgeInProgress: another worker is purging it now.
        SettingsError: no DATABASE_OWNER_URL.
        ServiceUnavailable: storage could not be reached (the next run resumes).
    """
    tid = audit.normal_tenant_id(tenant_id)
    batch = batch_rows or get_settings().tenant_purge_batch_rows
    with _owner() as conn:
        _claim(conn, tid)
        progress = _start(conn, tid, now)
        if progress["phase"] == "finished":
            return _stored(progress)
        if progress["phase"] == "started":
            progress = _checkpoint(conn, tid, now)
        if progress["phase"] == "checkpointed":
            progress = _list(conn, tid)
        if progress["phase"] == "listed":
            progress = _delete_storage(conn, tid)
        if progress["phase"] == "storage_deleted":
            progress = _delete_rows(conn, tid, progress["slug"], batch, on_batch)
        result = _finish(conn, tid, progress, now)
    log.info("tenant purged tenant=%s rows=%s blobs=%s", tid, result.attestation["rows_deleted_total"],
             result.attestation["blobs"]["deleted"]["count"])
    return result


def _claim(conn: Conn, tenant_id: str) -> None:
    """One purge of a tenant at a time: a session advisory lock, held until this connection
    closes (also when the worker dies), so two timer runs never mail or attest twice.

    Raises:
        PurgeInProgress: another connection holds it.
    """
    row = conn.execute("select pg_try_advisory_lock(hashtextextended('custos.purge:' || %s, 0)) as ok",
                       (tenant_id,)).fetchone()
    if row is None or not row["ok"]:
        raise PurgeInProgress("another worker is purging this tenant")


def _stored(progress: dict[str, Any]) -> PurgeResult:
    name = str(progress["attestation_blob"])
    blob = storage.blob_service().get_blob_client(ATTESTATION_CONTAINER, name)
    return PurgeResult(tenant_id=str(progress["tenant"]), attestation_blob=name,
                       attestation=json.loads(blob.download_blob().readall()))


def due_tenants(*, now: datetime | None = None) -> list[str]:
    """Tenants whose purge date is at or before `now`, and purges that stopped half way."""
    with _owner() as conn, conn.transaction():
        at = _now(conn, now)
        rows = conn.execute(
            """select id::text as id from tenants
                where (status = 'CANCELLED' and purge_after <= %s) or status = 'PURGING'
                order by purge_after, id""",
            (at,),
        ).fetchall()
    return [r["id"] for r in rows]


def purge_due(*, now: datetime | None = None) -> list[PurgeResult]:
    """Purge every due tenant (the daily timer). One tenant's failure is logged and does not
    stop the others; the first failure is raised after every tenant had its turn, so the run
    fails visibly (an alert watches it) and the next run resumes.

    Raises:
        Exception: the first tenant's purge that failed.
    """
    results: list[PurgeResult] = []
    first_error: BaseException | None = None
    for tid in due_tenants(now=now):
        try:
            results.append(purge_tenant(tid, now=now))
        except PurgeInProgress:
            log.info("tenant purge skipped: another worker holds it tenant=%s", tid)
        except Exception as exc:  # noqa: BLE001 - logged here, re-raised below
            log.exception("tenant purge failed tenant=%s", tid)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results

