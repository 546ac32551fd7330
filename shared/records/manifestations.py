"""Signature manifestations (21 CFR 11.50): the columns of a stored signature and how a read shows
it (printed name, date and time with the signer's zone, meaning).

Its own module because both sides need it: `records` shows the signatures on every read, and
`signatures` (which builds on `records`) applies and verifies them.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from shared.audit import chain as audit

SIGNATURE_COLUMNS = ("id, record_id, version, content_checksum, signer_id, signer_name, signer_tz, meaning, "
                     "reason_code, reason_text, comment, signed_at, binding")


def manifest_entry(row: dict[str, Any]) -> dict[str, Any]:
    """§11.50: printed name, date and time with zone, and meaning."""
    local = row["signed_at"].astimezone(ZoneInfo(row["signer_tz"]))
    return {
        "id": str(row["id"]), "version": row["version"], "signer_id": str(row["signer_id"]),
        "printed_name": row["signer_name"], "meaning": row["meaning"], "reason": row["reason_text"],
        "reason_code": row["reason_code"], "comment": row["comment"],
        "signed_at": audit.format_time(row["signed_at"]), "signed_at_local": local.isoformat(), "time_zone": row["signer_tz"],
        "content_checksum": row["content_checksum"],
    }
