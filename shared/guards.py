"""Who is calling, and may they do this: authentication and permission guards.

The tenant of a request comes from its access token only, never from the URL or body.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import azure.functions as func

from shared.errors import Forbidden, Unauthenticated
from shared.rbac import PLATFORM_OPERATOR, role_permissions
from shared.tokens import verify_access_token


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    user_id: str
    tenant_id: str | None
    session_id: str
    role: str
    permissions: frozenset[str]
    name: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.role == PLATFORM_OPERATOR and self.tenant_id is None


def bearer_token(req: func.HttpRequest) -> str:
    """The token of an `Authorization: Bearer` header.

    Raises:
        Unauthenticated: no header, another scheme, or an empty token.
    """
    header = req.headers.get("Authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("a bearer access token is required")
    return token.strip()


def authenticate(req: func.HttpRequest) -> Principal:
    """Verify the request's access token and build its principal.

    Raises:
        Unauthenticated: missing, forged, expired or otherwise invalid token.
    """
    claims = verify_access_token(bearer_token(req))
    if claims.tenant_id is not None:
        try:
            uuid.UUID(claims.tenant_id)
        except ValueError:
            raise Unauthenticated("invalid token") from None
    elif claims.role != PLATFORM_OPERATOR:
        raise Unauthenticated("invalid token")
    return Principal(
        user_id=claims.subject,
        tenant_id=claims.tenant_id,
        session_id=claims.session_id,
        role=claims.role,
        permissions=role_permissions(claims.role),
        name=claims.name,
    )


def require_permission(principal: Principal, permission: str) -> None:
    """Raises Forbidden unless the principal holds `permission` in its own tenant."""
    if principal.tenant_id is None or permission not in principal.permissions:
        raise Forbidden(f"requires permission {permission}")


def require_operator(principal: Principal) -> None:
    """Raises Forbidden unless the caller is a platform operator."""
    if not principal.is_operator:
        raise Forbidden("requires a platform operator")
