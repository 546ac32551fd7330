"""Single sign-on: identity provider administration, the public sign-in buttons, the code
exchange that ends a browser sign-in, and the SAML 2.0 service provider."""

from __future__ import annotations

import uuid
from http.cookies import CookieError, SimpleCookie
from typing import Any, Literal

import azure.functions as func
from pydantic import Field

from functions._models_auth import LoginResult
from functions._models_sso import BreakGlassAccounts, BreakGlassAdded, Provider, ProviderButtons, Providers
from shared.core import health
from shared.identity.sso import api
from shared.identity.sso.accounts import BINDING_COOKIE
from shared.identity.sso.oidc import FLOW_COOKIE
from shared.web import refresh_cookie
from shared.web.endpoint import Reply, RequestContext, endpoint
from shared.web.models import Reason, ReasonQuery, Strict

bp = func.Blueprint()


class _ProviderFields(Strict):
    name: str = Field(min_length=1, max_length=100)
    enabled: bool = False
    required: bool = Field(False, description="Password sign-in refused for the tenant's users (break-glass ADMINs excepted)")
    config: dict[str, Any] = Field(default_factory=dict, description="SAML or OIDC configuration (docs/sso.md)")
    role_mapping: dict[str, Any] = Field(default_factory=dict, description="Role of a just-in-time user: rules and default_role")
    jit: bool = Field(False, description="A first sign-in creates the user")
    allow_admin_mapping: bool = Field(False, description="Let the role mapping grant ADMIN")
    trust_idp_mfa: bool = Field(False, description="Accept the IdP's proof of a second factor (amr / AuthnContext)")
    link_by_verified_email: bool = Field(False, description="A first sign-in may link an existing account by a verified email")


class ProviderCreate(_ProviderFields):
    kind: Literal["saml", "oidc"]
    client_secret: str | None = Field(None, min_length=1, max_length=2048, description="OIDC only; stored encrypted, never returned")
    reason: Reason


class ProviderPatch(Strict):
    name: str | None = Field(None, min_length=1, max_length=100)
    enabled: bool | None = None
    required: bool | None = None
    config: dict[str, Any] | None = None
    role_mapping: dict[str, Any] | None = None
    jit: bool | None = None
    allow_admin_mapping: bool | None = None
    trust_idp_mfa: bool | None = None
    link_by_verified_email: bool | None = None
    client_secret: str | None = Field(None, min_length=1, max_length=2048)
    clear_client_secret: bool = False
    reason: Reason


class BreakGlassBody(Strict):
    reason: Reason


class Exchange(Strict):
    code: str = Field(min_length=1, max_length=200)


def binding_cookie(req: func.HttpRequest) -> str | None:
    """The browser-binding cookie's value, or None (a malformed Cookie header binds nothing)."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(req.headers.get("Cookie") or "")
    except CookieError:
        return None
    morsel = jar.get(BINDING_COOKIE)
    return morsel.value if morsel is not None else None


@bp.route(route="api/sso/providers", methods=["GET"])
@endpoint(response=Providers, permission="sso.manage", tags=("sso",))
def sso_providers_list(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's identity providers (client secrets never shown)."""
    return api.list_providers(ctx)


@bp.route(route="api/sso/providers", methods=["POST"])
@endpoint(response=Provider, permission="sso.manage", body=ProviderCreate, status=201, tags=("sso",))
def sso_providers_create(ctx: RequestContext) -> dict[str, Any]:
    """Add a SAML or OIDC identity provider."""
    b: ProviderCreate = ctx.body
    return api.create_provider(ctx, kind=b.kind, fields=b.model_dump(exclude={"kind", "client_secret", "reason"}),
                               client_secret=b.client_secret, reason=b.reason)


@bp.route(route="api/sso/providers/{id}", methods=["GET"])
@endpoint(response=Provider, permission="sso.manage", tags=("sso",))
def sso_providers_get(ctx: RequestContext) -> dict[str, Any]:
    """One identity provider."""
    return api.get_provider(ctx, ctx.uuid_param("id"))


@bp.route(route="api/sso/providers/{id}", methods=["PATCH"])
@endpoint(response=Provider, permission="sso.manage", body=ProviderPatch, tags=("sso",))
def sso_providers_patch(ctx: RequestContext) -> dict[str, Any]:
    """Change an identity provider: enable, disable, require, configure, map roles."""
    b: ProviderPatch = ctx.body
    changes = b.model_dump(exclude={"client_secret", "clear_client_secret", "reason"}, exclude_none=True)
    return api.update_provider(ctx, provider_id=ctx.uuid_param("id"), changes=changes, client_secret=b.client_secret,
                               clear_client_secret=b.clear_client_secret, reason=b.reason)


@bp.route(route="api/sso/providers/{id}", methods=["DELETE"])
@endpoint(permission="sso.manage", query=ReasonQuery, tags=("sso",))
def sso_providers_delete(ctx: RequestContext) -> None:
    """Retire an identity provider: nobody signs in through it again (`?reason=` required)."""
    api.delete_provider(ctx, provider_id=ctx.uuid_param("id"), reason=ctx.query.reason)


@bp.route(route="api/sso/break-glass", methods=["GET"])
@endpoint(response=BreakGlassAccounts, permission="sso.manage", tags=("sso",))
def sso_break_glass_list(ctx: RequestContext) -> dict[str, Any]:
    """The ADMINs who keep password + second factor when a provider is required."""
    return api.list_break_glass(ctx)


@bp.route(route="api/sso/break-glass/{user_id}", methods=["PUT"])
@endpoint(response=BreakGlassAdded, permission="sso.manage", body=BreakGlassBody, tags=("sso",))
def sso_break_glass_add(ctx: RequestContext) -> dict[str, Any]:
    """Name an active ADMIN as a break-glass account."""
    return api.add_break_glass(ctx, user_id=ctx.uuid_param("user_id"), reason=ctx.body.reason)


@bp.route(route="api/sso/break-glass/{user_id}", methods=["DELETE"])
@endpoint(permission="sso.manage", query=ReasonQuery, tags=("sso",))
def sso_break_glass_remove(ctx: RequestContext) -> None:
    """Take an ADMIN off the break-glass list (`?reason=` required)."""
    api.remove_break_glass(ctx, user_id=ctx.uuid_param("user_id"), reason=ctx.query.reason)


@bp.route(route="api/sso/tenants/{tenant}/providers", methods=["GET"])
@endpoint(response=ProviderButtons, auth=False, tags=("sso",))
def sso_public_providers(ctx: RequestContext) -> dict[str, Any]:
    """The tenant's enabled identity providers, for its sign-in page."""
    return api.public_providers(ctx.route["tenant"])


@bp.route(route="api/auth/sso/exchange", methods=["POST"])
@endpoint(response=LoginResult, auth=False, body=Exchange, tags=("auth", "sso"))
def sso_exchange(ctx: RequestContext) -> Reply:
    """Trade the one-time code of a finished SSO sign-in for tokens (same browser, once); with
    `X-Custos-CSRF: 1` (the console) the refresh token goes to the HttpOnly cookie, as at login."""
    return refresh_cookie.deliver(ctx.request, api.exchange(code=ctx.body.code, binding=binding_cookie(ctx.request),
                                                            meta=ctx.meta))


def _cookie(req: func.HttpRequest, name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(req.headers.get("Cookie") or "")
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


class OidcStartQuery(Strict):
    remember_me: bool = Field(False, description="Ask for a long session, as at password sign-in")


@bp.route(route="api/sso/oidc/{tenant}/{provider}/start", methods=["GET"])
@endpoint(auth=False, status=302, statuses=(502,), query=OidcStartQuery, tags=("sso",))
def sso_oidc_start(ctx: RequestContext) -> Reply:
    """Start an OpenID Connect sign-in: 302 to the provider (PKCE, state, nonce in a sealed cookie)."""
    out = api.oidc_start(slug=ctx.route["tenant"], provider_id=ctx.route["provider"],
                         remember_me=ctx.query.remember_me, meta=ctx.meta)
    return Reply(status=302, headers={"Location": out.location, "Set-Cookie": out.set_cookie})


@bp.route(route="api/sso/oidc/{tenant}/{provider}/callback", methods=["GET"])
@endpoint(auth=False, status=302, statuses=(401, 403, 502), tags=("sso",))
def sso_oidc_callback(ctx: RequestContext) -> Reply:
    """The OpenID Provider's redirect back: verify, then 302 to the console with a one-time code."""
    out = api.oidc_callback(slug=ctx.route["tenant"], provider_id=ctx.route["provider"],
                            query={k: str(v) for k, v in (ctx.request.params or {}).items()},
                            flow_cookie=_cookie(ctx.request, FLOW_COOKIE), meta=ctx.meta)
    return Reply(status=302, headers={"Location": out.location, "Set-Cookie": out.set_cookie})


class DiscoveryBody(Strict):
    reason: Reason


@bp.route(route="api/sso/providers/{id}/discovery", methods=["POST"])
@endpoint(response=Provider, permission="sso.manage", body=DiscoveryBody, statuses=(502,), tags=("sso",))
def sso_providers_discover(ctx: RequestContext) -> dict[str, Any]:
    """Fetch and check an OIDC provider's discovery document and keys now, and store the document."""
    return api.oidc_discover(ctx, provider_id=ctx.uuid_param("id"), reason=ctx.body.reason)


class SamlLoginQuery(Strict):
    provider: uuid.UUID = Field(description="The provider's id")
    remember_me: bool = False


@bp.route(route="api/sso/providers/{id}/metadata", methods=["POST"])
@endpoint(response=Provider, permission="sso.manage", body=BreakGlassBody, statuses=(502,), tags=("sso",))
def sso_providers_fetch_metadata(ctx: RequestContext) -> dict[str, Any]:
    """Fetch a SAML provider's metadata URL once and store its entity id, SSO URL and certificates."""
    return api.refresh_saml_metadata(ctx, provider_id=ctx.uuid_param("id"), reason=ctx.body.reason)


@bp.route(route="api/sso/saml/{tenant}/metadata", methods=["GET"])
@endpoint(media_type="application/samlmetadata+xml", auth=False, tags=("sso",))
def saml_sp_metadata(ctx: RequestContext) -> Reply:
    """The tenant's SAML service provider metadata (entity id, ACS URL, signing certificate)."""
    return Reply(body=api.saml_metadata(ctx.route["tenant"]), media_type="application/samlmetadata+xml")


@bp.route(route="api/sso/saml/{tenant}/login", methods=["GET"])
@endpoint(auth=False, query=SamlLoginQuery, status=302, tags=("sso",))
def saml_login(ctx: RequestContext) -> Reply:
    """Start a SAML sign-in: a redirect to the IdP with a signed AuthnRequest."""
    q: SamlLoginQuery = ctx.query
    location, cookie = api.saml_login(slug=ctx.route["tenant"], provider_id=str(q.provider), remember_me=q.remember_me,
                                      meta=ctx.meta)
    return Reply(status=302, headers={"Location": location, **({"Set-Cookie": cookie} if cookie else {})})


class SamlAcsForm(Strict):
    """The HTTP-POST binding's form (SAML 2.0 Bindings, section 3.5)."""

    SAMLResponse: str = Field(description="The IdP's base64 SAML Response")  # noqa: N815 - the binding's name
    RelayState: str | None = Field(None, description="What the SP-initiated request sent along")  # noqa: N815


@bp.route(route="api/sso/saml/{tenant}/acs", methods=["POST"])
@endpoint(auth=False, status=303, tags=("sso",), raw_body={"application/x-www-form-urlencoded": SamlAcsForm})
def saml_acs(ctx: RequestContext) -> Reply:
    """The Assertion Consumer Service: verify the IdP's response, then redirect to the console with a one-time code."""
    location, cookie = api.saml_acs(slug=ctx.route["tenant"], content_type=ctx.request.headers.get("Content-Type"),
                                    body=ctx.request.get_body() or b"", binding=binding_cookie(ctx.request),
                                    meta=ctx.meta)
    return Reply(status=303, headers={"Location": location, **({"Set-Cookie": cookie} if cookie else {})})


@bp.timer_trigger(arg_name="timer", schedule="%SSO_PURGE_SCHEDULE%", run_on_startup=False)
def purge_sso_state(timer: func.TimerRequest) -> None:
    """Delete expired SAML replay-cache rows, SP-initiated requests and sign-in codes."""
    counts = api.purge_expired_state()
    health.record_heartbeat("purge_sso_state", ok=True, detail=", ".join(f"{k} {v}" for k, v in counts.items()))
