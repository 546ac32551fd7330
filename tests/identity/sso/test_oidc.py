"""OpenID Connect sign-in against a real, certified OpenID Provider (npm `oidc-provider`,
tests/identity/sso/oidc_op.mjs) through the real host: the whole flow ends in a Custos
session with its audit events, and every attack (tampered or unsigned ID token, another
client's token, wrong nonce, replayed code or flow, missing or foreign cookie, unverified or
disallowed email, another tenant's provider) is refused with problem+json, a security audit
event, and no session."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.core.settings import get_settings
from shared.identity.sso import oidc
from shared.identity.sso.errors import AssertionRejected
from shared.tenancy.tenants import Tenant, create_tenant
from tests.conftest import Host, PersonFactory, auth, free_port
from tests.identity.sso.helpers import events, session_count

ROOT = Path(__file__).resolve().parents[3]
OP_SCRIPT = Path(__file__).with_name("oidc_op.mjs")
PUBLIC_URL = get_settings().sso_public_url.rstrip("/")


class OpenIdProvider:
    """The Node OpenID Provider on a loopback port, and its test controls."""

    def __init__(self) -> None:
        if not (ROOT / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("node_modules/oidc-provider is missing: run `make node` (npm ci)")
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([shutil.which("node") or "node", str(OP_SCRIPT), str(self.port)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ready "):
                break
        else:
            raise RuntimeError("the OpenID Provider did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def register(self, redirect_uri: str) -> tuple[str, str]:
        r = httpx.post(f"{self.issuer}/reg", json={"redirect_uris": [redirect_uri],
                                                   "token_endpoint_auth_method": "client_secret_basic"})
        assert r.status_code == 201, r.text
        return r.json()["client_id"], r.json()["client_secret"]

    def account(self, **claims: Any) -> None:
        body = {"sub": f"sub-{uuid.uuid4().hex[:10]}", "email": f"{uuid.uuid4().hex[:8]}@example.test",
                "email_verified": True, "name": "Ada Lovelace", "amr": ["pwd"], **claims}
        assert httpx.post(f"{self.issuer}/test/account", json=body).status_code == 204

    def mutate(self, kind: str | None = None, **extra: Any) -> None:
        assert httpx.post(f"{self.issuer}/test/mutate", json={"kind": kind, **extra}).status_code == 204


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIdProvider]:
    provider = OpenIdProvider()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def oidc_host() -> Iterator[Host]:
    h = Host({"SSO_METADATA_ALLOW_LOOPBACK": "true"})
    yield h
    h.stop()


@pytest.fixture
def web(oidc_host: Host, op: OpenIdProvider) -> Iterator[httpx.Client]:
    op.mutate(None)
    op.account()
    with httpx.Client(base_url=oidc_host.url, timeout=30) as c:
        yield c


def make_provider(web: httpx.Client, op: OpenIdProvider, tenant: Tenant, admin_token: str,
                  **config: Any) -> tuple[str, str]:
    """An enabled OIDC provider with JIT, through the admin API; its id and its client id."""
    r = web.post("/api/sso/providers", headers=auth(admin_token), json={
        "kind": "oidc", "name": f"OP {uuid.uuid4().hex[:6]}", "enabled": False, "reason": "set up OIDC",
        "config": {"issuer": op.issuer}})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    client_id, secret = op.register(PUBLIC_URL + oidc.callback_path(tenant.slug, pid))
    r = web.patch(f"/api/sso/providers/{pid}", headers=auth(admin_token), json={
        "enabled": True, "jit": True, "client_secret": secret, "reason": "client registered",
        "config": {"issuer": op.issuer, "client_id": client_id, **config}})
    assert r.status_code == 200, r.text
    return pid, client_id


def cookie_value(response: httpx.Response, name: str) -> str:
    jar: SimpleCookie = SimpleCookie()
    jar.load(response.headers["set-cookie"])
    return jar[name].value


class Flow:
    """One browser's sign-in: the start, the provider's login, the answer back to the callback."""

    def __init__(self, web: httpx.Client, tenant: Tenant, pid: str) -> None:
        self.web, self.slug, self.pid = web, tenant.slug, pid
        r = web.get(f"/api/sso/oidc/{tenant.slug}/{pid}/start")
        assert r.status_code == 302, r.text
        self.authorize = r.headers["location"]
        self.cookie = cookie_value(r, oidc.FLOW_COOKIE)
        web.cookies.clear()  # each test names the cookie it sends, as one browser or another would
        assert f"Path={oidc.callback_path(tenant.slug, pid)}" in r.headers["set-cookie"]
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Lax" in r.headers["set-cookie"]

    def login(self) -> dict[str, str]:
        """Follow the provider's redirects (it logs the test account in) to the callback's query."""
        url = self.authorize
        with httpx.Client(timeout=30) as browser:
            for _ in range(10):
                r = browser.get(url)
                assert r.status_code in (302, 303), r.text
                url = str(httpx.URL(url).join(r.headers["location"]))
                if url.startswith(PUBLIC_URL):
                    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        raise AssertionError("the provider never redirected back")

    def callback(self, query: dict[str, str], cookie: str | None = "") -> httpx.Response:
        value = self.cookie if cookie == "" else cookie
        headers = {"Cookie": f"{oidc.FLOW_COOKIE}={value}"} if value else {}
        r = self.web.get(oidc.callback_path(self.slug, self.pid), params=query, headers=headers)
        self.web.cookies.clear()
        return r


def flip_middle(text: str) -> str:
    """`text` with its middle character changed (a middle base64 character carries 6 whole bits)."""
    i = len(text) // 2
    return text[:i] + ("B" if text[i] != "B" else "C") + text[i + 1:]


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == f"urn:custos:problem:{code}", body
    return body


def signed_in(tenant: Tenant) -> int:
    """Sessions of the tenant besides the one its ADMIN (who set the provider up) holds."""
    return session_count(tenant.id) - 1


def refusals(tenant: Tenant) -> list[str]:
    return [e["after"]["reason"] for e in events(tenant.id, "auth.sso_login_failed")]


def test_an_oidc_sign_in_ends_in_an_audited_session(web: httpx.Client, op: OpenIdProvider, tenant: Tenant,
                                                    make_person: PersonFactory) -> None:
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    op.account(sub="alice-stable-subject", email="Alice@Example.test", name="Alice Example")
    flow = Flow(web, tenant, pid)
    query = urlsplit(flow.authorize).query
    params = parse_qs(query)
    assert params["code_challenge_method"] == ["S256"] and params["response_type"] == ["code"]
    assert flow.authorize.startswith(op.issuer + "/auth?")
    r = flow.callback(flow.login())
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith(get_settings().sso_console_url + "#sso_code=") and "token" not in location
    code = parse_qs(urlsplit(location).fragment)["sso_code"][0]
    binding = cookie_value(r, "custos_sso")
    r = web.post("/api/auth/sso/exchange", json={"code": code}, headers={"Cookie": f"custos_sso={binding}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["access_token"] and body["refresh_token"]
    me = web.get("/api/me", headers=auth(body["access_token"]))
    assert me.status_code == 200, me.text
    assert signed_in(tenant) == 1
    [linked] = events(tenant.id, "sso.account_linked")
    assert linked["after"]["subject"] == "alice-stable-subject" and linked["after"]["how"] == "jit"
    [verified] = events(tenant.id, "auth.sso_verified")
    assert verified["after"]["protocol"] == "oidc" and verified["after"]["issuer"] == op.issuer
    [login] = events(tenant.id, "auth.sso_login")
    assert login["target_id"] == body["session_id"]
    assert refusals(tenant) == []


def test_the_second_sign_in_finds_the_user_by_subject_not_email(web: httpx.Client, op: OpenIdProvider,
                                                                tenant: Tenant, make_person: PersonFactory) -> None:
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    op.account(sub="same-subject", email="first@example.test")
    flow = Flow(web, tenant, pid)
    assert flow.callback(flow.login()).status_code == 302
    op.account(sub="same-subject", email="renamed@example.test")
    flow = Flow(web, tenant, pid)
    assert flow.callback(flow.login()).status_code == 302
    [linked] = events(tenant.id, "sso.account_linked")
    assert len(events(tenant.id, "auth.sso_verified")) == 2
    assert {e["target_id"] for e in events(tenant.id, "auth.sso_verified")} == {linked["target_id"]}


ATTACKS = [
    ("flip_signature", {}, "bad_signature"),
    ("alg_none", {}, "alg_not_allowed"),
    ("hs256_public_key", {}, "alg_not_allowed"),
    ("unpublished_key", {}, "unknown_kid"),
    ("claims", {"claims": {"nonce": "a-nonce-from-another-flow"}}, "wrong_nonce"),
    ("claims", {"claims": {"iss": "https://evil.example.test"}}, "wrong_issuer"),
    ("claims", {"claims": {"exp": 1_000_000_000, "iat": 999_999_000}}, "expired"),
    ("claims", {"claims": {"iat": 4_000_000_000, "exp": 4_000_000_600}}, "issued_in_future"),
]


@pytest.mark.parametrize(("kind", "extra", "reason"), ATTACKS, ids=[a[2] + "-" + a[0] for a in ATTACKS])
def test_a_forged_or_altered_id_token_is_refused(web: httpx.Client, op: OpenIdProvider, tenant: Tenant,
                                                 make_person: PersonFactory, kind: str, extra: dict[str, Any],
                                                 reason: str) -> None:
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    op.mutate(kind, **extra)
    flow = Flow(web, tenant, pid)
    body = problem(flow.callback(flow.login()), 401, "sso-assertion-rejected")
    assert body["reason"] == reason
    assert refusals(tenant) == [reason]
    assert signed_in(tenant) == 0 and events(tenant.id, "auth.sso_verified") == []


def test_an_id_token_minted_for_another_client_is_refused(web: httpx.Client, op: OpenIdProvider, tenant: Tenant,
                                                          make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN").token
    pid, client_id = make_provider(web, op, tenant, admin)
    other_client, _ = op.register(PUBLIC_URL + "/elsewhere")
    op.mutate("claims", claims={"aud": other_client, "azp": other_client})
    flow = Flow(web, tenant, pid)
    assert problem(flow.callback(flow.login()), 401, "sso-assertion-rejected")["reason"] == "wrong_audience"
    op.mutate("claims", claims={"aud": [client_id, other_client], "azp": other_client})
    flow = Flow(web, tenant, pid)
    assert problem(flow.callback(flow.login()), 401, "sso-assertion-rejected")["reason"] == "wrong_azp"
    assert refusals(tenant) == ["wrong_audience", "wrong_azp"]
    assert signed_in(tenant) == 0


@pytest.fixture
def own_op() -> Iterator[OpenIdProvider]:
    """A provider of its own, so no other test's unknown kid has used up the refetch allowance."""
    provider = OpenIdProvider()
    yield provider
    provider.stop()


def test_a_rotated_signing_key_is_accepted_without_waiting(web: httpx.Client, own_op: OpenIdProvider,
                                                           tenant: Tenant, make_person: PersonFactory) -> None:
    op = own_op
    op.account()
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    flow = Flow(web, tenant, pid)
    assert flow.callback(flow.login()).status_code == 302  # the JWKS is now cached without the new key
    op.mutate("rotated_key")
    flow = Flow(web, tenant, pid)
    r = flow.callback(flow.login())
    assert r.status_code == 302, r.text
    assert len(events(tenant.id, "auth.sso_verified")) == 2 and refusals(tenant) == []


def test_an_unverified_or_disallowed_email_is_refused(web: httpx.Client, op: OpenIdProvider, tenant: Tenant,
                                                      make_person: PersonFactory) -> None:
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token,
                           allowed_email_domains=["example.test"])
    op.account(email="eve@example.test", email_verified=False)
    flow = Flow(web, tenant, pid)
    assert problem(flow.callback(flow.login()), 401, "sso-assertion-rejected")["reason"] == "email_not_verified"
    op.account(email="eve@evil.example", email_verified=True)
    flow = Flow(web, tenant, pid)
    assert problem(flow.callback(flow.login()), 401, "sso-assertion-rejected")["reason"] == "email_domain_not_allowed"
    assert refusals(tenant) == ["email_not_verified", "email_domain_not_allowed"]
    assert signed_in(tenant) == 0


def test_an_unverified_email_never_creates_an_account(web: httpx.Client, op: OpenIdProvider, tenant: Tenant,
                                                      make_person: PersonFactory) -> None:
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    op.account(email="mallory@example.test", email_verified=False)
    flow = Flow(web, tenant, pid)
    assert problem(flow.callback(flow.login()), 403, "sso-account-refused")["reason"] == "no_email"
    assert refusals(tenant) == ["no_email"] and signed_in(tenant) == 0


def test_entra_tenant_and_google_hosted_domain_restrictions_hold(web: httpx.Client, op: OpenIdProvider,
                                                                  tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN").token
    entra, _ = make_provider(web, op, tenant, admin, entra_tenant_ids=["11111111-aaaa"])
    op.account(tid="22222222-bbbb")
    flow = Flow(web, tenant, entra)
    assert problem(flow.callback(flow.login()), 401, "sso-assertion-rejected")["reason"] == "tenant_not_allowed"
    r = web.delete(f"/api/sso/providers/{entra}", params={"reason": "next test"}, headers=auth(admin))
    assert r.status_code == 204
    google, _ = make_provider(web, op, tenant, admin, google_hosted_domains=["example.test"])
    op.account(hd="gmail.com")
    flow = Flow(web, tenant, google)
    assert problem(flow.callback(flow.login()), 401, "sso-assertion-rejected")["reason"] == "hosted_domain_not_allowed"
    op.account(hd="example.test")
    flow = Flow(web, tenant, google)
    assert flow.callback(flow.login()).status_code == 302
    assert refusals(tenant) == ["tenant_not_allowed", "hosted_domain_not_allowed"]


def test_a_missing_forged_or_other_browsers_cookie_is_refused(web: httpx.Client, op: OpenIdProvider,
                                                             tenant: Tenant, make_person: PersonFactory) -> None:
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    victim = Flow(web, tenant, pid)
    attacker = Flow(web, tenant, pid)
    query = victim.login()
    assert problem(victim.callback(query, cookie=None), 400, "sso-flow-invalid")["reason"] == "flow_cookie_missing"
    forged = flip_middle(victim.cookie)
    assert problem(victim.callback(query, cookie=forged), 400, "sso-flow-invalid")["reason"] == "flow_cookie_invalid"
    # Login CSRF / a replayed cookie from another flow: the state does not match that cookie.
    assert problem(victim.callback(query, cookie=attacker.cookie), 400, "sso-flow-invalid")["reason"] == "state_mismatch"
    assert refusals(tenant) == ["flow_cookie_missing", "flow_cookie_invalid", "state_mismatch"]
    assert signed_in(tenant) == 0
    assert victim.callback(query).status_code == 302  # the real browser still finishes its own sign-in


def test_a_replayed_callback_or_code_signs_nobody_in_twice(web: httpx.Client, op: OpenIdProvider, tenant: Tenant,
                                                           make_person: PersonFactory) -> None:
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    flow = Flow(web, tenant, pid)
    query = flow.login()
    assert flow.callback(query).status_code == 302
    assert problem(flow.callback(query), 400, "sso-flow-invalid")["reason"] == "flow_used_or_expired"
    # The same code under a fresh flow of the same browser: the provider refuses a second use.
    fresh = Flow(web, tenant, pid)
    fresh_state = parse_qs(urlsplit(fresh.authorize).query)["state"][0]
    r = fresh.callback({**query, "state": fresh_state})
    assert problem(r, 401, "sso-assertion-rejected")["reason"] == "code_rejected"
    assert refusals(tenant) == ["flow_used_or_expired", "code_rejected"]
    assert len(events(tenant.id, "auth.sso_verified")) == 1


def test_another_tenants_provider_is_unavailable_here(web: httpx.Client, op: OpenIdProvider, tenant: Tenant,
                                                      make_person: PersonFactory) -> None:
    from shared.core import db

    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    theirs, _ = make_provider(web, op, other, make_person(other.id, "ADMIN").token)
    r = web.get(f"/api/sso/oidc/{tenant.slug}/{theirs}/start")
    problem(r, 404, "sso-provider-unavailable")
    flow = Flow(web, other, theirs)
    query = flow.login()
    r = web.get(oidc.callback_path(tenant.slug, theirs), params=query,
                headers={"Cookie": f"{oidc.FLOW_COOKIE}={flow.cookie}"})
    problem(r, 404, "sso-provider-unavailable")
    problem(web.get(f"/api/sso/oidc/{tenant.slug}/not-a-uuid/start"), 404, "sso-provider-unavailable")
    assert refusals(tenant) == ["provider_unavailable", "provider_unavailable"]
    assert session_count(tenant.id) == 0 and signed_in(other) == 0


def test_the_provider_signals_an_error_and_nobody_is_signed_in(web: httpx.Client, op: OpenIdProvider,
                                                               tenant: Tenant, make_person: PersonFactory) -> None:
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    flow = Flow(web, tenant, pid)
    state = parse_qs(urlsplit(flow.authorize).query)["state"][0]
    r = flow.callback({"error": "access_denied", "state": state})
    assert problem(r, 401, "sso-assertion-rejected")["reason"] == "idp_error"
    assert refusals(tenant) == ["idp_error"] and signed_in(tenant) == 0


def test_idp_mfa_is_trusted_only_when_the_provider_says_so(web: httpx.Client, op: OpenIdProvider, tenant: Tenant,
                                                           make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN").token
    pid, _ = make_provider(web, op, tenant, admin)
    op.account(amr=["pwd", "mfa"])
    flow = Flow(web, tenant, pid)
    assert flow.callback(flow.login()).status_code == 302
    [first] = events(tenant.id, "auth.sso_verified")
    assert first["after"]["amr"] == ["mfa", "pwd"] and first["after"]["idp_mfa"] is False
    r = web.patch(f"/api/sso/providers/{pid}", headers=auth(admin), json={"trust_idp_mfa": True, "reason": "IdP MFA"})
    assert r.status_code == 200, r.text
    flow = Flow(web, tenant, pid)
    assert flow.callback(flow.login()).status_code == 302
    assert [e["after"]["idp_mfa"] for e in events(tenant.id, "auth.sso_verified")] == [False, True]


# --- below the HTTP layer: the ID token checks and the JWKS cache ------------------------------


def _key_for(key: Any, kid: str = "k1") -> Any:
    return lambda k: jwt.PyJWK.from_dict({**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())),
                                          "kid": kid}) if k == kid else None


def _claims(**over: Any) -> dict[str, Any]:
    return {"iss": "https://op.example.test", "aud": "client-1", "sub": "s1", "nonce": "n1", "iat": 1_000,
            "exp": 1_600, **over}


def test_verify_id_token_checks_exp_and_iat_against_the_injected_clock() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k1"})
    check = dict(key_for=_key_for(key), expected_issuer="https://op.example.test", expected_client_id="client-1",
                 expected_nonce="n1", skew_s=60)
    assert oidc.verify_id_token(token, now=1_100, **check).subject == "s1"  # type: ignore[arg-type]
    assert oidc.verify_id_token(token, now=1_659, **check).subject == "s1"  # type: ignore[arg-type]
    with pytest.raises(AssertionRejected) as exc:
        oidc.verify_id_token(token, now=1_660, **check)  # type: ignore[arg-type]
    assert exc.value.reason == "expired"
    with pytest.raises(AssertionRejected) as exc:
        oidc.verify_id_token(token, now=900, **check)  # type: ignore[arg-type]
    assert exc.value.reason == "issued_in_future"


def test_an_ec_key_cannot_verify_an_rsa_algorithm_token() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(), ec_key, algorithm="ES256", headers={"kid": "k1"})
    forged = token.split(".")
    forged[0] = jwt.utils.base64url_encode(json.dumps({"alg": "RS256", "kid": "k1"}).encode()).decode()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AssertionRejected) as exc:
        oidc.verify_id_token(".".join(forged), key_for=_key_for(rsa_key), expected_issuer="https://op.example.test",
                             expected_client_id="client-1", expected_nonce="n1", now=1_100, skew_s=60)
    assert exc.value.reason == "bad_signature"


def test_an_unknown_kid_refetches_the_jwks_at_most_once_a_minute(op: OpenIdProvider) -> None:
    fetched: list[str] = []

    def fetch(url: str, what: str) -> dict[str, Any]:
        fetched.append(url)
        return dict(httpx.get(url).json())

    cache = oidc.JwksCache(f"{op.issuer}/jwks", fetch=fetch)
    t0 = time.time()
    assert cache.key("main", now=t0) is not None
    assert cache.key("forged-kid", now=t0 + 1) is None  # a rotation is looked for at once
    assert len(fetched) == 2
    for i in range(20):
        assert cache.key(f"forged-{i}", now=t0 + 30) is None
    assert len(fetched) == 2
    assert cache.key("forged-kid", now=t0 + 1 + oidc.JWKS_REFETCH_MIN_S) is None
    assert len(fetched) == 3
    assert cache.key("main", now=t0 + 1 + oidc.JWKS_REFETCH_MIN_S + oidc.CACHE_TTL_S) is not None
    assert len(fetched) == 4


@pytest.mark.parametrize("url", ["http://op.example.test/", "https://10.0.0.5/", "https://169.254.169.254/",
                                 "https://[::1]/", "https://user:pw@op.example.test/", "https://127.0.0.1:99999/",
                                 "file:///etc/passwd", "https://[fd00::1]/", "https://localhost/"])
def test_the_provider_urls_must_be_public_https(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.identity.sso.errors import MetadataUrlRefused

    monkeypatch.setenv("SSO_METADATA_ALLOW_LOOPBACK", "false")  # the test settings allow it for the SAML tests
    get_settings.cache_clear()
    try:
        assert not get_settings().sso_metadata_allow_loopback
        with pytest.raises(MetadataUrlRefused):
            oidc.fetch_json(url, "discovery document")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_two_callbacks_racing_with_one_flow_sign_in_once(web: httpx.Client, op: OpenIdProvider, tenant: Tenant,
                                                         make_person: PersonFactory, oidc_host: Host) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    flow = Flow(web, tenant, pid)
    query = flow.login()

    def call(_: int) -> int:
        with httpx.Client(base_url=oidc_host.url, timeout=30) as c:
            return c.get(oidc.callback_path(tenant.slug, pid), params=query,
                         headers={"Cookie": f"{oidc.FLOW_COOKIE}={flow.cookie}"}).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(call, range(4)))
    assert statuses == [302, 400, 400, 400]
    assert len(events(tenant.id, "auth.sso_verified")) == 1
    assert refusals(tenant) == ["flow_used_or_expired"] * 3


def test_a_flow_cookie_expires_with_the_injected_clock_and_names_only_its_sealer() -> None:
    from shared.identity.sso.errors import FlowInvalid

    sealed = oidc.seal_flow({"s": "state", "e": 2_000})
    assert oidc.open_flow(sealed, now=1_999)["s"] == "state"
    with pytest.raises(FlowInvalid) as exc:
        oidc.open_flow(sealed, now=2_000)
    assert exc.value.reason == "flow_cookie_expired"
    key_id, nonce, ciphertext = sealed.split(".")
    for forged in (f"{key_id}.{nonce}.{flip_middle(ciphertext)}", f"0000000000000000.{nonce}.{ciphertext}", "a.b", "..."):
        with pytest.raises(FlowInvalid) as exc:
            oidc.open_flow(forged, now=1_000)
        assert exc.value.reason == "flow_cookie_invalid"


@pytest.mark.parametrize("token", ["a.b.c", "....", "x" * 20_000, "e30.e30.", "W1tbW1tbW1tb.e30.x",
                                   jwt.utils.base64url_encode(b"[" * 5000).decode() + ".e30.x"])
def test_a_malformed_id_token_is_refused_not_crashed_on(token: str) -> None:
    with pytest.raises(AssertionRejected) as exc:
        oidc.verify_id_token(token, key_for=lambda kid: None, expected_issuer="https://op.example.test",
                             expected_client_id="client-1", expected_nonce="n1", now=1_100, skew_s=60)
    assert exc.value.reason in ("malformed", "alg_not_allowed")


def finish(web: httpx.Client, callback: httpx.Response) -> dict[str, Any]:
    """What the console gets for the one-time code of a finished callback."""
    assert callback.status_code == 302, callback.text
    code = parse_qs(urlsplit(callback.headers["location"]).fragment)["sso_code"][0]
    r = web.post("/api/auth/sso/exchange", json={"code": code},
                 headers={"Cookie": f"custos_sso={cookie_value(callback, 'custos_sso')}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_an_existing_user_with_a_factor_still_proves_it_unless_the_idp_mfa_is_trusted(
        web: httpx.Client, op: OpenIdProvider, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN").token
    reviewer = make_person(tenant.id, "REVIEWER")
    pid, _ = make_provider(web, op, tenant, admin)
    r = web.patch(f"/api/sso/providers/{pid}", headers=auth(admin),
                  json={"link_by_verified_email": True, "reason": "link our staff"})
    assert r.status_code == 200, r.text
    op.account(sub="reviewer-at-idp", email=reviewer.email.upper(), amr=["pwd", "mfa"])
    flow = Flow(web, tenant, pid)
    body = finish(web, flow.callback(flow.login()))
    assert body["mfa_required"] is True and body.get("access_token") is None and body["mfa_ticket"]
    [linked] = events(tenant.id, "sso.account_linked")
    assert linked["target_id"] == reviewer.id and linked["after"]["how"] == "verified_email"
    r = web.patch(f"/api/sso/providers/{pid}", headers=auth(admin), json={"trust_idp_mfa": True, "reason": "CA MFA"})
    assert r.status_code == 200, r.text
    flow = Flow(web, tenant, pid)
    body = finish(web, flow.callback(flow.login()))
    assert body["access_token"] and not body.get("mfa_required")
    assert events(tenant.id, "auth.sso_login")[-1]["after"]["mfa"] == "idp"


def test_an_admin_fetches_and_stores_the_discovery_document_and_sign_in_uses_it(
        web: httpx.Client, op: OpenIdProvider, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN").token
    pid, _ = make_provider(web, op, tenant, admin)
    r = web.post(f"/api/sso/providers/{pid}/discovery", json={"reason": "check the issuer"}, headers=auth(admin))
    assert r.status_code == 200, r.text
    stored = r.json()["config"]["discovery"]
    assert stored["issuer"] == op.issuer and stored["jwks_uri"] == f"{op.issuer}/jwks"
    changed = events(tenant.id, "sso.provider_updated")[-1]
    assert changed["after"]["config"]["discovery"]["token_endpoint"] == f"{op.issuer}/token"
    assert changed["reason"] == "check the issuer"
    flow = Flow(web, tenant, pid)
    assert flow.callback(flow.login()).status_code == 302


def test_discovery_refuses_a_private_issuer_another_tenants_provider_and_saml(
        web: httpx.Client, op: OpenIdProvider, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN").token
    r = web.post("/api/sso/providers", headers=auth(admin), json={
        "kind": "oidc", "name": "internal", "reason": "internal IdP", "config": {"issuer": "https://10.1.2.3/realms/x"}})
    assert r.status_code == 201, r.text
    private = r.json()["id"]
    r = web.post(f"/api/sso/providers/{private}/discovery", json={"reason": "check"}, headers=auth(admin))
    problem(r, 422, "sso-metadata-url-refused")
    assert web.get(f"/api/sso/providers/{private}", headers=auth(admin)).json()["config"]["discovery"] == {}
    from shared.core import db

    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    theirs, _ = make_provider(web, op, other, make_person(other.id, "ADMIN").token)
    r = web.post(f"/api/sso/providers/{theirs}/discovery", json={"reason": "peek"}, headers=auth(admin))
    problem(r, 404, "not-found")
    r = web.post("/api/sso/providers", headers=auth(admin), json={
        "kind": "saml", "name": "saml one", "reason": "a SAML IdP", "config": {}})
    assert r.status_code == 201, r.text
    r = web.post(f"/api/sso/providers/{r.json()['id']}/discovery", json={"reason": "try it"}, headers=auth(admin))
    problem(r, 422, "sso-provider-invalid")


def test_an_answer_naming_another_issuer_is_refused_before_the_code_is_spent(
        web: httpx.Client, op: OpenIdProvider, tenant: Tenant, make_person: PersonFactory) -> None:
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    flow = Flow(web, tenant, pid)
    query = flow.login()
    assert query["iss"] == op.issuer  # the provider says it sends iss (RFC 9207)
    r = flow.callback({**query, "iss": "https://other-op.example.test"})
    assert problem(r, 401, "sso-assertion-rejected")["reason"] == "wrong_issuer"
    flow = Flow(web, tenant, pid)
    query = flow.login()
    del query["iss"]
    assert problem(flow.callback(query), 401, "sso-assertion-rejected")["reason"] == "wrong_issuer"
    assert refusals(tenant) == ["wrong_issuer", "wrong_issuer"] and signed_in(tenant) == 0


def test_remember_me_is_carried_from_the_start_to_the_session(web: httpx.Client, op: OpenIdProvider,
                                                              tenant: Tenant, make_person: PersonFactory) -> None:
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    r = web.get(f"/api/sso/oidc/{tenant.slug}/{pid}/start", params={"remember_me": "maybe"})
    problem(r, 422, "validation")
    flow = Flow.__new__(Flow)
    flow.web, flow.slug, flow.pid = web, tenant.slug, pid
    r = web.get(f"/api/sso/oidc/{tenant.slug}/{pid}/start", params={"remember_me": "true"})
    flow.authorize, flow.cookie = r.headers["location"], cookie_value(r, oidc.FLOW_COOKIE)
    web.cookies.clear()
    body = finish(web, flow.callback(flow.login()))
    assert events(tenant.id, "auth.sso_login")[-1]["after"]["remember_me"] is True
    assert body["refresh_token"]


def test_the_console_gets_its_refresh_token_in_the_httponly_cookie_not_the_body(
        web: httpx.Client, op: OpenIdProvider, tenant: Tenant, make_person: PersonFactory) -> None:
    """The exchange honours X-Custos-CSRF like the password login: the refresh token moves to
    the HttpOnly cookie (which then refreshes only with the header); a ticket sets no cookie."""
    pid, _ = make_provider(web, op, tenant, make_person(tenant.id, "ADMIN").token)
    flow = Flow(web, tenant, pid)
    callback = flow.callback(flow.login())
    code = parse_qs(urlsplit(callback.headers["location"]).fragment)["sso_code"][0]
    r = web.post("/api/auth/sso/exchange", json={"code": code},
                 headers={"Cookie": f"custos_sso={cookie_value(callback, 'custos_sso')}", "X-Custos-CSRF": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["access_token"] and r.json()["refresh_token"] is None
    set_cookie = r.headers["set-cookie"]
    assert "Path=/api/auth" in set_cookie and "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    refresh = cookie_value(r, "custos_refresh")
    web.cookies.clear()
    refused = web.post("/api/auth/refresh", json={}, headers={"Cookie": f"custos_refresh={refresh}"})
    problem(refused, 403, "csrf-header-missing")
    again = web.post("/api/auth/refresh", json={}, headers={"Cookie": f"custos_refresh={refresh}", "X-Custos-CSRF": "1"})
    assert again.status_code == 200, again.text
    assert web.get("/api/me", headers=auth(again.json()["access_token"])).status_code == 200

    reviewer = make_person(tenant.id, "REVIEWER")
    r = web.patch(f"/api/sso/providers/{pid}", headers=auth(make_person(tenant.id, "ADMIN").token),
                  json={"link_by_verified_email": True, "reason": "link our staff"})
    assert r.status_code == 200, r.text
    op.account(sub="reviewer-console", email=reviewer.email)
    flow = Flow(web, tenant, pid)
    callback = flow.callback(flow.login())
    code = parse_qs(urlsplit(callback.headers["location"]).fragment)["sso_code"][0]
    r = web.post("/api/auth/sso/exchange", json={"code": code},
                 headers={"Cookie": f"custos_sso={cookie_value(callback, 'custos_sso')}", "X-Custos-CSRF": "1"})
    assert r.status_code == 200 and r.json()["mfa_ticket"], r.text
    assert "set-cookie" not in r.headers
