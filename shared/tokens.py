"""JWT access tokens: ES256 only, `kid` header, iss/aud/exp/nbf/iat always checked.

The algorithm is pinned: the header's `alg` must be ES256 and the key is chosen by `kid`
from our own key ring, never from anything inside the token (no `jku`, `jwk`, `x5u`).
"""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass

import jwt

from shared.errors import Unauthenticated
from shared.keys import EcKeyRing, load_jwt_keyring
from shared.settings import get_settings

ALGORITHM = "ES256"
REQUIRED_CLAIMS = ("sub", "sid", "role", "iat", "nbf", "exp", "iss", "aud", "jti")
"""`tid` is required too, but may be null (platform operators): checked separately."""


@functools.cache
def keyring() -> EcKeyRing:
    """This worker's key ring, loaded once."""
    return load_jwt_keyring(get_settings())


@dataclass(frozen=True)
class AccessClaims:
    subject: str
    tenant_id: str | None
    session_id: str
    role: str
    jti: str
    expires_at: int
    name: str | None = None


def issue_access_token(
    *,
    subject: str,
    tenant_id: str | None,
    session_id: str,
    role: str,
    name: str | None = None,
    now: float | None = None,
    ttl_s: int | None = None,
) -> str:
    """Sign an access token for a session. `tenant_id` is None only for platform operators."""
    settings = get_settings()
    ring = keyring()
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": subject,
        "tid": tenant_id,
        "sid": session_id,
        "role": role,
        "iat": issued,
        "nbf": issued,
        "exp": issued + (ttl_s if ttl_s is not None else settings.jwt_access_ttl_s),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "jti": str(uuid.uuid4()),
    }
    if name:
        claims["name"] = name  # printed name at sign-in, for audit events
    return jwt.encode(claims, ring.signing, algorithm=ALGORITHM, headers={"kid": ring.signing_kid})


def verify_access_token(token: str, *, now: float | None = None) -> AccessClaims:
    """Check signature, algorithm, key id and every registered claim.

    Raises:
        Unauthenticated: with a short reason; never says which key or claim value was expected.
    """
    settings = get_settings()
    ring = keyring()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthenticated("malformed token") from None
    if header.get("alg") != ALGORITHM:
        raise Unauthenticated("token algorithm not accepted")
    if set(header) - {"alg", "kid", "typ"}:
        raise Unauthenticated("token header not accepted")
    key = ring.verifying.get(str(header.get("kid", "")))
    if key is None:
        raise Unauthenticated("unknown signing key")
    try:
        # Times are checked below against `now`, so tests can pin the clock.
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={
                "require": list(REQUIRED_CLAIMS),
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError:
        raise Unauthenticated("invalid token") from None
    at = time.time() if now is None else now
    leeway = settings.jwt_leeway_s
    try:
        exp, nbf, iat = int(claims["exp"]), int(claims["nbf"]), int(claims["iat"])
    except (TypeError, ValueError):
        raise Unauthenticated("invalid token") from None
    if at > exp + leeway:
        raise Unauthenticated("token expired")
    if at + leeway < nbf or at + leeway < iat:
        raise Unauthenticated("token not yet valid")
    if "tid" not in claims or not isinstance(claims.get("sub"), str) or not isinstance(claims.get("sid"), str):
        raise Unauthenticated("invalid token")
    tid = claims.get("tid")
    return AccessClaims(
        subject=claims["sub"],
        tenant_id=str(tid) if tid is not None else None,
        session_id=claims["sid"],
        role=str(claims["role"]),
        jti=str(claims["jti"]),
        expires_at=exp,
        name=claims["name"] if isinstance(claims.get("name"), str) else None,
    )
