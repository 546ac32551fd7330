"""JWT access tokens: ES256 only, `kid` header, iss/aud/exp/nbf/iat always checked.

The algorithm is pinned: the header's `alg` must be ES256 and the key is chosen by `kid`
from our own key ring, never from anything inside the token (no `jku`, `jwk`, `x5u`).
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from shared.core.errors import Unauthenticated
from shared.core.keys import EcKeyRing, load_jwt_keyring
from shared.core.settings import Settings, get_settings

ALGORITHM = "ES256"
REQUIRED_CLAIMS = ("sub", "sid", "role", "iat", "nbf", "exp", "iss", "aud", "jti")
"""`tid` is required too, but may be null (platform operators): checked separately."""

MAX_NUMERIC_DATE = 2**32 - 1
"""Latest `iat`/`nbf`/`exp` accepted (year 2106): anything larger is junk, not a date."""


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
    """Sign an access token for a session. `tenant_id` is None only for platform operators.

    Raises:
        ValueError: `ttl_s` longer than JWT_ACCESS_TTL_S (verification would refuse the token).
    """
    settings = get_settings()
    ring = keyring()
    ttl = settings.jwt_access_ttl_s if ttl_s is None else ttl_s
    if not 0 < ttl <= settings.jwt_access_ttl_s:
        raise ValueError(f"access token lifetime must be 1..{settings.jwt_access_ttl_s} s")
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": subject,
        "tid": tenant_id,
        "sid": session_id,
        "role": role,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "jti": str(uuid.uuid4()),
    }
    if name:
        claims["name"] = name  # printed name at sign-in, for audit events
    import jwt  # PyJWT (and the cryptography it loads) on first use, not at import

    return jwt.encode(claims, ring.signing, algorithm=ALGORITHM, headers={"kid": ring.signing_kid})


def _numeric_date(value: object) -> int:
    """A NumericDate as we issue them: a whole number of seconds within MAX_NUMERIC_DATE.

    Raises:
        Unauthenticated: a string, boolean, float (NaN and infinity included) or an integer
            out of range.
    """
    # bool is an int subclass, and json.loads reads Infinity/NaN/1e999 as floats: take
    # exactly int, never int(...) of whatever arrived.
    if type(value) is not int or not 0 <= value <= MAX_NUMERIC_DATE:
        raise Unauthenticated("invalid token")
    return value


VERIFIED_CACHE_MAX = 4096
"""Most signature-checked tokens a worker remembers (about 1 KiB each)."""


@dataclass(frozen=True)
class _Verified:
    claims: dict[str, Any]
    kid: str
    key: object
    settings: object


_verified: dict[str, _Verified] = {}
_verified_lock = threading.Lock()


def _signature_checked(token: str, settings: Settings, ring: EcKeyRing) -> dict[str, Any]:
    """The claims of a token whose header, signature, `iss`, `aud` and required claims hold,
    from the worker's memory of tokens already checked (see `verify_access_token`).

    Raises:
        Unauthenticated.
    """
    hit = _verified.get(token)
    if hit is not None and hit.settings is settings and ring.verifying.get(hit.kid) is hit.key:
        return hit.claims
    import jwt

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthenticated("malformed token") from None
    if header.get("alg") != ALGORITHM:
        raise Unauthenticated("token algorithm not accepted")
    if set(header) - {"alg", "kid", "typ"}:
        raise Unauthenticated("token header not accepted")
    kid = str(header.get("kid", ""))
    key = ring.verifying.get(kid)
    if key is None:
        raise Unauthenticated("unknown signing key")
    try:
        # Times are checked by the caller against `now`, so tests can pin the clock.
        claims: dict[str, Any] = jwt.decode(
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
    with _verified_lock:
        if len(_verified) >= VERIFIED_CACHE_MAX:
            _forget_expired()
        _verified[token] = _Verified(claims, kid, key, settings)
    return claims


def _forget_expired() -> None:
    """Make room in the memory of checked tokens: the expired ones go, or all if none has."""
    at = time.time()
    expired = [t for t, v in _verified.items() if not isinstance(v.claims.get("exp"), int) or v.claims["exp"] < at]
    for t in expired:
        del _verified[t]
    if len(_verified) >= VERIFIED_CACHE_MAX:
        _verified.clear()


def verify_access_token(token: str, *, now: float | None = None) -> AccessClaims:
    """Check signature, algorithm, key id and every registered claim. `iat`, `nbf` and `exp`
    must be integers, and `exp - iat` at most JWT_ACCESS_TTL_S (plus leeway).

    The signature check (ES256, about 150 us) is done once per token and worker: a token whose
    signature, `iss` and `aud` held is remembered (at most VERIFIED_CACHE_MAX, only tokens we
    signed can be in it) while its key is still in the key ring and the settings are the same.
    Everything that can change between two uses of a token is checked on every call: its times
    here, and its session, account and tenant in the database by the caller, so no revocation
    waits for the memory (docs/security.md).

    Raises:
        Unauthenticated: with a short reason; never says which key or claim value was expected.
    """
    settings = get_settings()
    claims = _signature_checked(token, settings, keyring())
    at = time.time() if now is None else now
    leeway = settings.jwt_leeway_s
    exp, nbf, iat = _numeric_date(claims["exp"]), _numeric_date(claims["nbf"]), _numeric_date(claims["iat"])
    if at > exp + leeway:
        raise Unauthenticated("token expired")
    if at + leeway < nbf or at + leeway < iat:
        raise Unauthenticated("token not yet valid")
    # Bounding the lifetime by our own setting means a token minted with a stolen key (or by
    # a bug) cannot outlive a normal one; nbf before iat is never something we issue.
    if exp - iat > settings.jwt_access_ttl_s + leeway or nbf < iat or exp <= nbf:
        raise Unauthenticated("token lifetime not accepted")
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
