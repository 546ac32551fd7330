"""The ASGI (Starlette) app that hosts an ``azure.functions.FunctionApp``.

See the package docstring for the behaviour it reproduces from the Functions host.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import azure.functions as func
from azure.functions.decorators.constants import HTTP_TRIGGER, QUEUE_TRIGGER, TIMER_TRIGGER
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from devhost import queues, timers
from devhost.routing import RouteTemplate, decode_path, join_route, parse_template
from shared.core.errors import AppError, Forbidden, InternalError, MalformedRequest, NotFound
from shared.web.endpoint import problem_response

__all__ = [
    "FunctionFailed",
    "HttpFunction",
    "MethodNotAllowed",
    "OtherFunction",
    "Routes",
    "collect_functions",
    "create_asgi_app",
    "route_request",
]

log = logging.getLogger("devhost")

#: The Functions host rejects larger HTTP requests (100 MB).
MAX_REQUEST_BYTES = 104_857_600
#: Devhost's own switch: "1" stops scheduled/startup timer runs (the admin endpoint still works).
DISABLE_TIMERS_ENV = "DEVHOST_DISABLE_TIMERS"
#: Devhost's own switch: "1" stops polling queues (the admin endpoint still runs queue functions).
DISABLE_QUEUES_ENV = "DEVHOST_DISABLE_QUEUES"


@dataclass(frozen=True)
class HttpFunction:
    """An HTTP-triggered function with its parsed route."""

    name: str
    template: RouteTemplate
    methods: frozenset[str] | None  # None = every method
    binding: str
    fn: Callable[..., Any]


@dataclass(frozen=True)
class OtherFunction:
    """A non-HTTP function (timer, queue, ...), runnable via the admin endpoint."""

    name: str
    trigger_type: str
    trigger: Any
    binding: str
    fn: Callable[..., Any]


def _method_name(method: Any) -> str:
    return str(method.value if isinstance(method, Enum) else method).upper()


def collect_functions(
    func_app: func.FunctionApp, *, route_prefix: str = ""
) -> tuple[list[HttpFunction], list[OtherFunction]]:
    """Split the app's functions into HTTP routes (most specific first) and the rest.

    Raises:
        ValueError: a function devhost cannot serve (its name and why): a route template
            form the app does not use, or a parameter besides its trigger (devhost binds
            no ``context`` and no input/output bindings).
    """
    http: list[HttpFunction] = []
    other: list[OtherFunction] = []
    for f in func_app.get_functions():
        trigger = f.get_trigger()
        if trigger is None:
            continue
        name = f.get_function_name() or f.get_user_function().__name__
        extra = [p for p in inspect.signature(f.get_user_function()).parameters if p != trigger.name]
        if extra:
            raise ValueError(f"function {name!r}: devhost passes only its trigger {trigger.name!r}, not {extra}")
        if trigger.get_binding_name() == HTTP_TRIGGER:
            route = getattr(trigger, "route", None)
            route = name if route is None else str(route)
            methods = getattr(trigger, "methods", None)
            try:
                template = parse_template(join_route(route_prefix, route))
            except ValueError as exc:
                raise ValueError(f"function {name!r}: {exc}") from exc
            http.append(
                HttpFunction(
                    name=name,
                    template=template,
                    methods=frozenset(_method_name(m) for m in methods) if methods else None,
                    binding=trigger.name,
                    fn=f.get_user_function(),
                )
            )
        else:
            other.append(
                OtherFunction(
                    name=name,
                    trigger_type=trigger.get_binding_name(),
                    trigger=trigger,
                    binding=trigger.name,
                    fn=f.get_user_function(),
                )
            )
    return Routes(sorted(http, key=lambda h: (h.template.precedence, h.template.text.lower()))), other


class Routes(list[HttpFunction]):
    """HTTP functions, most specific first, indexed by their first two literal segments so that
    a request's path is matched against its few candidates instead of every route (the app has
    about a hundred, nearly all under ``api/<resource>``). The candidates keep the list's order,
    so the most specific match still wins."""

    def __init__(self, functions: list[HttpFunction]) -> None:
        super().__init__(functions)
        keyed: dict[tuple[str, str], list[int]] = {}
        generic: list[int] = []
        for index, function in enumerate(self):
            key = function.template.literal_key()
            (keyed.setdefault(key, []) if key is not None else generic).append(index)
        self._generic = [self[i] for i in generic]
        self._by_key = {key: [self[i] for i in sorted(indexes + generic)] for key, indexes in keyed.items()}

    def candidates(self, path: str) -> list[HttpFunction]:
        """The functions that may serve ``path``, in the list's order."""
        parts = path.lstrip("/").split("/", 2)
        if len(parts) < 2:
            return self._generic
        return self._by_key.get((parts[0].lower(), parts[1].lower()), self._generic)


class MethodNotAllowed(AppError):
    """Routes serve the path but not the method (the host answers this, never the app)."""

    status, code, title = 405, "method-not-allowed", "Method not allowed"

    def __init__(self, allowed: set[str]) -> None:
        super().__init__()
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(sorted(self.allowed))}


def route_request(functions: list[HttpFunction], method: str, path: str) -> tuple[HttpFunction, dict[str, str]]:
    """The function serving ``method path`` (``functions`` most specific first) and its route values.

    A route whose methods exclude ``method`` is skipped and the next one tried, like
    ASP.NET's HttpMethod constraint, so an OPTIONS ``{*path}`` catch-all answers preflights
    under more specific routes.

    Raises:
        MethodNotAllowed: routes serve the path, none the method. Preflight-only (OPTIONS)
            routes do not make a path exist, or the catch-all would turn every 404 into a 405.
        NotFound: no route serves the path.
    """
    allowed: set[str] = set()
    path_served = False
    for function in functions.candidates(path) if isinstance(functions, Routes) else functions:
        values = function.template.match(path)
        if values is None:
            continue
        if function.methods is None or method in function.methods:
            return function, values
        allowed |= function.methods
        path_served = path_served or function.methods != {"OPTIONS"}
    if path_served:
        raise MethodNotAllowed(allowed)
    raise NotFound("No function serves this path.")


# ---------------------------------------------------------------------------
# Invocation


class FunctionFailed(Exception):
    """A user function raised; its traceback has already been logged."""


async def invoke(name: str, fn: Callable[..., Any], binding: str, value: Any) -> Any:
    """Call a user function like the Python worker: sync ones in a thread, async ones awaited.

    A failure is logged with its traceback and re-raised as ``FunctionFailed``.
    """
    kwargs: dict[str, Any] = {binding: value}
    started = time.perf_counter()
    try:
        if inspect.iscoroutinefunction(fn):
            result = await fn(**kwargs)
        else:
            result = await run_in_threadpool(fn, **kwargs)
            if inspect.isawaitable(result):
                result = await result
    except Exception as exc:
        elapsed = (time.perf_counter() - started) * 1000
        log.exception("Executed 'Functions.%s' (Failed, Duration=%.0fms)", name, elapsed)
        raise FunctionFailed(name) from exc
    elapsed = (time.perf_counter() - started) * 1000
    log.info("Executed 'Functions.%s' (Succeeded, Duration=%.0fms)", name, elapsed)
    return result


# ---------------------------------------------------------------------------
# HTTP conversion


def problem(exc: AppError, method: str = "GET") -> Response:
    """Devhost's own error, rendered by the app's wrapper so it carries the app's stable ``type``."""
    request_id = str(uuid.uuid4())
    response = problem_response(exc, request_id)
    response.headers["X-Request-Id"] = request_id
    return to_starlette_response(response, method)


def _request_headers(request: Request) -> dict[str, str]:
    """Lower-cased headers, repeated ones joined with "," (as the host passes them)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.headers.raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    client = request.client
    if client is not None and client.host:
        forwarded = headers.get("x-forwarded-for", "").strip()
        headers["x-forwarded-for"] = f"{forwarded}, {client.host}" if forwarded else client.host
    return headers


def _request_url(request: Request) -> str:
    scope = request.scope
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    host = request.headers.get("host")
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{path}" + (f"?{query}" if query else "")


def _query_params(request: Request) -> dict[str, str]:
    """Query parameters; repeated keys joined with "," like the host does."""
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        params[key] = f"{params[key]},{value}" if key in params else value
    return params


def _header_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def to_starlette_response(result: Any, method: str) -> Response:
    """Convert what an HTTP function returned into a Starlette response, binary-safe.

    ``HttpResponse`` keeps every header (repeated ones too); without a Content-Type header
    the worker's rule applies: ``mimetype``, plus ``; charset=...`` for ``text/*``.
    A plain ``str``/``bytes`` return value becomes a 200 response.
    """
    if isinstance(result, (str, bytes, bytearray)):
        result = func.HttpResponse(bytes(result) if not isinstance(result, str) else result)
    if result is None:
        return Response(status_code=204)
    if not isinstance(result, func.HttpResponse):
        raise TypeError(f"HTTP function returned {type(result).__name__}, expected HttpResponse")
    status = int(result.status_code)
    body = result.get_body() or b""
    raw: list[tuple[bytes, bytes]] = []
    has_type = False
    for name, value in result.headers.items():
        lower = name.lower()
        if lower in ("content-length", "transfer-encoding"):
            continue  # recomputed below for the actual body
        has_type = has_type or lower == "content-type"
        raw.append((lower.encode("latin-1"), _header_bytes(str(value))))
    no_body = status < 200 or status in (204, 304)
    if no_body:
        body = b""
    if not has_type and not no_body:
        mimetype = result.mimetype or "text/plain"
        content_type = f"{mimetype}; charset={result.charset}" if mimetype.startswith("text/") else mimetype
        raw.append((b"content-type", _header_bytes(content_type)))
    if not no_body:
        raw.append((b"content-length", str(len(body)).encode()))
    response = Response(content=body if method != "HEAD" else b"", status_code=status)
    response.raw_headers = raw
    return response


# ---------------------------------------------------------------------------
# The ASGI app


def _is_loopback(request: Request) -> bool:
    client = request.client
    if client is None:
        return False
    try:
        address = ipaddress.ip_address(client.host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _describe(http: list[HttpFunction], other: list[OtherFunction], timers_enabled: bool) -> str:
    """The one-line function listing logged at startup, like ``func start`` prints."""
    items = []
    for h in http:
        methods = ",".join(sorted(h.methods)) if h.methods else "ALL"
        items.append(f"{h.name}: [{methods}] /{h.template.text}")
    for o in other:
        if o.trigger_type == TIMER_TRIGGER:
            schedule = str(o.trigger.schedule)
            try:
                resolved = timers.resolve_schedule(schedule)
            except ValueError as exc:
                resolved = f"error: {exc}"
            shown = f"'{schedule}'" + (f" = '{resolved}'" if resolved != schedule else "")
            suffix = "" if timers_enabled else " (timers disabled)"
            items.append(f"{o.name}: timerTrigger {shown}{suffix}")
        elif o.trigger_type == QUEUE_TRIGGER:
            items.append(f"{o.name}: queueTrigger '{o.trigger.queue_name}'")
        else:
            items.append(f"{o.name}: {o.trigger_type}")
    return f"Functions ({len(items)}): " + "; ".join(items)


def create_asgi_app(
    func_app: func.FunctionApp,
    *,
    route_prefix: str = "",
    enable_timers: bool | None = None,
    enable_queues: bool | None = None,
    queue_options: queues.QueueOptions | None = None,
) -> Starlette:
    """Build the Starlette app serving ``func_app``'s functions.

    ``route_prefix`` is the host's ``extensions.http.routePrefix`` (the CLI reads it from
    ``host.json``). ``enable_timers=None`` means: on unless ``DEVHOST_DISABLE_TIMERS=1``
    at startup; likewise ``enable_queues`` and ``DEVHOST_DISABLE_QUEUES``. ``queue_options``
    are host.json's ``extensions.queues`` (the CLI reads them). The app's own settings are
    never read here.
    """
    options = queue_options or queues.QueueOptions()
    http_functions, other_functions = collect_functions(func_app, route_prefix=route_prefix)

    async def run_http(request: Request) -> Response:
        method = request.method.upper()
        raw_path: bytes = request.scope.get("raw_path") or b""
        path = decode_path(raw_path.decode("latin-1") or request.url.path)
        try:
            function, values = route_request(http_functions, method, path)
        except AppError as exc:
            return problem(exc, method)
        http_request = func.HttpRequest(
            method,
            _request_url(request),
            headers=_request_headers(request),
            params=_query_params(request),
            route_params=values,
            body=await request.body(),
        )
        try:
            result = await invoke(function.name, function.fn, function.binding, http_request)
        except FunctionFailed:
            return problem(InternalError(), method)  # like the host: logged, no details in the response
        try:
            return to_starlette_response(result, method)
        except Exception:
            log.exception("Function %r returned an unusable response", function.name)
            return problem(InternalError(), method)

    async def run_admin(request: Request) -> Response:
        if not _is_loopback(request):
            return problem(Forbidden("The admin API is only available from loopback addresses."))
        if request.method != "POST":
            return problem(MethodNotAllowed({"POST"}), request.method)
        wanted = request.path_params["name"].lower()
        function = next((o for o in other_functions if o.name.lower() == wanted), None)
        if function is None:
            return problem(NotFound(f"No non-HTTP function named {request.path_params['name']!r}"))
        raw = await request.body()
        try:
            payload = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return problem(MalformedRequest('The body must be JSON such as {"input": ...}.'))
        data = payload.get("input") if isinstance(payload, dict) else None
        try:
            trigger_input = _trigger_input(function, data)
        except ValueError:
            log.exception("Cannot build the trigger input for %r", function.name)
            return problem(InternalError())
        try:
            await invoke(function.name, function.fn, function.binding, trigger_input)
        except FunctionFailed:
            return problem(InternalError())
        return Response(status_code=202)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        enabled = enable_timers if enable_timers is not None else os.environ.get(DISABLE_TIMERS_ENV) != "1"
        log.info(_describe(http_functions, other_functions, enabled))
        tasks = [] if not enabled else _start_timers(other_functions)
        polling = enable_queues if enable_queues is not None else os.environ.get(DISABLE_QUEUES_ENV) != "1"
        if polling:
            tasks += _start_queues(other_functions, options)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return Starlette(
        routes=[
            Route("/admin/functions/{name}", _AnyMethod(run_admin)),
            Route("/{path:path}", _AnyMethod(run_http)),
        ],
        lifespan=lifespan,
        max_body_size=MAX_REQUEST_BYTES,
    )


class _AnyMethod:
    """Raw-ASGI wrapper: Starlette routes every HTTP method to a non-function endpoint."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def _trigger_input(function: OtherFunction, data: Any) -> Any:
    """The trigger value for an admin-endpoint run (``input`` is ignored for timers)."""
    if function.trigger_type == TIMER_TRIGGER:
        schedule = timers.resolve_schedule(function.trigger.schedule)
        return timers.timer_request(schedule, past_due=False, last=None)
    if function.trigger_type == QUEUE_TRIGGER:
        text = data if isinstance(data, str) else json.dumps(data)
        return queues.DevQueueMessage(id=str(uuid.uuid4()), body=text.encode("utf-8"), pop_receipt=None,
                                      dequeue_count=1)
    return data


def _start_timers(functions: list[OtherFunction]) -> list[asyncio.Task[None]]:
    """One background task per valid timer function; bad schedules are logged and skipped."""
    tasks: list[asyncio.Task[None]] = []
    for function in functions:
        trigger = function.trigger
        if function.trigger_type != TIMER_TRIGGER:
            continue
        try:
            schedule = timers.resolve_schedule(trigger.schedule)
            timers.next_fire(schedule, datetime.now(UTC))
        except ValueError as exc:
            log.error("Timer function %r is disabled: %s", function.name, exc)
            continue

        async def run(request: timers.DevTimerRequest, function: OtherFunction = function) -> None:
            with contextlib.suppress(FunctionFailed):  # logged; the schedule goes on
                await invoke(function.name, function.fn, function.binding, request)

        loop = timers.run_timer_loop(function.name, schedule, run, run_on_startup=bool(trigger.run_on_startup))
        tasks.append(asyncio.create_task(loop, name=f"devhost-timer-{function.name}"))
    return tasks


def _start_queues(functions: list[OtherFunction], options: queues.QueueOptions) -> list[asyncio.Task[None]]:
    """One polling task per queue function. A queue that cannot be resolved or reached is
    logged and its function skipped (as the host reports a function it cannot start); the
    queues are reached in the task, so a slow Storage never holds up start-up."""
    tasks: list[asyncio.Task[None]] = []
    for function in functions:
        if function.trigger_type != QUEUE_TRIGGER:
            continue

        async def run(message: func.QueueMessage, function: OtherFunction = function) -> bool:
            try:
                await invoke(function.name, function.fn, function.binding, message)
            except FunctionFailed:
                return False  # logged by invoke
            return True

        async def poll(function: OtherFunction = function, run: queues.Run = run) -> None:
            try:
                name = queues.resolve_name(str(function.trigger.queue_name))
                queue, poison = await asyncio.to_thread(
                    queues.make_clients, getattr(function.trigger, "connection", None), name)
            except Exception as exc:
                log.error("Queue function %r is disabled: %s", function.name, exc)
                return
            await queues.run_queue_loop(function.name, queue, poison, options, run)

        tasks.append(asyncio.create_task(poll(), name=f"devhost-queue-{function.name}"))
    return tasks
