"""AES-256-GCM sealing of TOTP secrets at rest, and the key ids that name the keys.

Secrets are encrypted under `MFA_ENCRYPTION_KEY` (its id, the first 16 hex of SHA-256 of the key,
is stored beside the ciphertext); retired keys in `MFA_DECRYPTION_KEYS` still decrypt, and a secret
read under one is re-encrypted under the current key (`totp.check_stored_totp`). The associated data
binds the ciphertext to its realm, tenant and user, so a row copied to another user does not decrypt.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core.settings import Settings, SettingsError, get_settings
from shared.identity.mfa.realms import USERS, Realm


class SecretUnreadable(RuntimeError):
    """A TOTP ciphertext does not decrypt: unknown key id, another user's row, or tampering."""


_key_lock = threading.Lock()


def key_id(key: bytes) -> str:
    """First 16 hex of SHA-256 of the key: names it without revealing it."""
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    nonce: bytes
    key_id: str


@dataclass(frozen=True)
class SecretBox:
    """AES-256-GCM: the current key encrypts; it and every retired key decrypt."""

    current_id: str
    keys: dict[str, bytes]

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # with the first secret, not at import

        nonce = os.urandom(12)  # random 96-bit nonces: safe far beyond the number of secrets we keep
        return Sealed(AESGCM(self.keys[self.current_id]).encrypt(nonce, plaintext, aad), nonce, self.current_id)

    def open(self, sealed: Sealed, aad: bytes) -> bytes:
        """Raises SecretUnreadable: unknown key id, wrong associated data, or tampering."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = self.keys.get(sealed.key_id)
        if key is None:
            raise SecretUnreadable(f"no MFA key with id {sealed.key_id} is configured")
        try:
            return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, aad)
        except InvalidTag:
            raise SecretUnreadable("the secret does not decrypt for this tenant and user") from None


def _dev_key(settings: Settings) -> str:
    """Read, or once generate, the local dev key. Refused outside local/test."""
    if not settings.dev_keys_allowed:
        raise SettingsError("MFA_ENCRYPTION_KEY: not set, and dev keys are off in production")
    path = Path(settings.custos_local_dir) / "keys" / "mfa-aes256.key"
    with _key_lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(os.urandom(32)).decode("ascii") + "\n")
            try:
                os.link(tmp, path)  # atomic: a concurrent worker's key wins, never a torn file
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip()


def load_secret_box(settings: Settings) -> SecretBox:
    """The key ring from settings (or the local dev key).

    Raises:
        SettingsError: no key in production (settings validation names malformed ones).
    """
    current = base64.b64decode(settings.mfa_encryption_key or _dev_key(settings))
    if len(current) != 32:
        raise SettingsError("MFA_ENCRYPTION_KEY: must be 32 bytes before base64")
    keys = {key_id(current): current}
    for text in settings.mfa_decryption_keys.split(","):
        if text.strip():
            old = base64.b64decode(text.strip())
            keys.setdefault(key_id(old), old)
    return SecretBox(current_id=key_id(current), keys=keys)


@functools.cache
def secret_box() -> SecretBox:
    """This worker's key ring, loaded on first use."""
    return load_secret_box(get_settings())


def _aad(tenant_id: str, user_id: str, realm: Realm = USERS) -> bytes:
    return realm.aad_context + b"\x00" + uuid.UUID(tenant_id).bytes + uuid.UUID(user_id).bytes


def seal_secret(secret: str, *, tenant_id: str, user_id: str, realm: Realm = USERS) -> Sealed:
    return secret_box().seal(secret.encode("ascii"), _aad(tenant_id, user_id, realm))


def open_secret(row: dict[str, Any], *, tenant_id: str, user_id: str, realm: Realm = USERS) -> str:
    """Raises SecretUnreadable."""
    sealed = Sealed(bytes(row["secret_ciphertext"]), bytes(row["secret_nonce"]), row["key_id"])
    return secret_box().open(sealed, _aad(tenant_id, user_id, realm)).decode("ascii")
