"""Response models of the SCIM token routes (the SCIM routes answer application/scim+json)."""

from __future__ import annotations

from datetime import datetime

from shared.web.models import Out


class ScimToken(Out):
    id: str
    name: str
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None


class ScimTokenCreated(ScimToken):
    token: str


class ScimTokens(Out):
    tokens: list[ScimToken]
