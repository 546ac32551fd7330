"""The one route wrapper every HTTP function goes through.

    @bp.route(route="api/things/{id}", methods=["GET"])
    @endpoint(permission="things.read")
    def get_thing(ctx: RequestContext) -> Thing: ...

In order, the wrapper: assigns a request id; refuses oversized bodies; applies the CORS
allow-list (answering preflights); authenticates the bearer token; takes the tenant from
the token; checks the permission; parses the JSON body and query into pydantic models;
calls the handler; renders every `AppError` as RFC 9457 problem+json and anything else as a
bare 500 carrying only the request id; adds security headers to every response; writes one
access-log line. The function it returns has exactly the signature `(req)` the Functions
worker binds, so guards never add parameters to a function's signature.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from shared.card_data import find_card_data, redact_card_numbers
from shared.errors import (
    AppError,
    CardDataRefused,
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
from shared.guards import (
    Principal,
    authenticate,
    require_mfa_enrolment,
    require_operator,
    require_permission,
    require_tenant_user,
)
from shared.ratelimit import api_limiter
from shared.settings import get_settings

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
    raw_body: bool
    preflight: bool
    operator: bool
    body_limit: str
    summary: str
    tags: tuple[str, ...]
    mfa_enrolment: bool = False


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
    body: Any = None
    query: Any = None

    @property
    def route(self) -> dict[str, str]:
        return dict(self.request.route_params or {})

    @property
    def tenant_id(self) -> str:
        """The caller's tenant, from the token. Raises Unauthenticated for tenantless callers."""
        if self.principal is None or self.principal.tenant_id is None:
            raise Unauthenticated("a tenant user is required")
        return self.principal.tenant_id

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
    raw_body: bool = False,
    preflight: bool = False,
    operator: bool = False,
    body_limit: str = "max_body_bytes",
    tags: tuple[str, ...] = (),
    mfa_enrolment: bool = False,
) -> Callable[[Handler], Callable[[func.HttpRequest], func.HttpResponse]]:
    """Wrap a handler into a Functions HTTP function. See the module docstring."""
    if (permission or operator) and not auth:
        raise ValueError("an endpoint with a permission must authenticate")
    if permission and operator:
        raise ValueError("operator endpoints take no tenant permission")

    def decorate(handler: Handler) -> Callable[[func.HttpRequest], func.HttpResponse]:
        spec = EndpointSpec(
            permission=permission,
            auth=auth,
            body=body,
            query=query,
            response=response,
            status=status,
            raw_body=raw_body,
            preflight=preflight,
            operator=operator,
            body_limit=body_limit,
            summary=(handler.__doc__ or handler.__name__).strip().splitlines()[0],
            tags=tags,
            mfa_enrolment=mfa_enrolment,
        )

        def wrapper(req: func.HttpRequest) -> func.HttpResponse:
            return _handle(spec, handler, req)

        wrapper.__name__ = handler.__name__
        wrapper.__qualname__ = handler.__qualname__
        wrapper.__doc__ = handler.__doc__
        wrapper.__module__ = handler.__module__
        wrapper.__custos_endpoint__ = spec  # type: ignore[attr-defined]
        wrapper.__custos_handler__ = handler  # type: ignore[attr-defined]
        return wrapper

    return decorate


def endpoint_spec(fn: Callable[..., Any]) -> EndpointSpec | None:
    """The spec of a wrapped function, or None if it is not wrapped."""
    return getattr(fn, "__custos_endpoint__", None)


def client_ip(req: func.HttpRequest) -> str:
    """The right-most X-Forwarded-For entry: the one Azure's front end appends."""
    forwarded = req.headers.get("X-Forwarded-For") or ""
    entries = [e.strip() for e in forwarded.split(",") if e.strip()]
    if not entries:
        return ""
    ip = entries[-1]
    if ip.startswith("["):  # [v6]:port
        return ip[1:].split("]", 1)[0]
    if ip.count(":") == 1:  # v4:port
        return ip.split(":", 1)[0]
    return ip


def _handle(spec: EndpointSpec, handler: Handler, req: func.HttpRequest) -> func.HttpResponse:
    started = time.perf_counter()
    ctx = RequestContext(
        request=req,
        request_id=str(uuid.uuid4()),
        client_ip=client_ip(req),
        user_agent=redact_card_numbers(req.headers.get("User-Agent") or "", limit=512),  # logged and audited
    )
    origin = req.headers.get("Origin")
    cors_ok = False
    try:
        settings = get_settings()
        cors_ok = _check_origin(origin, settings.cors_origins)
        if spec.preflight:
            response = _preflight(req, origin, settings.cors_max_age_s)
        else:
            api_limiter().take(ctx.client_ip or "unknown")
            _check_size(req, getattr(settings, spec.body_limit))
            parsed = _refuse_card_data(req)
            if spec.auth:
                ctx.principal = authenticate(req)
                if spec.operator:
                    require_operator(ctx.principal)
                else:
                    require_tenant_user(ctx.principal)
                    require_mfa_enrolment(ctx.principal, enrolment_endpoint=spec.mfa_enrolment)
                    if spec.permission:
                        require_permission(ctx.principal, spec.permission)
                    if req.method.upper() not in SAFE_METHODS and ctx.principal.tenant_status != "ACTIVE":
                        raise TenantLocked("the tenant is cancelled: data is read-only until it is purged")
            if spec.query is not None:
                ctx.query = _validate(spec.query, dict(req.params or {}), "query")
            if spec.body is not None and req.method.upper() in BODY_METHODS:
                ctx.body = _validate(spec.body, parsed if parsed is not _NO_JSON else _parse_json(req), "body")
            response = _render(handler(ctx), spec.status)
            if ctx.principal is not None and ctx.principal.is_support:
                _audit_support_access(ctx, req, response)
    except AppError as exc:
        response = _problem(exc, ctx.request_id)
    except Exception:
        log.exception("unhandled error request_id=%s", ctx.request_id)
        response = _problem(InternalError(), ctx.request_id)
    _finish(response, ctx.request_id, origin if cors_ok else None)
    _log_access(ctx, req, response, started)
    return response


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


def _refuse_card_data(req: func.HttpRequest) -> Any:
    """Refuse card numbers and CVVs in the query or a JSON body before anything else sees
    them; returns the parsed body (or _NO_JSON) so it is parsed once."""
    for name, value in (req.params or {}).items():
        if find_card_data({name: value}) is not None:
            raise CardDataRefused(location=["query", name])
    media = (req.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    raw = req.get_body() or b""
    if not raw.strip() or not (media == "application/json" or media.endswith("+json")):
        return _NO_JSON
    try:
        parsed = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        return _NO_JSON  # reported as malformed where the body is parsed
    found = find_card_data(parsed)
    if found is not None:
        raise CardDataRefused(location=["body", *found])
    return parsed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(req: func.HttpRequest) -> Any:
    media = (req.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType("send the body as application/json")
    raw = req.get_body() or b""
    if not raw.strip():
        raise MalformedRequest("a JSON body is required", code_detail="empty-body")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
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
    payload = json.dumps(to_jsonable_python(result, by_alias=True), ensure_ascii=False, separators=(",", ":"))
    headers["Content-Type"] = media_type or "application/json; charset=utf-8"
    return func.HttpResponse(body=payload.encode(), status_code=status, headers=headers)


def _problem(exc: AppError, request_id: str) -> func.HttpResponse:
    body = exc.to_problem()
    body["request_id"] = request_id
    return func.HttpResponse(
        body=json.dumps(body, ensure_ascii=False).encode(),
        status_code=exc.status,
        headers={**exc.headers(), "Content-Type": "application/problem+json"},
    )


def _finish(response: func.HttpResponse, request_id: str, cors_origin: str | None) -> None:
    headers = response.headers
    for name, value in SECURITY_HEADERS.items():
        headers[name] = value
    headers["X-Request-Id"] = request_id
    if cors_origin:
        headers["Access-Control-Allow-Origin"] = cors_origin
        headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
        headers["Vary"] = "Origin"


def _audit_support_access(ctx: RequestContext, req: func.HttpRequest, response: func.HttpResponse) -> None:
    """Every request an operator makes under support access is in the tenant's audit trail."""
    from shared import audit, db  # audit imports this module's types

    assert ctx.principal is not None
    with db.tenant_tx(ctx.tenant_id) as conn:
        audit.record(
            conn, ctx, "support.accessed", target_type="support_grant", target_id=ctx.principal.support_grant_id,
            after={"method": req.method, "path": urlsplit(req.url).path, "status": response.status_code},
        )


def _log_access(ctx: RequestContext, req: func.HttpRequest, response: func.HttpResponse, started: float) -> None:
    p = ctx.principal
    access_log.info(
        json.dumps(
            {
                "request_id": ctx.request_id,
                "method": req.method,
                "path": redact_card_numbers(urlsplit(req.url).path),  # never the query: it may carry tokens
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "tenant": p.tenant_id if p else None,
                "user": p.user_id if p else None,
                "session": p.session_id if p else None,
                "ip": ctx.client_ip,
                "user_agent": ctx.user_agent,
            }
        )
    )
