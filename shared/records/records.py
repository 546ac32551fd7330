"""Records under ALCOA+: typed, versioned, never silently changed.

Every write makes a new immutable version (the database refuses UPDATE and DELETE on
versions) carrying who (id and printed name), when (database clock, UTC, plus the actor's
time zone), why, the SHA-256 of the canonical payload, and the previous version. Records are
retired, never deleted. References to other records are frozen into the version at write
time, so later changes to master data never change an issued document.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import TYPE_CHECKING, Any, cast

import rfc8785

from shared.audit import chain as audit
from shared.audit.chain import json_safe
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import (
    Conflict,
    NotFound,
    ValidationFailed,
)
from shared.core.pagination import decode_cursor, encode_cursor
from shared.identity.guards import Principal
from shared.records import tenant_schemas
from shared.records.errors import PayloadInvalid, RecordSchemaInvalid, RecordSchemaUnusable
from shared.records.manifestations import SIGNATURE_COLUMNS, manifest_entry
from shared.web.jsonio import loads_stored

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

MAX_SCHEMA_BYTES = tenant_schemas.MAX_SCHEMA_BYTES
MAX_REFERENCES = 20

_MONEY = {"type": "number", "minimum": 0}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$"}
BUILTIN_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "document": ("Document", {
        "type": "object",
        "required": ["title"],
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 200},
            "document_number": {"type": "string", "maxLength": 100},
            "body": {"type": "string", "maxLength": 200_000},
            "effective_date": {"type": "string", "format": "date"},
        },
        "additionalProperties": False,
    }),
    "invoice": ("Invoice", {
        "type": "object",
        "required": ["number", "issue_date", "currency", "lines"],
        "properties": {
            "number": {"type": "string", "minLength": 1, "maxLength": 64},
            "issue_date": {"type": "string", "format": "date"},
            "due_date": {"type": "string", "format": "date"},
            "currency": _CURRENCY,
            "lines": {"type": "array", "minItems": 1, "maxItems": 500, "items": {
                "type": "object",
                "required": ["description", "quantity", "unit_price"],
                "properties": {
                    "description": {"type": "string", "minLength": 1, "maxLength": 500},
                    "quantity": {"type": "number", "exclusiveMinimum": 0},
                    "unit_price": _MONEY,
                    "tax_rate": {"type": "number", "minimum": 0, "maximum": 100},
                },
                "additionalProperties": False,
            }},
            "payment_method_id": {"type": "string", "format": "uuid"},
            "notes": {"type": "string", "maxLength": 5000},
        },
        "additionalProperties": False,
    }),
    "payslip": ("Payslip", {
        "type": "object",
        "required": ["period", "currency", "gross", "net"],
        "properties": {
            "period": {"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"},
            "currency": _CURRENCY,
            "gross": _MONEY,
            "net": _MONEY,
            "deductions": {"type": "array", "maxItems": 100, "items": {
                "type": "object",
                "required": ["label", "amount"],
                "properties": {"label": {"type": "string", "maxLength": 200}, "amount": _MONEY},
                "additionalProperties": False,
            }},
        },
        "additionalProperties": False,
    }),
}


def canonical(value: Any) -> str:
    """`value` as RFC 8785 canonical JSON text."""
    if not value and isinstance(value, (list, dict)):
        return "{}" if isinstance(value, dict) else "[]"  # what rfc8785 writes, without its walk
    return rfc8785.dumps(json_safe(value)).decode("utf-8")


def payload_checksum(canonical_payload: str) -> str:
    """SHA-256 (hex) of the payload's RFC 8785 canonical JSON."""
    return hashlib.sha256(canonical_payload.encode("utf-8")).hexdigest()


# --- types ------------------------------------------------------------------------------------


def check_schema(schema: Any) -> dict[str, Any]:
    """A JSON Schema usable for payloads (see `shared.records.tenant_schemas` for the rules).

    Raises:
        RecordSchemaInvalid: naming each problem with its location in the schema and keyword, e.g.
            an outside URI, a regex RE2 cannot compile, too deep or too large.
    """
    found = tenant_schemas.problems(schema)
    if found:
        raise RecordSchemaInvalid("the schema is not valid", errors=[
            {"location": ["body", "schema", *p.location], "message": p.message, "code": p.code} for p in found[:50]
        ])
    return cast(dict[str, Any], schema)


def ensure_builtin_types(conn: Conn, tenant_id: str) -> None:
    """Create the built-in types of a tenant if they are missing (idempotent). Costs one read
    once they exist, which is almost always."""
    present = conn.execute(
        "select count(*) as n from record_types where builtin and name = any(%s)", (list(BUILTIN_TYPES),)
    ).fetchone()
    if present is not None and present["n"] == len(BUILTIN_TYPES):
        return
    for name, (display, schema) in BUILTIN_TYPES.items():
        row = conn.execute(
            """insert into record_types (tenant_id, name, display_name, builtin) values (%s, %s, %s, true)
               on conflict (tenant_id, name) do nothing returning id""",
            (tenant_id, name, display),
        ).fetchone()
        if row is not None:
            conn.execute(
                "insert into record_type_schemas (tenant_id, type_id, version, schema, reason) values (%s, %s, 1, %s, 'built-in')",
                (tenant_id, row["id"], canonical(schema)),
            )


def _type_json(row: dict[str, Any]) -> dict[str, Any]:
    out = {**row, "id": str(row["id"])}
    if isinstance(out.get("schema"), str):
        out["schema"] = json.loads(out["schema"])
    return out


def list_types(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    ensure_builtin_types(conn, tenant_id)
    rows = conn.execute(
        """select t.id, t.name, t.display_name, t.builtin, t.schema_version, t.created_at, t.updated_at, s.schema::text as schema
             from record_types t join record_type_schemas s
               on s.tenant_id = t.tenant_id and s.type_id = t.id and s.version = t.schema_version
            order by t.name"""
    ).fetchall()
    return [_type_json(r) for r in rows]


def get_type(conn: Conn, tenant_id: str, name: str, *, lock: bool = False) -> dict[str, Any]:
    """A type by name with its current schema. Raises NotFound."""
    query = f"""select t.id, t.name, t.display_name, t.builtin, t.schema_version, t.created_at, t.updated_at,
                       s.schema::text as schema
                  from record_types t join record_type_schemas s
                    on s.tenant_id = t.tenant_id and s.type_id = t.id and s.version = t.schema_version
                 where t.name = %s{' for update of t' if lock else ''}"""  # noqa: S608  # nosec B608  # only constants and a fixed FOR UPDATE clause; values are bound
    row = conn.execute(query, (name,)).fetchone()
    if row is None and name in BUILTIN_TYPES:  # a tenant's built-in types are created on first use
        ensure_builtin_types(conn, tenant_id)
        row = conn.execute(query, (name,)).fetchone()
    if row is None:
        raise NotFound(f"no record type {name!r}")
    return _type_json(row)


def create_type(
    conn: Conn, *, actor: Principal, name: str, display_name: str, schema: dict[str, Any],
    reason: str, meta: audit.RequestMeta, audit_actor: audit.Actor,
) -> dict[str, Any]:
    tenant_id = str(actor.tenant_id)
    check_schema(schema)
    ensure_builtin_types(conn, tenant_id)
    with db.savepoint_or_conflict(conn, f"a record type {name!r} exists"):
        row = conn.execute(
            "insert into record_types (tenant_id, name, display_name) values (%s, %s, %s) returning id",
            (tenant_id, name, display_name.strip()),
        ).fetchone()
    assert row is not None
    conn.execute(
        "insert into record_type_schemas (tenant_id, type_id, version, schema, created_by, reason) values (%s, %s, 1, %s, %s, %s)",
        (tenant_id, row["id"], canonical(schema), actor.user_id, reason),
    )
    audit.append(conn, tenant_id=tenant_id, actor=audit_actor, action="record_type.created", target_type="record_type",
                 target_id=str(row["id"]), after={"name": name, "display_name": display_name, "schema": schema},
                 reason=reason, meta=meta)
    return get_type(conn, tenant_id, name)


def change_type_schema(
    conn: Conn, *, actor: Principal, name: str, schema: dict[str, Any], reason: str,
    meta: audit.RequestMeta, audit_actor: audit.Actor,
) -> dict[str, Any]:
    """A new schema version; stored records keep the version they were written under."""
    tenant_id = str(actor.tenant_id)
    current = get_type(conn, tenant_id, name, lock=True)
    if current["builtin"]:
        raise Conflict("built-in record types cannot be changed; define a type of your own")
    check_schema(schema)
    version = current["schema_version"] + 1
    conn.execute(
        "insert into record_type_schemas (tenant_id, type_id, version, schema, created_by, reason) values (%s, %s, %s, %s, %s, %s)",
        (tenant_id, current["id"], version, canonical(schema), actor.user_id, reason),
    )
    conn.execute("update record_types set schema_version = %s, updated_at = now() where id = %s", (version, current["id"]))
    audit.append(conn, tenant_id=tenant_id, actor=audit_actor, action="record_type.schema_changed",
                 target_type="record_type", target_id=current["id"],
                 before={"schema_version": current["schema_version"], "schema": current["schema"]},
                 after={"schema_version": version, "schema": schema}, reason=reason, meta=meta)
    return get_type(conn, tenant_id, name)


_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
                    "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
                    "maxContains"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_MESSAGES = {
    "enum": "is not one of the allowed values", "const": "is not the required value",
    "pattern": "does not match the required pattern", "required": "is required",
    "additionalProperties": "has a property not in the schema", "unevaluatedProperties": "has a property not in the schema",
    "uniqueItems": "has duplicate items", "not": "matches a schema it must not match",
}


def _error_entry(error: ValidationError, location: list[Any]) -> dict[str, Any]:
    """One error, worded from the keyword alone: schema constants and input values are never echoed."""
    keyword, value = error.validator, error.validator_value
    if keyword in _BOUNDS and isinstance(value, (int, float)) and not isinstance(value, bool):
        message = f"fails {keyword} ({value})"
    elif keyword == "type":
        names = [t for t in (value if isinstance(value, list) else [value]) if t in _TYPES]
        message = f"must be {' or '.join(names)}" if names else "has the wrong type"
    elif keyword == "format":
        message = f"is not a valid {value}" if value in tenant_schemas.formats().checkers else "has the wrong format"
    elif keyword is None:
        message = "is not allowed here"
    else:
        message = _MESSAGES.get(str(keyword), f"fails {keyword}")
    return {"location": location, "message": message, "code": str(keyword)}


def validate_payload(schema: dict[str, Any], payload: Any) -> None:
    """Check a payload against its type's schema, reaching nothing outside it.

    Raises:
        PayloadInvalid: listing every failing path (values and schema constants are never echoed).
        RecordSchemaUnusable: the stored schema fails today's checks (e.g. stored by an older
            version with an outside URI) or cannot be evaluated; nothing is fetched.
    """
    try:
        errors = tenant_schemas.iter_errors(schema, payload)
    except tenant_schemas.SchemaUnusable as exc:
        raise RecordSchemaUnusable(
            "the record type's schema cannot be used; define a new schema version",
            errors=[{"location": ["schema", *p.location], "message": p.message, "code": p.code} for p in exc.problems[:50]],
        ) from None
    if not errors:
        return
    entries: list[dict[str, Any]] = []
    for e in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        at = ["body", "payload", *e.absolute_path]
        if e.validator == "required" and isinstance(e.instance, dict):
            entries += [_error_entry(e, [*at, n]) for n in e.validator_value if isinstance(n, str) and n not in e.instance]
        else:
            entries.append(_error_entry(e, at))
    raise PayloadInvalid("the payload does not match its record type's schema", errors=entries[:50])


# --- records --------------------------------------------------------------------------------------

RECORD_COLUMNS = ("r.id, t.name as type, r.status, r.current_version, r.created_at, r.created_by, r.updated_at, "
                  "r.retired_at, r.retired_by, r.retire_reason")
VERSION_COLUMNS = ("version, schema_version, payload::text as payload, checksum, refs::text as refs, "
                   "frozen_context::text as frozen_context, attachments::text as attachments, created_at, created_by, "
                   "created_by_name, created_tz, reason, previous_version")


def _freeze(conn: Conn, references: list[dict[str, Any]], self_id: str | None) -> dict[str, Any]:
    """Copy each referenced record's current version into a frozen context."""
    if len(references) > MAX_REFERENCES:
        raise ValidationFailed("too many references", errors=[{"location": ["body", "references"], "message": f"at most {MAX_REFERENCES}"}])
    frozen: dict[str, Any] = {}
    for i, ref in enumerate(references):
        name, rid = ref["name"], str(ref["record_id"])
        if name in frozen:
            raise ValidationFailed("duplicate reference name", errors=[{"location": ["body", "references", i, "name"], "message": "used twice"}])
        if rid == self_id:
            raise ValidationFailed("a record cannot reference itself", errors=[{"location": ["body", "references", i], "message": "self reference"}])
        row = conn.execute(
            """select r.id, t.name as type, v.version, v.checksum, v.payload::text as payload
                  from records r join record_types t on t.tenant_id = r.tenant_id and t.id = r.type_id
                  join record_versions v on v.tenant_id = r.tenant_id and v.record_id = r.id and v.version = r.current_version
                 where r.id = %s""",
            (rid,),
        ).fetchone()
        if row is None:
            raise ValidationFailed("a referenced record does not exist",
                                   errors=[{"location": ["body", "references", i, "record_id"], "message": "no such record"}])
        frozen[name] = {"record_id": rid, "type": row["type"], "version": row["version"], "checksum": row["checksum"],
                        "payload": loads_stored(row["payload"])}
    return frozen


def _version_json(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("payload", "refs", "frozen_context", "attachments"):
        out[key] = loads_stored(out[key])
    out["created_by"] = str(out["created_by"])
    out["references"] = out.pop("refs")
    return out


def _with_source_state(conn: Conn, version: dict[str, Any]) -> dict[str, Any]:
    """Say, for each frozen reference, whether its source has changed since it was frozen."""
    for entry in version["frozen_context"].values():
        row = conn.execute("select current_version, status from records where id = %s", (entry["record_id"],)).fetchone()
        entry["source_current_version"] = row["current_version"] if row else None
        entry["source_changed"] = row is None or row["current_version"] != entry["version"]
    return version


def _version_insert(
    *, tenant_id: str, record_id: str, version: int, schema_version: int, payload: Any,
    references: list[dict[str, Any]], frozen: dict[str, Any], attachments: list[dict[str, Any]], actor: Principal,
    reason: str | None, returning: str = VERSION_COLUMNS, payload_text: str | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """The insert of a version, returning `returning`, and its values (`payload_text`: the
    payload's canonical text, when the caller has it already)."""
    text = canonical(payload) if payload_text is None else payload_text
    return (
        f"""insert into record_versions (tenant_id, record_id, version, schema_version, payload, checksum, refs,
                                         frozen_context, attachments, created_by, created_by_name, created_tz,
                                         reason, previous_version)
            values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning {returning}""",  # noqa: S608  # nosec B608  # only module constants (column lists, the version insert) are interpolated; values are bound
        (tenant_id, record_id, version, schema_version, text, payload_checksum(text),
         canonical([{"name": r["name"], "record_id": str(r["record_id"])} for r in references]),
         canonical(frozen), canonical(attachments), actor.user_id, actor.name or actor.user_id, actor.time_zone,
         reason, version - 1 if version > 1 else None),
    )


def _source_state(version: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """`_with_source_state` from the sources' current versions read beside the record
    (frozen name -> current version, None where the source is not visible)."""
    for name, entry in version["frozen_context"].items():
        now = current.get(name)
        entry["source_current_version"] = now
        entry["source_changed"] = now is None or now != entry["version"]
    return version


def _insert_version(
    conn: Conn, *, tenant_id: str, record_id: str, version: int, schema_version: int, payload: Any,
    references: list[dict[str, Any]], frozen: dict[str, Any], attachments: list[dict[str, Any]], actor: Principal,
    reason: str | None,
) -> dict[str, Any]:
    query, values = _version_insert(
        tenant_id=tenant_id, record_id=record_id, version=version, schema_version=schema_version, payload=payload,
        references=references, frozen=frozen, attachments=attachments, actor=actor, reason=reason)
    row = conn.execute(query, values).fetchone()
    assert row is not None
    return _version_json(row)


def create_record(
    conn: Conn, *, actor: Principal, type_name: str, payload: Any, references: list[dict[str, Any]],
    meta: audit.RequestMeta, audit_actor: audit.Actor, commit: bool = False,
) -> dict[str, Any]:
    """A new record (version 1) and its audit event. With `commit`, the event's append commits
    the transaction in its own round trip: the caller's transaction must end right after.

    Raises:
        NotFound: no such record type.
        PayloadInvalid, RecordSchemaUnusable: see `validate_payload`.
        ValidationFailed: a reference is missing, repeated or to the record itself.
    """
    tenant_id = str(actor.tenant_id)
    rtype = get_type(conn, tenant_id, type_name)
    validate_payload(rtype["schema"], payload)
    record_id = str(uuid.uuid4())
    frozen = _freeze(conn, references, record_id)
    text = canonical(payload)
    # The record and its first version in one statement.
    insert_version, version_values = _version_insert(
        tenant_id=tenant_id, record_id=record_id, version=1, schema_version=rtype["schema_version"], payload=payload,
        references=references, frozen=frozen, attachments=[], actor=actor, reason=None,
        returning=_VERSION_RETURNING_AS_V, payload_text=text)
    insert = (
        f"""with r as (insert into records (tenant_id, id, type_id, created_by) values (%s, %s, %s, %s) returning *),
                 v as ({insert_version})
            select {RECORD_COLUMNS}, r.type_id, v.*
              from r join record_types t on t.tenant_id = r.tenant_id and t.id = r.type_id cross join v""",  # noqa: S608  # nosec B608  # only module constants (column lists, the version insert) are interpolated; values are bound
        (tenant_id, record_id, rtype["id"], actor.user_id, *version_values),
    )
    # What the version row stores, known before it is written: the event does not wait for it.
    after = {"type": type_name, "version": 1, "checksum": payload_checksum(text), "payload": payload,
             "references": [{"name": r["name"], "record_id": str(r["record_id"])} for r in references]}
    if commit:  # the record, its event and the commit in one round trip
        inserted, _ = db.commit_with(conn, insert, audit.append_statement(
            tenant_id=tenant_id, actor=audit_actor, action="record.created", target_type="record",
            target_id=record_id, after=after, meta=meta))
    else:
        inserted = conn.execute(*insert).fetchall()
    row = inserted[0]
    version = _version_json({k[2:]: v for k, v in row.items() if k.startswith("v_")})
    row = {k: v for k, v in row.items() if not k.startswith("v_")}
    # The answer is what a read returns (a new record has no signatures yet). Its sources were
    # read by _freeze in this transaction; a committed one reads them afresh after the commit.
    record = _record_json(row)
    record["version"] = _with_source_state(conn, version) if not commit else _source_state(
        version, {name: entry["version"] for name, entry in version["frozen_context"].items()})
    record["signatures"], record["version"]["signatures"], record["changed_after_signing"] = [], [], False
    if not commit:
        audit.append(conn, tenant_id=tenant_id, actor=audit_actor, action="record.created", target_type="record",
                     target_id=record_id, after=after, meta=meta)
    return record


def _record_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if k in ("id", "created_by", "retired_by", "type_id") and v is not None else v)
            for k, v in row.items()}


def get_record(conn: Conn, record_id: uuid.UUID | str, *, lock: bool = False, commit: bool = False) -> dict[str, Any]:
    """A record with its current version (and frozen context with source state). With
    `commit`, the read is the transaction's last statement and commits with it (one round
    trip fewer: the caller's transaction must end right after).

    Raises:
        NotFound: no such record in the transaction's tenant.
    """
    # The record and its current version in one read.
    if lock:  # FOR UPDATE refuses the aggregate of RECORD_READ: the signatures come in a read of their own
        row = conn.execute(
            f"""select {RECORD_COLUMNS}, r.type_id, {_VERSION_AS_V}
                  from records r join record_types t on t.tenant_id = r.tenant_id and t.id = r.type_id
                  join record_versions v on v.tenant_id = r.tenant_id and v.record_id = r.id and v.version = r.current_version
                 where r.id = %s for update of r""",  # noqa: S608  # nosec B608  # only module constants (column lists, the version insert) are interpolated; values are bound
            (str(record_id),),
        ).fetchone()
    elif commit:
        [rows] = db.commit_with(conn, (RECORD_READ, (str(record_id),)))
        row = rows[0] if rows else None
    else:
        row = conn.execute(RECORD_READ, (str(record_id),)).fetchone()
    if row is None:
        raise NotFound("no such record")
    record = _record_json({k: v for k, v in row.items() if not k.startswith(("v_", "s_")) and k != "source_versions"})
    version = _version_json({k[2:]: v for k, v in row.items() if k.startswith("v_")})
    if lock:
        record["version"] = _with_source_state(conn, version)
    else:
        record["version"] = _source_state(version, row["source_versions"] or {})
    if lock:
        _add_signatures(conn, record)
    else:
        _set_signatures(record, _signature_rows(row))
    return record


def _prefixed(columns: str, table: str, prefix: str) -> str:
    """VERSION_COLUMNS qualified by `table` and renamed with `prefix` (`payload::text as payload`
    becomes `v.payload::text as v_payload`)."""
    out = []
    for column in (c.strip() for c in columns.split(", ")):
        expression, _, name = column.partition(" as ")
        out.append(f"{table}.{expression} as {prefix}{name or expression}")
    return ", ".join(out)


_VERSION_AS_V = _prefixed(VERSION_COLUMNS, "v", "v_")
_VERSION_RETURNING_AS_V = ", ".join(
    f"{expression} as v_{name or expression}"
    for expression, _, name in (c.strip().partition(" as ") for c in VERSION_COLUMNS.split(", ")))


_SIGNATURE_FIELDS = tuple(c.strip() for c in SIGNATURE_COLUMNS.split(","))
# One array per column, each in the same (total) order, so that the i-th items make one row.
_SIGNATURE_AGGREGATES = ", ".join(f"array_agg(s.{c} order by s.signed_at, s.id) as {c}" for c in _SIGNATURE_FIELDS)
_SIGNATURE_ARRAYS = ", ".join(f"s.{c} as s_{c}" for c in _SIGNATURE_FIELDS)

# The record, its current version, its sources' current versions and its signatures in one read.
RECORD_READ = f"""select {RECORD_COLUMNS}, r.type_id, {_VERSION_AS_V}, {_SIGNATURE_ARRAYS},
                         (select json_object_agg(f.key, src.current_version)
                            from json_each(v.frozen_context) f
                            left join records src on src.id = (f.value ->> 'record_id')::uuid) as source_versions
                    from records r join record_types t on t.tenant_id = r.tenant_id and t.id = r.type_id
                    join record_versions v on v.tenant_id = r.tenant_id and v.record_id = r.id and v.version = r.current_version
                    cross join lateral (select {_SIGNATURE_AGGREGATES} from signatures s where s.record_id = r.id) s
                   where r.id = %s"""  # noqa: S608  # nosec B608  # only module constants (column lists) are interpolated; values are bound


def _signature_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The signature rows of a read that carried them as `_SIGNATURE_ARRAYS` (none: NULL arrays)."""
    columns = [row[f"s_{c}"] or [] for c in _SIGNATURE_FIELDS]
    return [dict(zip(_SIGNATURE_FIELDS, values, strict=True)) for values in zip(*columns, strict=True)]


def _add_signatures(conn: Conn, record: dict[str, Any]) -> None:
    """§11.50: every read shows the signatures (printed name, time with zone, meaning), and
    whether the record changed after it was signed (§11.70: signatures stay on their version)."""
    rows = conn.execute(f"select {SIGNATURE_COLUMNS} from signatures where record_id = %s order by signed_at, id",  # noqa: S608  # nosec B608  # only module constants (column lists, the version insert) are interpolated; values are bound
                        (record["id"],)).fetchall()
    _set_signatures(record, rows)


def _set_signatures(record: dict[str, Any], rows: list[Any]) -> None:
    record["signatures"] = [manifest_entry(r) for r in rows]
    current = record["current_version"]
    record["version"]["signatures"] = [s for s in record["signatures"] if s["version"] == current]
    record["changed_after_signing"] = bool(rows) and not record["version"]["signatures"]


def get_version(conn: Conn, record_id: str, version: int) -> dict[str, Any]:
    row = conn.execute(f"select {VERSION_COLUMNS} from record_versions where record_id = %s and version = %s",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
                       (str(record_id), version)).fetchone()
    if row is None:
        raise NotFound("no such version")
    return _version_json(row)


def list_versions(conn: Conn, record_id: uuid.UUID) -> list[dict[str, Any]]:
    get_record(conn, record_id)
    rows = conn.execute(f"select {VERSION_COLUMNS} from record_versions where record_id = %s order by version",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
                        (str(record_id),)).fetchall()
    return [_version_json(r) for r in rows]


def list_records(
    conn: Conn, tenant_id: str, *, type_name: str | None, status: str | None, after: str | None, limit: int,
) -> dict[str, Any]:
    cursor = decode_cursor(after, ("timestamp", "uuid"))
    clauses, params = ["true"], []
    if cursor:
        clauses.append("(r.created_at, r.id) > (%s::timestamptz, %s::uuid)")
        params += cursor
    if type_name:
        clauses.append("t.name = %s")
        params.append(type_name)
    if status:
        clauses.append("r.status = %s")
        params.append(status)
    rows = conn.execute(
        f"""select {RECORD_COLUMNS}, v.checksum, v.created_by_name as last_changed_by, v.created_at as last_changed_at
              from records r join record_types t on t.tenant_id = r.tenant_id and t.id = r.type_id
              join record_versions v on v.tenant_id = r.tenant_id and v.record_id = r.id and v.version = r.current_version
             where {' and '.join(clauses)} order by r.created_at, r.id limit %s""",  # noqa: S608  # nosec B608  # clauses holds only literal conditions; values are bound
        [*params, limit + 1],
    ).fetchall()
    page = rows[:limit]
    items = [{k: (str(v) if k in ("id", "created_by", "retired_by") and v is not None else v) for k, v in r.items()} for r in page]
    return {"records": items,
            "next": encode_cursor(page[-1]["created_at"].isoformat(), str(page[-1]["id"])) if len(rows) > limit else None}


def _editable(record: dict[str, Any], expected_version: int | None) -> None:
    if record["status"] == "RETIRED":
        raise Conflict("the record is retired")
    if expected_version is not None and expected_version != record["current_version"]:
        raise Conflict(f"version {expected_version} is not the latest (it is {record['current_version']}): reload and retry",
                       current_version=record["current_version"])


def update_record(
    conn: Conn, *, actor: Principal, record_id: uuid.UUID, expected_version: int, payload: Any,
    references: list[dict[str, Any]] | None, reason: str, meta: audit.RequestMeta, audit_actor: audit.Actor,
) -> dict[str, Any]:
    """A new version. Raises Conflict when `expected_version` is stale or the record is retired."""
    tenant_id = str(actor.tenant_id)
    record = get_record(conn, record_id, lock=True)
    _editable(record, expected_version)
    rtype = conn.execute(
        """select t.schema_version, s.schema::text as schema from record_types t join record_type_schemas s
             on s.tenant_id = t.tenant_id and s.type_id = t.id and s.version = t.schema_version where t.id = %s""",
        (record["type_id"],),
    ).fetchone()
    assert rtype is not None
    validate_payload(json.loads(rtype["schema"]), payload)
    previous = record["version"]
    if references is None:  # keep what was frozen: issued context never changes silently
        refs = previous["references"]
        frozen = {k: {f: v for f, v in e.items() if not f.startswith("source_")} for k, e in previous["frozen_context"].items()}
    else:
        refs, frozen = references, _freeze(conn, references, record["id"])
    new_version = record["current_version"] + 1
    version = _insert_version(conn, tenant_id=tenant_id, record_id=record["id"], version=new_version,
                              schema_version=rtype["schema_version"], payload=payload, references=refs, frozen=frozen,
                              attachments=previous["attachments"], actor=actor, reason=reason)
    new_status = "DRAFT" if record["status"] in ("APPROVED", "REJECTED", "IN_REVIEW") else record["status"]
    conn.execute("update records set current_version = %s, status = %s, updated_at = now() where id = %s",
                 (new_version, new_status, record["id"]))
    audit.append(conn, tenant_id=tenant_id, actor=audit_actor, action="record.updated", target_type="record",
                 target_id=record["id"],
                 before={"version": previous["version"], "checksum": previous["checksum"], "payload": previous["payload"],
                         "status": record["status"]},
                 after={"version": new_version, "checksum": version["checksum"], "payload": payload, "status": new_status},
                 reason=reason, meta=meta)
    return get_record(conn, record["id"])


def add_attachment_version(
    conn: Conn, *, actor: Principal, record_id: uuid.UUID, expected_version: int | None,
    attachment: dict[str, Any], meta: audit.RequestMeta, audit_actor: audit.Actor,
) -> dict[str, Any]:
    """Attaching is a new version: same payload, one more attachment."""
    tenant_id = str(actor.tenant_id)
    record = get_record(conn, record_id, lock=True)
    _editable(record, expected_version)
    previous = record["version"]
    frozen = {k: {f: v for f, v in e.items() if not f.startswith("source_")} for k, e in previous["frozen_context"].items()}
    new_version = record["current_version"] + 1
    reason = f"attached {attachment['filename']}"
    _insert_version(conn, tenant_id=tenant_id, record_id=record["id"], version=new_version,
                    schema_version=previous["schema_version"], payload=previous["payload"],
                    references=previous["references"], frozen=frozen,
                    attachments=[*previous["attachments"], attachment], actor=actor, reason=reason)
    new_status = "DRAFT" if record["status"] in ("APPROVED", "REJECTED", "IN_REVIEW") else record["status"]
    conn.execute("update records set current_version = %s, status = %s, updated_at = now() where id = %s",
                 (new_version, new_status, record["id"]))
    audit.append(conn, tenant_id=tenant_id, actor=audit_actor, action="record.attachment_added", target_type="record",
                 target_id=record["id"], before={"version": previous["version"]},
                 after={"version": new_version, "attachment": attachment}, reason=reason, meta=meta)
    return get_record(conn, record["id"])


def retire_record(
    conn: Conn, *, actor: Principal, record_id: uuid.UUID, reason: str,
    meta: audit.RequestMeta, audit_actor: audit.Actor,
) -> dict[str, Any]:
    """Retire instead of delete: the record stays readable, no longer editable."""
    record = get_record(conn, record_id, lock=True)
    if record["status"] == "RETIRED":
        raise Conflict("the record is already retired")
    conn.execute(
        "update records set status = 'RETIRED', retired_at = now(), retired_by = %s, retire_reason = %s, updated_at = now() where id = %s",
        (actor.user_id, reason, record["id"]),
    )
    audit.append(conn, tenant_id=str(actor.tenant_id), actor=audit_actor, action="record.retired", target_type="record",
                 target_id=record["id"], before={"status": record["status"]}, after={"status": "RETIRED"},
                 reason=reason, meta=meta)
    return get_record(conn, record["id"])


def version_matches_checksum(version: dict[str, Any]) -> bool:
    """Re-derive a stored version's checksum from its payload (tamper check)."""
    return payload_checksum(canonical(version["payload"])) == version["checksum"]
