"""Tenant JSON Schemas attacked: outside URIs, file reads, echoes, catastrophic regexes, runaway schemas."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.core import db
from shared.core.errors import ValidationFailed
from shared.records import _schema_engine, records, tenant_schemas
from shared.records.errors import RecordSchemaUnusable
from shared.tenancy.tenants import Tenant
from tests.conftest import ROOT, Person, PersonFactory, auth

SCHEMA_INVALID = "urn:custos:problem:record-schema-invalid"
PAYLOAD_INVALID = "urn:custos:problem:record-payload-invalid"
UNUSABLE = "urn:custos:problem:record-schema-unusable"


@dataclass
class Canary:
    """A local HTTP server and a file, each holding a schema with a unique marker, counting hits."""

    url: str
    file_uri: str
    marker: str
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Canary]:
    marker = f"CANARY-{uuid.uuid4().hex}"
    body = json.dumps({"const": marker, "enum": [marker], "pattern": marker}).encode()
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/schema+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = tmp_path / "secret.json"
    secret.write_bytes(body)
    try:
        yield Canary(url=f"http://127.0.0.1:{server.server_address[1]}/s.json", file_uri=secret.as_uri(),
                     marker=marker, hits=hits)
    finally:
        server.shutdown()
        server.server_close()


def _obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


# Each names an outside URI through a different keyword; (schema, the keyword's location in it).
OUTSIDE: dict[str, Callable[[Canary], tuple[dict[str, Any], list[Any]]]] = {
    "$ref http": lambda c: (_obj(a={"$ref": c.url}), ["properties", "a", "$ref"]),
    "$ref file": lambda c: (_obj(a={"$ref": c.file_uri}), ["properties", "a", "$ref"]),
    "$dynamicRef http": lambda c: (_obj(a={"$dynamicRef": c.url}), ["properties", "a", "$dynamicRef"]),
    "$dynamicRef file": lambda c: (_obj(a={"$dynamicRef": c.file_uri}), ["properties", "a", "$dynamicRef"]),
    "$dynamicRef relative to $id": lambda c: ({**_obj(a={"$dynamicRef": "s.json"}), "$id": c.url.rsplit("/", 1)[0] + "/"},
                                              ["$id"]),
    "$id in $defs": lambda c: ({**_obj(a={"$ref": "#/$defs/x"}), "$defs": {"x": {"$id": c.url, "type": "string"}}},
                               ["$defs", "x", "$id"]),
    "$schema at root": lambda c: ({**_obj(), "$schema": c.url}, ["$schema"]),
    "$schema nested": lambda c: (_obj(a={"$schema": "http://json-schema.org/draft-07/schema#"}),
                                 ["properties", "a", "$schema"]),
    "$anchor as URI": lambda c: (_obj(a={"$anchor": c.url}), ["properties", "a", "$anchor"]),
    "$dynamicAnchor as URI": lambda c: (_obj(a={"$dynamicAnchor": c.file_uri}), ["properties", "a", "$dynamicAnchor"]),
    "$recursiveRef": lambda c: (_obj(a={"$recursiveRef": c.url}), ["properties", "a", "$recursiveRef"]),
    "$vocabulary": lambda c: ({**_obj(), "$vocabulary": {c.url: True}}, ["$vocabulary"]),
    "$ref inside an unknown keyword, reached by pointer": lambda c: (
        {**_obj(a={"$ref": "#/x-lib/s"}), "x-lib": {"s": {"$ref": c.url}}}, ["x-lib", "s", "$ref"]),
}


def define(c: httpx.Client, admin: Person, schema: Any, name: str | None = None) -> httpx.Response:
    return c.post("/api/record-types", json={"name": name or f"t{uuid.uuid4().hex[:8]}", "display_name": "T",
                                             "schema": schema, "reason": "test"}, headers=auth(admin.token))


def store_unscreened(tenant_id: str, name: str, schema: dict[str, Any]) -> None:
    """As an older version might have stored it: straight into the table, past check_schema."""
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute("insert into record_types (tenant_id, name, display_name) values (%s, %s, 'Old') returning id",
                           (tenant_id, name)).fetchone()
        assert row is not None
        conn.execute("insert into record_type_schemas (tenant_id, type_id, version, schema, reason) values (%s, %s, 1, %s, 'old')",
                     (tenant_id, row["id"], json.dumps(schema)))


@pytest.fixture
def admin(tenant: Tenant, make_person: PersonFactory) -> Person:
    return make_person(tenant.id, "ADMIN", name="Ada Admin")


@pytest.mark.parametrize("attack", list(OUTSIDE))
def test_schema_naming_an_outside_uri_is_refused_whatever_the_keyword(
    client: httpx.Client, admin: Person, canary: Canary, attack: str,
) -> None:
    schema, where = OUTSIDE[attack](canary)
    resp = define(client, admin, schema)
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert problem["type"] == SCHEMA_INVALID and resp.headers["content-type"].startswith("application/problem+json")
    assert ["body", "schema", *where] in [e["location"] for e in problem["errors"]]
    assert canary.marker not in resp.text and canary.hits == []


def test_validating_records_makes_no_request_and_reads_no_file(client: httpx.Client, admin: Person, canary: Canary) -> None:
    for attack, make in OUTSIDE.items():
        schema, _ = make(canary)
        name = f"t{uuid.uuid4().hex[:8]}"
        define(client, admin, schema, name)
        for payload in ({"a": "x"}, {"a": canary.marker}, {}):
            resp = client.post("/api/records", json={"type": name, "payload": payload}, headers=auth(admin.token))
            assert resp.status_code in (404, 422), (attack, resp.text)
            assert canary.marker not in resp.text.replace(json.dumps(payload), ""), attack
    assert canary.hits == []


def test_schema_stored_by_an_older_version_fails_closed_without_fetching(
    client: httpx.Client, tenant: Tenant, admin: Person, canary: Canary,
) -> None:
    for attack, make in OUTSIDE.items():
        schema, _ = make(canary)
        name = f"old{uuid.uuid4().hex[:8]}"
        store_unscreened(tenant.id, name, schema)
        resp = client.post("/api/records", json={"type": name, "payload": {"a": "x"}}, headers=auth(admin.token))
        assert resp.status_code == 422, (attack, resp.text)
        assert resp.json()["type"] == UNUSABLE, attack
        assert canary.marker not in resp.text
    assert canary.hits == []


def test_edit_against_a_schema_version_stored_unscreened_fails_closed(
    client: httpx.Client, tenant: Tenant, admin: Person, canary: Canary,
) -> None:
    assert define(client, admin, _obj(a={"type": "string"}), "kept").status_code == 201
    rec = client.post("/api/records", json={"type": "kept", "payload": {"a": "x"}}, headers=auth(admin.token)).json()
    with db.tenant_tx(tenant.id) as conn:
        type_id = conn.execute("select id from record_types where name = 'kept'").fetchone()
        assert type_id is not None
        conn.execute("insert into record_type_schemas (tenant_id, type_id, version, schema, reason) values (%s, %s, 2, %s, 'old')",
                     (tenant.id, type_id["id"], json.dumps(_obj(a={"$dynamicRef": canary.url}))))
        conn.execute("update record_types set schema_version = 2 where id = %s", (type_id["id"],))
    resp = client.patch(f"/api/records/{rec['id']}", json={"version": 1, "payload": {"a": "y"}, "reason": "edit"},
                        headers=auth(admin.token))
    assert resp.status_code == 422 and resp.json()["type"] == UNUSABLE, resp.text
    assert ["schema", "properties", "a", "$dynamicRef"] in [e["location"] for e in resp.json()["errors"]]
    assert canary.hits == [] and canary.marker not in resp.text


def test_errors_never_echo_schema_constants_or_input_values(client: httpx.Client, admin: Person) -> None:
    marks = {k: f"{k.upper()}-{uuid.uuid4().hex[:10]}" for k in ("const", "enum", "pattern", "default", "examples", "input")}
    schema = _obj(
        c={"const": marks["const"]}, e={"enum": [marks["enum"], 7]}, p={"type": "string", "pattern": f"^{marks['pattern']}$"},
        d={"type": "integer", "default": marks["default"], "examples": [marks["examples"]]},
        f={"type": "string", "format": "date"}, n={"type": "string", "minLength": 3},
    )
    assert define(client, admin, {**schema, "required": ["must"]}, "echo").status_code == 201
    payload = {k: marks["input"] for k in ("c", "e", "p", "d", "f")} | {"n": "x"}
    resp = client.post("/api/records", json={"type": "echo", "payload": payload}, headers=auth(admin.token))
    assert resp.status_code == 422
    for mark in marks.values():
        assert mark not in resp.text
    by_location = {tuple(e["location"][2:]): e for e in resp.json()["errors"]}
    assert set(by_location) == {("c",), ("e",), ("p",), ("d",), ("f",), ("n",), ("must",)}
    assert by_location[("n",)]["message"] == "fails minLength (3)" and by_location[("f",)]["message"] == "is not a valid date"
    assert by_location[("must",)]["code"] == "required"


def test_local_references_anchors_and_unicode_classes_still_work(client: httpx.Client, admin: Person) -> None:
    schema = {
        "$schema": tenant_schemas.DRAFT_2020_12, "type": "object",
        "$defs": {"code": {"$anchor": "code", "type": "string", "pattern": r"^\p{Lu}{3}$"},
                  "node": {"$dynamicAnchor": "node", "type": "object",
                           "properties": {"kids": {"type": "array", "items": {"$dynamicRef": "#node"}}}}},
        "properties": {"a": {"$ref": "#code"}, "b": {"$ref": "#/$defs/code"}, "tree": {"$ref": "#/$defs/node"},
                       "re": {"type": "string", "format": "regex"}},
        "patternProperties": {"^x-[a-z]+$": {"type": "integer"}}, "unevaluatedProperties": False,
    }
    assert define(client, admin, schema, "local").status_code == 201
    ok = {"a": "ÄBC", "b": "XYZ", "tree": {"kids": [{"kids": []}]}, "re": "^[a-z]+$", "x-one": 1}
    assert client.post("/api/records", json={"type": "local", "payload": ok}, headers=auth(admin.token)).status_code == 201
    bad = client.post("/api/records", json={"type": "local", "payload": {**ok, "a": "abc", "re": "(a)\\1", "x-two": "s", "zz": 1}},
                      headers=auth(admin.token))
    assert bad.status_code == 422 and bad.json()["type"] == PAYLOAD_INVALID
    assert {tuple(e["location"][2:]) for e in bad.json()["errors"]} == {("a",), ("re",), ("x-two",), ()}


@pytest.mark.parametrize(("keyword", "pattern"), [("pattern", r"^(a)\1$"), ("pattern", "^(?=a)a+$"),
                                                  ("patternProperties", "(?<!x)y"), ("pattern", r"a\Z")])
def test_patterns_re2_cannot_compile_are_refused_when_defined(
    client: httpx.Client, admin: Person, keyword: str, pattern: str,
) -> None:
    schema = _obj(a={"type": "string", "pattern": pattern}) if keyword == "pattern" else {"type": "object", keyword: {pattern: {}}}
    resp = define(client, admin, schema)
    assert resp.status_code == 422, resp.text
    error = resp.json()["errors"][0]
    assert error["code"] == "unsupported_regex" and keyword in error["message"] and keyword in error["location"]


def test_tenant_patterns_never_reach_python_re(monkeypatch: pytest.MonkeyPatch) -> None:
    tenant_patterns = {"^(a+)+$", "^(b+)+$", "^(c+)+$", "^(d+)+$"}
    seen: list[str] = []
    real = re._compile  # type: ignore[attr-defined]

    def spy(pattern: Any, flags: Any) -> Any:
        seen.append(str(pattern))
        return real(pattern, flags)

    monkeypatch.setattr(re, "_compile", spy)
    _schema_engine.compile_pattern.cache_clear()  # the cache behind tenant_schemas.compile_pattern
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}, "r": {"format": "regex"}},
              "patternProperties": {"^(b+)+$": {"type": "integer"}}, "additionalProperties": False,
              "allOf": [{"patternProperties": {"^(c+)+$": True}}], "unevaluatedProperties": False}
    records.check_schema(schema)
    # Short inputs: the spy, not the clock, shows where the patterns went.
    with pytest.raises(ValidationFailed):
        records.validate_payload(schema, {"a": "aa!", "bb!": 1, "cc!": 1, "r": "^(d+)+$", "zz": 1})
    assert tenant_patterns.isdisjoint(seen)


def test_catastrophic_pattern_is_evaluated_in_linear_time() -> None:
    # A subprocess, not a thread: a backtracking match holds the GIL, so a thread's join never returns.
    code = ("from shared.records import records\n"
            "try:\n"
            "    records.validate_payload({'type': 'object', 'properties': {'a': {'type': 'string', 'pattern': '^(a+)+$'}}},\n"
            "                             {'a': 'a' * 40 + '!'})\n"
            "except records.ValidationFailed as exc:\n"
            "    print(exc.extensions['errors'][0]['code'])\n")
    try:
        # About 1.8**41 steps with a backtracking engine: the generous bound is never reached by RE2.
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("the pattern was evaluated by a backtracking engine")
    assert done.stdout.strip() == "pattern"


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def test_schema_nesting_is_bounded(client: httpx.Client, admin: Person) -> None:
    fits = (tenant_schemas.MAX_SCHEMA_DEPTH - 1) // 2  # each level is an object and its properties map
    assert define(client, admin, nested(fits)).status_code == 201
    resp = define(client, admin, nested(fits + 1))
    assert resp.status_code == 422 and resp.json()["errors"][0]["code"] == "too_deep"


def test_schema_size_is_bounded() -> None:
    # In-process: the test host's body limit is below the schema limit.
    wide = _obj(**{f"p{i}": {"type": "string", "description": "d" * 100} for i in range(700)})
    with pytest.raises(ValidationFailed) as caught:
        records.check_schema(wide)
    assert caught.value.extensions["errors"][0]["code"] == "too_large"


def test_reference_to_something_that_is_not_a_schema_is_refused(client: httpx.Client, admin: Person) -> None:
    for schema in ({**_obj(a={"$ref": "#/x"}), "x": {"type": "nonsense"}}, _obj(a={"$ref": "#/nowhere"}),
                   {**_obj(a={"$ref": "#/x/0"}), "x": ["string"]}):
        resp = define(client, admin, schema)
        assert resp.status_code == 422, resp.text
        assert resp.json()["errors"][0]["location"] == ["body", "schema", "properties", "a", "$ref"]


def test_self_reference_without_end_is_422_not_500(client: httpx.Client, admin: Person) -> None:
    assert define(client, admin, {"type": "object", "$ref": "#"}, "loop").status_code == 201
    resp = client.post("/api/records", json={"type": "loop", "payload": {}}, headers=auth(admin.token))
    assert resp.status_code == 422 and resp.json()["type"] == UNUSABLE
    assert resp.json()["errors"][0]["code"] == "recursive"


def test_schema_doubling_its_work_per_level_is_stopped_by_the_budget() -> None:
    defs: dict[str, Any] = {f"a{i}": {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}] * 2} for i in range(17)}
    schema = {"type": "object", "$defs": {**defs, "a17": {"type": "object"}}, "$ref": "#/$defs/a0"}
    records.check_schema(schema)
    with pytest.raises(RecordSchemaUnusable) as caught:
        records.validate_payload(schema, {})
    assert caught.value.extensions["errors"][0]["code"] == "too_costly"


def test_largest_builtin_payload_fits_the_budget() -> None:
    line = {"description": "d", "quantity": 1, "unit_price": 1, "tax_rate": 1}
    invoice = {"number": "x", "issue_date": "2026-01-01", "currency": "EUR", "lines": [line] * 500}
    records.validate_payload(records.BUILTIN_TYPES["invoice"][1], invoice)
