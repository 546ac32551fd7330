"""Passkeys (WebAuthn, py_webauthn): the two ceremonies, their challenges, and stored credentials.

The building blocks the recipes of `shared.identity.mfa` compose; not for direct use by triggers. Nothing here
writes audit events or decides policy (who must have a factor, what a failure costs).

Challenges are server-side, single-use and expiring: `new_challenge` stores 32 random
bytes in the Table Storage table "webauthnchallenges" with what the ceremony is for
(registration, second factor, passwordless sign-in) and whom it is bound to (tenant, user,
sign-in ticket); the client gets an opaque challenge id. `take_challenge` reads the entity
and deletes it under an ETag condition before anything else is checked, so of two requests
presenting the same id at most one gets it. The delete runs as a one-operation entity
group transaction because `TableClient.delete_entity` quietly ignores a missing entity
(HTTP 404): with it, a second taker could not tell that the first already won. Expired
challenges that nobody took are deleted by a timer (`purge_expired_challenges`).

Relying party: `WEBAUTHN_RP_ID` (the domain credentials are scoped to) and the exact
origins of `WEBAUTHN_ORIGINS` (settings check that each is on the RP id). Attestation is
not requested ("none"): Custos trusts the user's enrolment, not an authenticator vendor.
Signature counters must grow; an authentic signature with a counter at or below the stored
one means a cloned authenticator and is refused (`SignCountRegression`). Authenticators
that keep no counter (always 0) are accepted.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shared.core import storage
from shared.core.db import Conn
from shared.core.errors import ServiceUnavailable
from shared.core.settings import Settings, get_settings

# webauthn and the Storage SDK load on first use, not at import (bench/startup.py).
if TYPE_CHECKING:
    from azure.data.tables import TableClient
    from webauthn.helpers.cose import COSEAlgorithmIdentifier
    from webauthn.helpers.structs import PublicKeyCredentialDescriptor

log = logging.getLogger("custos.passkeys")

TABLE = "webauthnchallenges"
PARTITION = "challenge"
Purpose = Literal["register", "second_factor", "passwordless"]


@functools.cache
def supported_algorithms() -> list[COSEAlgorithmIdentifier]:
    """The COSE algorithms accepted for a new passkey."""
    from webauthn.helpers.cose import COSEAlgorithmIdentifier

    return [COSEAlgorithmIdentifier.ECDSA_SHA_256, COSEAlgorithmIdentifier.EDDSA,
            COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256]


@functools.cache
def known_transports() -> frozenset[str]:
    """The WebAuthn transport names kept from a registration."""
    from webauthn.helpers.structs import AuthenticatorTransport

    return frozenset(t.value for t in AuthenticatorTransport)
_CHALLENGE_ID = re.compile(r"^[0-9a-f]{32}$")
_IO: dict[str, Any] = {"retry_total": 1, "connection_timeout": 3, "read_timeout": 5}


class PasskeyRejected(ValueError):
    """A ceremony failed; `reason` is a stable short code for the audit trail."""

    reason = "invalid_response"


class ChallengeUnknown(PasskeyRejected):
    """No such challenge, or it was already used (each one is taken once)."""

    reason = "challenge_unknown"


class ChallengeExpired(PasskeyRejected):
    reason = "challenge_expired"


class ChallengeMismatch(PasskeyRejected):
    """The challenge was issued for another purpose, user, tenant or sign-in ticket."""

    reason = "challenge_mismatch"


class UnknownCredential(PasskeyRejected):
    reason = "unknown_credential"


class SignCountRegression(PasskeyRejected):
    """An authentic signature whose counter did not grow: a cloned authenticator."""

    reason = "sign_count_regression"

    def __init__(self, message: str, *, stored: int, presented: int) -> None:
        super().__init__(message)
        self.stored = stored
        self.presented = presented


@dataclass(frozen=True)
class CredentialStore:
    """Where one kind of account keeps its passkeys: tenant users (a tenant table, under
    row-level security) or platform operators (a platform table)."""

    table: str
    owner: str
    tenant_scoped: bool


USER_CREDENTIALS = CredentialStore("webauthn_credentials", "user_id", tenant_scoped=True)
OPERATOR_CREDENTIALS = CredentialStore("operator_webauthn_credentials", "operator_id", tenant_scoped=False)


@dataclass(frozen=True)
class RelyingParty:
    id: str
    name: str
    origins: tuple[str, ...]


def relying_party(settings: Settings | None = None) -> RelyingParty:
    s = settings or get_settings()
    origins = tuple(o.strip() for o in s.webauthn_origins.split(",") if o.strip())
    return RelyingParty(id=s.webauthn_rp_id.lower(), name=s.webauthn_rp_name, origins=origins)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: Any) -> bytes:
    """Raises PasskeyRejected when `value` is not base64url text."""
    if not isinstance(value, str) or len(value) > 4096:
        raise PasskeyRejected("not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise PasskeyRejected("not base64url") from None


# --- challenges ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    id: str
    purpose: Purpose
    challenge: bytes
    expires_at: float
    tenant_id: str = ""
    user_id: str = ""
    ticket_hash: str = ""

    def entity(self) -> dict[str, Any]:
        return {"PartitionKey": PARTITION, "RowKey": self.id, "purpose": self.purpose,
                "challenge": b64url(self.challenge), "expires_at": float(self.expires_at),
                "tenant_id": self.tenant_id, "user_id": self.user_id, "ticket_hash": self.ticket_hash}


def _table() -> TableClient:
    return storage.table_service().get_table_client(TABLE)


def new_challenge(*, purpose: Purpose, tenant_id: str = "", user_id: str = "", ticket_hash: str = "",
                  now: float | None = None) -> Challenge:
    """Store a fresh challenge (32 random bytes) bound to its purpose and subject.

    Raises:
        ServiceUnavailable: Table Storage did not answer.
    """
    now = time.time() if now is None else now
    challenge = Challenge(id=secrets.token_hex(16), purpose=purpose, challenge=secrets.token_bytes(32),
                          expires_at=now + get_settings().webauthn_challenge_ttl_s, tenant_id=tenant_id,
                          user_id=user_id, ticket_hash=ticket_hash)
    from azure.core.exceptions import AzureError

    try:
        _table().create_entity(challenge.entity(), **_IO)
    except AzureError as exc:
        raise ServiceUnavailable("storage is unavailable", component="storage") from exc
    return challenge


def take_challenge(challenge_id: str, *, purpose: Purpose, tenant_id: str | None = None, user_id: str | None = None,
                   ticket_hash: str | None = None, now: float | None = None) -> Challenge:
    """Consume a challenge: it is deleted (ETag-conditionally) before any check, so it is
    gone whatever the outcome. Arguments given as None are not compared.

    Raises:
        ChallengeUnknown: no such challenge, or another request took it first.
        ChallengeExpired, ChallengeMismatch.
        ServiceUnavailable: Table Storage did not answer.
    """
    if not isinstance(challenge_id, str) or not _CHALLENGE_ID.match(challenge_id):
        raise ChallengeUnknown("unknown or used challenge")
    now = time.time() if now is None else now
    table = _table()
    from azure.core import MatchConditions
    from azure.core.exceptions import AzureError, ResourceNotFoundError
    from azure.data.tables import TableTransactionError

    try:
        entity = table.get_entity(PARTITION, challenge_id, **_IO)
    except ResourceNotFoundError:
        raise ChallengeUnknown("unknown or used challenge") from None
    except AzureError as exc:
        raise ServiceUnavailable("storage is unavailable", component="storage") from exc
    try:
        table.submit_transaction(
            [("delete", entity, {"etag": entity.metadata["etag"], "match_condition": MatchConditions.IfNotModified})],
            **_IO,
        )
    except TableTransactionError as exc:
        if exc.status_code in (404, 412):
            raise ChallengeUnknown("unknown or used challenge") from None
        raise ServiceUnavailable("storage is unavailable", component="storage") from exc
    except AzureError as exc:
        raise ServiceUnavailable("storage is unavailable", component="storage") from exc
    taken = Challenge(id=challenge_id, purpose=entity.get("purpose", ""), challenge=b64url_decode(entity.get("challenge", "")),
                      expires_at=float(entity.get("expires_at") or 0.0), tenant_id=entity.get("tenant_id") or "",
                      user_id=entity.get("user_id") or "", ticket_hash=entity.get("ticket_hash") or "")
    if taken.expires_at <= now:
        raise ChallengeExpired("the challenge has expired")
    expected = {"purpose": purpose, "tenant_id": tenant_id, "user_id": user_id, "ticket_hash": ticket_hash}
    for name, value in expected.items():
        if value is not None and getattr(taken, name) != value:
            raise ChallengeMismatch(f"the challenge was issued for another {name.replace('_', ' ')}")
    return taken


def purge_expired_challenges(*, now: float | None = None, grace_s: float = 60.0) -> int:
    """Delete challenges that expired over `grace_s` ago and were never taken; returns how many.

    Raises:
        ServiceUnavailable: Table Storage did not answer.
    """
    now = time.time() if now is None else now
    table, purged = _table(), 0
    from azure.core.exceptions import AzureError

    try:
        for entity in table.query_entities("PartitionKey eq @p and expires_at lt @t",
                                           parameters={"p": PARTITION, "t": float(now - grace_s)},
                                           select=["PartitionKey", "RowKey"]):
            table.delete_entity(PARTITION, entity["RowKey"], **_IO)
            purged += 1
    except AzureError as exc:
        raise ServiceUnavailable("storage is unavailable", component="storage") from exc
    return purged


# --- registration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    challenge_id: str
    public_key: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"challenge_id": self.challenge_id, "options": self.public_key}


def _descriptors(credential_ids: Iterable[tuple[bytes, Sequence[str]]]) -> list[PublicKeyCredentialDescriptor]:
    from webauthn.helpers.structs import AuthenticatorTransport, PublicKeyCredentialDescriptor

    return [PublicKeyCredentialDescriptor(id=cid, transports=[AuthenticatorTransport(t) for t in names
                                                             if t in known_transports()] or None)
            for cid, names in credential_ids]


def registration_options(*, tenant_id: str, user_id: str, user_name: str, display_name: str,
                         existing: Iterable[tuple[bytes, Sequence[str]]] = ()) -> Options:
    """Options for `navigator.credentials.create()`; the user handle is the user id's 16 bytes.

    Resident keys are preferred (so the passkey can also sign in without a password) and
    user verification preferred; credentials the user already has are excluded.

    Raises:
        ServiceUnavailable: Table Storage did not answer.
    """
    from webauthn import generate_registration_options
    from webauthn.helpers import options_to_json_dict
    from webauthn.helpers.structs import (
        AttestationConveyancePreference,
        AuthenticatorSelectionCriteria,
        ResidentKeyRequirement,
        UserVerificationRequirement,
    )

    rp = relying_party()
    challenge = new_challenge(purpose="register", tenant_id=tenant_id, user_id=user_id)
    options = generate_registration_options(
        rp_id=rp.id, rp_name=rp.name, user_name=user_name, user_id=uuid.UUID(user_id).bytes,
        user_display_name=display_name or user_name, challenge=challenge.challenge,
        timeout=get_settings().webauthn_challenge_ttl_s * 1000,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED, user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=_descriptors(existing), supported_pub_key_algs=supported_algorithms(),
    )
    body = options_to_json_dict(options)
    body["extensions"] = {"credProps": True}
    return Options(challenge.id, body)


@dataclass(frozen=True)
class NewCredential:
    credential_id: bytes
    public_key: bytes
    sign_count: int
    transports: list[str]
    aaguid: str
    discoverable: bool | None
    backed_up: bool
    user_verified: bool


def verify_registration(*, challenge_id: str, credential: dict[str, Any], expected_tenant_id: str,
                        expected_user_id: str) -> NewCredential:
    """Check a `navigator.credentials.create()` answer against its (consumed) challenge.

    Raises:
        PasskeyRejected (or a subclass): unknown/used/expired/foreign challenge, or an
            answer that fails any WebAuthn check (origin, RP id, type, attestation, ...).
        ServiceUnavailable: Table Storage did not answer.
    """
    challenge = take_challenge(challenge_id, purpose="register", tenant_id=expected_tenant_id,
                               user_id=expected_user_id)
    from webauthn import verify_registration_response
    from webauthn.helpers.exceptions import WebAuthnException

    rp = relying_party()
    try:
        verified = verify_registration_response(
            credential=credential, expected_challenge=challenge.challenge, expected_rp_id=rp.id,
            expected_origin=list(rp.origins), require_user_presence=True, require_user_verification=False,
            supported_pub_key_algs=supported_algorithms(),
        )
    except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
        raise PasskeyRejected(f"the passkey could not be verified: {exc}") from None
    raw_response = credential.get("response")
    response: dict[str, Any] = raw_response if isinstance(raw_response, dict) else {}
    transports = [t for t in response.get("transports") or [] if isinstance(t, str) and t in known_transports()]
    extensions = credential.get("clientExtensionResults")
    cred_props = extensions.get("credProps") if isinstance(extensions, dict) else None
    rk = cred_props.get("rk") if isinstance(cred_props, dict) else None
    return NewCredential(
        credential_id=verified.credential_id, public_key=verified.credential_public_key,
        sign_count=verified.sign_count, transports=sorted(set(transports)), aaguid=verified.aaguid,
        discoverable=rk if isinstance(rk, bool) else None, backed_up=verified.credential_backed_up,
        user_verified=verified.user_verified,
    )


def insert_credential(conn: Conn, *, tenant_id: str, user_id: str, new: NewCredential,
                      name: str, store: CredentialStore = USER_CREDENTIALS) -> dict[str, Any]:
    """Store a verified credential in the caller's transaction (`tenant_id` is ignored for a
    store that is not tenant-scoped).

    Raises:
        psycopg.errors.UniqueViolation: this credential id is already registered in the tenant.
    """
    owner_cols, owner_vals = (("tenant_id, ", (tenant_id,)) if store.tenant_scoped else ("", ()))
    row = conn.execute(
        f"""insert into {store.table} ({owner_cols}{store.owner}, credential_id, public_key, sign_count, transports,
                                       name, aaguid, discoverable, backed_up)
            values ({"%s, " * len(owner_vals)}%s, %s, %s, %s, %s, %s, %s, %s, %s) returning {PUBLIC_COLUMNS}""",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        (*owner_vals, user_id, new.credential_id, new.public_key, new.sign_count, new.transports, name,
         new.aaguid, new.discoverable, new.backed_up),
    ).fetchone()
    assert row is not None
    return public(row)


# --- authentication ------------------------------------------------------------------------


def authentication_options(*, purpose: Purpose, tenant_id: str = "", user_id: str = "", ticket_hash: str = "",
                           allowed: Iterable[tuple[bytes, Sequence[str]]] = ()) -> Options:
    """Options for `navigator.credentials.get()`.

    As a second factor the user's credentials are listed and user verification is only
    preferred (the password was the first factor). Passwordless, nothing is listed (the
    authenticator offers its discoverable credentials) and user verification is required:
    the PIN or biometric stands in for the password.

    Raises:
        ServiceUnavailable: Table Storage did not answer.
    """
    from webauthn import generate_authentication_options
    from webauthn.helpers import options_to_json_dict
    from webauthn.helpers.structs import UserVerificationRequirement

    rp = relying_party()
    challenge = new_challenge(purpose=purpose, tenant_id=tenant_id, user_id=user_id, ticket_hash=ticket_hash)
    options = generate_authentication_options(
        rp_id=rp.id, challenge=challenge.challenge, timeout=get_settings().webauthn_challenge_ttl_s * 1000,
        allow_credentials=_descriptors(allowed) if purpose != "passwordless" else [],
        user_verification=(UserVerificationRequirement.REQUIRED if purpose == "passwordless"
                           else UserVerificationRequirement.PREFERRED),
    )
    return Options(challenge.id, options_to_json_dict(options))


def assertion_credential_id(assertion: Any) -> bytes:
    """The credential id an assertion names (its rawId). Raises PasskeyRejected."""
    if not isinstance(assertion, dict):
        raise PasskeyRejected("the assertion is not an object")
    raw = b64url_decode(assertion.get("rawId"))
    if not raw or b64url(raw) != str(assertion.get("id", "")).rstrip("="):
        raise PasskeyRejected("id and rawId differ")
    return raw


def find_credential(conn: Conn, credential_id: bytes, *, lock: bool = False,
                    store: CredentialStore = USER_CREDENTIALS) -> dict[str, Any] | None:
    """The stored credential with this id in the transaction's tenant (or the store), or None."""
    return conn.execute(
        f"select id::text as id, {store.owner}::text as user_id, public_key, sign_count from {store.table}"  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        " where credential_id = %s" + (" for update" if lock else ""),
        (credential_id,),
    ).fetchone()


@dataclass(frozen=True)
class VerifiedAssertion:
    credential_row_id: str
    user_id: str
    sign_count: int
    user_verified: bool


def verify_assertion(conn: Conn, *, challenge: Challenge, assertion: dict[str, Any],
                     expected_user_id: str | None, require_user_verification: bool,
                     store: CredentialStore = USER_CREDENTIALS) -> VerifiedAssertion:
    """Check a `navigator.credentials.get()` answer against a taken challenge and the stored
    credential (locked), and store its new signature counter. Run in the tenant's transaction.

    Raises:
        UnknownCredential: the credential is not registered in this tenant, or it belongs
            to someone other than `expected_user_id` (None: anyone, passwordless).
        SignCountRegression: authentic signature, counter did not grow.
        PasskeyRejected: any other failed check (signature, origin, RP id, user handle, UV).
    """
    credential_id = assertion_credential_id(assertion)
    stored = find_credential(conn, credential_id, lock=True, store=store)
    if stored is None or (expected_user_id is not None and stored["user_id"] != expected_user_id):
        raise UnknownCredential("this passkey is not registered here")
    raw_response = assertion.get("response")
    handle = raw_response.get("userHandle") if isinstance(raw_response, dict) else None
    if handle and b64url_decode(handle) != uuid.UUID(stored["user_id"]).bytes:
        raise PasskeyRejected("the user handle does not match the passkey's user")
    from webauthn import verify_authentication_response
    from webauthn.helpers.exceptions import WebAuthnException

    rp = relying_party()
    try:
        # The counter is compared below, after the signature: only an authentic assertion
        # with a stale counter is evidence of a clone (0 here disables the library's check).
        verified = verify_authentication_response(
            credential=assertion, expected_challenge=challenge.challenge, expected_rp_id=rp.id,
            expected_origin=list(rp.origins), credential_public_key=bytes(stored["public_key"]),
            credential_current_sign_count=0, require_user_verification=require_user_verification,
        )
    except (WebAuthnException, ValueError, TypeError, KeyError) as exc:
        raise PasskeyRejected(f"the passkey assertion could not be verified: {exc}") from None
    old, new = int(stored["sign_count"]), int(verified.new_sign_count)
    if (old > 0 or new > 0) and new <= old:
        raise SignCountRegression(f"signature counter {new} is not above the stored {old}", stored=old, presented=new)
    conn.execute(f"update {store.table} set sign_count = %s, last_used_at = now(), backed_up = %s where id = %s",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
                 (new, verified.credential_backed_up, stored["id"]))
    return VerifiedAssertion(credential_row_id=stored["id"], user_id=stored["user_id"], sign_count=new,
                             user_verified=verified.user_verified)


# --- listing -------------------------------------------------------------------------------

PUBLIC_COLUMNS = ("id::text as id, name, created_at, last_used_at, transports, discoverable, backed_up, aaguid,"
                  " sign_count")


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A stored credential as shown to its owner (never the key or the credential id)."""
    return {k: row[k] for k in ("id", "name", "created_at", "last_used_at", "transports", "discoverable", "backed_up",
                                "aaguid")}


def user_credentials(conn: Conn, user_id: str,
                     store: CredentialStore = USER_CREDENTIALS) -> list[tuple[bytes, list[str]]]:
    """(credential id, transports) of each of a user's passkeys, for allow/exclude lists."""
    rows = conn.execute(f"select credential_id, transports from {store.table} where {store.owner} = %s"  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
                        " order by created_at", (user_id,)).fetchall()
    return [(bytes(r["credential_id"]), list(r["transports"])) for r in rows]


def list_credentials(conn: Conn, user_id: str, store: CredentialStore = USER_CREDENTIALS) -> list[dict[str, Any]]:
    rows = conn.execute(f"select {PUBLIC_COLUMNS} from {store.table} where {store.owner} = %s order by created_at",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
                        (user_id,)).fetchall()
    return [public(r) for r in rows]
