"""Signatures of tenant exports: the manifest's Ed25519 signature and the download links.

The manifest is signed with the audit signing key (`shared.audit.checkpoints.audit_keys`),
whose public keys are published at `/.well-known/audit-keys.json`: one key a customer
already trusts for the audit trail vouches for the export too. The signature covers the
exact bytes of `manifest.json` (no canonicalisation to get wrong), and sits beside it in
`manifest.json.sig` as `{"alg": "EdDSA", "key_id", "signature"}` (base64url).

Download links (local and test, where Storage is Azurite): `token` = base64url(payload) "."
base64url(HMAC-SHA256(payload)), payload `{"p": "export-download", "t": tenant, "e": export,
"f": file path, "x": expiry (Unix seconds), "u"/"n": the user it was issued to}`. The HMAC key is derived from the audit signing
key with HKDF-SHA256 (info "custos export download link v1"), so no new secret exists and
the signing key itself never MACs anything. A token names one file of one export of one
tenant and one purpose; it is compared in constant time and refused after its expiry.
In Azure the links are user-delegation SAS URLs instead (`sas_url`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.core.keys import b64url
from shared.lifecycle.errors import ExportLinkExpired, ExportLinkInvalid

PURPOSE = "export-download"
_HKDF_INFO = b"custos export download link v1"


@dataclass(frozen=True)
class SignedManifest:
    manifest: bytes
    signature: bytes
    key_id: str


def sign_manifest(manifest: dict[str, Any]) -> SignedManifest:
    """`manifest` as bytes (with the signing key's id in it) and its detached signature file."""
    from shared.audit.checkpoints import audit_keys

    keys = audit_keys()
    body = json.dumps({**manifest, "key_id": keys.signing_kid}, ensure_ascii=False, indent=2, sort_keys=True).encode()
    signature = {"alg": "EdDSA", "key_id": keys.signing_kid, "signature": b64url(keys.signing.sign(body))}
    return SignedManifest(manifest=body, signature=json.dumps(signature, sort_keys=True).encode(),
                          key_id=keys.signing_kid)


@functools.cache
def _link_key() -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization  # with the first link, not at import
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from shared.audit.checkpoints import audit_keys

    raw = audit_keys().signing.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(raw)


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def link_token(*, tenant_id: str, export_id: str, path: str, expires: datetime, user_id: str | None,
               user_name: str) -> str:
    """A download token for one file of one export, naming the user it was issued to (for the audit trail)."""
    payload = json.dumps({"p": PURPOSE, "t": tenant_id, "e": export_id, "f": path, "x": int(expires.timestamp()),
                          "u": user_id, "n": user_name},
                         separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(_link_key(), payload, hashlib.sha256).digest()
    return f"{b64url(payload)}.{b64url(mac)}"


@dataclass(frozen=True)
class Link:
    tenant_id: str
    export_id: str
    path: str
    expires: datetime
    user_id: str | None
    user_name: str


def check_token(token: str, *, expected_export_id: str, now: datetime | None = None) -> Link:
    """The file a token grants, once its MAC, purpose, export and expiry are checked.

    Raises:
        ExportLinkInvalid: malformed, not ours, altered, another purpose or another export.
        ExportLinkExpired: past its expiry.
    """
    try:
        payload_text, mac_text = token.split(".")
        payload, mac = _b64decode(payload_text), _b64decode(mac_text)
    except (ValueError, TypeError):
        raise ExportLinkInvalid("the token is malformed") from None
    if not hmac.compare_digest(mac, hmac.new(_link_key(), payload, hashlib.sha256).digest()):
        raise ExportLinkInvalid("the token's signature does not verify")
    try:
        body = json.loads(payload)
        link = Link(tenant_id=str(body["t"]), export_id=str(body["e"]), path=str(body["f"]),
                    expires=datetime.fromtimestamp(int(body["x"]), UTC),
                    user_id=None if body["u"] is None else str(body["u"]), user_name=str(body["n"]))
        purpose = body["p"]
    except (ValueError, TypeError, KeyError, OverflowError):
        raise ExportLinkInvalid("the token is malformed") from None
    if purpose != PURPOSE or link.export_id != expected_export_id:
        raise ExportLinkInvalid("the token is for something else")
    if (now or datetime.now(UTC)) >= link.expires:
        raise ExportLinkExpired("the link has expired: ask the export for a new one")
    return link


def sas_url(container: str, blob: str, *, expires: datetime, now: datetime | None = None) -> str:
    """A read-only user-delegation SAS URL of one blob (Azure only: needs the app's identity
    to hold Storage Blob Data Reader or more, and the account's key-less user delegation).

    Cannot run against Azurite (no user delegation keys there); the local path is `link_token`.

    Raises:
        azure.core.exceptions.AzureError: the delegation key could not be obtained.
    """
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    from shared.core import storage

    service = storage.blob_service()
    start = (now or datetime.now(UTC)) - timedelta(minutes=5)  # clock skew between us and Storage
    key = service.get_user_delegation_key(key_start_time=start, key_expiry_time=expires)
    sas = generate_blob_sas(
        account_name=str(service.account_name), container_name=container, blob_name=blob,
        user_delegation_key=key, permission=BlobSasPermissions(read=True), expiry=expires, start=start,
        protocol="https",
    )
    return f"{service.url.rstrip('/')}/{container}/{blob}?{sas}"
