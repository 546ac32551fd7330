"""Response models of security incidents."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared.web.models import Out


class EvidenceRef(Out):
    chain: str = Field(description="The audit chain holding the event: a tenant id, or the platform chain (all zeros)")
    seq: int = Field(description="The event's sequence number in that chain")
    action: str = Field(description="The event's action, e.g. platform.audit_chain_invalid")


class Incident(Out):
    id: str
    kind: str = Field(description="What was detected, e.g. audit_chain_invalid (docs/incidents.md)")
    severity: str = Field(description="MEDIUM, HIGH or CRITICAL")
    state: str = Field(description="OPEN, NOTIFIED or RESOLVED")
    summary: str
    affected: list[str] = Field(description="Affected tenants (a tenant sees only itself)")
    tenant_data: bool = Field(description="Whether tenant data is affected: then the 24-hour notification clock runs")
    first_seen: datetime
    last_seen: datetime | None
    notify_due_at: datetime | None = Field(description="When the 24-hour notice is due")
    notified_at: datetime | None
    resolved_at: datetime | None
    evidence: list[EvidenceRef] = Field(description="Audit events that signalled it (the newest 100)")


class IncidentStep(Out):
    at: datetime
    action: str
    from_state: str | None
    to_state: str
    reason: str
    actor_name: str


class IncidentDetail(Incident):
    history: list[IncidentStep]


class IncidentNotified(Incident):
    mails: int = Field(description="Notices queued in the outbox, one per ADMIN of each affected tenant")


class Incidents(Out):
    incidents: list[Incident]
