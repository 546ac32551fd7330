"""What the second-factor tests share: users with a password (and a TOTP), the sign-in steps over
HTTP, and a software passkey authenticator built from fido2's primitives."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from typing import Any

import httpx
import pyotp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.cose import ES256
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import AttestationObject, AttestedCredentialData, AuthenticatorData, CollectedClientData

from shared.core import db
from shared.identity.passwords import hash_password
from shared.tenancy.tenants import Tenant
from tests.conftest import auth, create_user
from tests.identity.test_signin import PASSWORD, login

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
ORIGIN = "http://localhost:3000"
RP_ID = "localhost"
SOFT_AAGUID = uuid.UUID("c05705c0-5e1f-4b11-a0ff-50f7a4e0b0e1").bytes


def password_user(tenant: Tenant, role: str = "ADMIN", *, mfa_factor: bool | None = None) -> dict[str, Any]:
    """An active user with PASSWORD; ADMIN/REVIEWER get a confirmed TOTP unless mfa_factor=False."""
    row = create_user(tenant.id, role, mfa=mfa_factor)
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update users set password_hash = %s where id = %s", (hash_password(PASSWORD), row["id"]))
    return row


def code_at(secret: str, offset_s: float = 0.0) -> str:
    return pyotp.TOTP(secret).at(time.time() + offset_s)


def problem_type(resp: httpx.Response) -> str:
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    return resp.json()["type"].removeprefix("urn:custos:problem:")


def ticket_for(c: httpx.Client, tenant: Tenant, email: str, **extra: Any) -> dict[str, Any]:
    resp = login(c, tenant, email, **extra)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["mfa_required"] is True and "access_token" not in body, body
    return body


def second_step(c: httpx.Client, ticket: str, **factor: Any) -> httpx.Response:
    return c.post("/api/auth/mfa/verify", json={"mfa_ticket": ticket, **factor})


class SoftAuthenticator:
    """A passkey authenticator in software: an ES256 key, "none" attestation, a signature
    counter; the WebAuthn structures come from fido2's builders, the signature from the key."""

    def __init__(self, *, rp_id: str = RP_ID, origin: str = ORIGIN) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = uuid.uuid4().bytes + uuid.uuid4().bytes
        self.rp_id, self.origin = rp_id, origin
        self.counter = 0
        self.user_handle: bytes | None = None

    @property
    def id(self) -> str:
        return websafe_encode(self.credential_id)

    def create(self, options: dict[str, Any]) -> dict[str, Any]:
        """navigator.credentials.create(): a new resident credential for options["user"]."""
        assert options["rp"]["id"] == self.rp_id
        assert self.id not in [c["id"] for c in options.get("excludeCredentials", [])]
        self.user_handle = websafe_decode(options["user"]["id"])
        client_data = CollectedClientData.create(
            type=CollectedClientData.TYPE.CREATE.value, challenge=websafe_decode(options["challenge"]), origin=self.origin
        )
        attested = AttestedCredentialData.create(SOFT_AAGUID, self.credential_id,
                                                 ES256.from_cryptography_key(self.key.public_key()))
        flags = AuthenticatorData.FLAG.UP | AuthenticatorData.FLAG.UV | AuthenticatorData.FLAG.AT
        auth_data = AuthenticatorData.create(hashlib.sha256(self.rp_id.encode()).digest(), flags, self.counter, attested)
        attestation = AttestationObject.create("none", auth_data, {})
        return {
            "id": self.id, "rawId": self.id, "type": "public-key", "authenticatorAttachment": "platform",
            "response": {"clientDataJSON": websafe_encode(client_data), "attestationObject": websafe_encode(attestation),
                         "transports": ["internal", "hybrid"]},
            "clientExtensionResults": {"credProps": {"rk": True}},
        }

    def get(self, options: dict[str, Any], *, counter: int | None = None, origin: str | None = None,
            user_verified: bool = True) -> dict[str, Any]:
        """navigator.credentials.get(): an assertion over the options' challenge."""
        allowed = [c["id"] for c in options.get("allowCredentials", [])]
        assert not allowed or self.id in allowed, "the server asked for other credentials"
        self.counter = self.counter + 1 if counter is None else counter
        client_data = CollectedClientData.create(
            type=CollectedClientData.TYPE.GET.value, challenge=websafe_decode(options["challenge"]),
            origin=origin or self.origin,
        )
        flags = AuthenticatorData.FLAG.UP | (AuthenticatorData.FLAG.UV if user_verified else 0)
        auth_data = AuthenticatorData.create(hashlib.sha256(self.rp_id.encode()).digest(),
                                             AuthenticatorData.FLAG(flags), self.counter)
        signature = self.key.sign(bytes(auth_data) + client_data.hash, ec.ECDSA(hashes.SHA256()))
        assert self.user_handle is not None
        return {
            "id": self.id, "rawId": self.id, "type": "public-key",
            "response": {"clientDataJSON": websafe_encode(client_data), "authenticatorData": websafe_encode(auth_data),
                         "signature": websafe_encode(signature), "userHandle": websafe_encode(self.user_handle)},
        }


def register_passkey(c: httpx.Client, token: str, device: SoftAuthenticator, name: str | None = None) -> dict[str, Any]:
    options = c.post("/api/mfa/passkeys/registration/options", headers=auth(token))
    assert options.status_code == 200, options.text
    body = options.json()
    assert body["options"]["attestation"] == "none"
    assert body["options"]["authenticatorSelection"]["residentKey"] == "preferred"
    payload: dict[str, Any] = {"challenge_id": body["challenge_id"], "credential": device.create(body["options"])}
    if name:
        payload["name"] = name
    resp = c.post("/api/mfa/passkeys/registration/verify", json=payload, headers=auth(token))
    assert resp.status_code == 201, resp.text
    return resp.json()

def enrolled_with_codes(c: httpx.Client, tenant: Tenant, role: str = "ADMIN") -> tuple[dict[str, Any], str, list[str]]:
    user = password_user(tenant, role, mfa_factor=False)
    token = login(c, tenant, user["email"]).json()["access_token"]
    secret = c.post("/api/mfa/totp/enroll", headers=auth(token)).json()["secret"]
    confirmed = c.post("/api/mfa/totp/confirm", json={"code": code_at(secret)}, headers=auth(token))
    assert confirmed.status_code == 200, confirmed.text
    return {**user, "totp_secret": secret}, token, confirmed.json()["recovery_codes"]
