"""OpenAPI 3.1 document generated from the functions and their endpoint specs."""

from __future__ import annotations

import re
from typing import Any

import azure.functions as func
from pydantic import BaseModel

from shared.errors import PROBLEM_BASE
from shared.http import endpoint_spec

_PARAM = re.compile(r"\{\*?([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]+)?\??\}")
_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "Malformed request",
    "401": "Missing or invalid access token",
    "403": "Not permitted",
    "404": "Not found",
    "413": "Body too large",
    "415": "Unsupported media type",
    "422": "Validation failed",
    "429": "Too many requests",
}


def _path(route: str) -> str:
    return "/" + _PARAM.sub(lambda m: "{" + m.group(1) + "}", route.strip("/"))


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    for name, definition in schema.pop("$defs", {}).items():
        schemas[name] = definition
    schemas[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


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
        }
    }
    for fn in app.get_functions():
        trigger = fn.get_trigger()
        route = getattr(trigger, "route", None)
        spec = endpoint_spec(fn.get_user_function())
        if route is None or spec is None or spec.preflight:
            continue
        path = _path(route)
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(route)
        ]
        if spec.query is not None:
            for name, field in spec.query.model_fields.items():
                params.append(
                    {
                        "name": field.alias or name,
                        "in": "query",
                        "required": field.is_required(),
                        "schema": {"type": "string"},
                        **({"description": field.description} if field.description else {}),
                    }
                )
        ok: dict[str, Any] = {"description": "Success"}
        if spec.response is not None:
            ok["content"] = {"application/json": {"schema": _schema(spec.response, schemas)}}
        responses: dict[str, Any] = {str(spec.status): ok}
        for code, text in _ERRORS.items():
            if code in ("401", "403") and not spec.auth:
                continue
            responses[code] = {
                "description": text,
                "content": {"application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}},
            }
        operation: dict[str, Any] = {
            "operationId": fn.get_function_name(),
            "summary": spec.summary,
            "parameters": params,
            "responses": responses,
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
        methods = [str(getattr(m, "value", m)).lower() for m in (getattr(trigger, "methods", None) or ["GET"])]
        for method in methods:
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
