"""Opaque single-purpose tokens (refresh, invitation, reset) that name their tenant.

Format: `<kind>.<tenant id hex>[.<session id hex>].<secret>`, the secret 256 random bits
(base64url). Only the SHA-256 of the whole token is stored. The tenant id is in the clear
so a token can be looked up under row-level security without a platform-wide index; it tells
the holder nothing they do not already know.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

KINDS = frozenset({"rt", "inv", "pwr", "ops", "scim", "sso"})


@dataclass(frozen=True)
class ParsedToken:
    kind: str
    tenant_id: str
    session_id: str | None
    hash: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(kind: str, tenant_id: str, session_id: str | None = None) -> tuple[str, str]:
    """A fresh token and its hash."""
    if kind not in KINDS:
        raise ValueError(f"unknown token kind {kind}")
    parts = [kind, uuid.UUID(tenant_id).hex]
    if session_id is not None:
        parts.append(uuid.UUID(session_id).hex)
    parts.append(secrets.token_urlsafe(32))
    token = ".".join(parts)
    return token, token_hash(token)


def parse_token(token: str, kind: str) -> ParsedToken | None:
    """The parts of a token of `kind`, or None if it is not one (never raises)."""
    if not isinstance(token, str) or len(token) > 200:
        return None
    parts = token.split(".")
    expected = 4 if kind == "rt" else 3
    if len(parts) != expected or parts[0] != kind or len(parts[-1]) < 40:
        return None
    try:
        tenant = str(uuid.UUID(hex=parts[1]))
        session = str(uuid.UUID(hex=parts[2])) if kind == "rt" else None
    except ValueError:
        return None
    return ParsedToken(kind=kind, tenant_id=tenant, session_id=session, hash=token_hash(token))


def same_hash(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two hex hashes (None never matches)."""
    return a is not None and b is not None and hmac.compare_digest(a, b)
