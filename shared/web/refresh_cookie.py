"""The refresh token in a cookie, for the admin console (docs/console.md, "Tokens").

A browser page keeps its access token in memory only; its refresh token lives in an
`HttpOnly; Secure; SameSite=Strict` cookie scoped to `/api/auth`, so no script (nor an XSS)
can read it, and it travels only to the refresh and logout endpoints. The page opts in by
sending `X-Custos-CSRF: 1`: token endpoints then put the refresh token in the cookie instead
of the body, and refresh/logout read the cookie only when the header is there. A cross-site
form cannot add a custom header, and a cross-site script cannot either without a CORS
preflight that Custos never grants for it (`CORS_ALLOW_HEADERS` leaves it out); SameSite=Strict
keeps the cookie off cross-site requests besides. API clients that send the refresh token in
the body are unaffected.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from http.cookies import CookieError, SimpleCookie
from typing import Any

import azure.functions as func

from shared.core.errors import Unauthenticated
from shared.web.endpoint import Reply
from shared.web.errors import CsrfHeaderMissing

COOKIE = "custos_refresh"
PATH = "/api/auth"
CSRF_HEADER = "X-Custos-CSRF"


def wants_cookie(req: func.HttpRequest) -> bool:
    """Whether the request comes from the console (it sent the custom header)."""
    return (req.headers.get(CSRF_HEADER) or "").strip() == "1"


def set_cookie(token: str, expires: datetime) -> str:
    """The Set-Cookie value that stores `token` until `expires`."""
    return (f"{COOKIE}={token}; Path={PATH}; Expires={format_datetime(expires.astimezone(UTC), usegmt=True)}; "
            "HttpOnly; Secure; SameSite=Strict")


def clear_cookie() -> str:
    """The Set-Cookie value that deletes the cookie."""
    return f"{COOKIE}=; Path={PATH}; Max-Age=0; HttpOnly; Secure; SameSite=Strict"


def deliver(req: func.HttpRequest, tokens: dict[str, Any]) -> Reply:
    """The token answer: for the console the refresh token moves from the body to the cookie."""
    token = tokens.get("refresh_token")
    if not token or not wants_cookie(req):
        return Reply(body=tokens)
    expires = tokens["refresh_expires_at"]
    return Reply(body={**tokens, "refresh_token": None}, headers={"Set-Cookie": set_cookie(token, expires)})


def read(req: func.HttpRequest) -> str:
    """The refresh token from the cookie.

    Raises:
        CsrfHeaderMissing: a cookie came without `X-Custos-CSRF: 1` (a cross-site request).
        Unauthenticated: no refresh token in the body or the cookie.
    """
    token = _cookie(req)
    if token is None:
        raise Unauthenticated("send the refresh token in the body, or sign in again")
    if not wants_cookie(req):
        raise CsrfHeaderMissing(f"a request authenticated by the refresh cookie must send {CSRF_HEADER}: 1")
    return token


def logged_out(req: func.HttpRequest) -> Reply:
    """The logout answer: the console's cookie is deleted."""
    return Reply(status=204, headers={"Set-Cookie": clear_cookie()} if wants_cookie(req) else {})


def _cookie(req: func.HttpRequest) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        # The host joins repeated headers with ","; cookies are ";"-separated, so split both.
        jar.load((req.headers.get("Cookie") or "").replace(",", ";"))
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None
