"""SAML 2.0 service provider: per-tenant SP metadata, SP-initiated sign-in, the Assertion
Consumer Service, and the IdP metadata an ADMIN fetches once.

Verification is python3-saml's (OneLogin), in strict mode, built per tenant and provider:
the assertion must be signed (and the whole response too where the provider says so), by one
of the provider's certificates, with SHA-256 or better (deprecated algorithms refused), for
this tenant's SP (audience), posted to this tenant's ACS (destination, recipient), within its
NotBefore/NotOnOrAfter give or take SSO_CLOCK_SKEW_S, in answer to the request this browser
started (InResponseTo, RelayState bound to tenant, provider and a cookie), with a NameID.
An assertion id is then recorded in Table Storage ("samlreplay") with an insert that fails
if it exists, so each assertion signs in once. What passes becomes a `VerifiedIdentity` for
`shared.identity.sso.accounts`. docs/sso.md has the reasons; single logout is out of scope.

Every refusal is a problem+json `sso-assertion-rejected` (`reason` names the check, never the
assertion's content) and a security audit event (`auth.sso_login_failed`), and leaves no
session and no link.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from shared.audit import chain as audit
from shared.core import db, storage
from shared.core.errors import MalformedRequest, ServiceUnavailable, UnsupportedMediaType
from shared.core.keys import write_private_file_once
from shared.core.settings import Settings, SettingsError, get_settings
from shared.identity.sso import accounts, outbound
from shared.identity.sso.accounts import BINDING_COOKIE, VerifiedIdentity, binding_hash, record_refusal
from shared.identity.sso.errors import (
    AssertionRejected,
    AssertionReplayed,
    InvalidProviderConfig,
    MetadataUnavailable,
    ProviderUnavailable,
)
from shared.identity.sso.providers import (
    get_provider,
    provider_row,
    tenant_by_slug,
    update_provider,
)

if TYPE_CHECKING:
    from onelogin.saml2.settings import OneLogin_Saml2_Settings

REPLAY_TABLE = "samlreplay"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
MAX_RESPONSE_CHARS = 200_000
"""Largest base64 SAMLResponse accepted (a signed response with a few certificates is ~10 KB)."""

_key_lock = threading.Lock()
_drift_lock = threading.Lock()


# --- the SP's own key ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpKey:
    private_key_pem: str
    certificate_pem: str


def _dev_sp_key(settings: Settings) -> SpKey:
    """Read, or once generate, the local dev SP key and its self-signed certificate."""
    if not settings.dev_keys_allowed:
        raise SettingsError("SAML_SP_PRIVATE_KEY: not set, and dev keys are off in production")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    # One file holds the key and its certificate, so a pair is created (and linked) at once.
    path = Path(settings.custos_local_dir) / "keys" / "saml-sp.pem"
    with _key_lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Custos SAML SP (local)")])
            now = datetime.now(UTC)
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                    .not_valid_after(now + timedelta(days=3650)).sign(key, hashes.SHA256()))
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)
            write_private_file_once(path, pem)
        text = path.read_text()
    cut = text.index("-----BEGIN CERTIFICATE-----")
    return SpKey(text[:cut], text[cut:])


@functools.cache
def sp_key() -> SpKey:
    """This deployment's SP signing key and certificate (settings, or the local dev pair).

    Raises:
        SettingsError: neither set nor dev keys allowed.
    """
    s = get_settings()
    if s.saml_sp_private_key:
        return SpKey(s.saml_sp_private_key, s.saml_sp_certificate)
    return _dev_sp_key(s)


# --- settings per tenant and provider ------------------------------------------------------------


def sp_urls(slug: str) -> dict[str, str]:
    """The SP entity id (the metadata URL, as is customary) and the ACS URL of a tenant."""
    base = get_settings().sso_public_url.rstrip("/") + f"/api/sso/saml/{quote(slug, safe='')}"
    return {"entity_id": f"{base}/metadata", "acs_url": f"{base}/acs", "login_url": f"{base}/login"}


def _apply_clock_skew() -> None:
    # python3-saml reads one module-level constant; every tenant shares the deployment's setting.
    from onelogin.saml2.constants import OneLogin_Saml2_Constants

    skew = get_settings().sso_clock_skew_s
    if OneLogin_Saml2_Constants.ALLOWED_CLOCK_DRIFT != skew:
        with _drift_lock:
            OneLogin_Saml2_Constants.ALLOWED_CLOCK_DRIFT = skew


def saml_settings(slug: str, provider: dict[str, Any] | None) -> OneLogin_Saml2_Settings:
    """python3-saml settings for a tenant's SP and (when given) one of its IdPs."""
    from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
    from onelogin.saml2.settings import OneLogin_Saml2_Settings

    _apply_clock_skew()
    urls, key = sp_urls(slug), sp_key()
    config = (provider or {}).get("config") or {}
    data: dict[str, Any] = {
        "strict": True,
        "debug": False,
        "sp": {
            "entityId": urls["entity_id"],
            "assertionConsumerService": {"url": urls["acs_url"], "binding": C.BINDING_HTTP_POST},
            "NameIDFormat": PERSISTENT,
            "x509cert": key.certificate_pem,
            "privateKey": key.private_key_pem,
        },
        "security": {
            "authnRequestsSigned": True,
            "wantAssertionsSigned": True,
            "wantMessagesSigned": bool(config.get("want_response_signed")),
            "wantNameId": True,
            "wantNameIdEncrypted": False,
            "wantAssertionsEncrypted": False,
            "wantAttributeStatement": False,
            "requestedAuthnContext": False,
            "signMetadata": False,
            "signatureAlgorithm": C.RSA_SHA256,
            "digestAlgorithm": C.SHA256,
            "rejectDeprecatedAlgorithm": True,
            "rejectUnsolicitedResponsesWithInResponseTo": True,
            "allowRepeatAttributeName": True,
        },
    }
    if provider is not None:
        data["idp"] = {
            "entityId": config.get("idp_entity_id", ""),
            "singleSignOnService": {"url": config.get("idp_sso_url", ""), "binding": C.BINDING_HTTP_REDIRECT},
            "x509certMulti": {"signing": list(config.get("idp_certificates") or [])},
        }
    return OneLogin_Saml2_Settings(data, sp_validation_only=provider is None)


def _request_data(slug: str, post: dict[str, str] | None = None, get: dict[str, str] | None = None) -> dict[str, Any]:
    """What python3-saml calls the request: built from SSO_PUBLIC_URL, never from the Host header,
    so a forged Host cannot make another URL look like this tenant's ACS."""
    parts = urlsplit(get_settings().sso_public_url)
    https = parts.scheme == "https"
    return {"https": "on" if https else "off", "http_host": parts.hostname,
            "server_port": parts.port or (443 if https else 80),
            "script_name": f"/api/sso/saml/{quote(slug, safe='')}/acs", "get_data": get or {}, "post_data": post or {}}


# --- metadata --------------------------------------------------------------------------------------


def sp_metadata(slug: str) -> str:
    """The tenant's SP metadata XML (entity id, ACS, signing certificate, NameID format).

    Raises:
        NotFound: no such tenant.
    """
    tenant_by_slug(slug)
    settings = saml_settings(slug, None)
    metadata = settings.get_sp_metadata()
    return metadata.decode("utf-8") if isinstance(metadata, bytes) else str(metadata)


def fetch_metadata_document(url: str) -> bytes:
    """GET the IdP metadata once through the SSRF guard (shared.identity.sso.outbound): https
    only, public addresses only, connected to the address that was checked, no redirects, at
    most SSO_METADATA_MAX_BYTES within SSO_METADATA_TIMEOUT_S.

    Raises:
        MetadataUrlRefused, MetadataUnavailable.
    """
    return outbound.get(url, what="the metadata URL", accept="application/samlmetadata+xml, application/xml",
                        user_agent="custos-saml")


def parse_idp_metadata(xml: bytes, entity_id: str | None = None) -> dict[str, Any]:
    """The IdP entity id, SSO URL (HTTP-Redirect) and signing certificates from metadata.

    Raises:
        MetadataUnavailable: not SAML metadata, or no IdP with an SSO URL and a signing certificate.
    """
    from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser

    try:
        parsed = OneLogin_Saml2_IdPMetadataParser.parse(xml, entity_id=entity_id)
    except Exception:  # noqa: BLE001 - any parser failure means "not metadata we can use"
        raise MetadataUnavailable("the document is not SAML IdP metadata") from None
    idp = parsed.get("idp") or {}
    certs = list((idp.get("x509certMulti") or {}).get("signing") or ([idp["x509cert"]] if idp.get("x509cert") else []))
    sso = (idp.get("singleSignOnService") or {}).get("url")
    if not idp.get("entityId") or not sso or not certs:
        raise MetadataUnavailable("the metadata names no IdP with an SSO URL and a signing certificate")
    return {"idp_entity_id": idp["entityId"], "idp_sso_url": sso, "idp_certificates": certs}


def refresh_metadata(*, tenant_id: str, provider_id: Any, actor: audit.Actor, actor_id: str | None,
                     meta: audit.RequestMeta, reason: str) -> dict[str, Any]:
    """An ADMIN's action: fetch the provider's metadata URL once and store what it says
    (never fetched on sign-in). Audited as a provider change.

    Raises:
        NotFound, InvalidProviderConfig (no metadata URL; not SAML), MetadataUrlRefused, MetadataUnavailable.
    """
    with db.tenant_tx(tenant_id) as conn:
        provider = get_provider(conn, provider_id)
    if provider["kind"] != "saml":
        raise InvalidProviderConfig("only a SAML provider has metadata to fetch")
    url = provider["config"].get("metadata_url") or ""
    if not url:
        raise InvalidProviderConfig("set config.metadata_url first",
                                    errors=[{"location": ["body", "config", "metadata_url"], "message": "empty"}])
    found = parse_idp_metadata(fetch_metadata_document(url), provider["config"].get("idp_entity_id") or None)
    with db.tenant_tx(tenant_id) as conn:
        return update_provider(conn, tenant_id=tenant_id, provider_id=provider_id,
                               changes={"config": {**provider["config"], **found}}, client_secret=None,
                               clear_client_secret=False, actor=actor, actor_id=actor_id, meta=meta, reason=reason)


# --- SP-initiated sign-in ------------------------------------------------------------------------


@dataclass(frozen=True)
class Redirect:
    location: str
    cookie: str | None = None


def _cookie(value: str, max_age: int) -> str:
    # SameSite=None: the IdP's form POST to the ACS is a cross-site request that must carry it.
    return f"{BINDING_COOKIE}={value}; Path=/api/; Max-Age={max_age}; HttpOnly; Secure; SameSite=None"


def _saml_provider(tenant_id: str, provider_id: str) -> dict[str, Any]:
    with db.tenant_tx(tenant_id) as conn:
        row = provider_row(conn, provider_id)
    if row is None or not row["enabled"] or row["kind"] != "saml":
        raise ProviderUnavailable()
    return row


def start_login(*, slug: str, provider_id: str, remember_me: bool, meta: audit.RequestMeta) -> Redirect:
    """A signed AuthnRequest (HTTP-Redirect) to the provider, its id and this browser remembered
    under a random RelayState, and the cookie that binds the answer to this browser.

    Raises:
        NotFound (tenant), ProviderUnavailable.
    """
    from onelogin.saml2.auth import OneLogin_Saml2_Auth

    tenant_id = tenant_by_slug(slug)
    provider = _saml_provider(tenant_id, provider_id)
    relay, binding = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    auth = OneLogin_Saml2_Auth(_request_data(slug), old_settings=saml_settings(slug, provider))
    location = auth.login(return_to=relay, set_nameid_policy=True)
    ttl = get_settings().sso_request_ttl_s
    with db.tenant_tx(tenant_id) as conn:
        conn.execute("delete from sso_requests where expires_at <= now() or used_at is not null")
        conn.execute(
            """insert into sso_requests (tenant_id, provider_id, relay_hash, request_id, binding_hash, remember_me,
                   expires_at) values (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))""",
            (tenant_id, provider_id, hashlib.sha256(relay.encode()).hexdigest(), auth.get_last_request_id(),
             binding_hash(binding), remember_me, ttl),
        )
    return Redirect(location=location, cookie=_cookie(binding, ttl))


# --- the Assertion Consumer Service --------------------------------------------------------------


def read_form(content_type: str | None, body: bytes) -> dict[str, str]:
    """The urlencoded form an IdP's page posted (first value of each field).

    Raises:
        UnsupportedMediaType: not a form. MalformedRequest: not decodable, or too many fields.
    """
    from urllib.parse import parse_qs

    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("the IdP must POST an application/x-www-form-urlencoded form")
    try:
        fields = parse_qs(body.decode("ascii"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise MalformedRequest("the form is not decodable") from None
    return {k: v[0] for k, v in fields.items() if v}


def _reason_names() -> dict[int, str]:
    from onelogin.saml2.errors import OneLogin_Saml2_ValidationError

    return {v: k.lower() for k, v in vars(OneLogin_Saml2_ValidationError).items() if k.isupper() and isinstance(v, int)}


def _unverified_issuer(saml_response: str) -> str | None:
    """The Issuer of a response, read WITHOUT verification: only to choose whose keys verify it."""
    from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

    try:
        doc = OneLogin_Saml2_XML.to_etree(base64.b64decode(saml_response, validate=True))
    except Exception:  # noqa: BLE001 - unreadable: no provider can be chosen
        return None
    issuers = OneLogin_Saml2_XML.query(doc, "/samlp:Response/saml:Issuer")
    if not issuers:
        issuers = OneLogin_Saml2_XML.query(doc, "/samlp:Response/saml:Assertion/saml:Issuer")
    return issuers[0].text.strip() if issuers and issuers[0].text else None


def _take_request(tenant_id: str, relay: str) -> dict[str, Any] | None:
    """The waiting request a RelayState names, used up (single use) whatever happens next."""
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            """update sso_requests set used_at = now()
                where relay_hash = %s and used_at is null and expires_at > now()
            returning provider_id::text as provider_id, request_id, binding_hash, remember_me""",
            (hashlib.sha256(relay.encode()).hexdigest(),),
        ).fetchone()
    return row


def _record_assertion_id(tenant_id: str, issuer: str, assertion_id: str, not_on_or_after: float | None,
                         now: float) -> bool:
    """Insert the assertion id into the replay cache; False if it was there already.

    Raises:
        ServiceUnavailable: Table Storage did not answer.
    """
    from azure.core.exceptions import AzureError, ResourceExistsError

    row_key = hashlib.sha256(f"{issuer}\x00{assertion_id}".encode()).hexdigest()
    expires = (not_on_or_after or now + 3600) + get_settings().sso_clock_skew_s
    try:
        storage.table_service().get_table_client(REPLAY_TABLE).create_entity(
            {"PartitionKey": tenant_id, "RowKey": row_key, "expires_at": float(expires)})
    except ResourceExistsError:
        return False
    except AzureError as exc:
        raise ServiceUnavailable("storage is unavailable", component="storage") from exc
    return True


def _attribute(attributes: dict[str, list[str]], name: str) -> list[str]:
    return [str(v) for v in attributes.get(name, []) if v is not None] if name else []


def _identity(response: Any, provider: dict[str, Any]) -> VerifiedIdentity:
    config = provider["config"]
    names = config.get("attributes") or {}
    attributes: dict[str, list[str]] = response.get_attributes() or {}
    emails = _attribute(attributes, names.get("email", ""))
    display = _attribute(attributes, names.get("display_name", ""))
    groups = tuple(_attribute(attributes, names.get("groups", "")))
    contexts = list(response.get_authn_contexts() or []) + _attribute(attributes, names.get("amr", ""))
    wanted = set(config.get("mfa_authn_contexts") or [])
    return VerifiedIdentity(
        subject=response.get_nameid(),
        email=emails[0] if emails else None,
        # The tenant's own directory asserted it, signed; linking by email still needs the
        # provider's link_by_verified_email (docs/sso.md).
        email_verified=bool(emails),
        display_name=display[0] if display else None,
        groups=groups,
        idp_mfa=bool(wanted.intersection(contexts)),
        protocol_details={"assertion_id": response.get_assertion_id(), "issuer": config.get("idp_entity_id"),
                          "authn_contexts": contexts[:10]},
    )


def acs(*, slug: str, form: dict[str, str], binding: str | None, meta: audit.RequestMeta,
        now: float | None = None) -> Redirect:
    """Verify an IdP's POSTed response and hand the sign-in to the browser: a redirect to the
    console with a one-time code in the fragment.

    Raises:
        NotFound (tenant), AssertionRejected (audited), AssertionReplayed (audited),
        AccountRefused (audited), ServiceUnavailable.
    """
    import time

    from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
    from onelogin.saml2.response import OneLogin_Saml2_Response

    tenant_id = tenant_by_slug(slug)
    now = time.time() if now is None else now
    saml_response, relay = form.get("SAMLResponse") or "", form.get("RelayState") or ""
    provider_id: str | None = None

    def reject(reason: str, *, replayed: bool = False, detail: dict[str, Any] | None = None) -> AssertionRejected:
        record_refusal(tenant_id=tenant_id, provider_id=provider_id, reason=reason, meta=meta,
                       details={"protocol": "saml", **(detail or {})})
        return AssertionReplayed(reason) if replayed else AssertionRejected(reason)

    if not saml_response or len(saml_response) > MAX_RESPONSE_CHARS:
        raise reject("missing_or_oversized_response")
    try:
        base64.b64decode(saml_response, validate=True)
    except (binascii.Error, ValueError):
        raise reject("not_base64") from None
    issuer = _unverified_issuer(saml_response)
    request_id: str | None = None
    remember_me = False
    if relay:
        waiting = _take_request(tenant_id, relay)
        if waiting is None:
            raise reject("unknown_relay_state")
        provider_id = waiting["provider_id"]
        if not binding or binding_hash(binding) != waiting["binding_hash"]:
            raise reject("other_browser")
        request_id, remember_me = waiting["request_id"], waiting["remember_me"]
        with db.tenant_tx(tenant_id) as conn:
            provider = provider_row(conn, waiting["provider_id"])
    else:
        with db.tenant_tx(tenant_id) as conn:
            provider = conn.execute(
                "select *, id::text as id from sso_providers where kind = 'saml' and deleted_at is null"
                " and config->>'idp_entity_id' = %s", (issuer or "",)).fetchone()
        provider_id = provider["id"] if provider else None
        if provider is None or not provider["config"].get("idp_initiated"):
            raise reject("unsolicited_response")
        binding = secrets.token_urlsafe(32)
    if provider is None or not provider["enabled"] or provider["kind"] != "saml":
        raise reject("provider_unavailable")
    settings = saml_settings(slug, provider)
    try:
        response = OneLogin_Saml2_Response(settings, saml_response)
        response.is_valid(_request_data(slug, post=form), request_id=request_id, raise_exceptions=True)
    except OneLogin_Saml2_ValidationError as exc:
        raise reject(_reason_names().get(exc.code, "invalid_response"), detail={"check": str(exc)[:300]}) from None
    except (OneLogin_Saml2_Error, Exception) as exc:  # noqa: BLE001 - malformed XML in any form is a refusal
        raise reject("malformed_response", detail={"error": type(exc).__name__}) from None
    nameid_format = response.get_nameid_format()
    if nameid_format != PERSISTENT:
        raise reject("nameid_not_persistent", detail={"format": (nameid_format or "")[:200]})
    assertion_id = response.get_assertion_id()
    if not assertion_id:
        raise reject("missing_assertion_id")
    if not _record_assertion_id(tenant_id, provider["config"].get("idp_entity_id", ""), assertion_id,
                                response.get_assertion_not_on_or_after(), now):
        raise reject("assertion_replayed", replayed=True, detail={"assertion_id": assertion_id[:256]})
    identity = _identity(response, provider)
    assert binding is not None
    code = accounts.begin_handoff(tenant_id=tenant_id, provider_id=provider["id"], identity=identity, binding=binding,
                                  remember_me=remember_me, meta=meta)
    console = get_settings().sso_console_url
    return Redirect(location=f"{console}#/sso-complete?code={quote(code, safe='')}",
                    cookie=_cookie(binding, get_settings().sso_handoff_ttl_s) if not relay else None)


def purge_expired(*, now: float | None = None) -> dict[str, int]:
    """Delete replay-cache rows past their assertion's NotOnOrAfter (plus the clock skew), and
    every tenant's used or expired SP-initiated requests and sign-in codes. Returns the counts.

    An assertion id leaves the cache only when the assertion itself is no longer accepted (its
    time check refuses it), so purging never reopens a replay.

    Raises:
        ServiceUnavailable: Table Storage did not answer.
    """
    import time

    from azure.core.exceptions import AzureError

    now = time.time() if now is None else now
    table, replay = storage.table_service().get_table_client(REPLAY_TABLE), 0
    try:
        for entity in table.query_entities("expires_at lt @t", parameters={"t": float(now)},
                                           select=["PartitionKey", "RowKey"]):
            table.delete_entity(entity["PartitionKey"], entity["RowKey"])
            replay += 1
    except AzureError as exc:
        raise ServiceUnavailable("storage is unavailable", component="storage") from exc
    with db.platform_tx() as conn:
        tenants = [r["id"] for r in conn.execute("select id::text as id from tenants where status <> 'PURGED'")]
    requests = handoffs = 0
    for tenant_id in tenants:
        with db.tenant_tx(tenant_id) as conn:
            requests += conn.execute("delete from sso_requests where used_at is not null or expires_at <= now()").rowcount
            handoffs += conn.execute("delete from sso_handoffs where used_at is not null or expires_at <= now()").rowcount
    return {"replay": replay, "requests": requests, "handoffs": handoffs}
