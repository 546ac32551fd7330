"""The FunctionApp `bench.http_overhead` serves: one handler, once bare and once wrapped.

`python -m devhost --app bench.bench_app:app`. Both routes run the same handler logic and
return the same small JSON response, so the difference between them is what
`shared.web.endpoint.endpoint` adds: request id, size and CORS checks, bearer-token authentication
(ES256 signature, then the caller's role, status and session read from the database), security
headers and the JSON access-log line. A third route, wrapped without authentication,
splits the wrapper's cost into authentication and everything else.

`bench.records` also calls `/bench/floor/records/{id}`: the least an authenticated record read
can cost on this stack, with no wrapper: one message in the simple query protocol (begin,
the tenant, the caller's principal row, the record read prepared once on the worker thread's
own connection, commit), the record's row as JSON, the security headers and one structured
log line. It checks nothing it reads (any principal row will do), so it is a floor to
compare with, never an endpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

import azure.functions as func

from shared.core.settings import get_settings
from shared.identity import sessions
from shared.identity.guards import MFA_ALL_ROLES_SETTING, bearer_token
from shared.identity.tokens import verify_access_token
from shared.records.records import RECORD_READ
from shared.web.endpoint import SECURITY_HEADERS, RequestContext, endpoint

floor_log = logging.getLogger("bench.floor")

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

PAYLOAD = {"ok": True, "service": "custos", "items": [1, 2, 3]}


def respond() -> func.HttpResponse:
    """The handler logic both routes share."""
    return func.HttpResponse(
        json.dumps(PAYLOAD, separators=(",", ":")).encode(),
        status_code=200,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )


@app.route(route="bench/bare", methods=["GET"])
def bench_bare(req: func.HttpRequest) -> func.HttpResponse:
    """The handler with nothing around it."""
    return respond()


@app.route(route="bench/wrapped", methods=["GET"])
@endpoint(auth=True)
def bench_wrapped(ctx: RequestContext) -> func.HttpResponse:
    """The same handler behind the route wrapper, authenticated."""
    return respond()


@app.route(route="bench/wrapped-noauth", methods=["GET"])
@endpoint(auth=False)
def bench_wrapped_noauth(ctx: RequestContext) -> func.HttpResponse:
    """The same handler behind the route wrapper, without authentication."""
    return respond()


_floor = threading.local()


def _floor_conn() -> Any:
    """This worker thread's own connection (no pool), with the record read prepared on it once."""
    conn = getattr(_floor, "conn", None)
    if conn is None or conn.closed:
        import psycopg
        from psycopg.rows import dict_row

        conn = psycopg.connect(get_settings().database_url, autocommit=True, row_factory=dict_row)
        conn.execute(f"prepare floor_record_read(uuid) as {RECORD_READ.replace('%s', '$1')}")
        _floor.conn = conn
    return conn


@app.route(route="bench/floor/records/{id}", methods=["GET"])
def bench_floor_record(req: func.HttpRequest) -> func.HttpResponse:
    """The floor of an authenticated record read: see the module docstring."""
    started = time.perf_counter()
    claims = verify_access_token(bearer_token(req))  # remembered after the first request, as in the wrapper
    tenant, user, session = (str(uuid.UUID(str(v))) for v in (claims.tenant_id, claims.subject, claims.session_id))
    record = str(uuid.UUID(req.route_params.get("id", "")))
    # One message in the simple query protocol; the literals are UUIDs that just round-tripped.
    cur = _floor_conn().execute(
        f"begin; select set_config('app.tenant_id', '{tenant}', true);"  # noqa: S608  # nosec B608  # validated UUIDs and constants only
        f" select * from custos_principal_tx('{user}', '{session}', {sessions.TOUCH_EVERY_S}, '{MFA_ALL_ROLES_SETTING}');"
        f" execute floor_record_read('{record}'); commit")
    results = []
    while True:
        if cur.description is not None:
            results.append(cur.fetchall())
        if not cur.nextset():
            break
    rows = results[2] if results[1] else []
    status = 200 if rows else 404
    request_id = str(uuid.uuid4())
    floor_log.info("%s %s %s", req.method, req.url, status,
                   extra={"request_id": request_id, "status": status, "tenant": tenant,
                          "duration_ms": round((time.perf_counter() - started) * 1000, 2)})
    return func.HttpResponse(
        json.dumps(rows[0] if rows else {}, default=str, separators=(",", ":")).encode(), status_code=status,
        headers={**SECURITY_HEADERS, "Content-Type": "application/json; charset=utf-8", "X-Request-Id": request_id},
    )
