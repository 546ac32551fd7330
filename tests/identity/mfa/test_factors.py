"""Second factors: TOTP known answers and drift, secrets at rest, recovery codes, passkeys made
by a software authenticator built from fido2's primitives, the two-step login, passwordless
passkey sign-in, enforcement for roles that require a factor, throttling and admin reset.
HTTP behaviour goes through the real host; each test's client has its own IP."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from typing import Any

import httpx
import pyotp
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.cose import ES256
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import AttestationObject, AttestedCredentialData, AuthenticatorData, CollectedClientData

from shared.core import db
from shared.core.settings import get_settings
from shared.identity.mfa import factors as mfa
from shared.identity.mfa import passkeys
from shared.identity.passwords import hash_password
from shared.tenancy.tenants import Tenant
from tests.conftest import Host, PersonFactory, auth, create_user
from tests.identity.test_signin import PASSWORD, client_from, events, login

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


# --- TOTP: RFC 6238 ----------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "code"), [
    (59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"),
    (1234567890, "89005924"), (2000000000, "69279037"), (20000000000, "65353130"),
])
def test_rfc6238_appendix_b_sha1_vectors(now: int, code: str) -> None:
    match = mfa.verify_totp(code, secret=RFC_SECRET, now=now, digits=8)
    assert (match.step, match.drift) == (now // 30, 0)


def test_drift_of_one_step_is_accepted_and_two_refused() -> None:
    secret, now = mfa.new_totp_secret(), 1_700_000_015.0
    totp = pyotp.TOTP(secret)
    for drift in (-1, 0, 1):
        match = mfa.verify_totp(totp.at(now + 30 * drift), secret=secret, now=now)
        assert (match.step, match.drift) == (int(now // 30) + drift, drift)
    for drift in (-2, 2):
        with pytest.raises(mfa.TotpCodeInvalid, match="wrong or too old"):
            mfa.verify_totp(totp.at(now + 30 * drift), secret=secret, now=now)


def test_a_code_is_accepted_once() -> None:
    secret, now = mfa.new_totp_secret(), 1_700_000_015.0
    totp = pyotp.TOTP(secret)
    first = mfa.verify_totp(totp.at(now), secret=secret, now=now)
    with pytest.raises(mfa.TotpCodeReused, match="already used"):
        mfa.verify_totp(totp.at(now), secret=secret, now=now, last_used_step=first.step)
    with pytest.raises(mfa.TotpCodeReused):  # an older step, still within the window, is no better
        mfa.verify_totp(totp.at(now - 30), secret=secret, now=now, last_used_step=first.step)
    assert mfa.verify_totp(totp.at(now + 30), secret=secret, now=now, last_used_step=first.step).drift == 1
    for bad in ("12345", "1234567", "12a456", "١٢٣٤٥٦"):
        with pytest.raises(mfa.TotpCodeMalformed):
            mfa.verify_totp(bad, secret=secret, now=now)


def test_new_secrets_have_160_bits() -> None:
    secret = mfa.new_totp_secret()
    assert len(base64.b32decode(secret)) == 20


# --- secrets at rest ------------------------------------------------------------------------------


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


# --- two-step login with TOTP ----------------------------------------------------------------------


def test_login_with_totp_and_replay_refused(host: Host, tenant: Tenant) -> None:
    user = password_user(tenant, "ADMIN")
    with client_from(host) as c:
        first = ticket_for(c, tenant, user["email"], remember_me=True)
        assert first["methods"] == ["totp"] and first["expires_in"] == 300
        assert first["mfa_ticket"].startswith(f"mfa.{uuid.UUID(tenant.id).hex}.")
        code = code_at(user["totp_secret"])
        ok = second_step(c, first["mfa_ticket"], code=code)
        assert ok.status_code == 200, ok.text
        tokens = ok.json()
        assert tokens["mfa_method"] == "totp" and tokens["expires_in"] == 900
        assert c.get("/api/users", headers=auth(tokens["access_token"])).status_code == 200
        # the ticket is single-use
        again = second_step(c, first["mfa_ticket"], code=code_at(user["totp_secret"], 30))
        assert again.status_code == 401 and problem_type(again) == "mfa-ticket-invalid"
        # the same code on a new ticket: refused, it was used
        second = ticket_for(c, tenant, user["email"])
        replay = second_step(c, second["mfa_ticket"], code=code)
        assert replay.status_code == 401 and problem_type(replay) == "mfa-failed"
        assert "already used" in replay.json()["detail"]
        # the next step's code works
        assert second_step(c, second["mfa_ticket"], code=code_at(user["totp_secret"], 30)).status_code == 200
    with db.tenant_tx(tenant.id) as conn:
        session = conn.execute("select remember_me, mfa_method, mfa_verified_at from sessions where id = %s",
                               (tokens["session_id"],)).fetchone()
    assert session["remember_me"] is True and session["mfa_method"] == "totp" and session["mfa_verified_at"]
    assert [e["after"]["methods"] for e in events(tenant.id, "auth.mfa_challenged")] == [["totp"], ["totp"]]
    assert [e["after"]["mfa"] for e in events(tenant.id, "auth.login_succeeded")] == ["totp", "totp"]
    assert [e["after"]["reason"] for e in events(tenant.id, "auth.mfa_failed")] == ["code_reused"]


def test_ticket_expires(host: Host, tenant: Tenant) -> None:
    user = password_user(tenant, "REVIEWER")
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        with db.tenant_tx(tenant.id) as conn:  # five minutes pass, without sleeping
            conn.execute("""update mfa_tickets set created_at = created_at - interval '6 minutes',
                                   expires_at = expires_at - interval '6 minutes' where user_id = %s""", (user["id"],))
        resp = second_step(c, ticket, code=code_at(user["totp_secret"]))
        assert resp.status_code == 401 and problem_type(resp) == "mfa-ticket-invalid"
        assert events(tenant.id, "auth.login_succeeded") == []


@pytest.mark.parametrize("ticket", ["", "mfa.abc", "mfa." + "0" * 32 + "." + "A" * 43, "rt." + "0" * 32 + "." + "A" * 43])
def test_forged_tickets_are_refused(host: Host, ticket: str) -> None:
    with client_from(host) as c:
        resp = c.post("/api/auth/mfa/verify", json={"mfa_ticket": ticket or "x", "code": "123456"})
    assert resp.status_code == 401 and problem_type(resp) == "mfa-ticket-invalid"


def test_exactly_one_factor_per_attempt(client: httpx.Client) -> None:
    resp = client.post("/api/auth/mfa/verify", json={"mfa_ticket": "x", "code": "123456", "recovery_code": "a" * 16})
    assert resp.status_code == 422
    resp = client.post("/api/auth/mfa/verify", json={"mfa_ticket": "x", "assertion": {}})
    assert resp.status_code == 422


def test_wrong_codes_are_throttled(host: Host, tenant: Tenant) -> None:
    user = password_user(tenant, "ADMIN")
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        right = code_at(user["totp_secret"])
        wrong = f"{(int(right) + 500_000) % 1_000_000:06d}"
        statuses = [second_step(c, ticket, code=wrong).status_code for _ in range(6)]
        throttled = second_step(c, ticket, code=right)
    assert statuses[:5] == [401] * 5 and statuses[5] == 429
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    assert problem_type(throttled) == "rate-limited"
    assert len(events(tenant.id, "auth.mfa_failed")) == 5
    assert any(e["after"]["family"] == "mfa" and e["after"]["key"] == "email_ip"
               for e in events(tenant.id, "security.throttled"))


# --- enforcement and TOTP enrolment -------------------------------------------------------------


def test_admin_without_a_factor_can_only_enrol(host: Host, tenant: Tenant) -> None:
    admin = password_user(tenant, "ADMIN", mfa_factor=False)
    with client_from(host) as c:
        resp = login(c, tenant, admin["email"])
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["mfa_enrolment_required"] is True and "mfa_ticket" not in body
        token = body["access_token"]
        blocked = c.get("/api/users", headers=auth(token))
        assert blocked.status_code == 403 and problem_type(blocked) == "mfa-enrolment-required"
        assert c.get("/api/tenant", headers=auth(token)).status_code == 403
        assert c.get("/api/me", headers=auth(token)).status_code == 200
        assert c.get("/api/mfa", headers=auth(token)).json()["enrolment_required"] is True

        enrol = c.post("/api/mfa/totp/enroll", headers=auth(token))
        assert enrol.status_code == 200, enrol.text
        e = enrol.json()
        assert len(base64.b32decode(e["secret"])) == 20
        assert e["otpauth_uri"].startswith("otpauth://totp/") and f"secret={e['secret']}" in e["otpauth_uri"]
        assert "issuer=Custos" in e["otpauth_uri"] and e["qr_svg"].startswith("<svg xmlns=")
        assert c.get("/api/users", headers=auth(token)).status_code == 403  # pending is not enrolled
        wrong = c.post("/api/mfa/totp/confirm", json={"code": f"{(int(code_at(e['secret'])) + 1) % 10**6:06d}"},
                       headers=auth(token))
        assert wrong.status_code == 400 and problem_type(wrong) == "mfa-code-invalid"
        confirmed = c.post("/api/mfa/totp/confirm", json={"code": code_at(e["secret"])}, headers=auth(token))
        assert confirmed.status_code == 200, confirmed.text
        codes = confirmed.json()["recovery_codes"]
        assert len(codes) == 10 and len(set(codes)) == 10
        assert c.get("/api/users", headers=auth(token)).status_code == 200  # the very next request
        # the next sign-in asks for the new factor
        assert ticket_for(c, tenant, admin["email"])["methods"] == ["totp", "recovery_code"]
        # the last factor of a role that requires one cannot be removed
        removal = c.delete("/api/mfa/totp", headers=auth(token))
        assert removal.status_code == 409 and problem_type(removal) == "mfa-last-factor"
        assert c.post("/api/auth/logout", headers=auth(token)).status_code == 204
    with db.tenant_tx(tenant.id) as conn:
        stored = conn.execute("select code_hash from mfa_recovery_codes where user_id = %s", (admin["id"],)).fetchall()
    assert len(stored) == 10 and not any(code.replace("-", "") in str(stored) for code in codes)
    actions = [e["action"] for e in events(tenant.id, "mfa.totp_enrolment_started") + events(tenant.id, "mfa.totp_confirm_failed")
               + events(tenant.id, "mfa.totp_enrolled") + events(tenant.id, "mfa.recovery_codes_issued")]
    assert actions == ["mfa.totp_enrolment_started", "mfa.totp_confirm_failed", "mfa.totp_enrolled",
                       "mfa.recovery_codes_issued"]


def test_logout_is_allowed_while_enrolment_is_pending(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    reviewer = make_person(tenant.id, "REVIEWER", mfa=False)
    with client_from(host) as c:
        assert problem_type(c.get("/api/audit", headers=auth(reviewer.token))) == "mfa-enrolment-required"
        assert c.post("/api/auth/logout", headers=auth(reviewer.token)).status_code == 204
        assert c.get("/api/me", headers=auth(reviewer.token)).status_code == 401


def test_tenant_setting_requires_a_factor_of_every_role(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, viewer = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "VIEWER")
    operator = password_user(tenant, "OPERATOR")
    with client_from(host) as c:
        assert c.get("/api/sessions", headers=auth(viewer.token)).status_code == 200
        plain = login(c, tenant, operator["email"]).json()
        assert "access_token" in plain and "mfa_enrolment_required" not in plain
        put = c.put("/api/tenant/settings/mfa.required_for_all_roles", json={"value": True, "reason": "policy"},
                    headers=auth(admin.token))
        assert put.status_code == 200, put.text
        assert problem_type(c.get("/api/sessions", headers=auth(viewer.token))) == "mfa-enrolment-required"
        assert c.get("/api/me", headers=auth(viewer.token)).status_code == 200
        assert login(c, tenant, operator["email"]).json()["mfa_enrolment_required"] is True


def test_operator_may_enrol_and_remove_a_factor_when_not_required(host: Host, tenant: Tenant) -> None:
    user = password_user(tenant, "OPERATOR")
    with client_from(host) as c:
        token = login(c, tenant, user["email"]).json()["access_token"]
        secret = c.post("/api/mfa/totp/enroll", headers=auth(token)).json()["secret"]
        assert c.post("/api/mfa/totp/confirm", json={"code": code_at(secret)}, headers=auth(token)).status_code == 200
        assert ticket_for(c, tenant, user["email"])["methods"] == ["totp", "recovery_code"]
        assert c.delete("/api/mfa/totp", headers=auth(token)).status_code == 204
        assert "access_token" in login(c, tenant, user["email"]).json()  # no factor, no second step
        assert c.get("/api/mfa", headers=auth(token)).json()["recovery_codes_remaining"] == 0
    removed = events(tenant.id, "mfa.totp_removed")
    assert [e["after"]["recovery_codes_voided"] for e in removed] == [10]


def test_changing_factors_needs_a_recent_second_factor(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    stale = make_person(tenant.id, "ADMIN")  # has a TOTP; its session never proved it
    user = password_user(tenant, "ADMIN")
    with client_from(host) as c:
        for method, path in (("POST", "/api/mfa/totp/enroll"), ("POST", "/api/mfa/passkeys/registration/options"),
                             ("DELETE", "/api/mfa/totp")):
            resp = c.request(method, path, headers=auth(stale.token))
            assert resp.status_code == 403 and problem_type(resp) == "mfa-step-up-required", (path, resp.text)
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        fresh = second_step(c, ticket, code=code_at(user["totp_secret"])).json()
        assert c.post("/api/mfa/totp/enroll", headers=auth(fresh["access_token"])).status_code == 200
        with db.tenant_tx(tenant.id) as conn:  # sixteen minutes pass
            conn.execute("update sessions set mfa_verified_at = mfa_verified_at - interval '16 minutes' where id = %s",
                         (fresh["session_id"],))
        late = c.post("/api/mfa/totp/enroll", headers=auth(fresh["access_token"]))
        assert late.status_code == 403 and problem_type(late) == "mfa-step-up-required"


# --- recovery codes ---------------------------------------------------------------------------------


def enrolled_with_codes(c: httpx.Client, tenant: Tenant, role: str = "ADMIN") -> tuple[dict[str, Any], str, list[str]]:
    user = password_user(tenant, role, mfa_factor=False)
    token = login(c, tenant, user["email"]).json()["access_token"]
    secret = c.post("/api/mfa/totp/enroll", headers=auth(token)).json()["secret"]
    confirmed = c.post("/api/mfa/totp/confirm", json={"code": code_at(secret)}, headers=auth(token))
    assert confirmed.status_code == 200, confirmed.text
    return {**user, "totp_secret": secret}, token, confirmed.json()["recovery_codes"]


def test_recovery_code_works_once_and_tells_how_many_remain(host: Host, tenant: Tenant) -> None:
    with client_from(host) as c:
        user, _, codes = enrolled_with_codes(c, tenant)
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        ok = second_step(c, ticket, recovery_code=codes[0].upper().replace("-", " "))  # typed loosely
        assert ok.status_code == 200, ok.text
        assert ok.json()["recovery_codes_remaining"] == 9 and "9 left" in ok.json()["warning"]
        assert c.get("/api/users", headers=auth(ok.json()["access_token"])).status_code == 200
        again = second_step(c, ticket_for(c, tenant, user["email"])["mfa_ticket"], recovery_code=codes[0])
        assert again.status_code == 401 and problem_type(again) == "mfa-failed"
    used = events(tenant.id, "security.recovery_code_used")
    assert [(e["target_id"], e["after"]["remaining"]) for e in used] == [(user["id"], 9)]
    assert [e["after"]["reason"] for e in events(tenant.id, "auth.mfa_failed")] == ["code_invalid"]


def test_regeneration_voids_the_old_codes(host: Host, tenant: Tenant) -> None:
    with client_from(host) as c:
        user, _, codes = enrolled_with_codes(c, tenant)
        signed_in = second_step(c, ticket_for(c, tenant, user["email"])["mfa_ticket"], recovery_code=codes[0]).json()
        fresh = c.post("/api/mfa/recovery-codes", json={}, headers=auth(signed_in["access_token"]))
        assert fresh.status_code == 200, fresh.text  # the session proved a factor moments ago
        new_codes = fresh.json()["recovery_codes"]
        assert len(new_codes) == 10 and not set(new_codes) & set(codes)
        old = second_step(c, ticket_for(c, tenant, user["email"])["mfa_ticket"], recovery_code=codes[1])
        assert old.status_code == 401
        new = second_step(c, ticket_for(c, tenant, user["email"])["mfa_ticket"], recovery_code=new_codes[0])
        assert new.status_code == 200 and new.json()["recovery_codes_remaining"] == 9
    issued = events(tenant.id, "mfa.recovery_codes_issued")
    assert [(e["after"]["occasion"], e["after"].get("voided"), e["after"].get("proof")) for e in issued] == [
        ("enrolment", None, None), ("regenerated", 9, "recent_sign_in")]


def test_regeneration_needs_a_code_or_a_recent_second_factor(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")  # a session that never proved a factor
    with client_from(host) as c:
        stale = c.post("/api/mfa/recovery-codes", json={}, headers=auth(admin.token))
        assert stale.status_code == 403 and problem_type(stale) == "mfa-step-up-required"
        assert admin.totp_secret is not None
        wrong = c.post("/api/mfa/recovery-codes", json={"code": "000000" if code_at(admin.totp_secret) != "000000"
                                                        else "111111"}, headers=auth(admin.token))
        assert wrong.status_code == 400 and problem_type(wrong) == "mfa-code-invalid"
        ok = c.post("/api/mfa/recovery-codes", json={"code": code_at(admin.totp_secret)}, headers=auth(admin.token))
        assert ok.status_code == 200 and len(ok.json()["recovery_codes"]) == 10
    assert [e["after"]["reason"] for e in events(tenant.id, "mfa.step_up_failed")] == ["code_invalid"]
    with db.tenant_tx(tenant.id) as conn:
        codes = conn.execute("select count(*) as n from mfa_recovery_codes where user_id = %s", (admin.id,)).fetchone()
    assert codes["n"] == 10


def test_recovery_codes_have_79_bits_and_normalize() -> None:
    code = mfa.new_recovery_code()
    assert len(code) == 19 and code.count("-") == 3
    assert mfa.normalize_recovery_code(code.upper().replace("-", " ")) == code.replace("-", "")
    assert mfa.normalize_recovery_code("0000-0000-0000-0000") is None  # 0 is not in the alphabet
    assert len(mfa.RECOVERY_ALPHABET) ** mfa.RECOVERY_CODE_LENGTH > 2**79


# --- passkeys ------------------------------------------------------------------------------------


def test_passkey_enrolment_then_second_factor_and_passwordless(host: Host, tenant: Tenant) -> None:
    admin = password_user(tenant, "ADMIN", mfa_factor=False)
    device = SoftAuthenticator()
    with client_from(host) as c:
        token = login(c, tenant, admin["email"]).json()["access_token"]
        registered = register_passkey(c, token, device, name="Laptop")
        assert registered["passkey"]["name"] == "Laptop" and len(registered["recovery_codes"]) == 10
        assert registered["passkey"]["discoverable"] is True
        assert c.get("/api/users", headers=auth(token)).status_code == 200  # enrolled: no longer blocked
        listed = c.get("/api/mfa/passkeys", headers=auth(token)).json()["passkeys"]
        assert [(k["name"], sorted(k["transports"])) for k in listed] == [("Laptop", ["hybrid", "internal"])]
        assert "public_key" not in str(listed) and device.id not in str(listed)
        renamed = c.patch(f"/api/mfa/passkeys/{listed[0]['id']}", json={"name": "Work laptop"}, headers=auth(token))
        assert renamed.status_code == 200 and renamed.json()["name"] == "Work laptop"

        # as the second factor after the password
        ticket = ticket_for(c, tenant, admin["email"])
        assert ticket["methods"] == ["passkey", "recovery_code"]
        options = c.post("/api/auth/mfa/passkey/options", json={"mfa_ticket": ticket["mfa_ticket"]})
        assert options.status_code == 200, options.text
        o = options.json()
        assert [d["id"] for d in o["options"]["allowCredentials"]] == [device.id]
        resp = second_step(c, ticket["mfa_ticket"], challenge_id=o["challenge_id"], assertion=device.get(o["options"]))
        assert resp.status_code == 200, resp.text
        assert resp.json()["mfa_method"] == "passkey"

        # passwordless, the tenant named by its slug
        options = c.post("/api/auth/passkey/options", json={"tenant": tenant.slug}).json()
        assert options["options"]["allowCredentials"] == [] and options["options"]["userVerification"] == "required"
        assertion = device.get(options["options"])
        signed_in = c.post("/api/auth/passkey/verify", json={"challenge_id": options["challenge_id"], "assertion": assertion})
        assert signed_in.status_code == 200, signed_in.text
        me = c.get("/api/me", headers=auth(signed_in.json()["access_token"]))
        assert me.status_code == 200 and me.json()["user"]["id"] == admin["id"]
        # the same assertion again: its challenge is gone
        replay = c.post("/api/auth/passkey/verify", json={"challenge_id": options["challenge_id"], "assertion": assertion})
        assert replay.status_code == 401 and problem_type(replay) == "mfa-failed"
    with db.tenant_tx(tenant.id) as conn:
        stored = conn.execute("select sign_count, aaguid, last_used_at from webauthn_credentials where user_id = %s",
                              (admin["id"],)).fetchone()
    assert stored["sign_count"] == 2 and stored["aaguid"] == str(uuid.UUID(bytes=SOFT_AAGUID)) and stored["last_used_at"]
    logins = events(tenant.id, "auth.login_succeeded")
    assert [(e["after"].get("mfa"), e["after"].get("passwordless")) for e in logins] == [
        (None, None), ("passkey", None), ("passkey", True)]
    assert [e["action"] for e in events(tenant.id, "mfa.passkey_registered") + events(tenant.id, "mfa.passkey_renamed")] == [
        "mfa.passkey_registered", "mfa.passkey_renamed"]


def test_passkey_counter_regression_is_refused(host: Host, tenant: Tenant) -> None:
    user = password_user(tenant, "ADMIN")
    device = SoftAuthenticator()
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        token = second_step(c, ticket, code=code_at(user["totp_secret"])).json()["access_token"]
        register_passkey(c, token, device)

        def passwordless(**kw: Any) -> httpx.Response:
            o = c.post("/api/auth/passkey/options", json={"tenant": tenant.slug}).json()
            return c.post("/api/auth/passkey/verify",
                          json={"challenge_id": o["challenge_id"], "assertion": device.get(o["options"], **kw)})

        assert passwordless(counter=5).status_code == 200
        cloned = passwordless(counter=3)
        assert cloned.status_code == 401 and "counter" in cloned.json()["detail"]
        assert passwordless(counter=5).status_code == 401  # equal is no better
        assert passwordless(counter=6).status_code == 200
        wrong_origin = passwordless(origin="https://evil.example")
        assert wrong_origin.status_code == 401
        no_uv = passwordless(user_verified=False)  # passwordless needs the PIN or biometric
        assert no_uv.status_code == 401
    regressions = events(tenant.id, "security.passkey_counter_regression")
    assert [(e["after"]["stored"], e["after"]["presented"]) for e in regressions] == [(5, 3), (5, 5)]
    reasons = [e["after"]["reason"] for e in events(tenant.id, "auth.passkey_login_failed")]
    assert reasons == ["sign_count_regression", "sign_count_regression", "invalid_response", "invalid_response"]


def test_passkey_of_another_user_or_tenant_does_not_sign_in(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    from shared.tenancy.tenants import create_tenant

    user = password_user(tenant, "ADMIN")
    device = SoftAuthenticator()
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        token = second_step(c, ticket, code=code_at(user["totp_secret"])).json()["access_token"]
        key_id = register_passkey(c, token, device)["passkey"]["id"]
        # the credential exists only in its own tenant
        o = c.post("/api/auth/passkey/options", json={"tenant": other.slug}).json()
        assert c.post("/api/auth/passkey/verify", json={"challenge_id": o["challenge_id"],
                                                         "assertion": device.get(o["options"])}).status_code == 401
        # an unknown tenant gets options all the same, that never verify
        o = c.post("/api/auth/passkey/options", json={"tenant": "no-such-tenant"})
        assert o.status_code == 200
        assert c.post("/api/auth/passkey/verify", json={"challenge_id": o.json()["challenge_id"],
                                                         "assertion": device.get(o.json()["options"])}).status_code == 401
        # someone else cannot rename or remove it
        stranger = make_person(tenant.id, "OPERATOR")
        assert c.patch(f"/api/mfa/passkeys/{key_id}", json={"name": "mine"}, headers=auth(stranger.token)).status_code == 404
        assert c.delete(f"/api/mfa/passkeys/{key_id}", headers=auth(stranger.token)).status_code == 404
        # a second-factor challenge of one ticket does not serve another ticket
        first, second = (ticket_for(c, tenant, user["email"])["mfa_ticket"] for _ in range(2))
        o = c.post("/api/auth/mfa/passkey/options", json={"mfa_ticket": first}).json()
        crossed = second_step(c, second, challenge_id=o["challenge_id"], assertion=device.get(o["options"]))
        assert crossed.status_code == 401
        # the owner removes it: the TOTP remains, so the role's requirement still holds
        assert c.delete(f"/api/mfa/passkeys/{key_id}", headers=auth(token)).status_code == 204
        assert c.get("/api/mfa/passkeys", headers=auth(token)).json()["passkeys"] == []
    assert [e["after"]["reason"] for e in events(tenant.id, "auth.mfa_failed")] == ["challenge_mismatch"]


def test_challenge_is_taken_once_even_by_racing_requests() -> None:
    challenge = passkeys.new_challenge(purpose="passwordless")
    results: list[str] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        try:
            passkeys.take_challenge(challenge.id, purpose="passwordless")
            results.append("taken")
        except passkeys.ChallengeUnknown:
            results.append("refused")

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused"] * 7 + ["taken"]
    with pytest.raises(passkeys.ChallengeUnknown, match="unknown or used"):
        passkeys.take_challenge(challenge.id, purpose="passwordless")


def test_challenge_expires_and_keeps_its_purpose() -> None:
    old = passkeys.new_challenge(purpose="passwordless", now=time.time() - 3600)
    with pytest.raises(passkeys.ChallengeExpired):
        passkeys.take_challenge(old.id, purpose="passwordless")
    registration = passkeys.new_challenge(purpose="register", tenant_id=str(uuid.uuid4()), user_id=str(uuid.uuid4()))
    with pytest.raises(passkeys.ChallengeMismatch, match="purpose"):
        passkeys.take_challenge(registration.id, purpose="passwordless")
    stale = passkeys.new_challenge(purpose="passwordless", now=time.time() - 3600)
    assert passkeys.purge_expired_challenges() >= 1
    with pytest.raises(passkeys.ChallengeUnknown):
        passkeys.take_challenge(stale.id, purpose="passwordless")


# --- admin reset -------------------------------------------------------------------------------


def test_admin_reset_requires_a_reason_is_audited_and_mails_the_user(host: Host, tenant: Tenant,
                                                                      make_person: PersonFactory) -> None:
    admin, manager = make_person(tenant.id, "ADMIN"), make_person(tenant.id, "MANAGER")
    target = password_user(tenant, "REVIEWER")
    with client_from(host) as c:
        ticket = ticket_for(c, tenant, target["email"])["mfa_ticket"]
        session = second_step(c, ticket, code=code_at(target["totp_secret"])).json()
        url = f"/api/users/{target['id']}/mfa/reset"
        assert c.post(url, json={}, headers=auth(admin.token)).status_code == 422
        assert c.post(url, json={"reason": "lost phone"}, headers=auth(manager.token)).status_code == 403
        assert c.post(f"/api/users/{admin.id}/mfa/reset", json={"reason": "self"}, headers=auth(admin.token)).status_code == 403
        assert c.post(f"/api/users/{uuid.uuid4()}/mfa/reset", json={"reason": "x" * 5}, headers=auth(admin.token)).status_code == 404
        resp = c.post(url, json={"reason": "lost phone, ticket 42"}, headers=auth(admin.token))
        assert resp.status_code == 200, resp.text
        assert resp.json()["removed"] == {"totp": True, "passkeys": 0, "recovery_codes": 0}
        assert resp.json()["sessions_ended"] == 1
        assert c.get("/api/me", headers=auth(session["access_token"])).status_code == 401
        again = login(c, tenant, target["email"]).json()
        assert again["mfa_enrolment_required"] is True and "mfa_ticket" not in again
    reset = events(tenant.id, "mfa.factors_reset")
    assert [(e["actor_id"], e["target_id"], e["reason"]) for e in reset] == [(admin.id, target["id"], "lost phone, ticket 42")]
    with db.tenant_tx(tenant.id) as conn:
        mail = conn.execute("select subject, body from outbox where to_address = %s and kind = 'mfa_reset'",
                            (target["email"],)).fetchall()
    assert len(mail) == 1 and "lost phone, ticket 42" in mail[0]["body"] and "enrol" in mail[0]["body"]


def test_purge_timer_runs_through_the_admin_endpoint(client: httpx.Client) -> None:
    stale = passkeys.new_challenge(purpose="passwordless", now=time.time() - 3600)
    assert client.post("/admin/functions/purge_webauthn_challenges").status_code == 202
    with pytest.raises(passkeys.ChallengeUnknown):
        passkeys.take_challenge(stale.id, purpose="passwordless")
