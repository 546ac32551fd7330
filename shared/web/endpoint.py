"""The one route wrapper every HTTP function goes through.

    @bp.route(route="api/things/{id}", methods=["GET"])
    @endpoint(permission="things.read")
    def get_thing(ctx: RequestContext) -> Thing: ...

Before the handler, `STAGES` run in this order: cors, rate_limit, body_size, characters,
json, card_data, authenticate, authorize, query, body. They check the Origin allow-list (403),
the per-IP rate (429) and body size (413), refuse NUL and lone surrogates in route and query,
parse the JSON body once (depth, NUL, surrogates), refuse card data, verify the bearer token
and load the caller from the database, apply caller kind, support rules, second factor,
permission and cancelled-tenant rules, and parse query and body into the endpoint's pydantic
models. Then the handler makes one call into a domain `api` module,
which owns its transaction (shared.web.caller); its result is rendered; every `AppError`
becomes RFC 9457 problem+json and anything else a bare 500 carrying only the request id; a
support token's request is written to the tenant's audit trail; security headers are added
to every response; one access-log line is written. Each request gets a request id first.
The function `endpoint` returns has exactly the signature `(req)` the Functions worker binds,
so guards never add parameters to a function's signature.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
from pydantic import BaseModel, ValidationError

from shared.audit import chain as audit
from shared.audit.chain import RequestMeta
from shared.core import db, telemetry
from shared.core.db import Conn
from shared.core.errors import (
    AppError,
    BlankValue,
    Forbidden,
    InternalError,
    MalformedRequest,
    NotFound,
    OriginNotAllowed,
    PayloadTooLarge,
    TenantLocked,
    Unauthenticated,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.core.settings import get_settings
from shared.identity.guards import (
    Principal,
    bearer_token,
    principal_for,
    principal_in_tenant_tx,
    require_mfa_enrolment,
    require_operator,
    require_permission,
    require_tenant_user,
)
from shared.identity.ratelimit import api_limiter
from shared.identity.sso import scim_tokens
from shared.identity.tokens import AccessClaims, verify_access_token
from shared.tenancy.rbac import SUPPORT, SUPPORT_PERMISSIONS
from shared.web import jsonio
from shared.web.card_data import find_card_data, redact_card_numbers
from shared.web.errors import CardDataRefused
from shared.web.models import BLANK

access_log = logging.getLogger("custos.access")
log = logging.getLogger("custos.http")

SECURITY_HEADERS: dict[str, str] = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains; preload",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Content-Disposition, If-Match, X-Request-Id"
CORS_EXPOSE_HEADERS = "X-Request-Id, Retry-After, Location, ETag"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class EndpointSpec:
    """What an endpoint declares; the OpenAPI document is generated from these."""

    permission: str | None
    auth: bool
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    raw_body: tuple[tuple[str, type[BaseModel] | None], ...]
    """Bodies the handler reads itself (not JSON into `body`), for the OpenAPI document: each
    media type with the model of its fields (a form) or None (any bytes)."""
    preflight: bool
    operator: bool
    body_limit: str
    summary: str
    tags: tuple[str, ...]
    mfa_enrolment: bool = False
    allow_cancelled: bool = False
    allow_support: bool = False
    media_type: str | None = None
    statuses: tuple[int, ...] = ()
    scim: bool = False
    security_headers: tuple[tuple[str, str], ...] = ()
    cacheable: bool = False


class ResponseContractError(Exception):
    """A handler answered with a body its endpoint does not declare (raised only where
    `custos_env` is "test", so the wrapper turns it into a logged 500 the tests see)."""


@dataclass
class Reply:
    """A handler result with a status, headers, or a non-JSON body."""

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str | None = None


@dataclass
class RequestContext:
    """What a handler gets: the request, its caller and its parsed input."""

    request: func.HttpRequest
    request_id: str
    client_ip: str
    user_agent: str
    principal: Principal | None = None
    claims: AccessClaims | None = None
    body: Any = None
    query: Any = None
    json: Any = None
    cors_origin: str | None = None
    held_tx: Conn | None = None
    """The tenant transaction opened with the caller's authentication, for the first `tenant_tx`."""

    @property
    def route(self) -> dict[str, str]:
        return dict(self.request.route_params or {})

    @property
    def tenant_id(self) -> str:
        """The caller's tenant, from the token. Raises Unauthenticated for tenantless callers."""
        if self.principal is None or self.principal.tenant_id is None:
            raise Unauthenticated("a tenant user is required")
        return self.principal.tenant_id

    @property
    def user(self) -> Principal:
        """The authenticated caller. Raises Unauthenticated on an endpoint without authentication."""
        if self.principal is None:
            raise Unauthenticated("authentication required")
        return self.principal

    @property
    def actor(self) -> audit.Actor:
        """Who is acting, as the audit trail records it."""
        return audit.context_actor(self)[0]

    @property
    def meta(self) -> audit.RequestMeta:
        """The request's IP, user agent, session and id, as the audit trail records them."""
        return audit.context_actor(self)[1]

    def tenant_tx(self) -> AbstractContextManager[Conn]:
        """A transaction in the caller's tenant (see shared.web.caller: domain calls open it).
        The first one is the transaction the authentication already opened, when it did."""
        held, self.held_tx = self.held_tx, None
        if held is not None:
            return db.held_tx(held)
        return db.tenant_tx(self.tenant_id)

    def int_param(self, name: str) -> int:
        """A positive 32-bit route parameter; anything else is simply not found."""
        value = self.route.get(name, "")
        if not value.isdigit() or not 1 <= int(value) <= 2**31 - 1:
            raise NotFound()
        return int(value)

    def uuid_param(self, name: str) -> uuid.UUID:
        """A route parameter as a UUID; a malformed id is simply not found (never a 500)."""
        try:
            return uuid.UUID(self.route.get(name, ""))
        except ValueError:
            raise NotFound() from None


Handler = Callable[[RequestContext], Any]


def endpoint(
    *,
    permission: str | None = None,
    auth: bool = True,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    raw_body: dict[str, type[BaseModel] | None] | None = None,
    preflight: bool = False,
    operator: bool = False,
    body_limit: str = "max_body_bytes",
    tags: tuple[str, ...] = (),
    mfa_enrolment: bool = False,
    allow_cancelled: bool = False,
    allow_support: bool = False,
    media_type: str | None = None,
    statuses: tuple[int, ...] = (),
    scim: bool = False,
    security_headers: dict[str, str] | None = None,
    cacheable: bool = False,
) -> Callable[[Handler], Callable[[func.HttpRequest], func.HttpResponse]]:
    """Wrap a handler into a Functions HTTP function. See the module docstring.

    `allow_cancelled` lets a write through while the caller's tenant is cancelled (sign-out,
    session revocation, export). `allow_support` admits a support token to an endpoint that
    has no permission of its own (its logout); otherwise a support token reaches only
    endpoints whose permission is one of the read-only support permissions.

    `response` is the model of the JSON success body (the OpenAPI document shows it, and in
    the test environment every answer is checked against it); `media_type` names a non-JSON
    success body; `statuses` are the statuses the handler answers beyond the wrapper's own
    (e.g. 502 when a stored file fails its hash check). `raw_body` documents a body the handler
    reads itself instead of `body`'s JSON: media type -> the model of its form fields, or None
    for any bytes (an attachment).

    `scim` makes a SCIM 2.0 endpoint (shared.identity.sso.scim): it authenticates with a
    tenant's SCIM bearer token instead of a user's access token (the token decides the tenant;
    row-level security applies as for any caller), takes no permission (a SCIM token reaches
    the SCIM endpoints and nothing else), and renders every error in the SCIM error schema
    (RFC 7644 section 3.12) as `application/scim+json` instead of problem+json.

    `security_headers` replace some of `SECURITY_HEADERS` for this endpoint only (the console's
    pages need a CSP that admits their own scripts; no API endpoint should use it). A
    `cacheable` endpoint's successful answers keep the `Cache-Control` the handler set (the
    console's hashed assets); its errors are `no-store` like every other answer.

    Raises:
        ValueError: for contradictory options.
    """
    if (permission or operator) and not auth:
        raise ValueError("an endpoint with a permission must authenticate")
    if permission and operator:
        raise ValueError("operator endpoints take no tenant permission")
    if body is not None and raw_body:
        raise ValueError("an endpoint reads a JSON body into `body` or reads its body itself (`raw_body`), not both")
    if scim and (permission or operator or not auth):
        raise ValueError("a SCIM endpoint authenticates with a SCIM token and takes no permission")

    def decorate(handler: Handler) -> Callable[[func.HttpRequest], func.HttpResponse]:
        spec = EndpointSpec(
            permission=permission,
            auth=auth,
            body=body,
            query=query,
            response=response,
            status=status,
            raw_body=tuple((raw_body or {}).items()),
            preflight=preflight,
            operator=operator,
            body_limit=body_limit,
            summary=(handler.__doc__ or handler.__name__).strip().splitlines()[0],
            tags=tags,
            mfa_enrolment=mfa_enrolment,
            allow_cancelled=allow_cancelled,
            allow_support=allow_support,
            media_type=media_type,
            statuses=statuses,
            scim=scim,
            security_headers=tuple(sorted((security_headers or {}).items())),
            cacheable=cacheable,
        )
        checked = _contract_checked(spec, handler)

        def wrapper(req: func.HttpRequest) -> func.HttpResponse:
            with telemetry.server_span(handler.__name__, req.method):
                return _handle(spec, checked, req)

        wrapper.__name__ = handler.__name__
        wrapper.__qualname__ = handler.__qualname__
        wrapper.__doc__ = handler.__doc__
        wrapper.__module__ = handler.__module__
        wrapper.__custos_endpoint__ = spec  # type: ignore[attr-defined]
        wrapper.__custos_handler__ = handler  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _contract_checked(spec: EndpointSpec, handler: Handler) -> Handler:
    """The handler, checking its answers against the spec where `custos_env` is "test".

    Production pays one attribute read per request; the check itself (a strict JSON
    validation of the body) runs only in tests, where schemathesis and every HTTP test see a
    drifted model as a 500.
    """

    def run(ctx: RequestContext) -> Any:
        result = handler(ctx)
        if get_settings().custos_env == "test":
            check_response_contract(spec, result, name=handler.__name__)
        return result

    return run


def check_response_contract(spec: EndpointSpec, result: Any, *, name: str) -> None:
    """Check a handler's result against what its endpoint declares.

    Raises:
        ResponseContractError: a JSON body without a declared model, a body that does not
            validate against the model, or a body of an undeclared media type.
    """
    if isinstance(result, func.HttpResponse):
        return
    body, media_type = (result.body, result.media_type) if isinstance(result, Reply) else (result, None)
    if body is None:
        return
    if isinstance(body, (bytes, str)) and media_type:
        if spec.media_type is None:
            raise ResponseContractError(f"{name} answers {media_type} but declares no media_type")
        return
    if spec.response is None:
        raise ResponseContractError(f"{name} answers a JSON body but declares no response model")
    payload = jsonio.dumps(body)
    try:
        spec.response.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        if all(e["type"] == "json_invalid" and "recursion" in e["msg"] for e in exc.errors()):
            return  # stored data deeper than pydantic's parser goes (an older version's); rendered anyway
        raise ResponseContractError(f"{name} answered a body its model {spec.response.__name__} refuses: {exc}") from None


def endpoint_spec(fn: Callable[..., Any]) -> EndpointSpec | None:
    """The spec of a wrapped function, or None if it is not wrapped."""
    return getattr(fn, "__custos_endpoint__", None)


def client_ip(req: func.HttpRequest) -> str:
    """The right-most X-Forwarded-For entry (the one Azure's front end appends), if it is an
    IP address; "" otherwise. It is stored (sessions, audit) and used as a throttle key, so
    a forged or garbled header must never reach the database as anything but an address."""
    forwarded = req.headers.get("X-Forwarded-For") or ""
    entries = [e.strip() for e in forwarded.split(",") if e.strip()]
    if not entries:
        return ""
    ip = entries[-1]
    if ip.startswith("["):  # [v6]:port
        ip = ip[1:].split("]", 1)[0]
    elif ip.count(":") == 1:  # v4:port
        ip = ip.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ""


_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def header_text(req: func.HttpRequest, name: str, limit: int = 512) -> str:
    """A header value fit to store and log: control characters and lone surrogates removed."""
    return _CONTROL.sub("", req.headers.get(name) or "")[:limit]


Stage = Callable[["RequestContext", EndpointSpec], None]


def _stage_cors(ctx: RequestContext, spec: EndpointSpec) -> None:
    """A request from an Origin outside the allow-list is refused (403); a same-origin one
    (the console served by this app: browsers send Origin on its module scripts and POSTs)
    is no cross-origin request at all."""
    origin = ctx.request.headers.get("Origin")
    if origin is not None and _same_origin(origin, ctx.request.headers.get("Host")):
        return
    if _check_origin(origin, get_settings().cors_origins):
        ctx.cors_origin = origin


def _stage_rate_limit(ctx: RequestContext, spec: EndpointSpec) -> None:
    """The per-worker, per-IP API limiter (429)."""
    api_limiter().take(ctx.client_ip or "unknown")


def _stage_body_size(ctx: RequestContext, spec: EndpointSpec) -> None:
    """Bodies over the endpoint's limit are refused before they are read further (413)."""
    _check_size(ctx.request, getattr(get_settings(), spec.body_limit))


def _stage_characters(ctx: RequestContext, spec: EndpointSpec) -> None:
    """NUL and lone surrogates: a route parameter holding one names nothing (404), a query 422."""
    _check_route_and_query(ctx.request)


def _stage_json(ctx: RequestContext, spec: EndpointSpec) -> None:
    """A JSON body is parsed once and checked: depth, NUL, lone surrogates (422)."""
    ctx.json = _read_json(ctx.request)


def _stage_card_data(ctx: RequestContext, spec: EndpointSpec) -> None:
    """Card numbers and security codes in the query or the JSON body are refused (422)."""
    _refuse_card_data(ctx.request, ctx.json)


def _stage_authenticate(ctx: RequestContext, spec: EndpointSpec) -> None:
    """The bearer token is verified and the caller loaded from the database (401)."""
    if spec.scim:
        ctx.principal = scim_tokens.authenticate(bearer_token(ctx.request))
    elif spec.auth:
        ctx.claims = claims = verify_access_token(bearer_token(ctx.request))
        meta = RequestMeta(ctx.client_ip or None, ctx.user_agent or None, claims.session_id, ctx.request_id)
        if spec.permission and claims.tenant_id is not None and claims.role != SUPPORT:
            # A tenant endpoint: its handler's first tenant transaction opens in the message
            # that loads the caller (one round trip fewer per request).
            ctx.principal, ctx.held_tx = principal_in_tenant_tx(claims, meta)
        else:
            ctx.principal = principal_for(claims, meta)


def _stage_authorize(ctx: RequestContext, spec: EndpointSpec) -> None:
    """Caller kind, support rules, second-factor enrolment, permission, tenant state (403, 423)."""
    if spec.auth:
        _authorize(ctx, spec, ctx.request)


def _stage_query(ctx: RequestContext, spec: EndpointSpec) -> None:
    """The query string into the endpoint's model (422)."""
    if spec.query is not None:
        ctx.query = _validate(spec.query, dict(ctx.request.params or {}), "query")


def _stage_body(ctx: RequestContext, spec: EndpointSpec) -> None:
    """The JSON body into the endpoint's model (415, 400, 422)."""
    if spec.body is not None and ctx.request.method.upper() in BODY_METHODS:
        ctx.body = _validate(spec.body, ctx.json if ctx.json is not _NO_JSON else _parse_json(ctx.request), "body")


STAGES: tuple[tuple[str, Stage], ...] = (
    ("cors", _stage_cors),
    ("rate_limit", _stage_rate_limit),
    ("body_size", _stage_body_size),
    ("characters", _stage_characters),
    ("json", _stage_json),
    ("card_data", _stage_card_data),
    ("authenticate", _stage_authenticate),
    ("authorize", _stage_authorize),
    ("query", _stage_query),
    ("body", _stage_body),
)
"""What runs before the handler, in this order; the README lists the same names (a test checks).
After the handler: its result is rendered; any AppError becomes problem+json and anything else
a bare 500; a request made with a support token is written to the tenant's audit trail; the
security and CORS headers are added; one access-log line is written."""

AFTER_HANDLER: tuple[str, ...] = ("render", "problem", "support_audit", "headers", "access_log")


def _handle(spec: EndpointSpec, handler: Handler, req: func.HttpRequest) -> func.HttpResponse:
    started = time.perf_counter()
    ctx = RequestContext(
        request=req,
        request_id=str(uuid.uuid4()),
        client_ip=client_ip(req),
        user_agent=redact_card_numbers(header_text(req, "User-Agent", limit=2048), limit=512),  # logged and audited
    )
    try:
        if spec.preflight:
            _stage_cors(ctx, spec)
            response = _preflight(req, ctx.cors_origin, get_settings().cors_max_age_s)
        else:
            for _, stage in STAGES:
                stage(ctx, spec)
            response = _render(handler(ctx), spec.status)
    except AppError as exc:
        response = _scim_error(exc) if spec.scim else _problem(exc, ctx.request_id)
    except Exception:
        log.exception("unhandled error request_id=%s", ctx.request_id)
        response = _scim_error(InternalError()) if spec.scim else _problem(InternalError(), ctx.request_id)
    if ctx.held_tx is not None:  # refused before the handler, or a handler that used no tenant transaction
        _release_held(ctx)
    if ctx.claims is not None and ctx.claims.role == SUPPORT:
        response = _audit_support_request(ctx, req, response)
    _finish(response, ctx.request_id, ctx.cors_origin, spec)
    _log_access(ctx, req, response, started)
    return response


def _release_held(ctx: RequestContext) -> None:
    """Give back the unused transaction opened with the authentication (nothing was written in it)."""
    held, ctx.held_tx = ctx.held_tx, None
    assert held is not None
    try:
        db.release(held)
    except AppError:
        log.warning("could not end an unused transaction request_id=%s", ctx.request_id)


def _authorize(ctx: RequestContext, spec: EndpointSpec, req: func.HttpRequest) -> None:
    principal = ctx.user
    if spec.scim:
        if not principal.is_scim_token:
            raise Unauthenticated("a SCIM bearer token is required")
        if req.method.upper() not in SAFE_METHODS and principal.tenant_status != "ACTIVE":
            raise TenantLocked("the tenant is cancelled: data is read-only until it is purged")
        return
    if principal.is_scim_token:
        raise Forbidden("a SCIM token reaches only the SCIM endpoints")
    if spec.operator:
        require_operator(principal)
        require_mfa_enrolment(principal, enrolment_endpoint=spec.mfa_enrolment)
        return
    require_tenant_user(principal)
    if principal.is_support and not spec.allow_support and spec.permission not in SUPPORT_PERMISSIONS:
        raise Forbidden("support access is read-only: this endpoint acts as a tenant user")
    require_mfa_enrolment(principal, enrolment_endpoint=spec.mfa_enrolment)
    if spec.permission:
        require_permission(principal, spec.permission)
    if (req.method.upper() not in SAFE_METHODS and principal.tenant_status != "ACTIVE"
            and not spec.allow_cancelled):
        raise TenantLocked("the tenant is cancelled: data is read-only until it is purged")


def _check_route_and_query(req: func.HttpRequest) -> None:
    """NUL and lone surrogates never reach a handler: a route parameter holding one names
    nothing (404), a query holding one is refused (422)."""
    for value in (req.route_params or {}).values():
        try:
            jsonio.check_text(value, ["path"])
        except jsonio.ForbiddenCharacters:
            raise NotFound() from None
    for name, value in (req.params or {}).items():
        jsonio.check_text(name, ["query"])
        jsonio.check_text(value, ["query", name])


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether a browser's Origin names the host the request was sent to. A browser sets
    both truthfully; anything else could forge either, and CORS protects browsers only."""
    if not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


def _check_origin(origin: str | None, allowed: frozenset[str]) -> bool:
    if origin is None:
        return False
    if origin not in allowed:
        raise OriginNotAllowed(f"origin {origin[:200]} is not allowed")
    return True


def _preflight(req: func.HttpRequest, origin: str | None, max_age: int) -> func.HttpResponse:
    requested = req.headers.get("Access-Control-Request-Method")
    if origin is None or not requested:
        raise NotFound()
    return func.HttpResponse(
        status_code=204,
        headers={
            "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
            "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": str(max_age),
        },
    )


def _check_size(req: func.HttpRequest, limit: int) -> None:
    declared = req.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body may be at most {limit} bytes", limit=limit)
    if len(req.get_body() or b"") > limit:
        raise PayloadTooLarge(f"the body may be at most {limit} bytes", limit=limit)


_NO_JSON = object()


def _is_json(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _media(req: func.HttpRequest) -> str:
    return (req.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


def _read_json(req: func.HttpRequest) -> Any:
    """The JSON body parsed once and checked (depth, NUL, surrogates); _NO_JSON when the body
    is empty, not declared JSON, or not parseable (reported where a body is required).

    Raises:
        JsonTooDeep, ForbiddenCharacters: see shared.web.jsonio.
    """
    raw = req.get_body() or b""
    if not raw.strip() or not _is_json(_media(req)):
        return _NO_JSON
    try:
        return jsonio.parse_body(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, AppError):
            raise
        return _NO_JSON


def _refuse_card_data(req: func.HttpRequest, parsed: Any) -> None:
    """Refuse card numbers and CVVs in the query or a JSON body before anything else sees them."""
    for name, value in (req.params or {}).items():
        if find_card_data({name: value}) is not None:
            raise CardDataRefused(location=["query", name])
    if parsed is not _NO_JSON:
        found = find_card_data(parsed)
        if found is not None:
            raise CardDataRefused(location=["body", *found])


def _parse_json(req: func.HttpRequest) -> Any:
    if not _is_json(_media(req)):
        raise UnsupportedMediaType("send the body as application/json")
    raw = req.get_body() or b""
    if not raw.strip():
        raise MalformedRequest("a JSON body is required", code_detail="empty-body")
    try:
        return jsonio.parse_body(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, AppError):
            raise
        raise MalformedRequest(f"the body is not valid JSON: {_json_error(exc)}") from None


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    return str(exc)


def _validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Never echo the input back: it may hold a password or a card number.
        errors = [
            {"location": [where, *err["loc"]], "message": err["msg"], "code": err["type"]}
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        if all(err["code"] == BLANK for err in errors):
            raise BlankValue(f"the {where} holds a blank text", errors=errors) from None
        raise ValidationFailed(f"the {where} is not valid", errors=errors) from None


def _render(result: Any, status: int) -> func.HttpResponse:
    if isinstance(result, func.HttpResponse):
        return result
    headers: dict[str, str] = {}
    media_type: str | None = None
    if isinstance(result, Reply):
        status, headers, media_type, result = result.status, dict(result.headers), result.media_type, result.body
    if result is None and status == 200:
        status = 204
    if result is None:
        return func.HttpResponse(status_code=status, headers=headers)
    if isinstance(result, (bytes, str)) and media_type:
        return func.HttpResponse(body=result, status_code=status, headers={**headers, "Content-Type": media_type})
    headers["Content-Type"] = media_type or "application/json; charset=utf-8"
    return func.HttpResponse(body=jsonio.dumps(result), status_code=status, headers=headers)


def _problem(exc: AppError, request_id: str) -> func.HttpResponse:
    body = exc.to_problem()
    body["request_id"] = request_id
    return func.HttpResponse(
        body=json.dumps(body, ensure_ascii=False).encode(),
        status_code=exc.status,
        headers={**exc.headers(), "Content-Type": "application/problem+json"},
    )


SCIM_MEDIA_TYPE = "application/scim+json"
SCIM_ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


def _scim_error(exc: AppError) -> func.HttpResponse:
    """`exc` in the SCIM error schema (RFC 7644 section 3.12). SCIM knows no 415 or 422: a body
    it cannot parse is 400 invalidSyntax, a value it refuses 400 invalidValue (what SCIM clients
    act on); the SCIM error schema has no room for the problem `type`."""
    status, scim_type = exc.status, getattr(exc, "scim_type", None)
    if scim_type is None and isinstance(exc, (MalformedRequest, UnsupportedMediaType)):
        status, scim_type = 400, "invalidSyntax"
    elif scim_type is None and (isinstance(exc, ValidationFailed) or status == 422):
        status, scim_type = 400, "invalidValue"
    body: dict[str, Any] = {"schemas": [SCIM_ERROR_SCHEMA], "status": str(status)}
    if scim_type:
        body["scimType"] = scim_type
    body["detail"] = exc.detail or exc.title
    headers = exc.headers()
    if isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer realm="custos-scim", error="invalid_token"'}
    return func.HttpResponse(body=json.dumps(body, ensure_ascii=False).encode(), status_code=status,
                             headers={**headers, "Content-Type": SCIM_MEDIA_TYPE})


def problem_response(exc: AppError, request_id: str) -> func.HttpResponse:
    """`exc` rendered as the wrapper renders it (problem+json, `request_id`, the error's headers),
    for a host that answers before any function runs, e.g. devhost's 404 and 405."""
    return _problem(exc, request_id)


def _finish(response: func.HttpResponse, request_id: str, cors_origin: str | None, spec: EndpointSpec) -> None:
    headers = response.headers
    cache_control = headers.get("Cache-Control")
    for name, value in {**SECURITY_HEADERS, **dict(spec.security_headers)}.items():
        headers[name] = value
    if spec.cacheable and cache_control and response.status_code == 200:
        headers["Cache-Control"] = cache_control
    headers["X-Request-Id"] = request_id
    if cors_origin:
        headers["Access-Control-Allow-Origin"] = cors_origin
        headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
        headers["Vary"] = "Origin"


def _audit_support_request(ctx: RequestContext, req: func.HttpRequest, response: func.HttpResponse) -> func.HttpResponse:
    """Every request made with a support token is in the tenant's audit trail, refused and
    failed ones included. A served request whose event cannot be written is not served."""
    claims = ctx.claims
    assert claims is not None and claims.tenant_id is not None
    served = response.status_code < 400
    try:
        tenant_id = str(uuid.UUID(claims.tenant_id))
        actor = audit.Actor(id=claims.subject, name=(ctx.principal.name if ctx.principal else claims.name) or "",
                            type="operator")
        with db.tenant_tx(tenant_id) as conn:
            audit.append(
                conn, tenant_id=tenant_id, actor=actor, action="support.accessed" if served else "support.refused",
                target_type="support_grant", target_id=claims.session_id,
                after={"method": req.method, "path": redact_card_numbers(urlsplit(req.url).path),
                       "status": response.status_code},
                meta=audit.RequestMeta(ip=ctx.client_ip or None, user_agent=ctx.user_agent or None, request_id=ctx.request_id,
                                       session_id=claims.session_id),
            )
    except Exception:
        log.exception("support request not audited request_id=%s", ctx.request_id)
        if served:
            return _problem(InternalError(), ctx.request_id)
    return response


def _log_access(ctx: RequestContext, req: func.HttpRequest, response: func.HttpResponse, started: float) -> None:
    p = ctx.principal
    path = redact_card_numbers(urlsplit(req.url).path)  # never the query: it may carry tokens
    # The fields go as `extra` (Application Insights custom dimensions, devhost's JSON keys),
    # not as JSON inside the message.
    fields = {
        "request_id": ctx.request_id,
        "method": req.method,
        "path": path,
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "tenant": p.tenant_id if p else None,
        "user": p.user_id if p else None,
        "session": p.session_id if p else None,
        "ip": ctx.client_ip,
        "user_agent": ctx.user_agent,
    }
    access_log.info("%s %s %s", req.method, path, response.status_code, extra=fields)
    telemetry.annotate_request(fields)
