"""What the audit triggers call: the trail, its verification and its export, each owning its
transaction (see shared.web.caller)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.audit import chain
from shared.audit.export import export_jsonl
from shared.web.caller import Caller


def list_events(caller: Caller, *, after: int, limit: int, actor_id: str | None, action: str | None,
                target_type: str | None, target_id: str | None, since: datetime | None,
                until: datetime | None) -> dict[str, Any]:
    """A page of the tenant's events in seq order; `next` is the cursor of the following page."""
    with caller.tenant_tx() as conn:
        events = chain.list_events(conn, after_seq=after, limit=limit + 1, actor_id=actor_id, action=action,
                                   target_type=target_type, target_id=target_id, since=since, until=until)
    more = len(events) > limit
    events = events[:limit]
    return {"events": events, "next": str(events[-1]["seq"]) if more else None}


def verify(caller: Caller, *, full: bool = False) -> dict[str, Any]:
    """The tenant's chain walked from its newest signed checkpoint (`full`: from the first event)."""
    from shared.audit import checkpoints  # Ed25519 and blob machinery load on first use, not at import
    return checkpoints.verify_tenant(caller.tenant_id, full=full).as_dict()


def export(caller: Caller) -> bytes:
    """The tenant's events and signed checkpoints as JSON Lines; the export itself is recorded first."""
    with caller.tenant_tx() as conn:
        chain.append(conn, tenant_id=caller.tenant_id, actor=caller.actor, action="audit.exported",
                     target_type="tenant", target_id=caller.tenant_id, meta=caller.meta)
    return export_jsonl(caller.tenant_id)
