"""What the SSO triggers call: provider administration (`sso.manage`), the break-glass list,
the public list of a tenant's sign-in buttons, and the code exchange that ends a browser
sign-in. One function per endpoint; each owns its transaction (see shared.web.caller)."""

from __future__ import annotations

import uuid
from typing import Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.errors import Conflict
from shared.identity.sso import accounts, oidc, providers
from shared.identity.sso.errors import InvalidProviderConfig
from shared.identity.sso.providers import Kind, tenant_by_slug
from shared.web.caller import Caller


def list_providers(caller: Caller) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return {"providers": providers.list_providers(conn)}


def get_provider(caller: Caller, provider_id: uuid.UUID) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return providers.get_provider(conn, provider_id)


def create_provider(caller: Caller, *, kind: Kind, fields: dict[str, Any], client_secret: str | None,
                    reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return providers.create_provider(conn, tenant_id=caller.tenant_id, kind=kind, fields=fields,
                                         client_secret=client_secret, actor=caller.actor,
                                         actor_id=caller.user.user_id, meta=caller.meta, reason=reason)


def update_provider(caller: Caller, *, provider_id: uuid.UUID, changes: dict[str, Any], client_secret: str | None,
                    clear_client_secret: bool, reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return providers.update_provider(conn, tenant_id=caller.tenant_id, provider_id=provider_id, changes=changes,
                                         client_secret=client_secret, clear_client_secret=clear_client_secret,
                                         actor=caller.actor, actor_id=caller.user.user_id, meta=caller.meta,
                                         reason=reason)


def delete_provider(caller: Caller, *, provider_id: uuid.UUID, reason: str) -> None:
    with caller.tenant_tx() as conn:
        providers.delete_provider(conn, tenant_id=caller.tenant_id, provider_id=provider_id, actor=caller.actor,
                                  meta=caller.meta, reason=reason)


def list_break_glass(caller: Caller) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return {"accounts": providers.list_break_glass(conn)}


def add_break_glass(caller: Caller, *, user_id: uuid.UUID, reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return providers.add_break_glass(conn, tenant_id=caller.tenant_id, user_id=user_id, actor=caller.actor,
                                         actor_id=caller.user.user_id, meta=caller.meta, reason=reason)


def remove_break_glass(caller: Caller, *, user_id: uuid.UUID, reason: str) -> None:
    with caller.tenant_tx() as conn:
        providers.remove_break_glass(conn, tenant_id=caller.tenant_id, user_id=user_id, actor=caller.actor,
                                     meta=caller.meta, reason=reason)


def public_providers(slug: str) -> dict[str, Any]:
    """The enabled providers of a tenant, for its sign-in page (no configuration, no secrets).

    Raises:
        NotFound: no such tenant.
    """
    tenant_id = tenant_by_slug(slug)
    with db.tenant_tx(tenant_id) as conn:
        rows = providers.enabled_providers(conn)
    return {"providers": [{"id": r["id"], "name": r["name"], "kind": r["kind"], "required": r["required"]}
                          for r in rows]}


def exchange(*, code: str, binding: str | None, meta: audit.RequestMeta) -> dict[str, Any]:
    """Trade a browser sign-in's one-time code for tokens (or a second-factor ticket).

    Raises:
        InvalidHandoff.
    """
    return accounts.exchange(code=code, binding=binding, meta=meta).as_dict()


def oidc_start(*, slug: str, provider_id: str, remember_me: bool, meta: audit.RequestMeta) -> oidc.Redirect:
    """Send a browser to a tenant's OpenID Provider (authorization code flow with PKCE).

    Raises:
        NotFound (tenant), ProviderUnavailable, MetadataUrlRefused, MetadataUnavailable.
    """
    return oidc.start(tenant_id=tenant_by_slug(slug), slug=slug, provider_id=provider_id, remember_me=remember_me,
                      meta=meta)


def oidc_callback(*, slug: str, provider_id: str, query: dict[str, str], flow_cookie: str | None,
                  meta: audit.RequestMeta) -> oidc.Redirect:
    """Finish an OIDC sign-in: a redirect to the console with a one-time code.

    Raises:
        NotFound (tenant), ProviderUnavailable, FlowInvalid, AssertionRejected, AccountRefused,
        MetadataUrlRefused, MetadataUnavailable.
    """
    return oidc.callback(tenant_id=tenant_by_slug(slug), slug=slug, provider_id=provider_id, query=query,
                         flow_cookie=flow_cookie, meta=meta)


def oidc_discover(caller: Caller, *, provider_id: uuid.UUID, reason: str) -> dict[str, Any]:
    """Fetch and check an OIDC provider's discovery document and JWKS now, and store the
    document in its `config.discovery` (audited as a provider change): a wrong issuer or an
    unreachable provider shows at configuration time, not at the first sign-in.

    Raises:
        NotFound, InvalidProviderConfig (not OIDC, no issuer), Conflict (issuer changed
        meanwhile), MetadataUrlRefused, MetadataUnavailable.
    """
    with caller.tenant_tx() as conn:
        issuer = providers.get_provider(conn, provider_id)["config"].get("issuer") or ""
    if not issuer:
        raise InvalidProviderConfig("only an OIDC provider with an issuer has a discovery document")
    doc = oidc.checked_discovery(issuer)  # no transaction (or row lock) held across the network call
    with caller.tenant_tx() as conn:
        current = providers.get_provider(conn, provider_id, lock=True)
        if current["config"].get("issuer") != issuer:
            raise Conflict("the provider's issuer changed while its discovery document was fetched")
        return providers.update_provider(conn, tenant_id=caller.tenant_id, provider_id=provider_id,
                                         changes={"config": {**current["config"], "discovery": doc}},
                                         client_secret=None, clear_client_secret=False, actor=caller.actor,
                                         actor_id=caller.user.user_id, meta=caller.meta, reason=reason)


def refresh_saml_metadata(caller: Caller, *, provider_id: uuid.UUID, reason: str) -> dict[str, Any]:
    """Fetch a SAML provider's metadata URL once (an ADMIN's action) and store what it says.

    Raises:
        NotFound, InvalidProviderConfig, MetadataUrlRefused, MetadataUnavailable.
    """
    from shared.identity.sso import saml

    return saml.refresh_metadata(tenant_id=caller.tenant_id, provider_id=provider_id, actor=caller.actor,
                                 actor_id=caller.user.user_id, meta=caller.meta, reason=reason)


def saml_metadata(slug: str) -> str:
    """The tenant's SP metadata. Raises NotFound."""
    from shared.identity.sso import saml

    return saml.sp_metadata(slug)


def saml_login(*, slug: str, provider_id: str, remember_me: bool, meta: audit.RequestMeta) -> tuple[str, str | None]:
    """Start an SP-initiated sign-in: (the IdP URL to redirect to, the binding cookie).

    Raises:
        NotFound, ProviderUnavailable.
    """
    from shared.identity.sso import saml

    redirect = saml.start_login(slug=slug, provider_id=provider_id, remember_me=remember_me, meta=meta)
    return redirect.location, redirect.cookie


def saml_acs(*, slug: str, content_type: str | None, body: bytes, binding: str | None,
             meta: audit.RequestMeta) -> tuple[str, str | None]:
    """Consume an IdP's posted form: (the console URL with a one-time code, a cookie to set or None).

    Raises:
        NotFound (tenant, before the body is read), UnsupportedMediaType, MalformedRequest,
        AssertionRejected, AssertionReplayed, AccountRefused, ServiceUnavailable.
    """
    from shared.identity.sso import saml

    tenant_by_slug(slug)
    redirect = saml.acs(slug=slug, form=saml.read_form(content_type, body), binding=binding, meta=meta)
    return redirect.location, redirect.cookie


def purge_expired_state() -> dict[str, int]:
    """The housekeeping timer's work: expired replay-cache rows, requests and sign-in codes.

    Raises:
        ServiceUnavailable.
    """
    from shared.identity.sso import saml

    return saml.purge_expired()
