"""Per-tenant settings: a fixed catalogue of keys, each with its own validation."""

from __future__ import annotations

import json
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

from shared.core.db import Conn
from shared.core.errors import NotFound, ValidationFailed
from shared.core.settings import get_settings


def _iana_zone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone name") from None
    return v


RETENTION_MAX_DAYS = 36_500


def _retention_floor(v: int | None) -> int | None:
    # Read when a value is set, so a raised platform minimum applies to the next change at once
    # (the cut itself also holds an older, shorter window to the current minimum).
    minimum = get_settings().audit_retention_min_days
    if v is not None and v < minimum:
        raise ValueError(f"must be at least {minimum} days (the platform's AUDIT_RETENTION_MIN_DAYS), or null")
    return v


CATALOGUE: dict[str, tuple[str, TypeAdapter[Any]]] = {
    "mfa.required_for_all_roles": (
        "Require a second factor for every role, not only ADMIN and REVIEWER",
        TypeAdapter(Annotated[bool, Field(strict=True)]),
    ),
    "sessions.max_idle_minutes": (
        "Minutes of inactivity after which a session ends",
        TypeAdapter(Annotated[int, Field(ge=5, le=1440, strict=True)]),
    ),
    "display.time_zone": (
        "Default time zone shown to users",
        TypeAdapter(Annotated[str, Field(strict=True, max_length=64), AfterValidator(_iana_zone)]),
    ),
    "audit.retention_days": (
        "Days audit events are kept before they are archived to the tenant's exports and cut; null keeps them forever",
        TypeAdapter(Annotated[
            Annotated[int, Field(strict=True, ge=1, le=RETENTION_MAX_DAYS)] | None, AfterValidator(_retention_floor)
        ]),
    ),
}


def validate_value(key: str, value: Any) -> Any:
    """The value as stored.

    Raises:
        NotFound: no such setting in the catalogue.
        ValidationFailed: the value breaks the setting's rule.
    """
    entry = CATALOGUE.get(key)
    if entry is None:
        raise NotFound(f"no tenant setting {key!r}")
    try:
        return entry[1].validate_python(value)
    except ValidationError as exc:
        raise ValidationFailed(
            f"invalid value for {key}",
            errors=[
                {"location": ["body", "value"], "message": e["msg"], "code": e["type"]}
                for e in exc.errors(include_url=False, include_input=False)
            ],
        ) from None


def list_settings(conn: Conn) -> dict[str, Any]:
    rows = conn.execute("select key, value, updated_at, updated_by from tenant_settings order by key").fetchall()
    return {r["key"]: {"value": r["value"], "updated_at": r["updated_at"], "updated_by": r["updated_by"]} for r in rows}


def get_setting(conn: Conn, key: str) -> Any | None:
    row = conn.execute("select value from tenant_settings where key = %s", (key,)).fetchone()
    return row["value"] if row else None


def put_setting(conn: Conn, *, tenant_id: str, key: str, value: Any, actor_id: str | None) -> tuple[Any, Any]:
    """Store a validated value in the caller's tenant transaction; returns (old, new)."""
    new = validate_value(key, value)
    old = get_setting(conn, key)
    conn.execute(
        """insert into tenant_settings (tenant_id, key, value, updated_at, updated_by)
           values (%s, %s, %s::jsonb, now(), %s)
           on conflict (tenant_id, key) do update
               set value = excluded.value, updated_at = excluded.updated_at, updated_by = excluded.updated_by""",
        (tenant_id, key, json.dumps(new), actor_id),
    )
    return old, new
