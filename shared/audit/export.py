"""Audit export: a tenant's events and signed checkpoints as JSON Lines.

Line 1 is a header (format, tenant, export time, the checkpoint verification keys); then
one line per event with its checksum; then one line per signed checkpoint; then one line per
signed retention checkpoint (each names the archive of the events it removed). An auditor
checks it offline with tools/verify_audit_export.py, trusting nothing of ours but the
published checkpoint keys.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.errors import PayloadTooLarge
from shared.core.settings import get_settings

FORMAT = "custos-audit-export/1"


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def export_jsonl(tenant_id: str) -> bytes:
    """The export as bytes.

    Raises:
        PayloadTooLarge: the chain is longer than AUDIT_EXPORT_MAX_EVENTS.
    """
    from shared.audit import checkpoints  # Ed25519 and blob machinery load on first use, not at import

    limit = get_settings().audit_export_max_events
    out = bytearray(
        _line(
            {
                "type": "header",
                "format": FORMAT,
                "tenant_id": tenant_id,
                "exported_at": datetime.now(UTC).isoformat(),
                "genesis": audit.GENESIS,
                "keys": checkpoints.audit_keys().jwks()["keys"],
            }
        )
    )
    with db.tenant_tx(tenant_id) as conn:
        for n, row in enumerate(audit.stream_rows(conn), start=1):
            if n > limit:
                raise PayloadTooLarge(f"more than {limit} events: export a time range instead")
            event = {"type": "event", **row}
            for name in audit.JSON_FIELDS:
                if event[name] is not None:
                    event[name] = json.loads(event[name])
            out += _line(event)
    for doc in checkpoints.all_checkpoints(tenant_id):
        out += _line({"type": "checkpoint", **doc})
    # Each retention cut: its signed checkpoint, which names the archive of the removed events.
    for doc in checkpoints.all_retention(tenant_id):
        out += _line({"type": "retention", **doc})
    return bytes(out)
