"""Signing keys: one signs, several verify, each known by a key id.

Key ids are RFC 7638 JWK thumbprints of the public key, so a key's id follows from the
key itself and cannot drift from it. In Azure the private keys come from settings that are
Key Vault references; locally (CUSTOS_ENV local/test only) a dev key is generated once into
`<CUSTOS_LOCAL_DIR>/keys/` with mode 0600.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # cryptography loads with the first key (a token signed or checked), not at import.
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from shared.core.settings import Settings, SettingsError

_lock = threading.Lock()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ec_public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def ed25519_public_jwk(key: ed25519.Ed25519PublicKey) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order."""
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class EcKeyRing:
    """ES256 keys: `signing` signs; every key in `verifying` (signing one included) verifies."""

    signing: ec.EllipticCurvePrivateKey
    signing_kid: str
    verifying: dict[str, ec.EllipticCurvePublicKey]

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, pub in self.verifying.items():
            keys.append({**ec_public_jwk(pub), "kid": kid, "use": "sig", "alg": "ES256"})
        return {"keys": keys}


def load_pem_private(pem: str, setting: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"{setting.upper()}: not a PEM private key ({exc})") from None


def split_pem_public(bundle: str, setting: str) -> list[Any]:
    from cryptography.hazmat.primitives import serialization

    keys = []
    marker = "-----END PUBLIC KEY-----"
    for chunk in bundle.split(marker):
        if chunk.strip():
            try:
                keys.append(serialization.load_pem_public_key((chunk.strip() + "\n" + marker).encode()))
            except ValueError as exc:
                raise SettingsError(f"{setting.upper()}: not a PEM public key ({exc})") from None
    return keys


def dev_private_key_pem(settings: Settings, name: str, generate: Any) -> str:
    """Read, or once generate, a dev key under the local dir. Refused outside local/test."""
    if not settings.dev_keys_allowed:
        raise SettingsError(f"no key configured for {name} and dev keys are off in production")
    from cryptography.hazmat.primitives import serialization

    path = Path(settings.custos_local_dir) / "keys" / f"{name}.pem"
    with _lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pem = generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private_file_once(path, pem)
        return path.read_text()


def write_private_file_once(path: Path, data: bytes) -> None:
    """Create `path` with `data`, mode 0600, unless it exists: written to a temporary file and
    linked into place, so a concurrent worker's file wins whole and no reader sees a torn one."""
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def load_jwt_keyring(settings: Settings) -> EcKeyRing:
    """The ES256 key ring from settings (or the local dev key).

    Raises:
        SettingsError: a key setting is malformed or not P-256.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = settings.jwt_signing_key or dev_private_key_pem(
        settings, "jwt-es256", lambda: ec.generate_private_key(ec.SECP256R1())
    )
    signing = load_pem_private(pem, "jwt_signing_key")
    if not isinstance(signing, ec.EllipticCurvePrivateKey) or signing.curve.name != "secp256r1":
        raise SettingsError("JWT_SIGNING_KEY: must be an EC P-256 private key (ES256)")
    signing_kid = jwk_thumbprint(ec_public_jwk(signing.public_key()))
    verifying: dict[str, ec.EllipticCurvePublicKey] = {signing_kid: signing.public_key()}
    for pub in split_pem_public(settings.jwt_verify_keys, "jwt_verify_keys"):
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise SettingsError("JWT_VERIFY_KEYS: every key must be EC P-256")
        verifying[jwk_thumbprint(ec_public_jwk(pub))] = pub
    return EcKeyRing(signing=signing, signing_kid=signing_kid, verifying=verifying)


def dev_secret_b64(settings: Settings, name: str, setting: str, nbytes: int = 32) -> str:
    """Read, or once generate, a random dev secret (base64 of `nbytes`) under the local dir.

    Raises:
        SettingsError: outside local/test (`setting` is named: it must be set there).
    """
    if not settings.dev_keys_allowed:
        raise SettingsError(f"{setting}: not set, and dev keys are off in production")
    path = Path(settings.custos_local_dir) / "keys" / f"{name}.key"
    with _lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(os.urandom(nbytes)).decode("ascii") + "\n")
            try:
                os.link(tmp, path)  # atomic: a concurrent worker's key wins, never a torn file
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip()
