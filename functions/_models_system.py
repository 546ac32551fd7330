"""Response models of the audit trail, health, the OpenAPI document and /.well-known."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from shared.web.models import Out


class AuditEvent(Out):
    tenant_id: str
    seq: int
    occurred_at: datetime
    actor_id: str | None
    actor_name: str
    actor_type: str
    action: str
    target_type: str | None
    target_id: str | None
    before: Any
    after: Any
    reason: str | None
    ip: str | None
    user_agent: str | None
    session_id: str | None
    request_id: str | None
    app_version: str | None
    previous_checksum: str
    checksum: str


class AuditEvents(Out):
    events: list[AuditEvent]
    next: str | None


class ChainHead(Out):
    seq: int
    checksum: str


class CheckpointRef(Out):
    seq: int
    created_at: datetime | None = Field(description="When it was signed; null for a checkpoint that failed its signature check")


class ChainFailure(Out):
    seq: int
    code: str = Field(description="Stable failure code: missing_event, duplicate_event, foreign_event, broken_link, "
                                  "checksum_mismatch, checkpoint_mismatch, chain_truncated, checkpoint_invalid, "
                                  "checkpoint_stale")
    reason: str


class ChainVerified(Out):
    valid: bool
    from_seq: int = Field(description="First event walked: 1 for a full verify, else the newest signed checkpoint's")
    events_checked: int
    head: ChainHead | None
    checkpoint: CheckpointRef | None
    first_failure: ChainFailure | None
    duration_ms: float


class Health(Out):
    ok: bool
    components: dict[str, str]


class OpenApiDocument(Out):
    """The document itself (described loosely: its own schema is OpenAPI 3.1's)."""

    model_config = ConfigDict(extra="allow")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


class Jwk(Out):
    """A public JWK (EC P-256 for access tokens, OKP Ed25519 for audit checkpoints)."""

    kty: str
    crv: str
    x: str
    y: str | None = None
    kid: str
    use: str
    alg: str


class JwkSet(Out):
    keys: list[Jwk]
