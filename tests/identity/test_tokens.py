"""The worker's memory of signature-checked access tokens (shared.identity.tokens): it spares
the ES256 check of a token already seen, and nothing else. A remembered token is still
refused once it expires, once its key leaves the key ring or the settings change; a forged one
is never remembered; the memory is bounded. (A revoked session is refused on the next request
whatever the memory holds: tests/identity/test_guards.py.)"""

from __future__ import annotations

import dataclasses
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.core.errors import Unauthenticated
from shared.core.settings import get_settings
from shared.identity import tokens
from tests.conftest import token_for


def _token(**kw: object) -> str:
    return token_for(str(uuid.uuid4()), str(uuid.uuid4()), "VIEWER", **kw)


def test_a_remembered_token_is_still_refused_once_it_expires() -> None:
    token = _token()
    claims = tokens.verify_access_token(token)
    assert token in tokens._verified
    assert tokens.verify_access_token(token) == claims  # from memory
    leeway = get_settings().jwt_leeway_s
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.verify_access_token(token, now=claims.expires_at + leeway + 1)
    with pytest.raises(Unauthenticated, match="not yet valid"):
        tokens.verify_access_token(token, now=time.time() - 3600)


def test_a_remembered_token_whose_key_left_the_ring_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    token = _token()
    tokens.verify_access_token(token)
    assert token in tokens._verified
    ring = tokens.keyring()
    # Rotation after a compromise: the key that signed the token is no longer trusted.
    rotated = dataclasses.replace(ring, verifying={k: v for k, v in ring.verifying.items() if k != ring.signing_kid})
    monkeypatch.setattr(tokens, "keyring", lambda: rotated)
    with pytest.raises(Unauthenticated, match="unknown signing key"):
        tokens.verify_access_token(token)
    # The same kid now naming another key: the remembered check was made with the old key.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    replaced = dataclasses.replace(ring, verifying={**ring.verifying, ring.signing_kid: other})
    monkeypatch.setattr(tokens, "keyring", lambda: replaced)
    with pytest.raises(Unauthenticated, match="invalid token"):
        tokens.verify_access_token(token)


def test_a_remembered_token_is_checked_again_when_the_settings_change(monkeypatch: pytest.MonkeyPatch) -> None:
    token = _token()
    tokens.verify_access_token(token)
    monkeypatch.setenv("JWT_AUDIENCE", "another-api")
    get_settings.cache_clear()
    try:
        with pytest.raises(Unauthenticated, match="invalid token"):
            tokens.verify_access_token(token)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    tokens.verify_access_token(token)


def test_a_forged_or_tampered_token_is_never_remembered() -> None:
    good = _token()
    attacker = ec.generate_private_key(ec.SECP256R1())
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode(claims, attacker, algorithm="ES256", headers={"kid": tokens.keyring().signing_kid})
    header, payload, signature = good.split(".")
    tampered = ".".join([header, payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB"), signature])
    for bad in (forged, tampered):
        for _ in range(2):
            with pytest.raises(Unauthenticated):
                tokens.verify_access_token(bad)
        assert bad not in tokens._verified


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "VERIFIED_CACHE_MAX", 8)
    with tokens._verified_lock:
        tokens._verified.clear()
    seen = [_token() for _ in range(20)]
    for token in seen:
        tokens.verify_access_token(token)
        assert len(tokens._verified) <= 8
    for token in seen:  # forgotten ones are checked again, not refused
        tokens.verify_access_token(token)
