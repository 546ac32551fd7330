"""The tenant export: every tenant table as CSV and JSON Lines with a JSON Schema each, the
attachments' blobs, and a manifest signed with the audit signing key, as a folder of blobs.

Layout, in the `exports` container under `tenants/<tenant>/<export id>/`:

    tables/<table>.csv            header row, RFC 4180 quoting, LF line ends (PostgreSQL's COPY CSV), formula guard
    tables/<table>.jsonl          one JSON object per row: the faithful copy
    schemas/<table>.schema.json   JSON Schema (draft 2020-12) of one JSONL line
    attachments/<sha256>          each attachment's content, once per distinct hash
    audit-retention/<from>-<to>.jsonl          each audit retention archive (events cut from the chain)
    audit-retention/<from>-<to>.manifest.json  its signed retention checkpoint
    manifest.json                 counts per table, SHA-256 and size of every file above
    manifest.json.sig             detached Ed25519 signature of manifest.json's exact bytes

Audit retention archives: the events a retention cut removed from `audit_events` live in
archives beside the tenant's exports (`shared.audit.retention`). The cuts are read from
`audit_retention_cuts` in the export's snapshot, so the archives listed are exactly those whose
events the snapshot no longer holds: archives plus `tables/audit_events.jsonl` cover seq 1 to
the head with no gap or overlap (`tools/verify_export.py` checks that and every link). Each
archive is copied and re-hashed against the SHA-256 its cut recorded.

Consistency: every table is read in one READ ONLY, REPEATABLE READ transaction
(`db.tenant_snapshot_tx`), so the export is one snapshot of the tenant: a record, its
versions, its signatures and the audit events that describe them agree with each other.

Memory stays bounded however large the tenant: PostgreSQL formats the rows (`row_to_json`
for JSONL through a server-side cursor a page at a time, `COPY ... CSV` for the CSV, both in the
same snapshot) and Python only moves bytes; each file is written as a stream of staged blocks (`BLOCK_BYTES` each,
committed at the end) and hashed as it is written; attachments are copied chunk by chunk
and re-hashed on the way (a blob whose content no longer matches its name fails the export).

What is not exported (secrets and credentials, never data of the tenant's records):
password hashes, TOTP secrets, recovery-code, invitation, reset, ticket and refresh-token
hashes, WebAuthn key material, payment gateway tokens, the mail outbox (its bodies hold
sign-in links). `EXCLUDED_TABLES` and `EXCLUDED_COLUMNS` say each one and why; a test
fails when a tenant table or a secret-looking column is in neither list.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.audit import chain as audit
from shared.core import db, storage
from shared.core.db import Conn
from shared.lifecycle import jobs
from shared.lifecycle.errors import ExportIntegrityFailure, ExportSchemaUnknown

log = logging.getLogger("custos.export")

KIND = "export"
FORMAT = "custos-tenant-export/1"
CONTAINER = "exports"
BLOCK_BYTES = 4 << 20
"""Size of one staged block; two files are open at a time, so about 8 MiB of buffers."""
PAGE_ROWS = 2000
"""Rows fetched per round trip from a server-side cursor."""
PROGRESS_EVERY = 5000

EXCLUDED_TABLES: dict[str, str] = {
    "audit_chain_heads": "derived: the last row of audit_events",
    "audit_checkpoint_log": "derived: the signed checkpoints in blob storage are the record",
    "invitations": "only token hashes and dates: credentials, not data",
    "password_resets": "only token hashes and dates: credentials, not data",
    "mfa_recovery_codes": "code hashes: credentials",
    "mfa_tickets": "short-lived sign-in ticket hashes: credentials",
    "outbox": "mail bodies hold sign-in and reset links",
    "sso_requests": "short-lived SSO sign-in state: relay and browser-binding hashes",
    "sso_handoffs": "short-lived SSO hand-off code hashes: credentials",
}
EXCLUDED_COLUMNS: dict[str, dict[str, str]] = {
    "users": {"password_hash": "a credential"},
    "sessions": {"refresh_hash": "a credential", "previous_refresh_hash": "a credential",
                 "retired_hashes": "credentials"},
    "mfa_totp": {"secret_ciphertext": "the TOTP secret", "secret_nonce": "part of the TOTP secret",
                 "key_id": "names our encryption key; no use outside Custos"},
    "webauthn_credentials": {"credential_id": "authenticator key handle", "public_key": "authenticator key material"},
    "payment_methods": {"gateway_token": "a payment gateway credential"},
    "scim_tokens": {"token_hash": "a SCIM bearer token's hash: a credential"},
    "sso_providers": {"secret_ciphertext": "the OIDC client secret", "secret_nonce": "part of the client secret",  # pragma: allowlist secret
                      "secret_key_id": "names our encryption key; no use outside Custos"},
}
SECRET_COLUMN = re.compile(r"hash|secret|token|cipher|nonce|password|public_key|credential_id")
"""A column whose name looks like this must be in EXCLUDED_COLUMNS or SAFE_COLUMNS, or the export stops."""
SAFE_COLUMNS: dict[str, str] = {
    "users.password_changed_at": "a date, not a credential",
}

ATTACHMENTS = "attachments"
_ATTACHMENTS_SQL = """
    select v.record_id, v.version, a ->> 'sha256' as sha256, a ->> 'filename' as filename,
           a ->> 'content_type' as content_type, (a ->> 'size')::bigint as size
      from record_versions v, json_array_elements(coalesce(v.attachments, '[]'::json)) a"""
_ATTACHMENT_COLUMNS = [
    ("record_id", "uuid", False), ("version", "integer", False), ("sha256", "text", False),
    ("filename", "text", True), ("content_type", "text", True), ("size", "bigint", True),
]
_ORDER: dict[str, str] = {"audit_events": "seq", "tenant_settings": "key", "record_versions": "record_id, version",
                          "record_type_schemas": "type_id, version", "signature_meanings": "code",
                          "signature_reasons": "code", "signature_policies": "type_id",
                          "user_designations": "user_id, designation_id",
                          "user_permission_overrides": "user_id, permission"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_UNGUARDED = frozenset({"integer", "bigint", "smallint", "numeric", "real", "double precision", "boolean", "uuid",
                        "timestamp with time zone", "timestamp without time zone", "date"})
"""Types whose text never starts a formula: numbers (a leading minus is a sign), UUIDs, times."""
_UDT = {"text": "text", "varchar": "text", "uuid": "uuid", "int2": "integer", "int4": "integer", "int8": "bigint",
        "bool": "boolean", "timestamptz": "timestamp with time zone", "timestamp": "timestamp without time zone",
        "date": "date", "numeric": "numeric", "float4": "real", "float8": "double precision", "jsonb": "jsonb",
        "json": "json", "bytea": "bytea"}
"""PostgreSQL type names (pg_type.typname) as the SQL standard names the schemas are built from."""


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str  # information_schema.columns.data_type, or udt name for arrays
    nullable: bool


@dataclass(frozen=True)
class Table:
    name: str
    columns: list[Column]
    source: str  # a SELECT of exactly the exported columns, by name
    order: str  # ORDER BY of its rows, in exported column names

    @property
    def query(self) -> str:
        return f"select * from ({self.source}) q order by {self.order}"  # noqa: S608  # nosec B608  # source and order are built by plan() from the catalogue of our own migrations, never from input

    def jsonl_query(self) -> str:
        """One JSON text per row, built by PostgreSQL (ISO 8601 times with offset, JSON kept as JSON)."""
        return f"select row_to_json(q)::text from ({self.source}) q order by {self.order}"  # noqa: S608  # nosec B608  # source and order are built by plan() from the catalogue of our own migrations, never from input

    def csv_query(self) -> str:
        """The rows as text cells for COPY ... CSV, with the formula guard of `csv_cell`."""
        cells = []
        for c in self.columns:
            value = f"(to_json(q.\"{c.name}\") #>> '{{}}')"
            if c.data_type not in _UNGUARDED:
                value = (f"case when left({value}, 1) in ('=', '+', '-', '@', chr(9), chr(13)) "
                         f"then chr(39) || {value} else {value} end")
            cells.append(f'{value} as "{c.name}"')
        return f"select {', '.join(cells)} from ({self.source}) q order by {self.order}"  # noqa: S608  # nosec B608  # source, order and cells are built by plan() from the catalogue of our own migrations, never from input


# --- discovering what to export --------------------------------------------------------------



def _tuple_row() -> Any:
    """psycopg's tuple row factory, imported with the first export rather than at import."""
    from psycopg.rows import tuple_row

    return tuple_row

def tenant_tables(conn: Conn) -> dict[str, list[Column]]:
    """Every table with a tenant_id column, with its columns in order. Read from pg_catalog, which
    shows every table whatever the reader's privileges (information_schema hides those it may not
    read: a table the app role cannot read would be skipped silently instead of failing loudly)."""
    rows = conn.execute(
        """select c.relname as table_name, a.attname as column_name, t.typname as type_name,
                  not a.attnotnull as nullable
             from pg_class c
             join pg_namespace n on n.oid = c.relnamespace and n.nspname = 'public'
             join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
             join pg_type t on t.oid = a.atttypid
            where c.relkind in ('r', 'p')
              and exists (select 1 from pg_attribute k
                           where k.attrelid = c.oid and k.attname = 'tenant_id' and not k.attisdropped)
            order by c.relname, a.attnum"""
    ).fetchall()
    tables: dict[str, list[Column]] = {}
    for row in rows:
        name = str(row["type_name"])
        kind = name if name.startswith("_") else _UDT.get(name, name)
        tables.setdefault(row["table_name"], []).append(Column(row["column_name"], kind, row["nullable"]))
    return tables


def plan(conn: Conn) -> list[Table]:
    """The tables of an export, their exported columns and the query that reads them.

    Raises:
        ExportSchemaUnknown: a secret-looking column is neither exported knowingly nor excluded
            (a schema change the export has not been taught about: refuse rather than leak).
    """
    out: list[Table] = []
    for name, columns in sorted(tenant_tables(conn).items()):
        if name in EXCLUDED_TABLES:
            continue
        excluded = EXCLUDED_COLUMNS.get(name, {})
        kept = [c for c in columns if c.name not in excluded and c.name != "tenant_id"]
        leaking = [c.name for c in kept if SECRET_COLUMN.search(c.name) and f"{name}.{c.name}" not in SAFE_COLUMNS]
        if leaking:
            raise ExportSchemaUnknown(f"{name}.{', '.join(leaking)} may hold a secret: the export is not taught about it")
        pk = [c.name for c in kept if c.name == "id"]
        order = _ORDER.get(name) or (pk[0] if pk else ", ".join(c.name for c in kept[:2]))
        select = ", ".join(f'"{c.name}"' for c in kept)
        out.append(Table(name, kept, f'select {select} from "{name}"', order))  # noqa: S608  # nosec B608  # table and column names come from the catalogue of our own migrations, never from input
    attachment_columns = [Column(n, t, nullable) for n, t, nullable in _ATTACHMENT_COLUMNS]
    out.append(Table(ATTACHMENTS, attachment_columns, _ATTACHMENTS_SQL, "record_id, version, sha256"))
    return out


def json_schema(table: Table) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) one JSONL line of `table` validates against."""
    properties: dict[str, Any] = {}
    for column in table.columns:
        prop = _column_schema(column.data_type)
        if column.nullable and "type" in prop:
            prop = {**prop, "type": [prop["type"], "null"]}
        properties[column.name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{table.name}: one row of a Custos tenant export",
        "type": "object",
        "properties": properties,
        "required": [c.name for c in table.columns],
        "additionalProperties": False,
    }



def _column_schema(data_type: str) -> dict[str, Any]:
    if data_type.startswith("_"):  # an array, named by its element's udt
        return {"type": "array", "items": _column_schema(_UDT.get(data_type[1:], "text"))}
    if data_type == "uuid":
        return {"type": "string", "format": "uuid"}
    if data_type in ("timestamp with time zone", "timestamp without time zone"):
        return {"type": "string", "format": "date-time"}
    if data_type == "date":
        return {"type": "string", "format": "date"}
    if data_type in ("integer", "bigint", "smallint"):
        return {"type": "integer"}
    if data_type in ("numeric", "double precision", "real"):
        return {"type": "number"}
    if data_type == "boolean":
        return {"type": "boolean"}
    if data_type in ("json", "jsonb"):
        return {}  # any JSON value: a record's payload follows its own type's schema
    return {"type": "string"}


# --- values --------------------------------------------------------------------------------


def csv_cell(value: Any) -> str:
    """A JSON value as one CSV cell, safe to open in a spreadsheet.

    Text that a spreadsheet would run as a formula (starting with = + - @, a tab or a
    carriage return: OWASP "CSV injection") gets a leading apostrophe, which spreadsheets
    show as text. Only text is guarded; numbers are written as numbers. The JSONL file
    holds the value unchanged.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "'" + text if text.startswith(_FORMULA_START) else text


# --- streaming into blobs --------------------------------------------------------------------


@dataclass
class BlobWriter:
    """A blob written as staged blocks, hashed as it goes: at most one block in memory."""

    name: str
    buffer: bytearray = field(default_factory=bytearray)
    blocks: list[str] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)
    size: int = 0

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        self.buffer += data
        if len(self.buffer) >= BLOCK_BYTES:
            self._stage()

    def _client(self) -> Any:
        return storage.blob_service().get_blob_client(CONTAINER, self.name)

    def _stage(self) -> None:
        block_id = base64.b64encode(f"{len(self.blocks):08d}".encode()).decode()
        self._client().stage_block(block_id, bytes(self.buffer))
        self.blocks.append(block_id)
        self.buffer.clear()

    def close(self, content_type: str) -> dict[str, Any]:
        """Commit the blob; its entry for the manifest (path filled in by the caller)."""
        from azure.storage.blob import BlobBlock, ContentSettings

        settings = ContentSettings(content_type=content_type)
        if not self.blocks:  # a file smaller than one block: one Put Blob instead of two requests
            self._client().upload_blob(bytes(self.buffer), overwrite=True, content_settings=settings)
            self.buffer.clear()
            return {"sha256": self.digest.hexdigest(), "bytes": self.size}
        if self.buffer:
            self._stage()
        self._client().commit_block_list([BlobBlock(block_id=b) for b in self.blocks], content_settings=settings)
        return {"sha256": self.digest.hexdigest(), "bytes": self.size}


@dataclass
class Exported:
    """What an export wrote: its folder, files (path -> {sha256, bytes}) and row counts."""

    prefix: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def prefix_of(tenant_id: str, export_id: str) -> str:
    return f"tenants/{tenant_id}/{export_id}/"


def _write_table(conn: Conn, table: Table, out: Exported, tick: Any) -> set[str]:
    """Two reads of the table in the transaction's snapshot: JSON lines from a server-side
    cursor, then the CSV from COPY. PostgreSQL formats both; Python only moves bytes."""
    base = out.prefix
    jsonl = BlobWriter(f"{base}tables/{table.name}.jsonl")
    hashes: set[str] = set()
    count = 0
    with conn.cursor(name=f"export_{uuid.uuid4().hex}", row_factory=_tuple_row()) as cur:
        cur.itersize = PAGE_ROWS
        cur.execute(table.jsonl_query())  # type: ignore[arg-type]  # built from catalogue names only
        for (line,) in cur:
            jsonl.write(line.encode() + b"\n")
            if table.name == ATTACHMENTS:
                sha256 = json.loads(line).get("sha256")
                if sha256:
                    hashes.add(sha256)
            count += 1
            tick(1)
    out.files[f"tables/{table.name}.jsonl"] = jsonl.close("application/jsonl")
    csv_out = BlobWriter(f"{base}tables/{table.name}.csv")
    with conn.cursor(row_factory=_tuple_row()) as plain, plain.copy(
        f"copy ({table.csv_query()}) to stdout with (format csv, header true)"  # type: ignore[arg-type]
    ) as copy:
        for chunk in copy:
            csv_out.write(bytes(chunk))
    out.files[f"tables/{table.name}.csv"] = csv_out.close("text/csv; charset=utf-8")
    schema = BlobWriter(f"{base}schemas/{table.name}.schema.json")
    schema.write(json.dumps(json_schema(table), indent=2, sort_keys=True).encode())
    out.files[f"schemas/{table.name}.schema.json"] = schema.close("application/schema+json")
    out.counts[table.name] = count
    return hashes


def _copy_attachment(tenant_id: str, sha256: str, out: Exported) -> None:
    from shared.records.attachments import CONTAINER as ATTACHMENT_CONTAINER
    from shared.records.attachments import blob_name

    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ExportIntegrityFailure("an attachment reference is not a SHA-256")
    source = storage.blob_service().get_blob_client(ATTACHMENT_CONTAINER, blob_name(tenant_id, sha256))
    target = BlobWriter(f"{out.prefix}attachments/{sha256}")
    for chunk in source.download_blob().chunks():
        target.write(chunk)
    if target.digest.hexdigest() != sha256:
        raise ExportIntegrityFailure(f"attachment {sha256} no longer matches its hash")
    out.files[f"attachments/{sha256}"] = target.close("application/octet-stream")


RETENTION_FOLDER = "audit-retention/"


def _copy_blob(source_name: str, target_name: str) -> BlobWriter:
    source = storage.blob_service().get_blob_client(CONTAINER, source_name)
    target = BlobWriter(target_name)
    for chunk in source.download_blob().chunks():
        target.write(chunk)
    return target


def _copy_retention_archive(tenant_id: str, cut: dict[str, Any], out: Exported) -> dict[str, Any]:
    """Copy one retention cut's archive and its signed manifest into the export, re-hashing the
    archive against the SHA-256 its cut recorded; its entry for the manifest's `audit_retention`.

    Raises:
        ExportIntegrityFailure: the archive is not under this tenant's retention prefix, is
            missing, or no longer matches its recorded hash.
    """
    from azure.core.exceptions import ResourceNotFoundError

    from shared.audit import retention

    from_seq, to_seq = int(cut["from_seq"]), int(cut["seq"])
    name = retention.archive_name(tenant_id, from_seq, to_seq)
    if cut["archive_blob"] != name:
        raise ExportIntegrityFailure(f"retention cut {to_seq} names an archive outside the tenant's retention folder")
    base = name[len(retention.archive_prefix(tenant_id)):].removesuffix(".jsonl")
    archive_path, manifest_path = f"{RETENTION_FOLDER}{base}.jsonl", f"{RETENTION_FOLDER}{base}.manifest.json"
    try:
        archive = _copy_blob(name, out.prefix + archive_path)
        if archive.digest.hexdigest() != cut["archive_sha256"]:
            raise ExportIntegrityFailure(f"retention archive {base} no longer matches its recorded hash")
        out.files[archive_path] = archive.close("application/jsonl")
        manifest = _copy_blob(retention.manifest_name(tenant_id, from_seq, to_seq), out.prefix + manifest_path)
        out.files[manifest_path] = manifest.close("application/json")
    except ResourceNotFoundError:
        raise ExportIntegrityFailure(f"retention archive {base} or its manifest is missing") from None
    return {"from_seq": from_seq, "to_seq": to_seq, "archive": archive_path, "manifest": manifest_path,
            "sha256": cut["archive_sha256"]}


def write_export(tenant_id: str, export_id: str, *, progress: Any = None) -> dict[str, Any]:
    """Write the tenant's export (one snapshot) and its signed manifest; returns the job result.

    Raises:
        ExportIntegrityFailure: an attachment's content or a retention archive no longer matches
            its hash, or an archive is missing.
        ServiceUnavailable: the database or storage could not be reached.
    """
    from shared.lifecycle import signing

    out = Exported(prefix=prefix_of(tenant_id, export_id))
    done = 0
    total = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress(done, total)

    with db.tenant_snapshot_tx(tenant_id) as conn:
        snapshot_at = conn.execute("select now() as at").fetchone()["at"]  # type: ignore[index]
        tables = plan(conn)
        counts = conn.execute(
            "select " + ", ".join(f"(select count(*) from ({t.query}) q{i}) as c{i}" for i, t in enumerate(tables))  # noqa: S608  # nosec B608  # the queries are built by plan() from the catalogue of our own migrations, never from input
        ).fetchone()
        assert counts is not None
        hashes_total = conn.execute(
            "select count(distinct a ->> 'sha256') as n from record_versions v, "
            "json_array_elements(coalesce(v.attachments, '[]'::json)) a"
        ).fetchone()
        total = sum(int(v) for v in counts.values()) + int(hashes_total["n"] if hashes_total else 0)
        if progress is not None:
            progress(0, total)
        hashes: set[str] = set()
        for table in tables:
            hashes |= _write_table(conn, table, out, tick)
        cuts = [dict(r) for r in conn.execute(
            "select from_seq, seq, archive_blob, archive_sha256 from audit_retention_cuts order by seq").fetchall()]
    for sha256 in sorted(hashes):  # at most one hash set in memory: 64 bytes per distinct attachment
        _copy_attachment(tenant_id, sha256, out)
        tick(1)
    retained = [_copy_retention_archive(tenant_id, cut, out) for cut in cuts]
    manifest = {
        "format": FORMAT,
        "tenant_id": tenant_id,
        "export_id": export_id,
        "snapshot_at": audit.format_time(snapshot_at),
        "consistency": "one READ ONLY REPEATABLE READ transaction: every table from the same snapshot",
        "csv_formula_guard": "text cells starting with = + - @ TAB CR are prefixed with an apostrophe",
        "tables": {name: {"rows": n, "csv": f"tables/{name}.csv", "jsonl": f"tables/{name}.jsonl",
                          "schema": f"schemas/{name}.schema.json"} for name, n in sorted(out.counts.items())},
        "audit_retention": retained,
        "files": [{"path": path, **entry} for path, entry in sorted(out.files.items())],
    }
    signed = signing.sign_manifest(manifest)
    for name, body, media in (("manifest.json", signed.manifest, "application/json"),
                              ("manifest.json.sig", signed.signature, "application/json")):
        blob = BlobWriter(out.prefix + name)
        blob.write(body)
        entry = blob.close(media)
        out.files[name] = entry
    if progress is not None:
        progress(total, total)
    return {
        "prefix": out.prefix,
        "tables": out.counts,
        "files": [{"path": path, **entry} for path, entry in sorted(out.files.items())],
        "key_id": signed.key_id,
    }


@jobs.register(KIND)
def run_export(run: jobs.Run) -> dict[str, Any]:
    """The export job's handler."""
    return write_export(run.job.tenant_id, run.job.id, progress=run.progress)
