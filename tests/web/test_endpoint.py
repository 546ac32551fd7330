"""The request path through the real host: errors, CORS, headers, authentication."""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.core import db
from shared.core.errors import InvalidValue
from shared.core.settings import get_settings
from shared.identity.tokens import keyring
from shared.tenancy.tenants import Tenant
from shared.web.endpoint import SECURITY_HEADERS, endpoint_spec
from tests.conftest import TEST_ORIGIN, Host, TokenFactory, auth, create_session_row, create_user

SETTING_URL = "/api/tenant/settings/sessions.max_idle_minutes"


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["type"] == f"urn:custos:problem:{code}"
    assert body["status"] == status
    assert body["request_id"] == resp.headers["x-request-id"]
    assert "Traceback" not in resp.text
    return body


def test_every_http_function_is_wrapped() -> None:
    from function_app import create_app

    http = [f for f in create_app().get_functions() if getattr(f.get_trigger(), "route", None) is not None]
    assert http, "no HTTP functions found"
    unwrapped = [f.get_function_name() for f in http if endpoint_spec(f.get_user_function()) is None]
    assert unwrapped == []


def test_unknown_path_is_404_problem(client: httpx.Client) -> None:
    assert_problem(client.get("/api/no-such-thing"), 404, "not-found")


def test_wrong_method_is_405(client: httpx.Client) -> None:
    resp = client.delete("/api/health")
    assert_problem(resp, 405, "method-not-allowed")
    assert "GET" in resp.headers["allow"]


def test_health_reports_database_and_storage(client: httpx.Client) -> None:
    resp = client.get("/api/health")
    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "components": {"database": "ok", "storage": "ok"}}


def test_security_headers_on_success_and_error(client: httpx.Client) -> None:
    for resp in (client.get("/api/health"), client.get("/api/tenant")):
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers[name] == value, (resp.status_code, name)
        uuid.UUID(resp.headers["x-request-id"])


def test_setting_roundtrip(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    token = make_token(tenant.id, "ADMIN")
    resp = client.put(SETTING_URL, json={"value": 30, "reason": "policy review"}, headers=auth(token))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"key": "sessions.max_idle_minutes", "value": 30, "previous": None}
    resp = client.get("/api/tenant/settings", headers=auth(token))
    assert resp.json()["settings"]["sessions.max_idle_minutes"]["value"] == 30


def test_malformed_json_is_400(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    resp = client.put(
        SETTING_URL,
        content=b'{"value": 30, "reason": ',
        headers={**auth(make_token(tenant.id)), "Content-Type": "application/json"},
    )
    body = assert_problem(resp, 400, "malformed-request")
    assert "not valid JSON" in body["detail"]


def test_wrong_content_type_is_415(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    resp = client.put(
        SETTING_URL,
        content=b"value=30",
        headers={**auth(make_token(tenant.id)), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(resp, 415, "unsupported-media-type")


def test_oversized_body_is_413_and_stores_nothing(
    client: httpx.Client, tenant: Tenant, make_token: TokenFactory
) -> None:
    token = make_token(tenant.id)
    big = json.dumps({"value": 30, "reason": "x" * (get_settings().max_body_bytes + 10)})
    resp = client.put(SETTING_URL, content=big, headers={**auth(token), "Content-Type": "application/json"})
    assert_problem(resp, 413, "payload-too-large")
    assert client.get("/api/tenant/settings", headers=auth(token)).json()["settings"] == {}


def test_validation_errors_name_the_field_without_echoing_input(
    client: httpx.Client, tenant: Tenant, make_token: TokenFactory
) -> None:
    resp = client.put(
        SETTING_URL, json={"value": 30, "reason": "", "extra": "s3cret"}, headers=auth(make_token(tenant.id))
    )
    body = assert_problem(resp, 422, "validation")
    locations = {tuple(e["location"]) for e in body["errors"]}
    assert ("body", "reason") in locations and ("body", "extra") in locations
    assert "s3cret" not in resp.text
    resp = client.put(SETTING_URL, json={"value": 1, "reason": "too short"}, headers=auth(make_token(tenant.id)))
    assert_problem(resp, 422, "validation")


def test_missing_permission_is_403(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    resp = client.put(SETTING_URL, json={"value": 30, "reason": "nope"}, headers=auth(make_token(tenant.id, "VIEWER")))
    assert_problem(resp, 403, "forbidden")


def test_cors_allowed_origin(client: httpx.Client) -> None:
    resp = client.get("/api/health", headers={"Origin": TEST_ORIGIN})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == TEST_ORIGIN
    assert resp.headers["vary"] == "Origin"


def test_cors_refused_origin(client: httpx.Client) -> None:
    resp = client.get("/api/health", headers={"Origin": "https://evil.example"})
    assert_problem(resp, 403, "origin-not-allowed")
    assert "access-control-allow-origin" not in resp.headers


def test_a_same_origin_request_is_served_without_cors_headers(client: httpx.Client, host: Host) -> None:
    """The console's own POSTs and module scripts carry Origin = the host they were sent to."""
    resp = client.get("/api/health", headers={"Origin": host.url})
    assert resp.status_code == 200
    assert "access-control-allow-origin" not in resp.headers


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1", "http://127.0.0.1:1", "null", "file://127.0.0.1", "javascript://127.0.0.1:{port}",
    "http://127.0.0.1:{port}.evil.example", "http://evil.example#127.0.0.1:{port}", "http://user@127.0.0.1:{port}",
])
def test_an_origin_that_only_resembles_the_host_is_still_refused(client: httpx.Client, host: Host, origin: str) -> None:
    resp = client.get("/api/health", headers={"Origin": origin.format(port=host.port)})
    assert_problem(resp, 403, "origin-not-allowed")


def test_cors_preflight(client: httpx.Client) -> None:
    resp = client.options(
        SETTING_URL,
        headers={"Origin": TEST_ORIGIN, "Access-Control-Request-Method": "PUT",
                 "Access-Control-Request-Headers": "authorization, content-type"},
    )
    assert resp.status_code == 204
    assert resp.headers["access-control-allow-origin"] == TEST_ORIGIN
    assert "PUT" in resp.headers["access-control-allow-methods"]
    assert "Authorization" in resp.headers["access-control-allow-headers"]
    refused = client.options(
        SETTING_URL, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"}
    )
    assert_problem(refused, 403, "origin-not-allowed")


# --- tokens -------------------------------------------------------------------------


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(tenant_id: str, **over: object) -> dict:
    """Claims of a real, active ADMIN of the tenant: only the attack under test is wrong."""
    s = get_settings()
    now = int(time.time())
    user_id = create_user(tenant_id, "ADMIN")["id"]
    claims = {
        "sub": user_id, "tid": tenant_id, "sid": create_session_row(tenant_id, user_id), "role": "ADMIN",
        "iat": now, "nbf": now, "exp": now + 600, "iss": s.jwt_issuer, "aud": s.jwt_audience,
        "jti": str(uuid.uuid4()),
    }
    claims.update(over)
    return claims


def _assert_refused(client: httpx.Client, token: str) -> None:
    resp = client.get("/api/tenant", headers=auth(token))
    assert_problem(resp, 401, "unauthenticated")
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_valid_token_is_accepted(client: httpx.Client, tenant: Tenant) -> None:
    ring = keyring()
    token = jwt.encode(_claims(tenant.id), ring.signing, algorithm="ES256", headers={"kid": ring.signing_kid})
    resp = client.get("/api/tenant", headers=auth(token))
    assert resp.status_code == 200
    assert resp.json()["slug"] == tenant.slug


def test_forged_signature_is_refused(client: httpx.Client, tenant: Tenant) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(_claims(tenant.id), attacker, algorithm="ES256", headers={"kid": keyring().signing_kid})
    _assert_refused(client, token)


def test_tampered_payload_is_refused(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    header, _, sig = make_token(tenant.id, "VIEWER").split(".")
    _assert_refused(client, ".".join([header, _b64(_claims(tenant.id, role="ADMIN")), sig]))


def test_expired_token_is_refused(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    _assert_refused(client, make_token(tenant.id, now=time.time() - 3600))


def test_not_yet_valid_token_is_refused(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    _assert_refused(client, make_token(tenant.id, now=time.time() + 3600))


def test_wrong_audience_and_issuer_are_refused(client: httpx.Client, tenant: Tenant) -> None:
    ring = keyring()
    for over in ({"aud": "another-api"}, {"iss": "https://evil.example"}):
        token = jwt.encode(_claims(tenant.id, **over), ring.signing, algorithm="ES256", headers={"kid": ring.signing_kid})
        _assert_refused(client, token)


def test_missing_claim_is_refused(client: httpx.Client, tenant: Tenant) -> None:
    ring = keyring()
    claims = _claims(tenant.id)
    del claims["jti"]
    _assert_refused(client, jwt.encode(claims, ring.signing, algorithm="ES256", headers={"kid": ring.signing_kid}))


def _signed(claims: dict) -> str:
    ring = keyring()
    return jwt.encode(claims, ring.signing, algorithm="ES256", headers={"kid": ring.signing_kid})


def test_token_living_longer_than_the_configured_lifetime_is_refused(client: httpx.Client, tenant: Tenant) -> None:
    s = get_settings()
    now = int(time.time())
    # Signed with the real key, currently valid, but minted to outlive any token we issue.
    for exp in (now + s.jwt_access_ttl_s + s.jwt_leeway_s + 1, now + 10 * 365 * 86400, 2**31 - 1):
        _assert_refused(client, _signed(_claims(tenant.id, iat=now, nbf=now, exp=exp)))
    # An old iat with a fresh exp is the same long lifetime, backdated.
    _assert_refused(client, _signed(_claims(tenant.id, iat=now - 86400, nbf=now - 86400, exp=now + 60)))


def test_token_at_the_configured_lifetime_is_accepted(client: httpx.Client, tenant: Tenant) -> None:
    now = int(time.time())
    token = _signed(_claims(tenant.id, iat=now, nbf=now, exp=now + get_settings().jwt_access_ttl_s))
    assert client.get("/api/tenant", headers=auth(token)).status_code == 200


@pytest.mark.parametrize("claim", ["iat", "nbf", "exp"])
@pytest.mark.parametrize(
    "junk",
    [
        "2000000000", "soon", True, False, None, [1], {"t": 1}, 1.5,
        float("nan"), float("inf"), float("-inf"), 1e308, 10**400, -(10**400), 2**64, -1,
    ],
    ids=lambda v: repr(v)[:20],
)
def test_junk_time_claims_are_refused_not_500(client: httpx.Client, tenant: Tenant, claim: str, junk: object) -> None:
    # PyJWT's JSON reader turns Infinity/NaN/1e999 into floats and keeps any integer size.
    _assert_refused(client, _signed(_claims(tenant.id, **{claim: junk})))


def test_issuer_refuses_a_lifetime_the_verifier_would_refuse() -> None:
    from shared.identity.tokens import issue_access_token

    with pytest.raises(ValueError, match="lifetime"):
        issue_access_token(subject=str(uuid.uuid4()), tenant_id=None, session_id=str(uuid.uuid4()),
                           role="PLATFORM_OPERATOR", ttl_s=get_settings().jwt_access_ttl_s + 1)


def test_alg_none_is_refused(client: httpx.Client, tenant: Tenant) -> None:
    token = _b64({"alg": "none", "typ": "JWT", "kid": keyring().signing_kid}) + "." + _b64(_claims(tenant.id)) + "."
    _assert_refused(client, token)


def test_hs256_with_public_key_is_refused(client: httpx.Client, tenant: Tenant) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = keyring().signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib
    import hmac  # noqa: E401

    head = _b64({"alg": "HS256", "typ": "JWT", "kid": keyring().signing_kid})
    body = _b64(_claims(tenant.id))
    sig = base64.urlsafe_b64encode(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()).rstrip(b"=")
    _assert_refused(client, f"{head}.{body}.{sig.decode()}")


def test_unknown_kid_is_refused(client: httpx.Client, tenant: Tenant) -> None:
    ring = keyring()
    token = jwt.encode(_claims(tenant.id), ring.signing, algorithm="ES256", headers={"kid": "not-a-known-key"})
    _assert_refused(client, token)


def test_embedded_jwk_header_is_refused(client: httpx.Client, tenant: Tenant) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    from shared.core.keys import ec_public_jwk

    token = jwt.encode(
        _claims(tenant.id), attacker, algorithm="ES256",
        headers={"kid": keyring().signing_kid, "jwk": ec_public_jwk(attacker.public_key())},
    )
    _assert_refused(client, token)


@pytest.mark.parametrize("header", ["", "Bearer", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Bearer ....."])
def test_malformed_authorization_is_refused(client: httpx.Client, header: str) -> None:
    resp = client.get("/api/tenant", headers={"Authorization": header} if header else {})
    assert_problem(resp, 401, "unauthenticated")


def test_jwks_verifies_issued_tokens(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    resp = client.get("/.well-known/jwks.json")
    assert resp.status_code == 200
    token = make_token(tenant.id)
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in resp.json()["keys"] if k["kid"] == kid)
    assert "d" not in jwk  # public only
    key = jwt.PyJWK(jwk).key
    s = get_settings()
    assert jwt.decode(token, key, algorithms=["ES256"], audience=s.jwt_audience)["tid"] == tenant.id


def test_security_txt(client: httpx.Client) -> None:
    resp = client.get("/.well-known/security.txt")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    fields = dict(line.split(": ", 1) for line in resp.text.strip().splitlines())
    assert set(fields) == {"Contact", "Expires", "Policy", "Preferred-Languages", "Canonical"}


def test_openapi_document(client: httpx.Client) -> None:
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"] == "3.1.0"
    put = doc["paths"]["/api/tenant/settings/{key}"]["put"]
    assert put["x-permission"] == "tenant.settings.manage"
    assert put["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("SettingChange")
    assert "/{path}" not in doc["paths"]  # the preflight catch-all is not an operation


def test_access_log_line(host, client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    resp = client.get(
        "/api/tenant?secret=abc", headers={**auth(make_token(tenant.id)), "X-Forwarded-For": "203.0.113.9"}
    )
    rid = resp.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while rid not in host.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in host.log().splitlines() if rid in line)
    entry = json.loads(line)  # the whole line is the JSON object, its fields are keys
    assert entry["logger"] == "custos.access" and entry["request_id"] == rid
    assert entry["tenant"] == tenant.id
    assert entry["status"] == 200
    assert entry["path"] == "/api/tenant"
    assert entry["ip"] == "127.0.0.1"  # the right-most entry: the one the front end appended
    assert "secret" not in line


def test_general_api_rate_limit_per_ip() -> None:
    from tests.conftest import Host

    h = Host(env={"API_RATE_PER_MINUTE": "10"})
    try:
        with httpx.Client(base_url=h.url, timeout=30) as c:
            statuses = [c.get("/api/health").status_code for _ in range(12)]
            limited = c.get("/api/health")
        assert statuses[:10] == [200] * 10 and statuses[10:] == [429, 429]
        assert_problem(limited, 429, "rate-limited")
        assert int(limited.headers["retry-after"]) >= 1
    finally:
        h.stop()


# --- poison input: every bad input is a 4xx problem, never a 500 ------------------------------------------


LOGIN = "/api/auth/login"


def _post_raw(client: httpx.Client, path: str, body: bytes, **headers: str) -> httpx.Response:
    return client.post(path, content=body, headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize("depth", [33, 300, 5_000, 30_000])
def test_deep_json_is_refused_on_unauthenticated_routes(client: httpx.Client, depth: int) -> None:
    body = b'{"tenant": "t", "email": "e@x.test", "password": "p", "x": ' + b"[" * depth + b"]" * depth + b"}"
    assert_problem(_post_raw(client, LOGIN, body), 422, "json-too-deep")


@pytest.mark.parametrize("text", ['"a\\u0000b"', '"\\ud800"', '"x\\udc00y"'])
def test_nul_and_lone_surrogates_in_a_body_are_refused(client: httpx.Client, text: str) -> None:
    body = ('{"tenant": "t", "email": ' + text + ', "password": "secret-password"}').encode()
    problem = assert_problem(_post_raw(client, LOGIN, body), 422, "forbidden-characters")
    assert problem["errors"][0]["location"] == ["body", "email"]


def test_nul_in_a_query_is_refused_and_in_a_path_names_nothing(client: httpx.Client, tenant: Tenant,
                                                             make_token: TokenFactory) -> None:
    token = make_token(tenant.id, "ADMIN")
    assert_problem(client.get("/api/records?type=doc%00ument", headers=auth(token)), 422, "forbidden-characters")
    assert_problem(client.get("/api/audit?action=a%00b", headers=auth(token)), 422, "forbidden-characters")
    assert_problem(client.get("/api/records?%00=1", headers=auth(token)), 422, "forbidden-characters")
    assert_problem(client.get("/api/record-types/doc%00ument", headers=auth(token)), 404, "not-found")
    assert_problem(client.get("/api/record-types/%ED%A0%80", headers=auth(token)), 404, "not-found")


def _user_with_password(tenant: Tenant, password: str) -> dict:
    from shared.identity import passwords

    user = create_user(tenant.id, "VIEWER")
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update users set password_hash = %s where id = %s", (passwords.hash_password(password), user["id"]))
    return user


@pytest.mark.parametrize(("forwarded", "expected"), [
    ("not-an-ip", ""), ("1.2.3.4\x01", ""), ("'; drop table users; --", ""), ("[::1", "::1"), ("999.1.1.1:80", ""),
    ("1.2.3.4, \x7f", ""), ("10.0.0.1, 2001:db8::1", "2001:db8::1"), ("198.51.100.7:8443", "198.51.100.7"),
    ("[2001:db8::2]:443", "2001:db8::2"), ("", ""),
])
def test_client_ip_is_the_rightmost_forwarded_address_or_nothing(forwarded: str, expected: str) -> None:
    import azure.functions as func

    from shared.web.endpoint import client_ip

    req = func.HttpRequest("GET", "http://h/api/health", headers={"X-Forwarded-For": forwarded}, body=b"")
    assert client_ip(req) == expected


def test_user_agent_control_characters_are_removed_before_storage(client: httpx.Client, tenant: Tenant) -> None:
    password = "correct horse battery staple 9"
    user = _user_with_password(tenant, password)
    resp = client.post(LOGIN, json={"tenant": tenant.slug, "email": user["email"], "password": password},
                       headers={"User-Agent": "Mozilla\x1b[31m\x08/5.0"})
    assert resp.status_code == 200, resp.text
    with db.tenant_tx(tenant.id) as conn:
        row = conn.execute("select user_agent from sessions where user_id = %s", (user["id"],)).fetchone()
    assert row == {"user_agent": "Mozilla[31m/5.0"}


@pytest.mark.parametrize("params", [
    {"since": "9999-12-31T23:59:59-23:59"}, {"until": "0001-01-01T00:00:00+23:59"}, {"since": "0001-01-01T00:00:00Z"},
    {"since": "2026-13-01T00:00:00Z"}, {"until": "2026-01-01T00:00:00+25:00"}, {"after": "-1"},
    {"after": "99999999999999999999999"}, {"limit": "1e309"},
])
def test_out_of_range_dates_and_cursors_in_filters_are_4xx(client: httpx.Client, tenant: Tenant,
                                                         make_token: TokenFactory, params: dict[str, str]) -> None:
    resp = client.get("/api/audit", params=params, headers=auth(make_token(tenant.id, "ADMIN")))
    assert resp.status_code in (200, 422), resp.text
    assert "Traceback" not in resp.text


@pytest.mark.parametrize("cursor", [
    base64.urlsafe_b64encode(json.dumps(["0001-01-01T00:00:00+23:59", str(uuid.uuid4())]).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps(["9999-12-31T23:59:59-23:59", str(uuid.uuid4())]).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00\x00", "\x00"]).encode()).decode(),
    base64.urlsafe_b64encode(b'["\\ud800", "x"]').decode(),
    "%%%", "W10",
])
def test_forged_cursors_are_4xx(client: httpx.Client, tenant: Tenant, make_token: TokenFactory, cursor: str) -> None:
    resp = client.get("/api/records", params={"after": cursor}, headers=auth(make_token(tenant.id, "ADMIN")))
    assert resp.status_code in (200, 422), resp.text


def test_a_value_the_database_refuses_is_a_422_problem(tenant: Tenant) -> None:
    # Whatever path a value takes past the request models, the database's own checks
    # (check constraints, out-of-range dates, untranslatable text) surface as 422, not 500.
    with pytest.raises(InvalidValue) as err:
        with db.tenant_tx(tenant.id) as conn:
            conn.execute("insert into designations (tenant_id, name) values (%s, '   ')", (tenant.id,))
    assert err.value.status == 422 and err.value.code == "invalid-value"
    with pytest.raises(InvalidValue):
        with db.tenant_tx(tenant.id) as conn:
            conn.execute("select '294277-01-01'::timestamptz")


def test_whitespace_only_names_are_refused_by_the_request_models(client: httpx.Client, tenant: Tenant,
                                                                  make_token: TokenFactory) -> None:
    token = make_token(tenant.id, "ADMIN")
    for name in (" ", "\u00a0\u3000", "\t\n"):
        resp = client.post("/api/designations", json={"name": name, "permissions": ["records.read"], "reason": "blank"},
                           headers=auth(token))
        assert_problem(resp, 422, "blank-value")


# --- the pipeline as one list ----------------------------------------------------------------


def test_the_stages_in_code_docstring_and_readme_agree() -> None:
    import re

    from shared.web import endpoint as wrapper
    from tests.conftest import ROOT

    names = [name for name, _ in wrapper.STAGES]
    assert names == ["cors", "rate_limit", "body_size", "characters", "json", "card_data", "authenticate",
                     "authorize", "query", "body"]
    readme = (ROOT / "README.md").read_text()
    table = re.findall(r"^\| (\d+) \| `([a-z_]+)` \|", readme, flags=re.M)
    assert [name for _, name in table] == names
    assert [int(n) for n, _ in table] == list(range(1, len(names) + 1))
    doc = " ".join((wrapper.__doc__ or "").split())
    assert "run in this order: " + ", ".join(names) + "." in doc


def test_triggers_write_no_sql_and_no_audit_events() -> None:
    import ast

    from tests.conftest import ROOT

    offenders = []
    for path in sorted((ROOT / "functions").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in {"execute", "tenant_tx", "platform_tx", "append",
                                                                 "record", "context_actor", "transaction"}:
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module in {"shared.core.db", "shared.audit.chain"}:
                offenders.append(f"{path.name}:{node.lineno} imports {node.module}")
            if isinstance(node, ast.ImportFrom) and node.module == "shared.core" and any(
                    a.name == "db" for a in node.names):
                offenders.append(f"{path.name}:{node.lineno} imports shared.core.db")
    assert offenders == []


def test_requests_refused_after_authentication_keep_no_connection(client: httpx.Client, tenant: Tenant,
                                                                  make_token: TokenFactory) -> None:
    """The tenant transaction opened with the caller's authentication is given back when the
    wrapper refuses the request (403) or the handler fails: more refusals than the host's
    pool has connections, and the next request is still served."""
    viewer = make_token(tenant.id, "VIEWER")
    for _ in range(2 * get_settings().db_pool_max + 1):
        resp = client.put(SETTING_URL, json={"value": 30, "reason": "nope"}, headers=auth(viewer))
        assert resp.status_code == 403
        resp = client.get(f"/api/records/{uuid.uuid4()}", headers=auth(viewer))
        assert resp.status_code == 404
    resp = client.get("/api/records", headers=auth(viewer))
    assert resp.status_code == 200, resp.text
