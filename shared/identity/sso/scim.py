"""SCIM 2.0 provisioning (RFC 7643, RFC 7644) at /scim/v2: discovery, Users and Groups.

The tenant is the SCIM token's (shared.identity.sso.scim_tokens); row-level security applies as
for any caller. Users are Custos users: userName is the sign-in email where it is an address
(else the primary email is), `active` is the user's status (false deactivates and ends every
session at once), and nothing is ever hard-deleted (DELETE deactivates and hides the user from
SCIM). SCIM never sets a role: users it creates are VIEWERs, and a role is changed in Custos.
Groups are designations; membership is a user's designations. Every change is one audit event
`scim.*` with the token as actor, in the transaction of the change. docs/scim.md has the why.

Entry points take a `ScimCaller` (the endpoint wrapper's RequestContext) and answer a `ScimAnswer`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import azure.functions as func

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Conflict
from shared.identity.sessions import revoke_all
from shared.identity.sso import scim_filter as sf
from shared.identity.sso.errors import (
    ScimInvalidPath,
    ScimInvalidSyntax,
    ScimInvalidValue,
    ScimMethodNotAllowed,
    ScimMutability,
    ScimNoTarget,
    ScimNotFound,
    ScimNotImplemented,
    ScimPreconditionFailed,
    ScimTooMany,
    ScimUniqueness,
)
from shared.web.caller import Caller
from shared.web.models import EMAIL_ADDRESS

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
SPC_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RT_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"

DEFAULT_COUNT = 100
MAX_COUNT = 200
"""A page holds at most this many resources, whatever `count` asks (RFC 7644 section 3.4.2.4)."""
MAX_OPERATIONS = 100
MAX_EMAILS = 20
MAX_MEMBERS = 1000
SCIM_ROLE = "VIEWER"
"""The role of a user SCIM creates: the least one. SCIM never sets or changes a role."""
GROUP_DESCRIPTION = "Provisioned by SCIM"

_EMAIL = re.compile(rf"^{EMAIL_ADDRESS}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ScimCaller(Caller, Protocol):
    """A SCIM request's caller: the wrapper's RequestContext (its HTTP request and parsed JSON)."""

    request: func.HttpRequest
    json: Any


@dataclass
class ScimAnswer:
    """A SCIM response: status, JSON body (None for 204) and headers (ETag, Location)."""

    body: dict[str, Any] | None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def _base(caller: ScimCaller) -> str:
    parts = urlsplit(caller.request.url)
    return f"{parts.scheme}://{parts.netloc}/scim/v2"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _version(updated_at: datetime) -> str:
    return f'W/"{(updated_at - _EPOCH) // timedelta(microseconds=1)}"'


def _resource_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ScimNotFound("no such resource") from None


def _check_if_match(caller: ScimCaller, version: str) -> None:
    wanted = caller.request.headers.get("If-Match")
    if wanted is None:
        return
    tags = [t.strip() for t in wanted.split(",")]
    if "*" not in tags and version not in tags and version.removeprefix("W/") not in tags:
        raise ScimPreconditionFailed(f"the resource is now at version {version}")


def _body(caller: ScimCaller, schema: str) -> dict[str, Any]:
    body = caller.json
    if not isinstance(body, dict):
        raise ScimInvalidSyntax("the body must be a JSON object (application/scim+json)")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or not all(isinstance(s, str) for s in schemas):
        raise ScimInvalidSyntax("schemas must be a list of schema URNs")
    if schema not in schemas:
        raise ScimInvalidSyntax(f"schemas must name {schema}")
    unknown = [s for s in schemas if s != schema]
    if unknown:
        raise ScimInvalidSyntax(f"unknown schema {unknown[0][:200]}")
    return body


# --- discovery -------------------------------------------------------------------------------------------


def _attr(name: str, type_: str = "string", *, multi: bool = False, required: bool = False,
          mutability: str = "readWrite", returned: str = "default", uniqueness: str = "none",
          case_exact: bool = False, subs: list[dict[str, Any]] | None = None,
          canonical: list[str] | None = None, refs: list[str] | None = None, description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name, "type": type_, "multiValued": multi, "description": description or name,
        "required": required, "caseExact": case_exact, "mutability": mutability, "returned": returned,
        "uniqueness": uniqueness,
    }
    if subs is not None:
        out["subAttributes"] = subs
    if canonical is not None:
        out["canonicalValues"] = canonical
    if refs is not None:
        out["referenceTypes"] = refs
    return out


USER_ATTRIBUTES = [
    _attr("userName", required=True, uniqueness="server",
          description="Unique per tenant, case-insensitive; the sign-in email where it is an address"),
    _attr("name", "complex", subs=[_attr(n) for n in (
        "formatted", "familyName", "givenName", "middleName", "honorificPrefix", "honorificSuffix")]),
    _attr("displayName", description="The name Custos shows and prints in signatures"),
    _attr("active", "boolean", required=True,
          description="false deactivates the user and ends every session at once; a Custos account is always "
                      "active or not, so it cannot be removed (taken as true when a new user omits it)"),
    _attr("emails", "complex", multi=True, subs=[
        _attr("value", description="An email address"),
        _attr("type", canonical=["work", "home", "other"]),
        _attr("primary", "boolean"),
    ]),
]
GROUP_ATTRIBUTES = [
    _attr("displayName", required=True, uniqueness="server", description="The designation's name"),
    _attr("members", "complex", multi=True, subs=[
        _attr("value", mutability="immutable", case_exact=True, description="A user's id"),
        _attr("$ref", "reference", mutability="immutable", refs=["User"], case_exact=True),
        _attr("type", mutability="immutable", canonical=["User"]),
        _attr("display", mutability="readOnly"),
    ]),
]
SCHEMAS = {
    USER_SCHEMA: ("User", "User Account", USER_ATTRIBUTES),
    GROUP_SCHEMA: ("Group", "Group (a Custos designation)", GROUP_ATTRIBUTES),
}
RESOURCE_TYPES = {"User": ("/Users", USER_SCHEMA), "Group": ("/Groups", GROUP_SCHEMA)}


def _schema_json(urn: str, base: str) -> dict[str, Any]:
    name, description, attributes = SCHEMAS[urn]
    return {"schemas": [SCHEMA_SCHEMA], "id": urn, "name": name, "description": description,
            "attributes": attributes, "meta": {"resourceType": "Schema", "location": f"{base}/Schemas/{urn}"}}


def _resource_type_json(name: str, base: str) -> dict[str, Any]:
    endpoint, schema = RESOURCE_TYPES[name]
    return {"schemas": [RT_SCHEMA], "id": name, "name": name, "endpoint": endpoint, "description": name,
            "schema": schema, "schemaExtensions": [],
            "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/{name}"}}


def _list(resources: list[dict[str, Any]], total: int | None = None, start: int = 1) -> dict[str, Any]:
    return {"schemas": [LIST_SCHEMA], "totalResults": len(resources) if total is None else total,
            "startIndex": start, "itemsPerPage": len(resources), "Resources": resources}


def service_provider_config(caller: ScimCaller) -> ScimAnswer:
    """What this server supports (RFC 7643 section 5)."""
    base = _base(caller)
    return ScimAnswer({
        "schemas": [SPC_SCHEMA],
        "documentationUri": "https://github.com/custos/custos/blob/main/docs/scim.md",
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": MAX_COUNT},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": True},
        "authenticationSchemes": [{
            "type": "oauthbearertoken", "name": "SCIM bearer token", "primary": True,
            "description": "A tenant's SCIM token, created by an ADMIN (POST /api/scim/tokens)",
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": f"{base}/ServiceProviderConfig"},
    })


def resource_types(caller: ScimCaller, name: str | None = None) -> ScimAnswer:
    """The resource types, or one (RFC 7644 section 4).

    Raises:
        ScimNotFound: no such resource type.
    """
    base = _base(caller)
    if name is None:
        return ScimAnswer(_list([_resource_type_json(n, base) for n in RESOURCE_TYPES]))
    if name not in RESOURCE_TYPES:
        raise ScimNotFound("no such resource type")
    return ScimAnswer(_resource_type_json(name, base))


def schemas(caller: ScimCaller, urn: str | None = None) -> ScimAnswer:
    """The schemas, or one (RFC 7644 section 4).

    Raises:
        ScimNotFound: no such schema.
    """
    base = _base(caller)
    if urn is None:
        return ScimAnswer(_list([_schema_json(u, base) for u in SCHEMAS]))
    if urn not in SCHEMAS:
        raise ScimNotFound("no such schema")
    return ScimAnswer(_schema_json(urn, base))


def not_found(caller: ScimCaller) -> ScimAnswer:
    """Any other path under /scim/v2.

    Raises:
        ScimNotFound: always.
    """
    raise ScimNotFound("no such SCIM endpoint")


def search_all(caller: ScimCaller) -> ScimAnswer:
    """POST /scim/v2/.search: a search across resource types, which this server does not offer.

    Raises:
        ScimNotImplemented: always (search /Users/.search or /Groups/.search instead).
    """
    raise ScimNotImplemented("search /Users/.search or /Groups/.search")


def method_not_allowed(caller: ScimCaller) -> ScimAnswer:
    """A write to a read-only discovery endpoint.

    Raises:
        ScimMethodNotAllowed: always.
    """
    raise ScimMethodNotAllowed("this SCIM endpoint is read-only")


# --- queries ---------------------------------------------------------------------------------------------

_USER_EMAILS = ("coalesce(su.emails, jsonb_build_array(jsonb_build_object("
                "'value', u.email, 'type', 'work', 'primary', true)))")
USER_FROM = """users u left join scim_users su on su.tenant_id = u.tenant_id and su.user_id = u.id"""
USER_COLUMNS = f"""u.id::text as id, u.email, u.display_name, u.status, u.role, u.created_at, u.updated_at,
    coalesce(su.user_name, u.email) as user_name, su.external_id, coalesce(su.name, '{{}}'::jsonb) as name,
    {_USER_EMAILS} as emails, coalesce(su.deactivated_by_scim, false) as deactivated_by_scim,
    su.user_id is not null as managed"""
USER_VISIBLE = "su.deleted_at is null"

USER_ATTRS: sf.AttrMap = {
    "id": sf.Column("u.id::text", case_exact=True),
    "username": sf.Column("coalesce(su.user_name, u.email)"),
    "displayname": sf.Column("u.display_name"),
    "externalid": sf.Column("su.external_id", case_exact=True),
    "active": sf.Column("(u.status <> 'deactivated')", "boolean"),
    "name": sf.Column("coalesce(su.name, '{}'::jsonb)", "json"),
    **{f"name.{n.lower()}": sf.Column(f"(su.name->>'{n}')") for n in (
        "formatted", "familyName", "givenName", "middleName", "honorificPrefix", "honorificSuffix")},
    "emails": sf.Multi(
        f"exists (select 1 from jsonb_array_elements({_USER_EMAILS}) e where {{cond}})",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
        {"value": sf.Column("(e->>'value')"), "type": sf.Column("(e->>'type')"),
         "primary": sf.Column("(e->'primary' = 'true'::jsonb)", "boolean")}),
    "meta.created": sf.Column("u.created_at", "datetime"),
    "meta.lastmodified": sf.Column("u.updated_at", "datetime"),
}

GROUP_FROM = "designations d left join scim_groups sg on sg.tenant_id = d.tenant_id and sg.designation_id = d.id"
GROUP_COLUMNS = "d.id::text as id, d.name, d.created_at, d.updated_at, sg.external_id"
GROUP_VISIBLE = "d.deleted_at is null"
GROUP_ATTRS: sf.AttrMap = {
    "id": sf.Column("d.id::text", case_exact=True),
    "displayname": sf.Column("d.name"),
    "externalid": sf.Column("sg.external_id", case_exact=True),
    "members": sf.Multi(
        "exists (select 1 from user_designations m where m.designation_id = d.id and {cond})",
        {"value": sf.Column("m.user_id::text", case_exact=True)}),
    "meta.created": sf.Column("d.created_at", "datetime"),
    "meta.lastmodified": sf.Column("d.updated_at", "datetime"),
}


@dataclass(frozen=True)
class Query:
    filter: str | None
    start: int
    count: int
    attributes: list[str]
    excluded: list[str]


def _int_param(value: Any, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ScimInvalidValue(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,9}", value.strip()):
        return int(value)
    raise ScimInvalidValue(f"{name} must be an integer")


def _names(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 50:
        raise ScimInvalidValue(f"{name} must be a list of attribute names")
    return [v.strip() for v in value if v.strip()]


def _query(source: dict[str, Any]) -> Query:
    attributes, excluded = _names(source.get("attributes"), "attributes"), _names(
        source.get("excludedAttributes"), "excludedAttributes")
    if attributes and excluded:
        raise ScimInvalidValue("attributes and excludedAttributes are mutually exclusive")
    flt = source.get("filter")
    if flt is not None and not isinstance(flt, str):
        raise ScimInvalidValue("filter must be a string")
    start = max(1, _int_param(source.get("startIndex"), "startIndex", 1))
    count = min(MAX_COUNT, max(0, _int_param(source.get("count"), "count", DEFAULT_COUNT)))
    return Query(flt or None, start, count, attributes, excluded)


def _project(resource: dict[str, Any], q: Query, schema: str) -> dict[str, Any]:
    """`attributes` / `excludedAttributes` (RFC 7644 section 3.4.2.5); id and schemas always stay."""
    def split(path: str) -> tuple[str, str | None]:
        if path.lower().startswith(schema.lower() + ":"):
            path = path[len(schema) + 1:]
        top, _, sub = path.partition(".")
        return top.lower(), sub.lower() or None

    keys = {k.lower(): k for k in resource}
    if q.attributes:
        out = {"id": resource["id"], "schemas": resource["schemas"]}
        for top, sub in map(split, q.attributes):
            key = keys.get(top)
            if key is None:
                continue
            value = resource[key]
            if sub and isinstance(value, dict):
                picked = {k: v for k, v in value.items() if k.lower() == sub}
                if picked:
                    out[key] = {**out.get(key, {}), **picked}
            else:
                out[key] = value
        return out
    if q.excluded:
        out = dict(resource)
        for top, sub in map(split, q.excluded):
            key = keys.get(top)
            if key is None or key in ("id", "schemas"):
                continue
            if sub and isinstance(out[key], dict):
                out[key] = {k: v for k, v in out[key].items() if k.lower() != sub}
            elif not sub:
                del out[key]
        return out
    return resource


def _search(caller: ScimCaller, q: Query, *, from_: str, columns: str, visible: str, attrs: sf.AttrMap,
            schema: str, order: str, render: Callable[[Conn, list[dict[str, Any]], str], list[dict[str, Any]]]
            ) -> ScimAnswer:
    where, params = visible, list[Any]()
    if q.filter:
        cond, params = sf.to_sql(sf.parse_filter(q.filter, (schema,)), attrs)
        where = f"{visible} and {cond}"
    base = _base(caller)
    with caller.tenant_tx() as conn:
        total = conn.execute(f"select count(*) as n from {from_} where {where}", params).fetchone()  # noqa: S608  # nosec B608  # from_ and visible are the module's constants; the filter is compiled from an attribute allow-list with bound values
        rows = conn.execute(
            f"select {columns} from {from_} where {where} order by {order} offset %s limit %s",  # noqa: S608  # nosec B608  # columns, from_, order are the module's constants; the filter is compiled from an attribute allow-list with bound values
            [*params, q.start - 1, q.count],
        ).fetchall() if q.count else []
        resources = render(conn, rows, base)
    assert total is not None
    return ScimAnswer(_list([_project(r, q, schema) for r in resources], total["n"], q.start))


def _query_source(caller: ScimCaller) -> dict[str, Any]:
    return dict(caller.request.params or {})


def _search_source(caller: ScimCaller) -> dict[str, Any]:
    body = _body(caller, SEARCH_SCHEMA)
    return {k: body.get(k) for k in ("filter", "startIndex", "count", "attributes", "excludedAttributes")}


# --- users -----------------------------------------------------------------------------------------------


def _user_json(row: dict[str, Any], base: str) -> dict[str, Any]:
    out: dict[str, Any] = {"schemas": [USER_SCHEMA], "id": row["id"]}
    if row["external_id"]:
        out["externalId"] = row["external_id"]
    out["userName"] = row["user_name"]
    if row["name"]:
        out["name"] = row["name"]
    if row["display_name"]:
        out["displayName"] = row["display_name"]
    out["active"] = row["status"] != "deactivated"
    if row["emails"]:
        out["emails"] = row["emails"]
    out["meta"] = {"resourceType": "User", "created": _iso(row["created_at"]),
                   "lastModified": _iso(row["updated_at"]), "version": _version(row["updated_at"]),
                   "location": f"{base}/Users/{row['id']}"}
    return out


def _render_users(conn: Conn, rows: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    return [_user_json(r, base) for r in rows]


def _load_user(conn: Conn, user_id: str, *, lock: bool = False) -> dict[str, Any]:
    row = conn.execute(
        f"select {USER_COLUMNS} from {USER_FROM} where u.id = %s and {USER_VISIBLE}"  # noqa: S608  # nosec B608  # only constants and a fixed FOR UPDATE clause; values are bound
        f"{' for update of u' if lock else ''}", (user_id,)).fetchone()
    if row is None:
        raise ScimNotFound("no such user")
    return row


def _resource_answer(body: dict[str, Any], status: int) -> ScimAnswer:
    """A resource with its ETag (and, when created, its Location)."""
    headers = {"ETag": body["meta"]["version"]}
    if status == 201:
        headers["Location"] = body["meta"]["location"]
    return ScimAnswer(body, status, headers)


def _user_answer(row: dict[str, Any], base: str, status: int = 200) -> ScimAnswer:
    return _resource_answer(_user_json(row, base), status)


def list_users(caller: ScimCaller, *, search: bool = False) -> ScimAnswer:
    """GET /Users (or POST /Users/.search): filter, startIndex/count, attributes.

    Raises:
        ScimInvalidFilter, ScimInvalidValue, ScimInvalidSyntax: a bad filter, parameter or search body.
    """
    q = _query(_search_source(caller) if search else _query_source(caller))
    return _search(caller, q, from_=USER_FROM, columns=USER_COLUMNS, visible=USER_VISIBLE, attrs=USER_ATTRS,
                   schema=USER_SCHEMA, order="u.created_at, u.id", render=_render_users)


def get_user(caller: ScimCaller, user_id: str) -> ScimAnswer:
    """GET /Users/{id}.

    Raises:
        ScimNotFound: no such user in the token's tenant (another tenant's id included).
    """
    uid, q = _resource_id(user_id), _query(_query_source(caller))
    with caller.tenant_tx() as conn:
        row = _load_user(conn, uid)
    answer = _user_answer(row, _base(caller))
    assert answer.body is not None
    answer.body = _project(answer.body, q, USER_SCHEMA)
    return answer


@dataclass
class UserInput:
    user_name: str
    display_name: str
    name: dict[str, str]
    emails: list[dict[str, Any]]
    active: bool | None
    external_id: str | None


_NAME_PARTS = {n.lower(): n for n in ("formatted", "familyName", "givenName", "middleName", "honorificPrefix",
                                       "honorificSuffix")}
_USER_KEYS = {"username": "userName", "displayname": "displayName", "name": "name", "emails": "emails",
              "active": "active", "externalid": "externalId"}
_USER_READ_ONLY = {"id", "meta", "groups", "schemas"}


def _text(value: Any, name: str, limit: int, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise ScimInvalidValue(f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise ScimInvalidValue(f"{name} must be a string")
    if required and not value.strip():
        raise ScimInvalidValue(f"{name} is required")
    if len(value) > limit:
        raise ScimInvalidValue(f"{name} may be at most {limit} characters")
    return value


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    # Microsoft Entra ID sends PATCH values of active as the strings "True" and "False".
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ScimInvalidValue(f"{name} must be true or false")


def _canonical_user(body: dict[str, Any]) -> dict[str, Any]:
    """Attribute names of a User body in their canonical case; read-only and unknown ones dropped."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        low = str(key).lower()
        if low.startswith(USER_SCHEMA.lower() + ":"):
            low = low[len(USER_SCHEMA) + 1:]
        if low in _USER_KEYS:
            out[_USER_KEYS[low]] = value
    return out


def _user_input(body: dict[str, Any]) -> UserInput:
    attrs = _canonical_user(body)
    user_name = _text(attrs.get("userName"), "userName", 254, required=True).strip()
    name_in = attrs.get("name") or {}
    if not isinstance(name_in, dict):
        raise ScimInvalidValue("name must be an object")
    name: dict[str, str] = {}
    for key, value in name_in.items():
        canon = _NAME_PARTS.get(str(key).lower())
        if canon is None:
            continue
        text = _text(value, f"name.{canon}", 200)
        if text:
            name[canon] = text
    emails_in = attrs.get("emails") or []
    if not isinstance(emails_in, list) or len(emails_in) > MAX_EMAILS:
        raise ScimInvalidValue(f"emails must be a list of at most {MAX_EMAILS} objects")
    emails: list[dict[str, Any]] = []
    for i, item in enumerate(emails_in):
        if not isinstance(item, dict):
            raise ScimInvalidValue("each of emails must be an object")
        low = {str(k).lower(): v for k, v in item.items()}
        value = _text(low.get("value"), f"emails[{i}].value", 254, required=True).strip()
        if not _EMAIL.match(value):
            raise ScimInvalidValue(f"emails[{i}].value is not an email address")
        email: dict[str, Any] = {"value": value}
        if low.get("type") is not None:
            email["type"] = _text(low["type"], f"emails[{i}].type", 20)
        if low.get("primary") is not None:
            email["primary"] = _bool(low["primary"], f"emails[{i}].primary")
        emails.append(email)
    if sum(1 for e in emails if e.get("primary")) > 1:
        raise ScimInvalidValue("at most one email may be primary")
    display = _text(attrs.get("displayName"), "displayName", 200).strip()
    active = None if attrs.get("active") is None else _bool(attrs["active"], "active")
    external = _text(attrs.get("externalId"), "externalId", 254) or None
    return UserInput(user_name, display, name, emails, active, external)


def _custos_email(u: UserInput) -> str:
    """The user's Custos sign-in name (the `email` column): userName, lower-cased. It is an email
    address whenever the identity provider sends one (Entra ID's UPN, Okta's login); a userName
    that is not an address still works for SSO sign-in, not for password reset mail.

    Raises:
        ScimInvalidValue: shorter than 3 characters (what the users table holds).
    """
    if len(u.user_name) < 3:
        raise ScimInvalidValue("userName must have at least 3 characters")
    return u.user_name.lower()


def _display(u: UserInput) -> str:
    if u.display_name:
        return u.display_name
    if u.name.get("formatted"):
        return u.name["formatted"][:200]
    return " ".join(p for p in (u.name.get("givenName"), u.name.get("familyName")) if p)[:200]


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"userName": row["user_name"], "email": row["email"], "displayName": row["display_name"],
            "active": row["status"] != "deactivated", "externalId": row["external_id"],
            "name": row["name"], "emails": row["emails"]}



def _unique(exc: Exception) -> ScimUniqueness:
    what = "userName" if "user_name" in str(exc) else "email"
    return ScimUniqueness(f"another user already has this {what}")


def create_user(caller: ScimCaller) -> ScimAnswer:
    """POST /Users: a Custos user without a password (they sign in by SSO, or after a reset), role VIEWER.

    Raises:
        ScimInvalidSyntax, ScimInvalidValue: a body that is not a valid User.
        ScimUniqueness: the userName or the email is taken in the tenant.
    """
    u = _user_input(_body(caller, USER_SCHEMA))
    email = _custos_email(u)
    active = u.active is not False
    tenant_id = caller.tenant_id
    with caller.tenant_tx() as conn:
        with db.savepoint_or_conflict(conn, _unique):
            new = conn.execute(
                """insert into users (tenant_id, email, display_name, role, status, deactivated_at)
                   values (%s, %s, %s, %s, %s, case when %s then null else now() end) returning id::text as id""",
                (tenant_id, email, _display(u), SCIM_ROLE, "active" if active else "deactivated", active),
            ).fetchone()
            assert new is not None
            conn.execute(
                """insert into scim_users (tenant_id, user_id, user_name, external_id, name, emails, deactivated_by_scim)
                   values (%s, %s, %s, %s, %s, %s, %s)""",
                (tenant_id, new["id"], u.user_name, u.external_id, db.jsonb(u.name),
                 db.jsonb(u.emails), not active),
            )
        row = _load_user(conn, new["id"])
        audit.append(conn, tenant_id=tenant_id, actor=caller.actor, action="scim.user_created", target_type="user",
                     target_id=row["id"], after={**_summary(row), "role": SCIM_ROLE}, meta=caller.meta)
    return _user_answer(row, _base(caller), 201)


def _write_user(conn: Conn, caller: ScimCaller, current: dict[str, Any], u: UserInput, action: str) -> dict[str, Any]:
    """Store `u` over `current` (locked): users row, scim_users row, deactivation or reactivation."""
    tenant_id = caller.tenant_id
    email = _custos_email(u)
    active_now = current["status"] != "deactivated"
    active = active_now if u.active is None else u.active
    if active and not active_now and not current["deactivated_by_scim"]:
        raise Conflict("this user was deactivated in Custos, not by SCIM: an ADMIN reactivates them")
    if not active and active_now and current["role"] == "ADMIN":
        admins = conn.execute(
            "select count(*) as n from (select id from users where role = 'ADMIN' and status = 'active' "
            "order by id for update) a").fetchone()
        if admins is not None and admins["n"] <= 1:
            raise Conflict("the last active ADMIN cannot be deactivated")
    with db.savepoint_or_conflict(conn, _unique):
        conn.execute(
            """update users set email = %s, display_name = %s,
                      status = case when %s then (case when status = 'deactivated' then 'active' else status end)
                                    else 'deactivated' end,
                      deactivated_at = case when %s then null else coalesce(deactivated_at, now()) end,
                      updated_at = greatest(now(), updated_at + interval '1 microsecond')
                where id = %s""",
            (email, _display(u), active, active, current["id"]),
        )
        conn.execute(
            """insert into scim_users (tenant_id, user_id, user_name, external_id, name, emails, deactivated_by_scim)
               values (%s, %s, %s, %s, %s, %s, %s)
               on conflict (tenant_id, user_id) do update set user_name = excluded.user_name,
                  external_id = excluded.external_id, name = excluded.name, emails = excluded.emails,
                  deactivated_by_scim = excluded.deactivated_by_scim""",
            (tenant_id, current["id"], u.user_name, u.external_id, db.jsonb(u.name),
             db.jsonb(u.emails), (not active) and (current["deactivated_by_scim"] or active_now)),
        )
    if not active and active_now:
        conn.execute("update invitations set revoked_at = now() where user_id = %s and used_at is null "
                     "and revoked_at is null", (current["id"],))
    row = _load_user(conn, current["id"])
    before, after = _summary(current), _summary(row)
    changed = {k for k in after if before[k] != after[k]}
    audit.append(conn, tenant_id=tenant_id, actor=caller.actor, action=action, target_type="user",
                 target_id=row["id"], before={k: before[k] for k in sorted(changed)},
                 after={k: after[k] for k in sorted(changed)}, meta=caller.meta)
    if not active and active_now:
        ended = revoke_all(conn, user_id=current["id"], reason="deactivated by SCIM")
        audit.append(conn, tenant_id=tenant_id, actor=caller.actor, action="scim.user_deactivated",
                     target_type="user", target_id=row["id"], after={"sessions_ended": ended}, meta=caller.meta)
    elif active and not active_now:
        audit.append(conn, tenant_id=tenant_id, actor=caller.actor, action="scim.user_reactivated",
                     target_type="user", target_id=row["id"], meta=caller.meta)
    return row


def replace_user(caller: ScimCaller, user_id: str) -> ScimAnswer:
    """PUT /Users/{id}: the given attributes replace the stored ones (absent ones are cleared,
    an absent `active` is left as it is).

    Raises:
        ScimNotFound, ScimPreconditionFailed, ScimInvalidSyntax, ScimInvalidValue, ScimUniqueness,
        Conflict: reactivating a user an ADMIN deactivated; deactivating the last active ADMIN.
    """
    uid = _resource_id(user_id)
    body = _body(caller, USER_SCHEMA)
    with caller.tenant_tx() as conn:
        current = _load_user(conn, uid, lock=True)
        _check_if_match(caller, _version(current["updated_at"]))
        if body.get("id") not in (None, uid):
            raise ScimMutability("id cannot be changed")
        row = _write_user(conn, caller, current, _user_input(body), "scim.user_replaced")
    return _user_answer(row, _base(caller))


def _user_state(row: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {"userName": row["user_name"], "active": row["status"] != "deactivated"}
    if row["display_name"]:
        state["displayName"] = row["display_name"]
    if row["name"]:
        state["name"] = dict(row["name"])
    if row["managed"] or row["emails"]:
        state["emails"] = [dict(e) for e in row["emails"]]
    if row["external_id"]:
        state["externalId"] = row["external_id"]
    return state


USER_PATCH = {"username": ("userName", None), "displayname": ("displayName", None), "active": ("active", None),
              "externalid": ("externalId", None), "name": ("name", _NAME_PARTS),
              "emails": ("emails", {"value": "value", "type": "type", "primary": "primary"})}
USER_MULTI = frozenset({"emails"})
USER_REQUIRED = frozenset({"userName", "active"})


def patch_user(caller: ScimCaller, user_id: str) -> ScimAnswer:
    """PATCH /Users/{id} (RFC 7644 section 3.5.2): add, replace, remove, with value-path filters;
    `active` false deactivates the user and ends every session at once.

    Raises:
        ScimNotFound, ScimPreconditionFailed, ScimInvalidSyntax, ScimInvalidPath, ScimNoTarget,
        ScimInvalidValue (a required attribute removed), ScimMutability, ScimUniqueness, Conflict.
    """
    uid = _resource_id(user_id)
    ops = _operations(caller)
    with caller.tenant_tx() as conn:
        current = _load_user(conn, uid, lock=True)
        _check_if_match(caller, _version(current["updated_at"]))
        state = _user_state(current)
        for op in ops:
            _apply(state, op, USER_PATCH, USER_MULTI, USER_REQUIRED, USER_SCHEMA, _USER_READ_ONLY)
        u = _user_input({"schemas": [USER_SCHEMA], **state})
        if "active" not in state:
            u.active = None
        row = _write_user(conn, caller, current, u, "scim.user_patched")
    return _user_answer(row, _base(caller))


def delete_user(caller: ScimCaller, user_id: str) -> ScimAnswer:
    """DELETE /Users/{id}: the user is deactivated (sessions end at once) and no longer shown by
    SCIM; nothing is hard-deleted (the records they made and signed keep naming them).

    Raises:
        ScimNotFound, ScimPreconditionFailed, Conflict: the last active ADMIN.
    """
    uid = _resource_id(user_id)
    tenant_id = caller.tenant_id
    with caller.tenant_tx() as conn:
        current = _load_user(conn, uid, lock=True)
        _check_if_match(caller, _version(current["updated_at"]))
        if current["status"] != "deactivated":
            state = _user_input({"schemas": [USER_SCHEMA], **_user_state(current), "active": False})
            _write_user(conn, caller, current, state, "scim.user_patched")
        conn.execute(
            """insert into scim_users (tenant_id, user_id, user_name, deleted_at) values (%s, %s, %s, now())
               on conflict (tenant_id, user_id) do update set deleted_at = now()""",
            (tenant_id, uid, current["user_name"]),
        )
        audit.append(conn, tenant_id=tenant_id, actor=caller.actor, action="scim.user_deleted", target_type="user",
                     target_id=uid, before={"userName": current["user_name"]}, reason="deleted by SCIM: deactivated, kept",
                     meta=caller.meta)
    return ScimAnswer(None, 204)


# --- PATCH operations --------------------------------------------------------------------------------------


def _operations(caller: ScimCaller) -> list[dict[str, Any]]:
    body = _body(caller, PATCH_SCHEMA)
    ops = body.get("Operations")
    if not isinstance(ops, list) or not ops:
        raise ScimInvalidSyntax("Operations must be a non-empty list")
    if len(ops) > MAX_OPERATIONS:
        raise ScimTooMany(f"at most {MAX_OPERATIONS} operations per request")
    out = []
    for op in ops:
        if not isinstance(op, dict):
            raise ScimInvalidSyntax("each operation must be an object")
        low = {str(k).lower(): v for k, v in op.items()}
        kind = low.get("op")
        if not isinstance(kind, str) or kind.lower() not in ("add", "replace", "remove"):
            raise ScimInvalidSyntax("op must be add, replace or remove")
        path = low.get("path")
        if path is not None and not isinstance(path, str):
            raise ScimInvalidPath("path must be a string")
        if kind.lower() != "remove" and "value" not in low:
            raise ScimInvalidValue(f"{kind} needs a value")
        if kind.lower() == "remove" and not path:
            raise ScimNoTarget("remove needs a path")
        out.append({"op": kind.lower(), "path": path, "value": low.get("value")})
    return out


PatchMap = dict[str, tuple[str, dict[str, str] | None]]


def _apply(state: dict[str, Any], op: dict[str, Any], attrs: PatchMap, multi: frozenset[str],
           required: frozenset[str], schema: str, read_only: set[str]) -> None:
    if op["path"] is None:
        value = op["value"]
        if not isinstance(value, dict):
            raise ScimInvalidValue(f"{op['op']} without a path needs an object of attributes")
        for key, item in value.items():
            if str(key).lower() in read_only or str(key).lower() == "schemas":
                continue
            _apply(state, {"op": op["op"], "path": str(key), "value": item}, attrs, multi, required, schema, read_only)
        return
    path = sf.parse_path(op["path"], (schema,))
    if path.attr in read_only or path.attr in {"id", "meta"}:
        raise ScimMutability(f"{path.attr} cannot be changed")
    if path.attr not in attrs:
        raise ScimInvalidPath(f"no attribute {path.attr}")
    name, subs = attrs[path.attr]
    sub = None
    if path.sub is not None:
        if subs is None or path.sub not in subs:
            raise ScimInvalidPath(f"{name} has no sub-attribute {path.sub}")
        sub = subs[path.sub]
    kind, value = op["op"], op["value"]
    if path.attr in multi:
        _apply_multi(state, name, sub, path.filter, kind, value, subs or {})
        return
    if path.filter is not None:
        raise ScimInvalidPath(f"{name} is single-valued: no filter")
    if kind == "remove":
        if sub is None:
            if name in required:
                raise ScimInvalidValue(f"{name} is required and cannot be removed")
            state.pop(name, None)
        elif isinstance(state.get(name), dict):
            state[name].pop(sub, None)
        return
    if sub is not None:
        state.setdefault(name, {})
        if not isinstance(state[name], dict):
            state[name] = {}
        state[name][sub] = value
    elif subs is not None and isinstance(value, dict):
        merged = dict(state.get(name) or {})
        for k, v in value.items():
            canon = subs.get(str(k).lower())
            if canon is None:
                raise ScimInvalidPath(f"{name} has no sub-attribute {str(k)[:100]}")
            merged[canon] = v
        state[name] = merged
    else:
        state[name] = value


def _apply_multi(state: dict[str, Any], name: str, sub: str | None, flt: sf.Node | None, kind: str, value: Any,
                 subs: dict[str, str]) -> None:
    items: list[dict[str, Any]] = list(state.get(name) or [])
    if flt is None and sub is None:
        if kind == "remove":
            state[name] = []
            return
        new = value if isinstance(value, list) else [value]
        if not all(isinstance(v, dict) for v in new):
            raise ScimInvalidValue(f"each value of {name} must be an object")
        new = [{subs.get(str(k).lower(), str(k)): v for k, v in n.items()} for n in new]
        if any(n.get("primary") is True for n in new):
            items = [{**i, "primary": False} if i.get("primary") else i for i in items]
        if kind == "replace":
            state[name] = new
            return
        seen = {str(i.get("value")).lower() for i in items}
        state[name] = items + [n for n in new if str(n.get("value")).lower() not in seen]
        return
    chosen = [i for i, item in enumerate(items) if flt is None or sf.matches(flt, item)]
    if not chosen:
        if kind == "add" and flt is None:
            return
        raise ScimNoTarget(f"no value of {name} matches the path")
    if kind == "remove":
        if sub is None:
            state[name] = [item for i, item in enumerate(items) if i not in chosen]
        else:
            for i in chosen:
                items[i] = {k: v for k, v in items[i].items() if k != sub}
            state[name] = items
        return
    for i in chosen:
        if sub is not None:
            items[i] = {**items[i], sub: value}
        elif isinstance(value, dict):
            items[i] = {**items[i], **{subs.get(str(k).lower(), str(k)): v for k, v in value.items()}}
        else:
            raise ScimInvalidValue(f"a value of {name} must be an object")
    state[name] = items


# --- groups ------------------------------------------------------------------------------------------------


def _members(conn: Conn, group_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    rows = conn.execute(
        """select m.designation_id::text as gid, u.id::text as id, u.display_name
             from user_designations m join users u on u.tenant_id = m.tenant_id and u.id = m.user_id
            where m.designation_id = any(%s::uuid[]) order by u.created_at, u.id""",
        (group_ids,),
    ).fetchall()
    out: dict[str, list[dict[str, Any]]] = {g: [] for g in group_ids}
    for r in rows:
        out[r["gid"]].append(r)
    return out


def _group_json(row: dict[str, Any], members: list[dict[str, Any]], base: str) -> dict[str, Any]:
    out: dict[str, Any] = {"schemas": [GROUP_SCHEMA], "id": row["id"]}
    if row["external_id"]:
        out["externalId"] = row["external_id"]
    out["displayName"] = row["name"]
    if members:
        out["members"] = [
            {"value": m["id"], "$ref": f"{base}/Users/{m['id']}", "type": "User",
             **({"display": m["display_name"]} if m["display_name"] else {})}
            for m in members
        ]
    out["meta"] = {"resourceType": "Group", "created": _iso(row["created_at"]), "lastModified": _iso(row["updated_at"]),
                   "version": _version(row["updated_at"]), "location": f"{base}/Groups/{row['id']}"}
    return out


def _render_groups(conn: Conn, rows: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    members = _members(conn, [r["id"] for r in rows])
    return [_group_json(r, members[r["id"]], base) for r in rows]


def _load_group(conn: Conn, group_id: str, *, lock: bool = False) -> dict[str, Any]:
    row = conn.execute(f"select {GROUP_COLUMNS} from {GROUP_FROM} where d.id = %s and {GROUP_VISIBLE}"  # noqa: S608  # nosec B608  # only constants and a fixed FOR UPDATE clause; values are bound
                       f"{' for update of d' if lock else ''}", (group_id,)).fetchone()
    if row is None:
        raise ScimNotFound("no such group")
    return row


def _group_answer(conn: Conn, row: dict[str, Any], base: str, status: int = 200) -> ScimAnswer:
    return _resource_answer(_group_json(row, _members(conn, [row["id"]])[row["id"]], base), status)


def list_groups(caller: ScimCaller, *, search: bool = False) -> ScimAnswer:
    """GET /Groups (or POST /Groups/.search).

    Raises:
        ScimInvalidFilter, ScimInvalidValue, ScimInvalidSyntax: a bad filter, parameter or search body.
    """
    q = _query(_search_source(caller) if search else _query_source(caller))
    return _search(caller, q, from_=GROUP_FROM, columns=GROUP_COLUMNS, visible=GROUP_VISIBLE, attrs=GROUP_ATTRS,
                   schema=GROUP_SCHEMA, order="d.created_at, d.id", render=_render_groups)


def get_group(caller: ScimCaller, group_id: str) -> ScimAnswer:
    """GET /Groups/{id}.

    Raises:
        ScimNotFound: no such group in the token's tenant.
    """
    gid, q = _resource_id(group_id), _query(_query_source(caller))
    with caller.tenant_tx() as conn:
        answer = _group_answer(conn, _load_group(conn, gid), _base(caller))
    assert answer.body is not None
    answer.body = _project(answer.body, q, GROUP_SCHEMA)
    return answer


@dataclass
class GroupInput:
    display_name: str
    external_id: str | None
    members: list[str]


_GROUP_KEYS = {"displayname": "displayName", "members": "members", "externalid": "externalId"}


def _group_input(body: dict[str, Any]) -> GroupInput:
    attrs: dict[str, Any] = {}
    for key, value in body.items():
        low = str(key).lower()
        if low.startswith(GROUP_SCHEMA.lower() + ":"):
            low = low[len(GROUP_SCHEMA) + 1:]
        if low in _GROUP_KEYS:
            attrs[_GROUP_KEYS[low]] = value
    name = _text(attrs.get("displayName"), "displayName", 100, required=True).strip()
    members_in = attrs.get("members") or []
    if not isinstance(members_in, list) or len(members_in) > MAX_MEMBERS:
        raise ScimInvalidValue(f"members must be a list of at most {MAX_MEMBERS} objects")
    members: list[str] = []
    for item in members_in:
        if not isinstance(item, dict):
            raise ScimInvalidValue("each member must be an object")
        given = {str(k).lower(): v for k, v in item.items()}
        if given.get("type") not in (None, "User"):
            raise ScimInvalidValue("a member must be a User (groups do not nest)")
        try:
            member = str(uuid.UUID(str(given.get("value"))))
        except ValueError:
            raise ScimInvalidValue("a member's value must be a user's id") from None
        if member not in members:
            members.append(member)
    return GroupInput(name, _text(attrs.get("externalId"), "externalId", 254) or None, members)


def _set_members(conn: Conn, tenant_id: str, group_id: str, wanted: list[str]) -> tuple[list[str], list[str]]:
    current = {r["user_id"] for r in conn.execute(
        "select user_id::text as user_id from user_designations where designation_id = %s", (group_id,)).fetchall()}
    added = [m for m in wanted if m not in current]
    removed = sorted(current - set(wanted))
    if added:
        known = {r["id"] for r in conn.execute(
            "select id::text as id from users where id = any(%s::uuid[])", (added,)).fetchall()}
        if len(known) != len(added):
            raise ScimInvalidValue("a member is not a user of this tenant")
    if removed:
        conn.execute("delete from user_designations where designation_id = %s and user_id = any(%s::uuid[])",
                     (group_id, removed))
    for m in added:
        conn.execute("insert into user_designations (tenant_id, user_id, designation_id) values (%s, %s, %s)",
                     (tenant_id, m, group_id))
    return added, removed


def create_group(caller: ScimCaller) -> ScimAnswer:
    """POST /Groups: a designation with no permissions (an ADMIN gives it permissions in Custos).

    Raises:
        ScimInvalidSyntax, ScimInvalidValue, ScimUniqueness: the name is taken.
    """
    g = _group_input(_body(caller, GROUP_SCHEMA))
    tenant_id = caller.tenant_id
    with caller.tenant_tx() as conn:
        with db.savepoint_or_conflict(conn, lambda _: ScimUniqueness("another group has this displayName")):
            new = conn.execute(
                "insert into designations (tenant_id, name, description) values (%s, %s, %s) returning id::text as id",
                (tenant_id, g.display_name, GROUP_DESCRIPTION)).fetchone()
        assert new is not None
        conn.execute("insert into scim_groups (tenant_id, designation_id, external_id) values (%s, %s, %s)",
                     (tenant_id, new["id"], g.external_id))
        added, _ = _set_members(conn, tenant_id, new["id"], g.members)
        row = _load_group(conn, new["id"])
        audit.append(conn, tenant_id=tenant_id, actor=caller.actor, action="scim.group_created",
                     target_type="designation", target_id=new["id"],
                     after={"displayName": g.display_name, "externalId": g.external_id, "members_added": added},
                     meta=caller.meta)
        return _group_answer(conn, row, _base(caller), 201)


def _write_group(conn: Conn, caller: ScimCaller, current: dict[str, Any], g: GroupInput, action: str) -> dict[str, Any]:
    tenant_id = caller.tenant_id
    with db.savepoint_or_conflict(conn, lambda _: ScimUniqueness("another group has this displayName")):
        conn.execute("update designations set name = %s, updated_at = greatest(now(), updated_at + interval "
                     "'1 microsecond') where id = %s", (g.display_name, current["id"]))
    conn.execute("""insert into scim_groups (tenant_id, designation_id, external_id) values (%s, %s, %s)
                    on conflict (tenant_id, designation_id) do update set external_id = excluded.external_id""",
                 (tenant_id, current["id"], g.external_id))
    added, removed = _set_members(conn, tenant_id, current["id"], g.members)
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    if current["name"] != g.display_name:
        before["displayName"], after["displayName"] = current["name"], g.display_name
    if current["external_id"] != g.external_id:
        before["externalId"], after["externalId"] = current["external_id"], g.external_id
    audit.append(conn, tenant_id=tenant_id, actor=caller.actor, action=action, target_type="designation",
                 target_id=current["id"], before=before,
                 after={**after, "members_added": added, "members_removed": removed}, meta=caller.meta)
    return _load_group(conn, current["id"])


def replace_group(caller: ScimCaller, group_id: str) -> ScimAnswer:
    """PUT /Groups/{id}.

    Raises:
        ScimNotFound, ScimPreconditionFailed, ScimInvalidSyntax, ScimInvalidValue, ScimUniqueness.
    """
    gid = _resource_id(group_id)
    body = _body(caller, GROUP_SCHEMA)
    with caller.tenant_tx() as conn:
        current = _load_group(conn, gid, lock=True)
        _check_if_match(caller, _version(current["updated_at"]))
        row = _write_group(conn, caller, current, _group_input(body), "scim.group_replaced")
        return _group_answer(conn, row, _base(caller))


GROUP_PATCH: PatchMap = {"displayname": ("displayName", None), "externalid": ("externalId", None),
                         "members": ("members", {"value": "value", "type": "type", "$ref": "$ref", "display": "display"})}


def patch_group(caller: ScimCaller, group_id: str) -> ScimAnswer:
    """PATCH /Groups/{id}: rename, externalId, members add/remove/replace.

    Raises:
        ScimNotFound, ScimPreconditionFailed, ScimInvalidSyntax, ScimInvalidPath, ScimNoTarget,
        ScimInvalidValue, ScimMutability, ScimUniqueness.
    """
    gid = _resource_id(group_id)
    ops = _operations(caller)
    with caller.tenant_tx() as conn:
        current = _load_group(conn, gid, lock=True)
        _check_if_match(caller, _version(current["updated_at"]))
        state: dict[str, Any] = {"displayName": current["name"],
                                 "members": [{"value": m["id"]} for m in _members(conn, [gid])[gid]]}
        if current["external_id"]:
            state["externalId"] = current["external_id"]
        for op in ops:
            _apply(state, op, GROUP_PATCH, frozenset({"members"}), frozenset({"displayName"}), GROUP_SCHEMA,
                   {"id", "meta", "schemas"})
        row = _write_group(conn, caller, current, _group_input({"schemas": [GROUP_SCHEMA], **state}),
                           "scim.group_patched")
        return _group_answer(conn, row, _base(caller))


def delete_group(caller: ScimCaller, group_id: str) -> ScimAnswer:
    """DELETE /Groups/{id}: the designation is retired (kept for the record) and its members lose it.

    Raises:
        ScimNotFound, ScimPreconditionFailed.
    """
    gid = _resource_id(group_id)
    tenant_id = caller.tenant_id
    with caller.tenant_tx() as conn:
        current = _load_group(conn, gid, lock=True)
        _check_if_match(caller, _version(current["updated_at"]))
        holders = [r["user_id"] for r in conn.execute(
            "delete from user_designations where designation_id = %s returning user_id::text as user_id",
            (gid,)).fetchall()]
        conn.execute("update designations set deleted_at = now(), updated_at = now() where id = %s", (gid,))
        audit.append(conn, tenant_id=tenant_id, actor=caller.actor, action="scim.group_deleted",
                     target_type="designation", target_id=gid,
                     before={"displayName": current["name"], "members": sorted(holders)}, meta=caller.meta)
    return ScimAnswer(None, 204)
