"""SCIM 2.0 provisioning at /scim/v2 (a tenant's SCIM token decides the tenant), and the ADMIN
routes that create, list and revoke SCIM tokens."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from pydantic import Field

from functions._models_scim import ScimToken, ScimTokenCreated, ScimTokens
from shared.identity.sso import scim, scim_tokens
from shared.web import jsonio
from shared.web.endpoint import SCIM_MEDIA_TYPE, Reply, RequestContext, endpoint
from shared.web.models import Strict

bp = func.Blueprint()

SCIM_ERRORS = (400, 404, 405, 409, 412, 501)


def _reply(answer: scim.ScimAnswer) -> Reply:
    if answer.body is None:
        return Reply(status=answer.status, headers=answer.headers)
    return Reply(body=jsonio.dumps(answer.body), status=answer.status, headers=answer.headers,
                 media_type=SCIM_MEDIA_TYPE)


def _scim(status: int = 200, summary_tags: tuple[str, ...] = ("scim",)) -> Any:
    return endpoint(scim=True, status=status, media_type=SCIM_MEDIA_TYPE, statuses=SCIM_ERRORS, tags=summary_tags)


class ScimTokenNew(Strict):
    name: str = Field(min_length=1, max_length=100, description="What the token is for, e.g. the identity provider")


@bp.route(route="api/scim/tokens", methods=["POST"])
@endpoint(permission="scim.manage", body=ScimTokenNew, response=ScimTokenCreated, status=201, tags=("scim",))
def scim_tokens_create(ctx: RequestContext) -> Reply:
    """Create a SCIM token: its secret is in this answer only."""
    return Reply(body=scim_tokens.create_token(ctx, name=ctx.body.name), status=201)


@bp.route(route="api/scim/tokens", methods=["GET"])
@endpoint(permission="scim.manage", response=ScimTokens, tags=("scim",))
def scim_tokens_list(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's SCIM tokens (never their secrets)."""
    return scim_tokens.list_tokens(ctx)


@bp.route(route="api/scim/tokens/{id}", methods=["DELETE"])
@endpoint(permission="scim.manage", response=ScimToken, tags=("scim",))
def scim_tokens_revoke(ctx: RequestContext) -> dict[str, Any]:
    """Revoke a SCIM token: its next request is refused."""
    return scim_tokens.revoke_token(ctx, ctx.uuid_param("id"))


@bp.route(route="scim/v2/ServiceProviderConfig", methods=["GET"])
@_scim()
def scim_service_provider_config(ctx: RequestContext) -> Reply:
    """SCIM: what this server supports."""
    return _reply(scim.service_provider_config(ctx))


@bp.route(route="scim/v2/ResourceTypes", methods=["GET"])
@_scim()
def scim_resource_types(ctx: RequestContext) -> Reply:
    """SCIM: the resource types."""
    return _reply(scim.resource_types(ctx))


@bp.route(route="scim/v2/ResourceTypes/{name}", methods=["GET"])
@_scim()
def scim_resource_type(ctx: RequestContext) -> Reply:
    """SCIM: one resource type."""
    return _reply(scim.resource_types(ctx, ctx.route["name"]))


@bp.route(route="scim/v2/Schemas", methods=["GET"])
@_scim()
def scim_schemas(ctx: RequestContext) -> Reply:
    """SCIM: the schemas."""
    return _reply(scim.schemas(ctx))


@bp.route(route="scim/v2/Schemas/{urn}", methods=["GET"])
@_scim()
def scim_schema(ctx: RequestContext) -> Reply:
    """SCIM: one schema."""
    return _reply(scim.schemas(ctx, ctx.route["urn"]))


@bp.route(route="scim/v2/Users", methods=["GET"])
@_scim()
def scim_users_list(ctx: RequestContext) -> Reply:
    """SCIM: list users (filter, startIndex, count, attributes)."""
    return _reply(scim.list_users(ctx))


@bp.route(route="scim/v2/Users/.search", methods=["POST"])
@_scim()
def scim_users_search(ctx: RequestContext) -> Reply:
    """SCIM: search users with a SearchRequest body."""
    return _reply(scim.list_users(ctx, search=True))


@bp.route(route="scim/v2/Users", methods=["POST"])
@_scim(201)
def scim_users_create(ctx: RequestContext) -> Reply:
    """SCIM: create a user."""
    return _reply(scim.create_user(ctx))


@bp.route(route="scim/v2/Users/{id}", methods=["GET"])
@_scim()
def scim_users_get(ctx: RequestContext) -> Reply:
    """SCIM: one user."""
    return _reply(scim.get_user(ctx, ctx.route["id"]))


@bp.route(route="scim/v2/Users/{id}", methods=["PUT"])
@_scim()
def scim_users_replace(ctx: RequestContext) -> Reply:
    """SCIM: replace a user."""
    return _reply(scim.replace_user(ctx, ctx.route["id"]))


@bp.route(route="scim/v2/Users/{id}", methods=["PATCH"])
@_scim()
def scim_users_patch(ctx: RequestContext) -> Reply:
    """SCIM: patch a user (active=false deactivates and ends their sessions)."""
    return _reply(scim.patch_user(ctx, ctx.route["id"]))


@bp.route(route="scim/v2/Users/{id}", methods=["DELETE"])
@_scim(204)
def scim_users_delete(ctx: RequestContext) -> Reply:
    """SCIM: deactivate a user and hide them from SCIM (never a hard delete)."""
    return _reply(scim.delete_user(ctx, ctx.route["id"]))


@bp.route(route="scim/v2/Groups", methods=["GET"])
@_scim()
def scim_groups_list(ctx: RequestContext) -> Reply:
    """SCIM: list groups (designations)."""
    return _reply(scim.list_groups(ctx))


@bp.route(route="scim/v2/Groups/.search", methods=["POST"])
@_scim()
def scim_groups_search(ctx: RequestContext) -> Reply:
    """SCIM: search groups with a SearchRequest body."""
    return _reply(scim.list_groups(ctx, search=True))


@bp.route(route="scim/v2/Groups", methods=["POST"])
@_scim(201)
def scim_groups_create(ctx: RequestContext) -> Reply:
    """SCIM: create a group (a designation with no permissions)."""
    return _reply(scim.create_group(ctx))


@bp.route(route="scim/v2/Groups/{id}", methods=["GET"])
@_scim()
def scim_groups_get(ctx: RequestContext) -> Reply:
    """SCIM: one group."""
    return _reply(scim.get_group(ctx, ctx.route["id"]))


@bp.route(route="scim/v2/Groups/{id}", methods=["PUT"])
@_scim()
def scim_groups_replace(ctx: RequestContext) -> Reply:
    """SCIM: replace a group."""
    return _reply(scim.replace_group(ctx, ctx.route["id"]))


@bp.route(route="scim/v2/Groups/{id}", methods=["PATCH"])
@_scim()
def scim_groups_patch(ctx: RequestContext) -> Reply:
    """SCIM: patch a group (members add/remove/replace)."""
    return _reply(scim.patch_group(ctx, ctx.route["id"]))


@bp.route(route="scim/v2/Groups/{id}", methods=["DELETE"])
@_scim(204)
def scim_groups_delete(ctx: RequestContext) -> Reply:
    """SCIM: retire a group (its designation is kept for the record)."""
    return _reply(scim.delete_group(ctx, ctx.route["id"]))


@bp.route(route="scim/v2/.search", methods=["POST"])
@_scim()
def scim_search_all(ctx: RequestContext) -> Reply:
    """SCIM: a search across resource types (not offered: 501)."""
    return _reply(scim.search_all(ctx))


@bp.route(route="scim/v2/ServiceProviderConfig", methods=["POST", "PUT", "PATCH", "DELETE"])
@_scim()
def scim_service_provider_config_write(ctx: RequestContext) -> Reply:
    """SCIM: the discovery endpoints are read-only (405)."""
    return _reply(scim.method_not_allowed(ctx))


@bp.route(route="scim/v2/ResourceTypes", methods=["POST", "PUT", "PATCH", "DELETE"])
@_scim()
def scim_resource_types_write(ctx: RequestContext) -> Reply:
    """SCIM: the discovery endpoints are read-only (405)."""
    return _reply(scim.method_not_allowed(ctx))


@bp.route(route="scim/v2/Schemas", methods=["POST", "PUT", "PATCH", "DELETE"])
@_scim()
def scim_schemas_write(ctx: RequestContext) -> Reply:
    """SCIM: the discovery endpoints are read-only (405)."""
    return _reply(scim.method_not_allowed(ctx))


@bp.route(route="scim/v2/{*rest}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@_scim()
def scim_not_found(ctx: RequestContext) -> Reply:
    """SCIM: any other path is a SCIM 404."""
    return _reply(scim.not_found(ctx))
