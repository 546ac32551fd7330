"""The OpenAPI document: valid OpenAPI 3.1, a schema for every JSON success body, every
status an operation can answer; and the test-only check of answers against their models."""

from __future__ import annotations

from typing import Any

import azure.functions as func
import httpx
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel

from function_app import create_app
from shared.web.endpoint import (
    EndpointSpec,
    Reply,
    ResponseContractError,
    check_response_contract,
    endpoint,
    endpoint_spec,
)
from shared.web.models import Out
from shared.web.openapi import build_openapi


def _wrapped() -> list[tuple[func.FunctionBuilder, EndpointSpec, Any]]:
    found = []
    for fn in create_app().get_functions():
        user = fn.get_user_function()
        spec = endpoint_spec(user)
        if spec is not None and not spec.preflight:
            found.append((fn, spec, user.__custos_handler__))
    return found


def test_the_served_document_is_valid_openapi_3_1(client: httpx.Client) -> None:
    doc = client.get("/api/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema


def test_every_endpoint_with_a_body_declares_its_model_or_media_type() -> None:
    missing = []
    for fn, spec, handler in _wrapped():
        returns = handler.__annotations__.get("return")
        # a 204 endpoint may answer a Reply for its headers alone (logout's Set-Cookie); a redirect
        # has no body, only its Location
        redirect = 300 <= spec.status < 400
        if (returns not in (None, "None") and spec.status != 204 and spec.response is None
                and spec.media_type is None and not redirect):
            missing.append(fn.get_function_name())
    assert missing == []


def test_response_models_refuse_fields_they_do_not_name() -> None:
    loose = [
        f"{fn.get_function_name()}: {spec.response.__name__}" for fn, spec, _ in _wrapped()
        if spec.response is not None and spec.response.model_config.get("extra") != "forbid"
        and fn.get_function_name() != "openapi_document"
    ]
    assert loose == []


def test_every_operation_documents_its_errors_and_a_schema_for_its_success_body() -> None:
    doc = build_openapi(create_app(), version="t")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"400", "404", "413", "422", "429", "500", "503"} <= codes, (method, path)
            if op["security"]:
                assert {"401", "403"} <= codes, (method, path)
                if method != "get" and not path.startswith("/api/platform/"):
                    assert "423" in codes, (method, path)
            if method in ("post", "put", "patch"):
                assert {"409", "415"} <= codes, (method, path)
            ok = [c for c in codes if c.startswith("2") or c.startswith("3")]  # 3xx: a redirect's success
            assert len(ok) == 1, (method, path)
            if ok[0].startswith("2") and ok[0] != "204":
                assert op["responses"][ok[0]].get("content"), (method, path)


def test_a_handler_returning_nothing_is_documented_as_204() -> None:
    doc = build_openapi(create_app(), version="t")
    assert set(doc["paths"]["/api/auth/logout"]["post"]["responses"]) & {"200", "204"} == {"204"}


def test_the_reset_request_documents_the_202_it_answers() -> None:
    doc = build_openapi(create_app(), version="t")
    assert "202" in doc["paths"]["/api/auth/password/reset/request"]["post"]["responses"]


def test_two_models_sharing_a_name_are_refused() -> None:
    class Thing(Out):
        a: int

    first = Thing

    class Thing(Out):  # type: ignore[no-redef]
        b: str

    app = func.FunctionApp()

    @app.route(route="api/one", methods=["GET"])
    @endpoint(auth=False, response=first)
    def one(ctx: Any) -> dict[str, Any]:
        return {}

    @app.route(route="api/two", methods=["GET"])
    @endpoint(auth=False, response=Thing)
    def two(ctx: Any) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="two schemas are named Thing"):
        build_openapi(app, version="t")


class _Body(Out):
    id: str
    n: int


def _spec(response: type[BaseModel] | None, media_type: str | None = None) -> EndpointSpec:
    return EndpointSpec(permission=None, auth=False, body=None, query=None, response=response, status=200,
                        raw_body=False, preflight=False, operator=False, body_limit="max_body_bytes", summary="",
                        tags=(), media_type=media_type)


@pytest.mark.parametrize("body", [
    {"id": "x", "n": 1, "secret": "leaked"},  # a field the model does not name
    {"id": "x"},  # a missing field
    {"id": "x", "n": "1"},  # a number as a string: lax parsing would let it through
    {"id": None, "n": 1},  # null where the model says never
])
def test_an_answer_outside_its_model_is_a_contract_error(body: dict[str, Any]) -> None:
    with pytest.raises(ResponseContractError, match="_Body"):
        check_response_contract(_spec(_Body), body, name="h")
    with pytest.raises(ResponseContractError):
        check_response_contract(_spec(_Body), Reply(body=body, status=201), name="h")


def test_a_json_answer_without_a_model_is_a_contract_error() -> None:
    with pytest.raises(ResponseContractError, match="declares no response model"):
        check_response_contract(_spec(None), {"ok": True}, name="h")


def test_a_non_json_answer_needs_a_declared_media_type() -> None:
    with pytest.raises(ResponseContractError, match="declares no media_type"):
        check_response_contract(_spec(None), Reply(body=b"x", media_type="text/csv"), name="h")
    check_response_contract(_spec(None, "text/csv"), Reply(body=b"x", media_type="text/csv"), name="h")


def test_an_answer_inside_its_model_passes() -> None:
    check_response_contract(_spec(_Body), {"id": "x", "n": 1}, name="h")
    check_response_contract(_spec(None), None, name="h")


def test_a_body_the_handler_reads_itself_is_in_the_document(client: httpx.Client) -> None:
    """The SAML ACS takes a form and an attachment takes any bytes: neither is a JSON `body`,
    and both must still be in the document client apps and schemathesis read."""
    import inspect

    undeclared = [fn.get_function_name() for fn, spec, handler in _wrapped()
                  if "get_body()" in inspect.getsource(handler) and spec.body is None and not spec.raw_body]
    assert undeclared == []
    doc = client.get("/api/openapi.json").json()
    acs = doc["paths"]["/api/sso/saml/{tenant}/acs"]["post"]["requestBody"]["content"]
    form = acs["application/x-www-form-urlencoded"]["schema"]
    form = doc["components"]["schemas"][form["$ref"].rsplit("/", 1)[-1]] if "$ref" in form else form
    assert form["required"] == ["SAMLResponse"] and set(form["properties"]) == {"SAMLResponse", "RelayState"}
    attach = doc["paths"]["/api/records/{id}/attachments"]["post"]["requestBody"]
    assert attach["required"] is True and set(attach["content"]) == {"*/*"}
