"""Generated input at every route of the real host: whatever arrives, the answer is never a 5xx.

Each HTTP function of `create_app().get_functions()` gets hypothesis-generated path segments,
queries and bodies (deep nesting, NUL, lone surrogates, huge numbers, wrong types, junk bytes),
sent through devhost with a live credential of the kind the endpoint expects. Bounded and
derandomized so CI is repeatable; `CUSTOS_FUZZ_EXAMPLES` raises the count for a longer hunt.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.tenancy.tenants import Tenant
from shared.web.endpoint import EndpointSpec, endpoint_spec
from tests.conftest import PersonFactory, auth

EXAMPLES = int(os.environ.get("CUSTOS_FUZZ_EXAMPLES", "8"))
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")


@dataclass(frozen=True)
class Route:
    name: str
    template: str
    method: str
    spec: EndpointSpec

    def __str__(self) -> str:
        return f"{self.method} /{self.template}"


def _routes() -> list[Route]:
    from function_app import create_app

    found = []
    for fn in create_app().get_functions():
        trigger = fn.get_trigger()
        template = getattr(trigger, "route", None)
        spec = endpoint_spec(fn.get_user_function())
        if template is None or spec is None:
            continue
        for method in getattr(trigger, "methods", None) or ["GET"]:
            found.append(Route(fn.get_function_name(), template, str(getattr(method, "value", method)).upper(), spec))
    return sorted(found, key=str)


ROUTES = _routes()

# Strings an attacker would try: control and format characters, lone surrogates, SQL and path
# tricks, digits that look like card numbers or huge integers, and plain text.
nasty_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Nd"]), max_size=12),
    st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfffy", "' or 1=1 --", "../../etc/passwd", "%00", "\u202e",
                     "9" * 40, "-1", "0", "1e309", "NaN", "null", "true", "[]", "{}", "9999-12-31T23:59:59-23:59",
                     "0001-01-01T00:00:00+23:59", "2026-02-30", " ", "\t\n", "\u00a0\u3000", "W10", "eyJ9"]),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), nasty_text,
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(nasty_text, inner, max_size=4),
    max_leaves=12,
)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def bodies(draw: st.DrawFn, spec: EndpointSpec) -> tuple[bytes, str]:
    """A body and its content type: mostly the endpoint's own fields with hostile values."""
    kind = draw(st.sampled_from(["fields", "fields", "fields", "json", "deep", "bytes"]))
    if kind == "bytes" or spec.raw_body:
        return draw(st.binary(max_size=200)), draw(st.sampled_from(["application/json", "text/plain",
                                                                    "application/octet-stream"]))
    if kind == "deep":
        return ('{"a": ' + _deep(draw(st.integers(30, 3000))) + "}").encode(), "application/json"
    if kind == "json" or spec.body is None:
        value = draw(json_values)
    else:
        names = [f.alias or n for n, f in spec.body.model_fields.items()]
        value = {name: draw(json_values) for name in names if draw(st.booleans()) or len(names) < 3}
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass"), "application/json"


@st.composite
def queries(draw: st.DrawFn, spec: EndpointSpec) -> dict[str, str]:
    names = [f.alias or n for n, f in spec.query.model_fields.items()] if spec.query is not None else []
    chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    out = {name: draw(nasty_text | st.integers().map(str)) for name in chosen}
    if draw(st.booleans()):
        out[draw(nasty_text)] = draw(nasty_text)
    return out


def _segment(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


path_values = st.one_of(st.uuids().map(str), nasty_text.filter(lambda s: s.strip() != ""),
                        st.integers(min_value=-(2**40), max_value=2**40).map(str))


@st.composite
def requests(draw: st.DrawFn, route: Route) -> tuple[str, dict[str, str], bytes, str]:
    path = _PARAM.sub(lambda m: _segment(draw(path_values)), route.template)
    body, media = draw(bodies(route.spec))
    return "/" + path, draw(queries(route.spec)), body, media


@pytest.fixture(scope="module")
def fuzz_tenant() -> Tenant:
    import uuid

    from shared.core import db
    from shared.tenancy.tenants import create_tenant

    with db.platform_tx() as conn:
        return create_tenant(conn, slug=f"fz-{uuid.uuid4().hex[:12]}", name="Fuzz Tenant", region="uksouth")


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_generated_input_never_gets_a_server_error(route: Route, client: httpx.Client, fuzz_tenant: Tenant,
                                                   make_person: PersonFactory) -> None:
    headers: dict[str, str] = {}
    if route.spec.auth:
        person = make_person(None) if route.spec.operator else make_person(fuzz_tenant.id, "ADMIN")
        headers = auth(person.token)
    if route.spec.scim:  # SCIM routes take the tenant's SCIM token, and answer errors in SCIM's format
        made = client.post("/api/scim/tokens", json={"name": "fuzz"}, headers=auth(make_person(fuzz_tenant.id, "ADMIN").token))
        assert made.status_code == 201, made.text
        headers = auth(made.json()["token"])
    errors_as = "application/scim+json" if route.spec.scim else "application/problem+json"
    deliberate = {501} if route.spec.scim else set()  # RFC 7644: a server may not offer a search

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests(route))
    def attack(request: tuple[str, dict[str, str], bytes, str]) -> None:
        path, params, body, media = request
        send_body = route.method in ("POST", "PUT", "PATCH") or route.spec.raw_body
        query = "&".join(f"{_segment(k)}={_segment(v)}" for k, v in params.items())
        resp = client.request(route.method, path + (f"?{query}" if query else ""),
                              content=body if send_body else None,
                              headers={**headers, "Content-Type": media} if send_body else headers)
        assert resp.status_code < 500 or resp.status_code in deliberate, f"{route} {path} {params} {body[:200]!r}: {resp.status_code} {resp.text[:300]}"
        assert "Traceback" not in resp.text
        if resp.status_code >= 400 and "x-request-id" in resp.headers:  # answered by the app, not the host's router
            assert resp.headers["content-type"].startswith(errors_as), resp.text[:200]

    attack()
