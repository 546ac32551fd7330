"""OpenAPI 3.1 document generated from the functions and their endpoint specs.

Every operation lists each status it can answer: its success status (204 when the handler
returns nothing), the wrapper's errors where the wrapper can raise them, and the
endpoint's own `statuses`. Success bodies carry the schema of the endpoint's `response`
model (serialization mode) or its declared `media_type`. schemathesis holds the running
API to this document (tests/test_schemathesis.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import azure.functions as func
from pydantic import BaseModel

from shared.core.errors import PROBLEM_BASE
from shared.web.endpoint import BODY_METHODS, SAFE_METHODS, EndpointSpec, endpoint_spec

_PARAM = re.compile(r"\{\*?([A-Za-z_][A-Za-z0-9_]*)(?::([^}?]+))?\??\}")
_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "Malformed request",
    "401": "Missing or invalid access token or credentials",
    "403": "Not permitted (or an Origin outside the CORS allow-list)",
    "404": "Not found",
    "409": "Conflict: a stale version, a duplicate, or a concurrent change",
    "413": "Body too large",
    "415": "Unsupported media type",
    "422": "Validation failed",
    "423": "The tenant is read-only (cancelled)",
    "429": "Too many requests",
    "500": "Internal error (the body carries only the request id)",
    "502": "Stored content failed its integrity check",
    "503": "A dependency is unavailable",
    "405": "Method not allowed",
    "412": "Precondition failed: the resource changed (If-Match)",
    "501": "Not implemented",
}


def error_statuses(spec: EndpointSpec, method: str) -> list[str]:
    """The error statuses an operation can answer, from what the wrapper does for it."""
    method = method.upper()
    codes = {"400", "403", "404", "413", "422", "429", "500", "503"}  # 403: any request may carry a foreign Origin
    if spec.auth or spec.body is not None:  # a token in the header, or credentials in the body
        codes.add("401")
    if method not in SAFE_METHODS:
        codes.add("409")
    if method in BODY_METHODS:
        codes.add("415")
    if spec.auth and not spec.operator and method not in SAFE_METHODS:
        codes.add("423")
    codes.update(str(code) for code in spec.statuses)
    return sorted(codes)


def success_status(spec: EndpointSpec, handler: Any) -> str:
    """The success status: a handler annotated `-> None` answers 204 where the spec says 200."""
    returns = getattr(handler, "__annotations__", {}).get("return")
    if spec.status == 200 and returns in (None, "None"):
        return "204"
    return str(spec.status)


def _path(route: str) -> str:
    return "/" + _PARAM.sub(lambda m: "{" + m.group(1) + "}", route.strip("/"))


def _schema(model: type[BaseModel], schemas: dict[str, Any], *, mode: str = "validation") -> dict[str, Any]:
    """Register a model's schema (and its nested ones) under components and refer to it.

    Raises:
        ValueError: two different schemas under one name (two models sharing a class name).
    """
    schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
    for name, definition in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
        if schemas.setdefault(name, definition) != definition:
            raise ValueError(f"two schemas are named {name}: rename one of the models")
    return {"$ref": _REF.format(model=model.__name__)}


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the `null` branch (an absent parameter is the null)."""
    branches = [b for b in schema.get("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return {**rest, **branches[0]}
    return {k: v for k, v in schema.items() if k != "default"}


def build_openapi(app: func.FunctionApp, *, version: str) -> dict[str, Any]:
    """The OpenAPI document of every wrapped HTTP function except CORS preflights."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {
        "Problem": {
            "type": "object",
            "description": f"RFC 9457 problem details; `type` starts with {PROBLEM_BASE}",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "request_id": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["type", "title", "status"],
        },
        "ScimError": {
            "type": "object",
            "description": "RFC 7644 section 3.12 error (the /scim/v2 routes)",
            "properties": {
                "schemas": {"type": "array", "items": {"type": "string"}},
                "status": {"type": "string"},
                "scimType": {"type": "string"},
                "detail": {"type": "string"},
            },
            "required": ["schemas", "status"],
        },
    }
    for fn in app.get_functions():
        trigger = fn.get_trigger()
        route = getattr(trigger, "route", None)
        spec = endpoint_spec(fn.get_user_function())
        if route is None or spec is None or spec.preflight:
            continue
        path = _path(route)
        params = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "integer"} if constraint == "int" else {"type": "string"}}
            for name, constraint in _PARAM.findall(route)
        ]
        if spec.query is not None:
            properties = spec.query.model_json_schema(ref_template=_REF)["properties"]
            for name, field in spec.query.model_fields.items():
                key = field.alias or name
                params.append(
                    {
                        "name": key,
                        "in": "query",
                        "required": field.is_required(),
                        "schema": _query_schema(properties[key]),
                        **({"description": field.description} if field.description else {}),
                    }
                )
        handler = getattr(fn.get_user_function(), "__custos_handler__", None)
        ok_status = success_status(spec, handler)
        ok: dict[str, Any] = {"description": "Success"}
        if spec.response is not None:
            media = spec.media_type or "application/json"
            ok["content"] = {media: {"schema": _schema(spec.response, schemas, mode="serialization")}}
        elif spec.media_type is not None:
            ok["content"] = {spec.media_type: {"schema": {}}}
        methods = [str(getattr(m, "value", m)).lower() for m in (getattr(trigger, "methods", None) or ["GET"])]
        for method in methods:
            responses: dict[str, Any] = {ok_status: ok}
            for code in error_statuses(spec, method):
                if int(code) < 400:  # another success an operation may answer (SCIM's 201 and 204)
                    responses.setdefault(code, {"description": "Success",
                                                **({"content": ok["content"]} if "content" in ok and code != "204" else {})})
                    continue
                content: dict[str, Any] = (
                    {"application/scim+json": {"schema": {"$ref": _REF.format(model="ScimError")}}} if spec.scim
                    else {"application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}})
                if code == "404" and _PARAM.search(route):
                    # A path value the route template does not match never reaches the app:
                    # the Functions host answers it with its own plain-text 404.
                    content["text/plain"] = {"schema": {"type": "string"}}
                responses.setdefault(code, {"description": _ERRORS[code], "content": content})
            operation: dict[str, Any] = {
                # one function may serve several methods (SCIM's refusals of writes): one id each
                "operationId": f"{fn.get_function_name()}" + (f"_{method}" if len(methods) > 1 else ""),
                "summary": spec.summary,
                "parameters": params,
                "responses": dict(sorted(responses.items())),
                "tags": list(spec.tags),
            }
            if spec.permission:
                operation["x-permission"] = spec.permission
            operation["security"] = [{"bearer": []}] if spec.auth else []
            if spec.body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _schema(spec.body, schemas)}},
                }
            elif spec.raw_body:
                operation["requestBody"] = {
                    "required": True,
                    "content": {media: {"schema": _schema(model, schemas) if model is not None else {}}
                                for media, model in spec.raw_body},
                }
            paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Custos API", "version": version},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


_described: list[Callable[[], func.FunctionApp]] = []


def describe_app(factory: Callable[[], func.FunctionApp]) -> None:
    """Name the app whose document `served_document` returns: function_app passes its `create_app`.

    The trigger that serves the document cannot import function_app, which imports every
    trigger module: the app is passed in instead of looked up.
    """
    _described[:] = [factory]
    served_document.cache_clear()


@functools.cache
def served_document(version: str) -> dict[str, Any]:
    """The OpenAPI document of the app named by `describe_app`, built once per worker.

    Raises:
        RuntimeError: no app was named (function_app names one when it is imported).
    """
    if not _described:
        raise RuntimeError("no app to describe: function_app calls shared.web.openapi.describe_app at import")
    return build_openapi(_described[0](), version=version)
