"""Per-tenant identity providers: validation, storage, and the audited changes an ADMIN makes.

A provider is SAML 2.0 or OpenID Connect. Its non-secret configuration is `config` (checked
against `SamlConfig` or `OidcConfig`), an OIDC client secret is sealed with AES-256-GCM under
the MFA key ring and never returned, and the sign-in policy is a handful of flags: `jit`
(first sign-in creates the user), `role_mapping` (never ADMIN unless `allow_admin_mapping`),
`trust_idp_mfa`, `link_by_verified_email`, `enabled` and `required` (password sign-in refused
for the tenant's users except break-glass ADMINs). Every change appends an audit event with the
old and new values, the secret shown only as present or absent.

The functions take a `conn` in the caller's tenant transaction; `shared.identity.sso.api`
opens it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Conflict, NotFound
from shared.core.settings import get_settings
from shared.identity.mfa import Sealed, secret_box
from shared.identity.sso.errors import InvalidProviderConfig
from shared.tenancy.rbac import Role

Kind = Literal["saml", "oidc"]
MAX_CERTIFICATES = 4
SECRET_AAD = b"custos-sso-client-secret"

PROVIDER_COLUMNS = (
    "id::text as id, kind, name, enabled, required, config, role_mapping, jit, allow_admin_mapping, trust_idp_mfa,"
    " link_by_verified_email, secret_ciphertext is not null as has_client_secret, created_at, updated_at"
)

AUDITED = ("name", "enabled", "required", "config", "role_mapping", "jit", "allow_admin_mapping", "trust_idp_mfa",
           "link_by_verified_email", "has_client_secret")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


HttpsUrl = Annotated[str, Field(min_length=9, max_length=2048, pattern=r"^https?://")]


class AttributeMap(_Config):
    """Which assertion attributes (SAML attribute names, OIDC claims) carry what."""

    email: str = Field("", max_length=256)
    display_name: str = Field("", max_length=256)
    groups: str = Field("", max_length=256)
    amr: str = Field("", max_length=256, description="Attribute listing the authentication methods (MFA trust)")


class SamlConfig(_Config):
    idp_entity_id: str = Field("", max_length=1024)
    idp_sso_url: str = Field("", max_length=2048)
    idp_certificates: list[str] = Field(default_factory=list, max_length=MAX_CERTIFICATES)
    metadata_url: str = Field("", max_length=2048)
    want_response_signed: bool = False
    idp_initiated: bool = False
    attributes: AttributeMap = Field(default_factory=lambda: AttributeMap.model_validate({}))
    mfa_authn_contexts: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=16,
        description="AuthnContextClassRef values (or amr values) that mean the IdP proved a second factor")


class OidcConfig(_Config):
    issuer: str = Field("", max_length=2048)
    client_id: str = Field("", max_length=512)
    allowed_email_domains: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(default_factory=list,
                                                                                             max_length=50)
    entra_tenant_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list,
                                                                                       max_length=10)
    google_hosted_domains: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(default_factory=list,
                                                                                             max_length=10)
    scopes: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: ["openid", "email", "profile"], max_length=20)
    discovery: dict[str, Any] = Field(default_factory=dict, description="Cached discovery document (admin action)")
    attributes: AttributeMap = Field(default_factory=lambda: AttributeMap.model_validate({}))
    mfa_authn_contexts: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list,
                                                                                          max_length=16)


class RoleRule(_Config):
    model_config = ConfigDict(extra="forbid", strict=False)

    value: str = Field(min_length=1, max_length=512)
    role: Role


class RoleMapping(_Config):
    """First matching rule wins (the value is one of the `groups` attribute's values); else `default_role`."""

    model_config = ConfigDict(extra="forbid", strict=False)

    rules: list[RoleRule] = Field(default_factory=list, max_length=100)
    default_role: Role = Role.VIEWER


def _invalid(field: str, message: str) -> InvalidProviderConfig:
    return InvalidProviderConfig(message, errors=[{"location": ["body", *field.split(".")], "message": message}])


def _pydantic(model: type[BaseModel], value: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise InvalidProviderConfig(
            f"invalid {where}",
            errors=[{"location": ["body", where, *map(str, e["loc"])], "message": e["msg"], "code": e["type"]}
                    for e in exc.errors(include_url=False, include_input=False)],
        ) from None


def certificate_der(text: str) -> bytes:
    """An X.509 certificate given as PEM or bare base64 (as metadata carries it), as DER.

    Raises:
        ValueError: not a certificate.
    """
    from cryptography import x509  # with the first certificate, not at import

    body = "".join(line for line in text.strip().splitlines() if "-----" not in line)
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
        x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError):
        raise ValueError("not an X.509 certificate (PEM or base64 DER)") from None
    return der


def check_url(url: str, field: str, *, allow_http_loopback: bool = False) -> str:
    """An absolute https URL (http only on a loopback host where allowed).

    Raises:
        InvalidProviderConfig.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    loopback = False
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host and loopback and allow_http_loopback:
        return url
    raise _invalid(field, "must be an https URL")


def loopback_allowed() -> bool:
    """Whether metadata and IdP URLs may name loopback http addresses: tests only, never in production."""
    s = get_settings()
    return s.sso_metadata_allow_loopback and s.custos_env != "production"


def validate_config(kind: Kind, config: dict[str, Any], *, enabled: bool) -> dict[str, Any]:
    """The configuration as stored (defaults filled, certificates normalised to base64 DER).

    Raises:
        InvalidProviderConfig: unknown or malformed fields; an enabled provider missing what
            sign-in needs.
    """
    loopback = loopback_allowed()
    if kind == "saml":
        saml = _pydantic(SamlConfig, config, "config")
        assert isinstance(saml, SamlConfig)
        certs = []
        for i, text in enumerate(saml.idp_certificates):
            try:
                certs.append(base64.b64encode(certificate_der(text)).decode("ascii"))
            except ValueError as exc:
                raise _invalid(f"config.idp_certificates.{i}", str(exc)) from None
        saml.idp_certificates = certs
        if saml.idp_sso_url:
            check_url(saml.idp_sso_url, "config.idp_sso_url", allow_http_loopback=loopback)
        if saml.metadata_url:
            check_url(saml.metadata_url, "config.metadata_url", allow_http_loopback=loopback)
        if enabled:
            for name in ("idp_entity_id", "idp_sso_url"):
                if not getattr(saml, name):
                    raise _invalid(f"config.{name}", "an enabled SAML provider needs it (or fetch its metadata)")
            if not certs:
                raise _invalid("config.idp_certificates", "an enabled SAML provider needs a signing certificate")
        return saml.model_dump()
    oidc = _pydantic(OidcConfig, config, "config")
    assert isinstance(oidc, OidcConfig)
    if oidc.issuer:
        check_url(oidc.issuer, "config.issuer", allow_http_loopback=loopback)
    if enabled and (not oidc.issuer or not oidc.client_id):
        raise _invalid("config.issuer", "an enabled OIDC provider needs its issuer and client id")
    return oidc.model_dump()


def validate_role_mapping(mapping: dict[str, Any], *, allow_admin_mapping: bool) -> dict[str, Any]:
    """Raises InvalidProviderConfig: malformed, or ADMIN granted by mapping without `allow_admin_mapping`."""
    parsed = _pydantic(RoleMapping, mapping, "role_mapping")
    assert isinstance(parsed, RoleMapping)
    if not allow_admin_mapping:
        if parsed.default_role == Role.ADMIN:
            raise _invalid("role_mapping.default_role", "ADMIN by mapping needs allow_admin_mapping")
        for i, rule in enumerate(parsed.rules):
            if rule.role == Role.ADMIN:
                raise _invalid(f"role_mapping.rules.{i}.role", "ADMIN by mapping needs allow_admin_mapping")
    return parsed.model_dump(mode="json")


def _aad(tenant_id: str, provider_id: str) -> bytes:
    return SECRET_AAD + b"\x00" + uuid.UUID(tenant_id).bytes + uuid.UUID(provider_id).bytes


def open_client_secret(row: dict[str, Any], *, tenant_id: str) -> str | None:
    """The provider's OIDC client secret in clear, or None when it has none.

    Raises:
        SecretUnreadable: unknown key id, a row copied from another provider, or tampering.
    """
    if row.get("secret_ciphertext") is None:
        return None
    sealed = Sealed(bytes(row["secret_ciphertext"]), bytes(row["secret_nonce"]), row["secret_key_id"])
    return secret_box().open(sealed, _aad(tenant_id, str(row["id"]))).decode("utf-8")


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "kind", "name", "enabled", "required", "config", "role_mapping", "jit",
                                "allow_admin_mapping", "trust_idp_mfa", "link_by_verified_email",
                                "has_client_secret", "created_at", "updated_at")}


def _audited(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in AUDITED}


def get_provider(conn: Conn, provider_id: uuid.UUID | str, *, lock: bool = False) -> dict[str, Any]:
    """A live (not deleted) provider of the caller's tenant, as the API shows it.

    Raises:
        NotFound: no such provider here (another tenant's id is simply not found).
    """
    row = conn.execute(
        f"select {PROVIDER_COLUMNS} from sso_providers where id = %s and deleted_at is null"  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
        + (" for update" if lock else ""),
        (str(provider_id),),
    ).fetchone()
    if row is None:
        raise NotFound("no such identity provider")
    return _public(row)


def provider_row(conn: Conn, provider_id: str) -> dict[str, Any] | None:
    """Every column of a live provider (secret included, sealed), or None."""
    return conn.execute(
        "select *, id::text as id from sso_providers where id = %s and deleted_at is null", (provider_id,)
    ).fetchone()


def list_providers(conn: Conn) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"select {PROVIDER_COLUMNS} from sso_providers where deleted_at is null order by lower(name), id"  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
    ).fetchall()
    return [_public(r) for r in rows]


def enabled_providers(conn: Conn) -> list[dict[str, Any]]:
    """Ids, names and kinds of the tenant's enabled providers (the sign-in page's buttons)."""
    return conn.execute(
        "select id::text as id, name, kind, required from sso_providers"
        " where enabled and deleted_at is null order by lower(name), id"
    ).fetchall()


def sso_required(conn: Conn) -> bool:
    """Whether the tenant has an enabled provider marked required."""
    return conn.execute(
        "select exists(select 1 from sso_providers where required and enabled and deleted_at is null) as r"
    ).fetchone()["r"]  # type: ignore[index]


def _check_entity_unique(conn: Conn, kind: str, config: dict[str, Any], provider_id: str | None) -> None:
    key = "idp_entity_id" if kind == "saml" else "issuer"
    value = config.get(key)
    if not value:
        return
    clash = conn.execute(
        f"select 1 from sso_providers where kind = %s and config->>'{key}' = %s and deleted_at is null"  # noqa: S608  # nosec B608  # key is one of two literal config keys chosen by kind; values are bound
        " and id is distinct from %s::uuid",
        (kind, value, provider_id),
    ).fetchone()
    if clash is not None:
        raise Conflict(f"another provider of this tenant already has this {key}")


def _check_policy(kind: str, fields: dict[str, Any]) -> None:
    if fields["required"] and not fields["enabled"]:
        raise _invalid("required", "only an enabled provider can be required")


def create_provider(conn: Conn, *, tenant_id: str, kind: Kind, fields: dict[str, Any], client_secret: str | None,
                    actor: audit.Actor, actor_id: str | None, meta: audit.RequestMeta, reason: str) -> dict[str, Any]:
    """Create a provider in the caller's tenant transaction, audited.

    Raises:
        InvalidProviderConfig, Conflict (name or entity id taken).
    """
    if client_secret is not None and kind != "oidc":
        raise _invalid("client_secret", "only an OIDC provider has a client secret")
    _check_policy(kind, fields)
    config = validate_config(kind, fields["config"], enabled=fields["enabled"])
    mapping = validate_role_mapping(fields["role_mapping"], allow_admin_mapping=fields["allow_admin_mapping"])
    _check_entity_unique(conn, kind, config, None)
    provider_id = str(uuid.uuid4())
    sealed = (secret_box().seal(client_secret.encode("utf-8"), _aad(tenant_id, provider_id))
              if client_secret else None)
    with db.savepoint_or_conflict(conn, "another provider of this tenant has this name"):
        conn.execute(
            """insert into sso_providers (tenant_id, id, kind, name, enabled, required, config, role_mapping, jit,
                   allow_admin_mapping, trust_idp_mfa, link_by_verified_email, secret_ciphertext, secret_nonce,
                   secret_key_id, created_by, updated_by)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (tenant_id, provider_id, kind, fields["name"].strip(), fields["enabled"], fields["required"],
             db.jsonb(config), db.jsonb(mapping), fields["jit"], fields["allow_admin_mapping"], fields["trust_idp_mfa"],
             fields["link_by_verified_email"], sealed.ciphertext if sealed else None,
             sealed.nonce if sealed else None, sealed.key_id if sealed else None, actor_id, actor_id),
        )
    created = get_provider(conn, provider_id)
    audit.append(conn, tenant_id=tenant_id, actor=actor, action="sso.provider_created", target_type="sso_provider",
                 target_id=provider_id, after={"kind": kind, **_audited(created)}, reason=reason, meta=meta)
    return created


def update_provider(conn: Conn, *, tenant_id: str, provider_id: uuid.UUID, changes: dict[str, Any],
                    client_secret: str | None, clear_client_secret: bool, actor: audit.Actor, actor_id: str | None,
                    meta: audit.RequestMeta, reason: str) -> dict[str, Any]:
    """Change a provider (only the fields in `changes`), audited with old and new values.

    Raises:
        NotFound, InvalidProviderConfig, Conflict.
    """
    old = get_provider(conn, provider_id, lock=True)
    kind: Kind = old["kind"]
    if (client_secret is not None or clear_client_secret) and kind != "oidc":
        raise _invalid("client_secret", "only an OIDC provider has a client secret")
    merged = {**old, **changes}
    _check_policy(kind, merged)
    config = validate_config(kind, merged["config"], enabled=merged["enabled"])
    mapping = validate_role_mapping(merged["role_mapping"], allow_admin_mapping=merged["allow_admin_mapping"])
    _check_entity_unique(conn, kind, config, str(provider_id))
    sets = ["name = %s", "enabled = %s", "required = %s", "config = %s", "role_mapping = %s", "jit = %s",
            "allow_admin_mapping = %s", "trust_idp_mfa = %s", "link_by_verified_email = %s", "updated_at = now()",
            "updated_by = %s"]
    params: list[Any] = [merged["name"].strip(), merged["enabled"], merged["required"], db.jsonb(config), db.jsonb(mapping),
                         merged["jit"], merged["allow_admin_mapping"], merged["trust_idp_mfa"],
                         merged["link_by_verified_email"], actor_id]
    if client_secret is not None:
        sealed = secret_box().seal(client_secret.encode("utf-8"), _aad(tenant_id, str(provider_id)))
        sets.append("secret_ciphertext = %s, secret_nonce = %s, secret_key_id = %s")
        params += [sealed.ciphertext, sealed.nonce, sealed.key_id]
    elif clear_client_secret:
        sets.append("secret_ciphertext = null, secret_nonce = null, secret_key_id = null")
    with db.savepoint_or_conflict(conn, "another provider of this tenant has this name"):
        conn.execute(f"update sso_providers set {', '.join(sets)} where id = %s", (*params, str(provider_id)))  # noqa: S608  # nosec B608  # sets holds only literal assignments; values are bound
    new = get_provider(conn, provider_id)
    before, after = _audited(old), _audited(new)
    if client_secret is not None:
        after["client_secret"] = "replaced"  # noqa: S105 (a marker, not a secret)
    audit.append(conn, tenant_id=tenant_id, actor=actor, action="sso.provider_updated", target_type="sso_provider",
                 target_id=str(provider_id), before={k: v for k, v in before.items() if after.get(k) != v},
                 after={k: v for k, v in after.items() if before.get(k) != v}, reason=reason, meta=meta)
    return new


def delete_provider(conn: Conn, *, tenant_id: str, provider_id: uuid.UUID, actor: audit.Actor,
                    meta: audit.RequestMeta, reason: str) -> None:
    """Retire a provider: disabled, not required, its name free again, its secret erased. Its
    links stay (the audit trail and a restored provider still name them); nothing signs in
    through it again.

    Raises:
        NotFound.
    """
    old = get_provider(conn, provider_id, lock=True)
    conn.execute(
        """update sso_providers set deleted_at = now(), enabled = false, required = false, secret_ciphertext = null,
               secret_nonce = null, secret_key_id = null, updated_at = now() where id = %s""",
        (str(provider_id),),
    )
    audit.append(conn, tenant_id=tenant_id, actor=actor, action="sso.provider_deleted", target_type="sso_provider",
                 target_id=str(provider_id), before=_audited(old), reason=reason, meta=meta)


# --- break-glass ADMINs ------------------------------------------------------------------------


def list_break_glass(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        """select b.user_id::text as user_id, u.email, u.display_name, u.role, u.status, b.created_at
             from sso_break_glass b join users u on u.tenant_id = b.tenant_id and u.id = b.user_id
            order by b.created_at, b.user_id"""
    ).fetchall()


def is_break_glass(conn: Conn, user_id: str) -> bool:
    return conn.execute("select exists(select 1 from sso_break_glass where user_id = %s) as b",
                        (user_id,)).fetchone()["b"]  # type: ignore[index]


def add_break_glass(conn: Conn, *, tenant_id: str, user_id: uuid.UUID, actor: audit.Actor, actor_id: str | None,
                    meta: audit.RequestMeta, reason: str) -> dict[str, Any]:
    """Name an active ADMIN who keeps password + second factor when SSO is required.

    Raises:
        NotFound (no such user), InvalidProviderConfig (not an active ADMIN).
    """
    user = conn.execute("select id::text as id, email, role, status from users where id = %s for update",
                        (str(user_id),)).fetchone()
    if user is None:
        raise NotFound("no such user")
    if user["role"] != Role.ADMIN or user["status"] != "active":
        raise _invalid("user_id", "only an active ADMIN can be a break-glass account")
    inserted = conn.execute(
        "insert into sso_break_glass (tenant_id, user_id, created_by) values (%s, %s, %s)"
        " on conflict do nothing returning user_id",
        (tenant_id, user["id"], actor_id),
    ).fetchone()
    if inserted is not None:
        audit.append(conn, tenant_id=tenant_id, actor=actor, action="sso.break_glass_added", target_type="user",
                     target_id=user["id"], before={"break_glass": False}, after={"break_glass": True},
                     reason=reason, meta=meta)
    return {"user_id": user["id"], "break_glass": True}


def remove_break_glass(conn: Conn, *, tenant_id: str, user_id: uuid.UUID, actor: audit.Actor,
                       meta: audit.RequestMeta, reason: str) -> None:
    """Raises NotFound: the user is not on the list."""
    gone = conn.execute("delete from sso_break_glass where user_id = %s returning user_id::text as id",
                        (str(user_id),)).fetchone()
    if gone is None:
        raise NotFound("the user is not a break-glass account")
    audit.append(conn, tenant_id=tenant_id, actor=actor, action="sso.break_glass_removed", target_type="user",
                 target_id=gone["id"], before={"break_glass": True}, after={"break_glass": False}, reason=reason,
                 meta=meta)


def tenant_by_slug(slug: str) -> str:
    """The id of a live tenant named by its slug in a public URL.

    Raises:
        NotFound: no such tenant (or a purged one).
    """
    with db.platform_tx() as conn:
        row = conn.execute("select id::text as id, status from tenants where slug = %s",
                           (slug.strip().lower()[:63],)).fetchone()
    if row is None or row["status"] == "PURGED":
        raise NotFound("no such tenant")
    return str(row["id"])
