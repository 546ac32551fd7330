"""The console's refresh cookie (shared/web/refresh_cookie.py) through the real host: set only
when asked, HttpOnly/Secure/SameSite=Strict on /api/auth, read only with the CSRF header,
rotated like a body token, deleted at logout."""

from __future__ import annotations

from http.cookies import SimpleCookie

import httpx

from tests.conftest import Host, Tenant
from tests.identity.test_signin import PASSWORD, client_from, user_with_password

CSRF = {"X-Custos-CSRF": "1"}


def cookie_of(r: httpx.Response) -> tuple[str, str]:
    raw = r.headers["set-cookie"]
    jar: SimpleCookie = SimpleCookie()
    jar.load(raw)
    return jar["custos_refresh"].value, raw


def sign_in(c: httpx.Client, tenant: Tenant, email: str) -> httpx.Response:
    return c.post("/api/auth/login", json={"tenant": tenant.slug, "email": email, "password": PASSWORD}, headers=CSRF)


def test_console_login_puts_the_refresh_token_in_a_strict_cookie_not_the_body(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant, role="OPERATOR")
    with client_from(host) as c:  # a peer address of its own: other tests' failures from 127.0.0.1 cannot throttle it
        r = sign_in(c, tenant, user["email"])
        assert r.status_code == 200, r.text
        assert r.json()["refresh_token"] is None and r.json()["access_token"]
        token, raw = cookie_of(r)
        assert token.startswith("rt.") or len(token) > 20
        attrs = [a.strip().lower() for a in raw.split(";")]
        assert {"httponly", "secure", "samesite=strict", "path=/api/auth"} <= set(attrs)
        plain = c.post("/api/auth/login", json={"tenant": tenant.slug, "email": user["email"], "password": PASSWORD})
        assert plain.json()["refresh_token"] and "set-cookie" not in plain.headers


def test_the_cookie_refreshes_only_with_the_csrf_header_and_a_refusal_loses_nothing(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant, role="OPERATOR")
    with client_from(host) as c:  # a peer address of its own: other tests' failures from 127.0.0.1 cannot throttle it
        token, _ = cookie_of(sign_in(c, tenant, user["email"]))
        cookie = {"Cookie": f"custos_refresh={token}"}
        forged = c.post("/api/auth/refresh", json={}, headers={**cookie, "Origin": "https://app.example.test"})
        assert forged.status_code == 403
        assert forged.headers["content-type"] == "application/problem+json"
        assert forged.json()["type"] == "urn:custos:problem:csrf-header-missing"
        wrong = c.post("/api/auth/refresh", json={}, headers={**cookie, "X-Custos-CSRF": "0"})
        assert wrong.json()["type"] == "urn:custos:problem:csrf-header-missing"
        ok = c.post("/api/auth/refresh", json={}, headers={**cookie, **CSRF})
        assert ok.status_code == 200, ok.text
        assert ok.json()["refresh_token"] is None
        rotated, _ = cookie_of(ok)
        assert rotated != token
        # (a replay of `token` within REFRESH_GRACE_S is two tabs racing, by design: not asserted here)
        again = c.post("/api/auth/refresh", json={}, headers={"Cookie": f"custos_refresh={rotated}", **CSRF})
        assert again.status_code == 200 and cookie_of(again)[0] not in (token, rotated)


def test_no_token_anywhere_is_unauthenticated_and_garbage_cookies_are_not_a_500(host: Host) -> None:
    with client_from(host) as c:  # a peer address of its own: other tests' failures from 127.0.0.1 cannot throttle it
        assert c.post("/api/auth/refresh", json={}, headers=CSRF).json()["type"] == "urn:custos:problem:unauthenticated"
        for junk in ('custos_refresh="unterminated', "custos_refresh=", "a=b; custos_refresh=x\x7f", "custos_refresh=" + "A" * 300):
            r = c.post("/api/auth/refresh", json={}, headers={"Cookie": junk, **CSRF})
            assert r.status_code in (400, 401, 422), (junk, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"


def test_the_csrf_header_is_never_granted_to_another_origin(host: Host) -> None:
    with client_from(host) as c:  # a peer address of its own: other tests' failures from 127.0.0.1 cannot throttle it
        r = c.options("/api/auth/refresh", headers={"Origin": "https://app.example.test",
                                                    "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "x-custos-csrf"})
        assert "x-custos-csrf" not in r.headers.get("access-control-allow-headers", "").lower()


def test_logout_deletes_the_cookie_and_the_session(host: Host, tenant: Tenant) -> None:
    user = user_with_password(tenant, role="OPERATOR")
    with client_from(host) as c:  # a peer address of its own: other tests' failures from 127.0.0.1 cannot throttle it
        r = sign_in(c, tenant, user["email"])
        token, _ = cookie_of(r)
        out = c.post("/api/auth/logout", headers={"Authorization": f"Bearer {r.json()['access_token']}", **CSRF})
        assert out.status_code == 204
        assert "max-age=0" in out.headers["set-cookie"].lower() and "path=/api/auth" in out.headers["set-cookie"].lower()
        again = c.post("/api/auth/refresh", json={}, headers={"Cookie": f"custos_refresh={token}", **CSRF})
        assert again.status_code == 401
