"""TOTP secrets at rest: sealed with AES-256-GCM, bound to their tenant and user, keys that rotate."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.core import db
from shared.core.settings import get_settings
from shared.identity import mfa
from shared.tenancy.tenants import Tenant
from tests.conftest import create_user


def test_secret_is_encrypted_and_bound_to_its_tenant_and_user(tenant: Tenant) -> None:
    a, b = create_user(tenant.id, "ADMIN"), create_user(tenant.id, "ADMIN")
    with db.tenant_tx(tenant.id) as conn:
        row = conn.execute("select * from mfa_totp where user_id = %s", (a["id"],)).fetchone()
    assert a["totp_secret"].encode() not in bytes(row["secret_ciphertext"])
    assert row["key_id"] == mfa.secret_box().current_id
    assert mfa.open_secret(row, tenant_id=tenant.id, user_id=a["id"]) == a["totp_secret"]
    with pytest.raises(mfa.SecretUnreadable, match="does not decrypt"):  # the row copied to another user
        mfa.open_secret(row, tenant_id=tenant.id, user_id=b["id"])
    with pytest.raises(mfa.SecretUnreadable):
        mfa.open_secret(row, tenant_id=str(uuid.uuid4()), user_id=a["id"])


def test_keys_rotate_old_ones_still_decrypt() -> None:
    old_key, new_key = (base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2))
    tenant_id, user_id = str(uuid.uuid4()), str(uuid.uuid4())
    aad = mfa.AAD_CONTEXT + b"\x00" + uuid.UUID(tenant_id).bytes + uuid.UUID(user_id).bytes
    old_box = mfa.load_secret_box(get_settings().model_copy(update={"mfa_encryption_key": old_key}))
    sealed = old_box.seal(b"JBSWY3DPEHPK3PXP", aad)
    assert sealed.key_id == hashlib.sha256(bytes([1]) * 32).hexdigest()[:16]
    rotated = mfa.load_secret_box(get_settings().model_copy(
        update={"mfa_encryption_key": new_key, "mfa_decryption_keys": old_key}))
    assert rotated.current_id != sealed.key_id and rotated.open(sealed, aad) == b"JBSWY3DPEHPK3PXP"
    assert rotated.seal(b"x", aad).key_id == rotated.current_id
    forgotten = mfa.load_secret_box(get_settings().model_copy(update={"mfa_encryption_key": new_key}))
    with pytest.raises(mfa.SecretUnreadable, match="no MFA key"):
        forgotten.open(sealed, aad)


def test_production_requires_an_mfa_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from shared.core.settings import SettingsError, load_settings

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    monkeypatch.setenv("CUSTOS_ENV", "production")
    monkeypatch.setenv("JWT_SIGNING_KEY", pem)
    monkeypatch.setenv("AUDIT_SIGNING_KEY", ed)
    monkeypatch.setenv("MFA_ENCRYPTION_KEY", "")
    with pytest.raises(SettingsError, match="mfa_encryption_key"):
        load_settings()
    monkeypatch.setenv("MFA_ENCRYPTION_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(SettingsError, match="MFA_ENCRYPTION_KEY"):
        load_settings()
    monkeypatch.setenv("MFA_ENCRYPTION_KEY", base64.b64encode(bytes(32)).decode())
    monkeypatch.setenv("WEBAUTHN_ORIGINS", "https://evil.example")
    with pytest.raises(SettingsError, match="webauthn_rp_id"):
        load_settings()
