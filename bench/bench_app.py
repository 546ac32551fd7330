"""The FunctionApp `bench.http_overhead` serves: one handler, once bare and once wrapped.

`python -m devhost --app bench.bench_app:app`. Both routes run the same handler logic and
return the same small JSON response, so the difference between them is what
`shared.web.endpoint.endpoint` adds: request id, size and CORS checks, bearer-token authentication
(ES256 signature, then the caller's role, status and session read from the database), security
headers and the JSON access-log line. A third route, wrapped without authentication,
splits the wrapper's cost into authentication and everything else.
"""

from __future__ import annotations

import json

import azure.functions as func

from shared.web.endpoint import RequestContext, endpoint

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
