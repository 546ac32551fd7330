"""OpenID Connect relying party: authorization code flow with PKCE, for a tenant's OIDC providers.

`start` sends the browser to the provider with PKCE (S256), a `state` and a `nonce`; all three
(and the tenant and provider) travel in a short-lived cookie sealed with AES-256-GCM (so it is
both signed and secret: it holds the PKCE verifier), scoped to the callback path, and the
request is also stored server-side (`sso_requests`, hashes only) so each flow completes once.
`callback` checks the state against the cookie, burns the request, trades the code for tokens
at the provider's token endpoint, verifies the ID token (`verify_id_token`: signature by a key
from the provider's JWKS, algorithm allow-list, iss, aud, azp, exp, iat, nonce), applies the
provider's email / Entra `tid` / Google `hd` restrictions, and hands the result to
`shared.identity.sso.accounts.begin_handoff`, the one path SAML and OIDC share (link, JIT,
MFA, session, audit). The browser gets a one-time code in the console URL's fragment, never
a token. Every refusal appends `auth.sso_login_failed` with the failed check as `reason`.

JOSE is PyJWT (already the app's JWT library; docs/sso.md says why not authlib); the HTTP to
the provider goes through `shared.identity.sso.outbound` (the SSRF guard SAML uses too): https
hosts with public addresses only, connected to the address that was checked, bounded timeouts and
size caps (loopback http only when SSO_METADATA_ALLOW_LOOPBACK allows it, for tests).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

if TYPE_CHECKING:
    import jwt  # PyJWT (and cryptography under it) loads with the first sign-in, not at import

from shared.audit import chain as audit
from shared.core import db
from shared.core.settings import get_settings
from shared.identity.mfa import Sealed, SecretUnreadable, secret_box
from shared.identity.sso import accounts, outbound
from shared.identity.sso.accounts import VerifiedIdentity, record_refusal
from shared.identity.sso.errors import (
    AssertionRejected,
    FlowInvalid,
    MetadataUnavailable,
    MetadataUrlRefused,
    ProviderUnavailable,
)
from shared.identity.sso.providers import open_client_secret, provider_row

FLOW_COOKIE = "custos_oidc"
FLOW_AAD = b"custos-oidc-flow"
ALLOWED_ALGORITHMS = frozenset({"RS256", "PS256", "ES256"})
"""Asymmetric only: never `none`, never HS* (a public key must not become an HMAC secret)."""
CACHE_TTL_S = 3600
"""How long a discovery document and a JWKS are trusted before they are fetched again."""
JWKS_REFETCH_MIN_S = 60
"""An unknown `kid` refetches the JWKS at most this often (rotation without a fetch per forged token)."""
MAX_ID_TOKEN_BYTES = 16_384
DEFAULT_MFA_AMR = ("mfa",)


# --- fetching from the provider --------------------------------------------------------------


PROVIDER_URL = "the provider URL"
USER_AGENT = "custos-oidc"


def _json_doc(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise MetadataUnavailable(f"the provider's {what} is not JSON") from None
    if not isinstance(doc, dict):
        raise MetadataUnavailable(f"the provider's {what} is not a JSON object")
    return doc


def fetch_json(url: str, what: str) -> dict[str, Any]:
    """GET a JSON document from a provider through the SSRF guard (shared.identity.sso.outbound:
    public https address checked once and connected to, timeout, size cap, no redirects).

    Raises:
        MetadataUrlRefused, MetadataUnavailable.
    """
    return _json_doc(outbound.get(url, what=PROVIDER_URL, accept="application/json", user_agent=USER_AGENT), what)


@dataclass
class _Cached:
    doc: dict[str, Any]
    fetched_at: float


_discovery: dict[str, _Cached] = {}
_jwks: dict[str, JwksCache] = {}
_cache_lock = threading.Lock()


DISCOVERY_FIELDS = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri",
                    "token_endpoint_auth_methods_supported", "id_token_signing_alg_values_supported",
                    "authorization_response_iss_parameter_supported")


def discover(issuer: str, *, now: float | None = None, stored: dict[str, Any] | None = None, force: bool = False,
             fetch: Callable[[str, str], dict[str, Any]] = fetch_json) -> dict[str, Any]:
    """The provider's discovery document, its `issuer` equal to the configured one exactly and
    its endpoints allowed URLs: the one an ADMIN stored (`stored`, checked again), else one
    fetched and cached CACHE_TTL_S per worker (`force` fetches anyway).

    Raises:
        MetadataUrlRefused, MetadataUnavailable.
    """
    now = time.time() if now is None else now
    if stored and not force:
        return _checked(stored, issuer)
    with _cache_lock:
        hit = _discovery.get(issuer)
    if hit is not None and not force and now - hit.fetched_at < CACHE_TTL_S:
        return hit.doc
    doc = _checked(fetch(issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document"), issuer)
    with _cache_lock:
        _discovery[issuer] = _Cached(doc, now)
    return doc


def _checked(doc: dict[str, Any], issuer: str) -> dict[str, Any]:
    if doc.get("issuer") != issuer:
        raise MetadataUnavailable("the discovery document names another issuer")
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = doc.get(name)
        if not isinstance(value, str):
            raise MetadataUnavailable(f"the discovery document has no {name}")
        outbound.resolve(value, PROVIDER_URL)
    return doc


def checked_discovery(issuer: str, *, now: float | None = None) -> dict[str, Any]:
    """What an ADMIN stores in the provider's `config.discovery`: the discovery document fetched
    now and checked (issuer, endpoints, an allowed ID token algorithm, a JWKS with a usable key).

    Raises:
        MetadataUrlRefused, MetadataUnavailable.
    """
    now = time.time() if now is None else now
    doc = discover(issuer, now=now, force=True)
    algs = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
    if not isinstance(algs, list) or not ALLOWED_ALGORITHMS & set(map(str, algs)):
        raise MetadataUnavailable("the provider signs ID tokens with no algorithm Custos accepts (RS256, PS256, ES256)")
    jwks = JwksCache(doc["jwks_uri"])
    jwks.key("", now=now)
    if not jwks.keys:
        raise MetadataUnavailable("the provider's JWKS has no usable signing key")
    return {**{k: doc[k] for k in DISCOVERY_FIELDS if k in doc},
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}


@dataclass
class JwksCache:
    """One provider's signing keys by `kid`: fetched on first use, again after CACHE_TTL_S, and
    on an unknown `kid` (key rotation) at once, but at most once per JWKS_REFETCH_MIN_S, so a
    stream of tokens with made-up kids cannot turn us into a JWKS fetching loop."""

    uri: str
    fetch: Callable[[str, str], dict[str, Any]] = fetch_json
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float | None = None
    refetched_for_kid_at: float | None = None
    fetches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _load(self, now: float) -> None:
        import jwt

        doc = self.fetch(self.uri, "JWKS")
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in doc.get("keys") or []:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or jwk.get("use", "sig") != "sig":
                continue
            try:
                keys[jwk["kid"]] = jwt.PyJWK.from_dict(jwk)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue  # a key type or curve we do not verify with: ignored, not fatal
        self.keys, self.fetched_at = keys, now
        self.fetches += 1

    def key(self, kid: str, *, now: float) -> jwt.PyJWK | None:
        """The key named `kid`, or None when the provider does not publish it.

        Raises:
            MetadataUrlRefused, MetadataUnavailable.
        """
        with self._lock:
            if self.fetched_at is None or now - self.fetched_at >= CACHE_TTL_S:
                self._load(now)
            elif kid not in self.keys and (self.refetched_for_kid_at is None
                                           or now - self.refetched_for_kid_at >= JWKS_REFETCH_MIN_S):
                self.refetched_for_kid_at = now
                self._load(now)
            return self.keys.get(kid)


def jwks_for(uri: str) -> JwksCache:
    with _cache_lock:
        cache = _jwks.get(uri)
        if cache is None:
            cache = _jwks[uri] = JwksCache(uri)
        return cache


# --- the ID token ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdTokenClaims:
    """The verified claims of an ID token."""

    subject: str
    claims: dict[str, Any]


def _b64json(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def verify_id_token(token: str, *, key_for: Callable[[str], jwt.PyJWK | None], expected_issuer: str,
                    expected_client_id: str, expected_nonce: str, now: float, skew_s: int) -> IdTokenClaims:
    """Verify an ID token as OpenID Connect Core 3.1.3.7 asks.

    Raises:
        AssertionRejected: with `reason` one of malformed, alg_not_allowed, unknown_kid,
            bad_signature, wrong_issuer, wrong_audience, wrong_azp, expired, issued_in_future,
            wrong_nonce, missing_claim.
    """
    if not isinstance(token, str) or len(token) > MAX_ID_TOKEN_BYTES or token.count(".") != 2:
        raise AssertionRejected("malformed", "the ID token is not a signed JWT")
    try:
        header = _b64json(token.split(".", 1)[0])
    except (ValueError, UnicodeError, RecursionError):
        raise AssertionRejected("malformed", "the ID token header is not valid") from None
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise AssertionRejected("alg_not_allowed", f"ID token algorithm {str(alg)[:20]!r} is not accepted")
    import jwt

    kid = header.get("kid")
    key = key_for(kid) if isinstance(kid, str) else None
    if key is None:
        raise AssertionRejected("unknown_kid", "the ID token is signed by a key the provider does not publish")
    try:
        claims = jwt.decode(token, key=key.key, algorithms=[alg], audience=expected_client_id,
                            issuer=expected_issuer,
                            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                     "require": ["iss", "aud", "exp", "iat", "sub"]})
    except jwt.InvalidSignatureError:
        raise AssertionRejected("bad_signature", "the ID token signature does not verify") from None
    except jwt.InvalidIssuerError:
        raise AssertionRejected("wrong_issuer", "the ID token was issued by another issuer") from None
    except jwt.InvalidAudienceError:
        raise AssertionRejected("wrong_audience", "the ID token was issued to another client") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AssertionRejected("missing_claim", f"the ID token has no {exc.claim} claim") from None
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        raise AssertionRejected("malformed", "the ID token could not be verified") from None
    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else list(aud)
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != expected_client_id:
        raise AssertionRejected("wrong_azp", "the ID token was authorized for another client")
    exp, iat = claims["exp"], claims["iat"]
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        raise AssertionRejected("malformed", "exp and iat must be numbers")
    if now >= exp + skew_s:
        raise AssertionRejected("expired", "the ID token has expired")
    if iat > now + skew_s:
        raise AssertionRejected("issued_in_future", "the ID token was issued in the future")
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), expected_nonce.encode()):
        raise AssertionRejected("wrong_nonce", "the ID token does not answer this sign-in")
    subject = claims["sub"]
    if not isinstance(subject, str) or not 1 <= len(subject) <= 255:
        raise AssertionRejected("missing_claim", "the ID token's sub is not a string of 1 to 255 characters")
    return IdTokenClaims(subject, claims)


def identity_from_claims(claims: dict[str, Any], config: dict[str, Any], *, trust_idp_mfa: bool) -> VerifiedIdentity:
    """The identity `accounts` gets: email only when verified and its domain allowed; Entra
    `tid` and Google `hd` restrictions applied; IdP MFA from `amr` only when trusted.

    Raises:
        AssertionRejected: reason email_not_verified, email_domain_not_allowed, tenant_not_allowed,
            hosted_domain_not_allowed.
    """
    attrs = config.get("attributes") or {}
    email_claim = attrs.get("email") or "email"
    email = claims.get(email_claim)
    verified = claims.get("email_verified") is True
    domains = {d.lower() for d in config.get("allowed_email_domains") or []}
    if not isinstance(email, str) or not email:
        email = None
    if domains:
        if email is None or not verified:
            raise AssertionRejected("email_not_verified", "the provider did not vouch for the email address")
        if email.rsplit("@", 1)[-1].lower() not in domains:
            raise AssertionRejected("email_domain_not_allowed", "the email domain is not allowed for this provider")
    elif not verified:
        email = None  # an unverified email never links, creates or names an account
    tids = set(config.get("entra_tenant_ids") or [])
    if tids and claims.get("tid") not in tids:
        raise AssertionRejected("tenant_not_allowed", "the Entra tenant is not allowed for this provider")
    hds = {h.lower() for h in config.get("google_hosted_domains") or []}
    if hds and (not isinstance(claims.get("hd"), str) or claims["hd"].lower() not in hds):
        raise AssertionRejected("hosted_domain_not_allowed", "the Google hosted domain is not allowed")
    name = claims.get(attrs.get("display_name") or "name")
    groups_value = claims.get(attrs.get("groups") or "groups")
    groups = tuple(str(g)[:512] for g in groups_value[:200]) if isinstance(groups_value, list) else ()
    amr_value = claims.get(attrs.get("amr") or "amr")
    amr = {str(a) for a in amr_value} if isinstance(amr_value, list) else set()
    mfa_values = set(config.get("mfa_authn_contexts") or DEFAULT_MFA_AMR)
    return VerifiedIdentity(
        subject=claims["sub"], email=email, email_verified=verified and email is not None,
        display_name=name[:200] if isinstance(name, str) and name.strip() else None, groups=groups,
        idp_mfa=bool(trust_idp_mfa and amr & mfa_values),
        protocol_details={"protocol": "oidc", "issuer": claims.get("iss"), "amr": sorted(amr)[:10]},
    )


# --- the flow cookie -------------------------------------------------------------------------


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal_flow(flow: dict[str, Any]) -> str:
    sealed = secret_box().seal(json.dumps(flow, separators=(",", ":")).encode(), FLOW_AAD)
    return ".".join((sealed.key_id, _b64(sealed.nonce), _b64(sealed.ciphertext)))


def open_flow(value: str | None, *, now: float) -> dict[str, Any]:
    """Raises FlowInvalid: no cookie, not ours, tampered, or expired."""
    if not value:
        raise FlowInvalid("flow_cookie_missing")
    try:
        key_id, nonce, ciphertext = value.split(".")
        flow = json.loads(secret_box().open(Sealed(_unb64(ciphertext), _unb64(nonce), key_id), FLOW_AAD))
    except (ValueError, SecretUnreadable):
        raise FlowInvalid("flow_cookie_invalid") from None
    if not isinstance(flow, dict) or not isinstance(flow.get("e"), int | float) or flow["e"] <= now:
        raise FlowInvalid("flow_cookie_expired")
    return flow


def callback_path(slug: str, provider_id: str) -> str:
    return f"/api/sso/oidc/{slug}/{provider_id}/callback"


def _secure() -> bool:
    return urlsplit(get_settings().sso_public_url).scheme == "https"


def _cookie(name: str, value: str, *, path: str, max_age: int) -> str:
    return (f"{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax"
            + ("; Secure" if _secure() else ""))


# --- the two routes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Redirect:
    """Where to send the browser, and the one cookie to set."""

    location: str
    set_cookie: str


def _provider(tenant_id: str, provider_id: str, meta: audit.RequestMeta) -> dict[str, Any]:
    try:
        uuid.UUID(provider_id)
    except ValueError:
        raise ProviderUnavailable() from None
    with db.tenant_tx(tenant_id) as conn:
        row = provider_row(conn, provider_id)
    if row is None or row["kind"] != "oidc" or not row["enabled"]:
        record_refusal(tenant_id=tenant_id, provider_id=provider_id if row else None, reason="provider_unavailable",
                       meta=meta, details={"provider": provider_id})
        raise ProviderUnavailable()
    return row


def start(*, tenant_id: str, slug: str, provider_id: str, remember_me: bool, meta: audit.RequestMeta,
          now: float | None = None) -> Redirect:
    """Begin a sign-in: store the request, seal the flow cookie, point at the provider.

    Raises:
        ProviderUnavailable (audited), MetadataUrlRefused, MetadataUnavailable.
    """
    now = time.time() if now is None else now
    settings = get_settings()
    row = _provider(tenant_id, provider_id, meta)
    config = row["config"]
    doc = discover(config["issuer"], now=now, stored=config.get("discovery"))
    state, nonce, verifier, binding = (secrets.token_urlsafe(32) for _ in range(4))
    redirect_uri = settings.sso_public_url.rstrip("/") + callback_path(slug, provider_id)
    with db.tenant_tx(tenant_id) as conn:
        conn.execute("delete from sso_requests where provider_id = %s and expires_at <= now()", (provider_id,))
        conn.execute(
            """insert into sso_requests (tenant_id, provider_id, relay_hash, request_id, binding_hash, remember_me,
                   expires_at) values (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))""",
            (tenant_id, provider_id, _sha(state), "oidc:" + _sha(nonce), _sha(binding), remember_me,
             settings.sso_request_ttl_s),
        )
    flow = {"t": tenant_id, "p": provider_id, "s": state, "n": nonce, "v": verifier, "b": binding,
            "r": redirect_uri, "e": int(now) + settings.sso_request_ttl_s}
    challenge = _b64(hashlib.sha256(verifier.encode("ascii")).digest())
    query = urlencode({"response_type": "code", "client_id": config["client_id"], "redirect_uri": redirect_uri,
                       "scope": " ".join(config.get("scopes") or ["openid", "email", "profile"]), "state": state,
                       "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"})
    endpoint = doc["authorization_endpoint"]
    return Redirect(f"{endpoint}{'&' if '?' in endpoint else '?'}{query}",
                    _cookie(FLOW_COOKIE, seal_flow(flow), path=callback_path(slug, provider_id),
                            max_age=settings.sso_request_ttl_s))


def _claim_request(tenant_id: str, provider_id: str, flow: dict[str, Any]) -> bool:
    """Burn the stored request (committed now, so a later failure cannot revive it); its
    remember_me.

    Raises:
        FlowInvalid: already used, expired, or never stored for this browser.
    """
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(
            """update sso_requests set used_at = now()
                where relay_hash = %s and provider_id = %s and binding_hash = %s and request_id = %s
                  and used_at is null and expires_at > now() returning remember_me""",
            (_sha(flow["s"]), provider_id, _sha(flow["b"]), "oidc:" + _sha(flow["n"])),
        ).fetchone()
    if row is None:
        raise FlowInvalid("flow_used_or_expired")
    return bool(row["remember_me"])


def _token_request(row: dict[str, Any], doc: dict[str, Any], *, tenant_id: str, code: str,
                   flow: dict[str, Any]) -> str:
    """The ID token the token endpoint returns for `code`.

    Raises:
        AssertionRejected (code_rejected, malformed), MetadataUnavailable.
    """
    config = row["config"]
    secret = open_client_secret(row, tenant_id=tenant_id)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": flow["r"], "code_verifier": flow["v"],
            "client_id": config["client_id"]}
    auth: tuple[str, str] | None = None
    methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    if secret is not None:
        if "client_secret_basic" in methods:
            # RFC 6749 2.3.1: both are form-encoded before they are joined (as authlib does).
            auth = (quote(config["client_id"], safe=""), quote(secret, safe=""))
        else:
            data["client_secret"] = secret
    status, raw = outbound.post_form(doc["token_endpoint"], what="the provider's token endpoint", data=data, auth=auth,
                                     user_agent=USER_AGENT)
    if status != 200:
        raise AssertionRejected("code_rejected", "the provider refused the authorization code")
    body = _json_doc(raw, "token response")
    token = body.get("id_token")
    if not isinstance(token, str):
        raise AssertionRejected("malformed", "the token response has no ID token")
    return token


def callback(*, tenant_id: str, slug: str, provider_id: str, query: dict[str, str], flow_cookie: str | None,
             meta: audit.RequestMeta, now: float | None = None) -> Redirect:
    """Finish a sign-in (see the module docstring): a redirect to the console with a one-time
    code, and the browser-binding cookie the code exchange checks.

    Raises:
        ProviderUnavailable, FlowInvalid, AssertionRejected, MetadataUnavailable,
        MetadataUrlRefused (each audited), AccountRefused (audited by accounts).
    """
    now = time.time() if now is None else now
    row = _provider(tenant_id, provider_id, meta)
    subject: str | None = None
    try:
        flow = open_flow(flow_cookie, now=now)
        if flow.get("t") != tenant_id or flow.get("p") != provider_id:
            raise FlowInvalid("flow_for_another_provider")
        state = query.get("state") or ""
        if not hmac.compare_digest(state.encode(), str(flow["s"]).encode()):
            raise FlowInvalid("state_mismatch")
        remember_me = _claim_request(tenant_id, provider_id, flow)
        if query.get("error"):
            raise AssertionRejected("idp_error", "the provider did not sign the user in")
        code = query.get("code")
        if not code or len(code) > 2048:
            raise AssertionRejected("malformed", "the provider's answer has no authorization code")
        config = row["config"]
        doc = discover(config["issuer"], now=now, stored=config.get("discovery"))
        # RFC 9207: the answer names its issuer, so one provider's code is never sent to another's
        # token endpoint (mix-up); required when the provider says it sends it.
        answered_by = query.get("iss")
        if (answered_by is not None or doc.get("authorization_response_iss_parameter_supported") is True) \
                and answered_by != config["issuer"]:
            raise AssertionRejected("wrong_issuer", "the answer names another issuer")
        token = _token_request(row, doc, tenant_id=tenant_id, code=code, flow=flow)
        jwks = jwks_for(doc["jwks_uri"])
        verified = verify_id_token(token, key_for=lambda kid: jwks.key(kid, now=now),
                                   expected_issuer=config["issuer"], expected_client_id=config["client_id"],
                                   expected_nonce=str(flow["n"]), now=now, skew_s=get_settings().sso_clock_skew_s)
        subject = verified.subject
        identity = identity_from_claims(verified.claims, config, trust_idp_mfa=bool(row["trust_idp_mfa"]))
    except (FlowInvalid, AssertionRejected, MetadataUnavailable, MetadataUrlRefused, SecretUnreadable) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        record_refusal(tenant_id=tenant_id, provider_id=provider_id, reason=reason, meta=meta, subject=subject,
                       details={"protocol": "oidc"})
        if isinstance(exc, SecretUnreadable):
            raise MetadataUnavailable("the provider's client secret cannot be read") from None
        raise
    binding = secrets.token_urlsafe(32)
    code_out = accounts.begin_handoff(tenant_id=tenant_id, provider_id=provider_id, identity=identity,
                                      binding=binding, remember_me=remember_me, meta=meta)
    settings = get_settings()
    return Redirect(f"{settings.sso_console_url}#{urlencode({'sso_code': code_out})}",
                    _cookie(accounts.BINDING_COOKIE, binding, path="/api/auth/sso", max_age=settings.sso_handoff_ttl_s))

