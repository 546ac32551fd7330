"""Tenant isolation: every HTTP route, called as tenant A's ADMIN with tenant B's ids and with
malformed ids, leaks and changes nothing of B and answers 404 (never 403, never 500); the app
role with tenant A set reads and writes nothing of B in SQL. Routes come from
`create_app().get_functions()` and tables from the catalogue: new ones are covered unedited.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from psycopg import sql

from shared.audit import chain as audit
from shared.core import db
from shared.core.pagination import encode_cursor
from shared.tenancy.tenants import create_tenant
from shared.web.endpoint import BODY_METHODS, EndpointSpec, endpoint_spec
from tests.conftest import Host, auth, create_operator, create_session_row, create_user, token_for

ALLOWED = {200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 415, 422}
THROTTLED = 429  # credential routes throttle failures (counted across every test): fine where no 404 is due
PROBLEM_STATUSES = {401, 403, 404, 422, 429}
PARAM = re.compile(r"\{\**(\w+)[^}]*\}")  # {id}, {id:guid}, {id?}, {*path}
RANDOM_ID = str(uuid.uuid4())
MALFORMED = ["not-a-uuid", "1", "' OR 1=1 --", "../", "00000000-0000-0000-0000-000000000000", RANDOM_ID]
SETTING_KEY, B_ZONE, B_USER_ZONE = "display.time_zone", "Antarctica/Troll", "Pacific/Chatham"
SMUGGLE = ("tenant_id", "tid", "tenant")


@dataclass(frozen=True)
class Route:
    name: str
    route: str
    method: str
    spec: EndpointSpec

    @property
    def params(self) -> list[str]:
        return PARAM.findall(self.route)

    def url(self, *values: str) -> str:
        it = iter(values * len(self.params) if len(values) == 1 else values)

        def fill(match: re.Match[str]) -> str:
            value = next(it)
            return "1" if ":int" in match.group(0) else quote(value, safe="")  # e.g. versions/{v:int}

        return "/" + PARAM.sub(fill, self.route)


def http_routes() -> list[Route]:
    from function_app import create_app

    out = []
    for fn in create_app().get_functions():
        trigger = fn.get_trigger()
        if getattr(trigger, "route", None) is None:
            continue
        spec = endpoint_spec(fn.get_user_function())
        assert spec is not None, f"{fn.get_function_name()} is not wrapped by shared.web.endpoint.endpoint"
        if not spec.preflight:
            for m in trigger.methods or ["GET", "POST", "PUT", "PATCH", "DELETE"]:
                out.append(Route(fn.get_function_name(), trigger.route, str(getattr(m, "value", m)).upper(), spec))
    assert len(out) >= 25, out
    return out


# --- request inputs derived from the endpoint's pydantic models ---------------------------


def _resolve(schema: dict, defs: dict) -> dict:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in schema:
        return _resolve(next(s for s in schema["anyOf"] if s.get("type") != "null"), defs)
    return schema


def _value(name: str, schema: dict, defs: dict) -> Any:
    s = _resolve(schema, defs)
    if "enum" in s or "const" in s:
        return s.get("enum", [s.get("const")])[0]
    kind, fmt, unique = s.get("type"), s.get("format"), uuid.uuid4().hex[:10]
    if kind == "string":
        if fmt in ("uuid", "date-time"):
            return str(uuid.uuid4()) if fmt == "uuid" else "2020-01-01T00:00:00Z"
        if "email" in name:
            return f"iso-{unique}@example.test"
        return "isolation sweep" if name == "reason" else "UTC" if "zone" in name else f"iso-{unique}"
    if kind in ("integer", "number"):
        return s.get("minimum", 1)
    if kind in ("boolean", "array", "object"):
        return {"boolean": False, "array": [], "object": _minimal(s, defs)}[kind]
    return "UTC"  # untyped (Any): a string, which the catalogue's time-zone setting takes


def _minimal(schema: dict, defs: dict) -> dict[str, Any]:
    props = schema.get("properties", {})
    required = set(schema.get("required", [])) | ({"reason"} & props.keys())
    return {k: _value(k, props[k], defs) for k in props if k in required}


def minimal(model: Any) -> dict[str, Any] | None:
    """The smallest valid-looking input of a body or query model (None: no model)."""
    if model is None:
        return None
    schema = model.model_json_schema()
    return _minimal(schema, schema.get("$defs", {}))


def with_refs(model: Any, ref: str) -> dict[str, Any] | None:
    """The minimal body with every uuid field (or list of uuids) set to `ref`; None if it has none."""
    schema = model.model_json_schema() if model is not None else {}
    defs, out, hit = schema.get("$defs", {}), minimal(model) or {}, False
    for name, prop in schema.get("properties", {}).items():
        s = _resolve(prop, defs)
        if s.get("format") == "uuid" or _resolve(s.get("items", {}), defs).get("format") == "uuid":
            out[name], hit = ([ref] if s.get("type") == "array" else ref), True
    return out if hit else None


# --- tenant B with real data, tenant A's ADMIN --------------------------------------------


def mint(tenant_id: str, user_id: str) -> str:
    """An ADMIN token on a fresh live session (routes like logout end the session they use)."""
    return token_for(user_id, tenant_id, "ADMIN", session_id=create_session_row(tenant_id, user_id))


@dataclass
class World:
    a_id: str
    a_admin: str
    b_id: str
    b_users: list[str]
    b_ids: list[str]
    canaries: set[str]
    a_scim: str = ""  # tenant A's SCIM bearer token: the /scim/v2 routes take no user token

    def a_token(self) -> str:
        return mint(self.a_id, self.a_admin)

    def b_api(self, c: httpx.Client) -> dict[str, Any]:
        """Tenant B's data as B's ADMIN reads it (on a new session: take it before `b_rows`)."""
        paths = ["/api/tenant", "/api/tenant/settings", "/api/users?limit=200", "/api/designations",
                 "/api/support-access", "/api/audit?limit=1000", *(f"/api/users/{u}/overrides" for u in self.b_users)]
        token, out = mint(self.b_id, self.b_users[0]), {}
        for path in paths:
            resp = c.get(path, headers=auth(token))
            assert resp.status_code == 200, (path, resp.text)
            out[path] = resp.json()
        return out

    def changes(self, c: httpx.Client, api: dict[str, Any], rows: dict[str, list[str]]) -> list[str]:
        now = b_rows(self.b_id)
        return ([] if now == rows else [f"tenant B's rows changed: {diff_rows(rows, now)}"]) + (
            [] if self.b_api(c) == api else ["tenant B's data as its ADMIN reads it changed"])


TENANT_TABLES = """
    select c.relname as name, c.relrowsecurity as rls, c.relforcerowsecurity as forced,
           pg_has_role(current_user, c.relowner, 'MEMBER') as owned
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
      join pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
     where n.nspname = 'public' and c.relkind in ('r', 'p') order by 1"""


# What platform jobs (run by other tests, concurrently) may change in any tenant: not tenant A's doing.
JOB_WRITTEN = {"audit_checkpoint_log": None, "outbox": ["sent_at", "body", "attempts", "last_attempt_at", "last_error"]}


def b_rows(b_id: str) -> dict[str, list[str]]:
    """Every row of tenant B, in every tenant table (sessions, outbox... included)."""
    with db.tenant_tx(b_id) as conn:
        out = {"tenants": [r["j"] for r in conn.execute("select to_jsonb(t)::text as j from tenants t where id = %s",
                                                        (b_id,))]}
        for t in conn.execute(TENANT_TABLES).fetchall():
            if t["name"] in JOB_WRITTEN and JOB_WRITTEN[t["name"]] is None:
                continue
            try:
                with conn.transaction():
                    rows = conn.execute(sql.SQL("select (to_jsonb(x) - %s::text[])::text as j from {} x").format(
                        sql.Identifier(t["name"])), (JOB_WRITTEN.get(t["name"], []),)).fetchall()
                out[t["name"]] = sorted(r["j"] for r in rows)
            except psycopg.errors.InsufficientPrivilege:
                pass
    return out


@pytest.fixture(scope="module")
def world(host: Host) -> Iterator[World]:
    mark = uuid.uuid4().hex[:12]  # in every string of B's, in nothing of A's
    with db.platform_tx() as conn:
        a = create_tenant(conn, slug=f"iso-a-{uuid.uuid4().hex[:10]}", name="Alpha", region="uksouth")
        b = create_tenant(conn, slug=f"iso-b-{mark}", name=f"Bravo {mark}", region="uksouth")
    b_admin, a_admin = create_user(b.id, "ADMIN", name=f"Bravo Admin {mark}"), create_user(a.id, "ADMIN", name="Al")
    b_session = create_session_row(b.id, b_admin["id"])
    b_token = token_for(b_admin["id"], b.id, "ADMIN", session_id=b_session)
    reason = f"bravo business {mark}"
    with httpx.Client(base_url=host.url, timeout=30) as c:
        def ok(method: str, path: str, body: dict, token: str = b_token) -> dict:
            resp = c.request(method, path, json=body, headers=auth(token))
            assert resp.status_code in (200, 201), (path, resp.text)
            return resp.json()

        ok("PUT", f"/api/tenant/settings/{SETTING_KEY}", {"value": B_ZONE, "reason": reason})
        users = [ok("POST", "/api/users", {"email": f"bravo-{role.lower()}-{mark}@bravo.example.test", "role": role,
                                           "display_name": f"Bravo {role} {mark}", "time_zone": B_USER_ZONE,
                                           "reason": reason})["user"]["id"] for role in ("MANAGER", "VIEWER")]
        designation = ok("POST", "/api/designations", {"name": f"Bravo designation {mark}", "reason": reason,
                                                       "description": f"only bravo {mark}",
                                                       "permissions": ["records.read", "audit.read"]})["id"]
        ok("PATCH", f"/api/users/{users[0]}", {"designations": [designation], "reason": reason})
        ok("PUT", f"/api/users/{users[1]}/overrides",
           {"overrides": [{"permission": "audit.read", "effect": "grant"}], "reason": reason})
        operator = create_operator(f"Bravo Operator {mark}")
        grant = ok("POST", "/api/support-access", {"operator_email": operator["email"], "hours": 24,
                                                   "reason": f"bravo support {mark}"})["id"]
        # A has data of its own too (rows the SQL test tries to move into B)
        a_token = mint(a.id, a_admin["id"])
        ok("PUT", "/api/tenant/settings/sessions.max_idle_minutes", {"value": 30, "reason": "alpha"}, a_token)
        ok("POST", "/api/users", {"email": f"alpha-{uuid.uuid4().hex[:8]}@alpha.example.test", "role": "VIEWER",
                                  "reason": "alpha"}, a_token)
        b_scim = ok("POST", "/api/scim/tokens", {"name": f"Bravo SCIM {mark}"})["id"]
        a_scim = ok("POST", "/api/scim/tokens", {"name": "Alpha SCIM"}, a_token)["token"]
        b_users = [b_admin["id"], *users]
        b_ids = [b.id, *b_users, designation, grant, b_session, operator["id"], b_scim]
        yield World(a_id=a.id, a_admin=a_admin["id"], b_id=b.id, b_users=b_users, b_ids=b_ids,
                    canaries={mark, B_ZONE.lower(), B_USER_ZONE.lower(), *b_ids}, a_scim=a_scim)


# --- the HTTP sweep -----------------------------------------------------------------------


@dataclass
class Sweep:
    client: httpx.Client
    world: World
    violations: list[str] = field(default_factory=list)
    requests: int = 0

    def send(self, r: Route, url: str, *, body: Any = None, query: dict | None = None,
             headers: dict | None = None, token: str | None = None) -> httpx.Response:
        h = {**(headers or {}), **(auth(token) if token else {})}
        kw: dict[str, Any] = {}
        if r.method in BODY_METHODS:
            kw["content"], h["Content-Type"] = json.dumps({} if body is None else body), "application/json"
        self.requests += 1
        return self.client.request(r.method, url, params=query, headers=h, **kw)

    def check(self, r: Route, variant: str, resp: httpx.Response, expect: set[int] | None, sent: str) -> None:
        where = f"{r.method} {resp.request.url.raw_path.decode()} [{r.name}/{variant}] -> {resp.status_code}"
        text, sent = resp.text.lower(), sent.lower()
        leaked = sorted(c for c in self.world.canaries if c in text and c not in sent)
        deliberate = {501} if r.spec.scim else set()  # RFC 7644 lets a server not offer a search
        if resp.status_code not in ALLOWED | {THROTTLED} | deliberate:
            self.violations.append(f"{where}: status not allowed: {resp.text[:200]}")
        elif expect is not None and resp.status_code not in expect:
            self.violations.append(f"{where}: expected {sorted(expect)}: {resp.text[:200]}")
        if leaked:
            self.violations.append(f"{where}: contains tenant B's {leaked}: {resp.text[:300]}")
        ctype = resp.headers.get("content-type", "")
        errors_as = "application/scim+json" if r.spec.scim else "application/problem+json"  # RFC 7644 3.12
        if resp.status_code in PROBLEM_STATUSES and not ctype.startswith(errors_as):
            self.violations.append(f"{where}: {ctype!r} is not {errors_as}")


def _normal(resp: httpx.Response, value: str) -> tuple[int, str]:
    body = resp.text.replace(value, "<id>").replace(quote(value, safe=""), "<id>")
    return resp.status_code, re.sub(r'"request_id": ?"[^"]*"', "", body)


def sweep_route(s: Sweep, r: Route) -> None:
    w, sp = s.world, r.spec
    operator = sp.operator or (sp.auth and r.route.startswith("api/platform/"))
    foreign = [*w.b_ids, w.b_users[0].upper(), *MALFORMED]
    values = ([SETTING_KEY] if "key" in r.params else []) + foreign if r.params else [""]
    oracle: dict[str, dict[str, tuple[int, str]]] = {}
    for value in values:
        url = r.url(value)
        for variant in ("clean", "smuggle-body", "smuggle-query"):
            body, query, headers = minimal(sp.body), minimal(sp.query), None
            if variant == "smuggle-body":
                body = {**(body or {}), **dict.fromkeys(SMUGGLE, w.b_id)}
            elif variant == "smuggle-query":
                query = {**(query or {}), **dict.fromkeys(SMUGGLE, w.b_id)}
                headers = {"X-Tenant-Id": w.b_id, "X-Tenant": w.b_id}
            expect = ({403} if operator else None if not sp.auth or value not in foreign
                      # SCIM checks a PUT/PATCH body before it looks up the resource (400 for any id)
                      else {404, 400} if sp.scim else {404} if variant == "clean" else {404, 422})
            resp = s.send(r, url, body=body, query=query, headers=headers,
                          token=w.a_scim if sp.scim else w.a_token())
            s.check(r, variant, resp, expect, url + json.dumps(body) + json.dumps(query))
            if value in [*w.b_ids, RANDOM_ID]:
                oracle.setdefault(variant, {})[value] = _normal(resp, value)
    for variant, seen in oracle.items():  # B's ids answer exactly like an id that exists nowhere
        for value, normal in seen.items():
            if normal != seen[RANDOM_ID]:
                s.violations.append(f"{r.method} {r.route} [{r.name}/{variant}] existence oracle: {value} answers "
                                    f"{normal}, an unknown id answers {seen[RANDOM_ID]}")
    if len(r.params) > 1:  # A's own or B's id in the outer parameters, each of B's ids in the last
        for outer in [w.a_admin, *w.b_ids]:
            for inner in w.b_ids:
                url = r.url(*[outer] * (len(r.params) - 1), inner)
                resp = s.send(r, url, body=minimal(sp.body), query=minimal(sp.query), token=w.a_token())
                s.check(r, "nested", resp, {403} if operator else {404}, url)
    for ref in w.b_ids if with_refs(sp.body, "") else []:  # B's ids inside the body, on A's own path ids
        resp = s.send(r, r.url(w.a_admin), body=with_refs(sp.body, ref), query=minimal(sp.query), token=w.a_token())
        s.check(r, "b-refs", resp, {403} if operator else {404, 422}, "")


@pytest.mark.requirement("21CFR11.10(d)")
def test_tenant_a_admin_gets_nothing_of_tenant_b(host: Host, world: World) -> None:
    routes = http_routes()
    with httpx.Client(base_url=host.url, timeout=30) as c:
        s, api, rows = Sweep(c, world), world.b_api(c), b_rows(world.b_id)
        for r in routes:
            sweep_route(s, r)
        s.violations += world.changes(c, api, rows)
    print(f"\nisolation sweep: {len(routes)} route-methods, {s.requests} requests as tenant A's ADMIN")
    assert s.violations == [], "\n".join(s.violations)


@pytest.mark.requirement("21CFR11.10(d)")
def test_every_authenticated_route_refuses_anonymous_callers(host: Host, world: World) -> None:
    with httpx.Client(base_url=host.url, timeout=30) as c:
        s, count = Sweep(c, world), 0
        for r in http_routes():
            url = r.url(world.b_users[0])
            if not r.spec.auth:
                s.check(r, "public", s.send(r, url, body=minimal(r.spec.body), query=minimal(r.spec.query)), None, "")
                continue
            for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {world.b_id}"}):
                resp = s.send(r, url, body=minimal(r.spec.body), query=minimal(r.spec.query), headers=headers)
                s.check(r, "anonymous", resp, {401}, url)
                if resp.status_code == 401 and "www-authenticate" not in resp.headers:
                    s.violations.append(f"{r.method} {url}: 401 without WWW-Authenticate")
                count += 1
    assert count >= 20
    assert s.violations == [], "\n".join(s.violations)


def test_forged_cursor_with_malformed_id_is_not_500(host: Host, world: World) -> None:
    statuses = {}
    with httpx.Client(base_url=host.url, timeout=30) as c:
        for r in http_routes():
            fields = r.spec.query.model_json_schema().get("properties", {}) if r.spec.query else {}
            for arity, bad in ((n, b) for n in (1, 2, 3) for b in MALFORMED if
                               _resolve(fields.get("after", {}), {}).get("type") == "string"):
                query = {**(minimal(r.spec.query) or {}), "after": encode_cursor(*[bad] * arity)}
                resp = c.request(r.method, r.url(RANDOM_ID), params=query, headers=auth(world.a_token()))
                statuses[(r.route, arity, bad)] = resp.status_code
    assert statuses, "no route takes a string cursor"
    assert {k: v for k, v in statuses.items() if v >= 500} == {}


def _token_routes() -> list[Any]:
    routes = [r for r in http_routes() if r.spec.body is not None
              and any("token" in name for name in r.spec.body.model_fields)]
    return [pytest.param(r, id=r.name) for r in routes]


@pytest.mark.parametrize("route", _token_routes())
def test_forged_tokens_naming_tenant_b_change_nothing_of_b(host: Host, world: World, route: Route) -> None:
    """Opaque tokens (refresh, invitation, reset) name their tenant in clear: one forged to
    name B, with B's real session ids, must be refused without touching B."""
    w, secret = world, "x" * 43
    forged = [f"{kind}.{uuid.UUID(w.b_id).hex}.{secret}" for kind in ("inv", "pwr", "rt")]
    forged += [f"{kind}.{uuid.UUID(w.b_id).hex}.{uuid.UUID(i).hex}.{secret}" for kind in ("rt", "inv", "pwr")
               for i in w.b_ids]
    with httpx.Client(base_url=host.url, timeout=30) as c:
        s, api, rows = Sweep(c, w), w.b_api(c), b_rows(w.b_id)
        for token in forged:
            body = {k: (token if "token" in k else v) for k, v in (minimal(route.spec.body) or {}).items()}
            resp = s.send(route, route.url(RANDOM_ID), body=body, token=w.a_token() if route.spec.auth else None)
            s.check(route, "forged", resp, {400, 401, 403, 404, 422, THROTTLED}, token)
        s.violations += w.changes(c, api, rows)
    assert s.violations == [], "\n".join(s.violations)


def diff_rows(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, Any]:
    return {t: {"gone": sorted(set(before.get(t, [])) - set(rows)), "new": sorted(set(rows) - set(before.get(t, [])))}
            for t, rows in after.items() if rows != before.get(t)}


# --- SQL: the app role with tenant A set ---------------------------------------------------

REQUIRED_COLUMNS = """
    select a.attname as name, format_type(a.atttypid, a.atttypmod) as type from pg_attribute a
     where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped and a.attnotnull
       and not a.atthasdef and a.attidentity = '' and a.attgenerated = '' and a.attname <> 'tenant_id'
     order by a.attnum"""
FILL = {"uuid": "gen_random_uuid()", "text": "'iso'", "bigint": "1", "integer": "1", "smallint": "1",
        "boolean": "false", "timestamp with time zone": "now()", "jsonb": "'{}'::jsonb", "json": "'{}'::json",
        "text[]": "'{}'::text[]"}
MUST_INSERT = {"tenant_settings", "users", "designations", "audit_events", "audit_chain_heads"}
B_POPULATED = MUST_INSERT | {"user_designations", "user_permission_overrides", "invitations",
                             "support_access_grants", "outbox", "sessions"}


def _affected(conn: psycopg.Connection, statement: sql.Composable, params: dict) -> int | None:
    """Rows the statement affects (always rolled back), or None when the database refuses it."""
    try:
        with conn.transaction(force_rollback=True):
            return conn.execute(statement, params).rowcount
    except psycopg.errors.InsufficientPrivilege:
        return None


@pytest.mark.requirement("21CFR11.10(d)")
def test_app_role_with_tenant_a_set_reaches_nothing_of_tenant_b(world: World) -> None:
    a, b, problems = world.a_id, world.b_id, []
    p, before = {"a": a, "b": b}, b_rows(world.b_id)
    with db.tenant_tx(a) as conn:
        role = conn.execute("select rolsuper, rolbypassrls from pg_roles where rolname = current_user").fetchone()
        assert role == {"rolsuper": False, "rolbypassrls": False}, role
        tables = conn.execute(TENANT_TABLES).fetchall()
        policies = conn.execute("select * from pg_policies where schemaname = 'public'").fetchall()
    names = {t["name"] for t in tables}
    assert B_POPULATED <= names, names
    empty = [t for t, rows in before.items() if t in B_POPULATED and not rows]
    assert empty == [], f"tenant B has no rows in {empty}: the zeros below would mean nothing"

    for t in tables:
        name, table, mine = t["name"], sql.Identifier(t["name"]), [x for x in policies if x["tablename"] == t["name"]]
        if not (t["rls"] and t["forced"]):
            problems.append(f"{name}: row-level security enabled={t['rls']} forced={t['forced']}")
        if t["owned"]:
            problems.append(f"{name}: owned by the app role (it could turn row-level security off)")
        if not mine or any(x["permissive"] == "PERMISSIVE" and "app.tenant_id" not in (x["qual"] or "")
                           for x in mine):
            problems.append(f"{name}: no policy, or a permissive policy not on app.tenant_id: {mine}")
        if any(x["with_check"] is not None and "app.tenant_id" not in x["with_check"] for x in mine):
            problems.append(f"{name}: a WITH CHECK not on app.tenant_id: {mine}")
        with db.tenant_tx(a) as conn:
            seen = _affected(conn, sql.SQL("select 1 from {} where tenant_id = %(b)s or tenant_id <> %(a)s")
                             .format(table), p)
            if seen:
                problems.append(f"{name}: tenant A's transaction sees {seen} rows of other tenants")
            for what, statement in {
                "updated B's rows": "update {} set tenant_id = tenant_id where tenant_id = %(b)s",
                "moved B's rows into A": "update {} set tenant_id = %(a)s where tenant_id = %(b)s",
                "deleted B's rows": "delete from {} where tenant_id = %(b)s",
                "moved A's rows into B": "update {} set tenant_id = %(b)s where tenant_id = %(a)s",
            }.items():
                n = _affected(conn, sql.SQL(statement).format(table), p)
                if n not in (None, 0):
                    problems.append(f"{name}: {what} ({n} rows)")
            cols = conn.execute(REQUIRED_COLUMNS, (name,)).fetchall()
            if any(col["type"] not in FILL for col in cols):
                assert name not in MUST_INSERT, f"cannot build an INSERT for {name}: {cols}"
                continue
            insert = sql.SQL("insert into {} (tenant_id{}) values (%(b)s{})").format(
                table, sql.SQL("").join(sql.SQL(", ") + sql.Identifier(col["name"]) for col in cols),
                sql.SQL("").join(sql.SQL(", " + FILL[col["type"]]) for col in cols))
            n = _affected(conn, insert, p)
            if n is not None:
                problems.append(f"{name}: an INSERT with tenant B's id was accepted ({n} rows)")

    with pytest.raises((psycopg.errors.InsufficientPrivilege, RuntimeError)), db.tenant_tx(a) as conn:
        audit.append(conn, tenant_id=b, actor=audit.SYSTEM, action="isolation.probe", reason="must be refused")
    with db.platform_tx() as conn:  # no tenant set: no tenant rows at all
        for t in tables:
            n = _affected(conn, sql.SQL("select 1 from {}").format(sql.Identifier(t["name"])), p)
            if n:
                problems.append(f"{t['name']}: {n} rows visible with no tenant set")
    if b_rows(b) != before:
        problems.append(f"tenant B's rows changed: {diff_rows(before, b_rows(b))}")
    assert problems == [], "\n".join(problems)
