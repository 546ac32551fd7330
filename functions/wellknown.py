"""/.well-known: security.txt (RFC 9116) and the JWKS of access-token keys."""

from __future__ import annotations

from typing import Any

import azure.functions as func

from functions._models_system import JwkSet
from shared.core.settings import get_settings
from shared.identity.tokens import keyring
from shared.web.endpoint import Reply, RequestContext, endpoint

bp = func.Blueprint()


@bp.route(route=".well-known/security.txt", methods=["GET"])
@endpoint(media_type="text/plain", auth=False, tags=("well-known",))
def security_txt(ctx: RequestContext) -> Reply:
    """RFC 9116 security contact information."""
    s = get_settings()
    lines = [
        f"Contact: {s.security_contact}",
        f"Expires: {s.security_txt_expires}",
        f"Policy: {s.security_policy_url}",
        f"Preferred-Languages: {s.security_preferred_languages}",
        f"Canonical: {s.security_canonical_url}",
    ]
    return Reply(body="\n".join(lines) + "\n", media_type="text/plain; charset=utf-8")


@bp.route(route=".well-known/jwks.json", methods=["GET"])
@endpoint(response=JwkSet, media_type="application/jwk-set+json", auth=False, tags=("well-known",))
def jwks(ctx: RequestContext) -> Reply:
    """Public keys that verify Custos access tokens."""
    body: dict[str, Any] = keyring().jwks()
    return Reply(body=body, media_type="application/jwk-set+json")


@bp.route(route=".well-known/audit-keys.json", methods=["GET"])
@endpoint(response=JwkSet, media_type="application/jwk-set+json", auth=False, tags=("well-known",))
def audit_checkpoint_keys(ctx: RequestContext) -> Reply:
    """Public Ed25519 keys that verify signed audit checkpoints."""
    from shared.audit.checkpoints import audit_keys  # Ed25519 and blob machinery load on first use

    return Reply(body=audit_keys().jwks(), media_type="application/jwk-set+json")
