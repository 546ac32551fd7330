"""What the SSO tests share: a provider row put straight into a tenant, events, session counts."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.types.json import Jsonb

from shared.audit import chain as audit
from shared.core import db


def insert_provider(tenant_id: str, *, kind: str = "saml", enabled: bool = True, config: dict[str, Any] | None = None,
                    **flags: Any) -> str:
    """A provider row as an ADMIN would have saved it (validation is tested through the API)."""
    provider_id = str(uuid.uuid4())
    columns = {"jit": False, "allow_admin_mapping": False, "trust_idp_mfa": False, "link_by_verified_email": False,
               "required": False, "role_mapping": {}, **flags}
    with db.tenant_tx(tenant_id) as conn:
        conn.execute(
            """insert into sso_providers (tenant_id, id, kind, name, enabled, required, config, role_mapping, jit,
                   allow_admin_mapping, trust_idp_mfa, link_by_verified_email)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (tenant_id, provider_id, kind, f"IdP {provider_id[:8]}", enabled, columns["required"], Jsonb(config or {}),
             Jsonb(columns["role_mapping"]), columns["jit"], columns["allow_admin_mapping"], columns["trust_idp_mfa"],
             columns["link_by_verified_email"]),
        )
    return provider_id


def events(tenant_id: str, action: str) -> list[dict[str, Any]]:
    with db.tenant_tx(tenant_id) as conn:
        return audit.list_events(conn, action=action, limit=1000)


def session_count(tenant_id: str) -> int:
    with db.tenant_tx(tenant_id) as conn:
        return int(conn.execute("select count(*) as n from sessions").fetchone()["n"])


def links(tenant_id: str) -> list[dict[str, Any]]:
    with db.tenant_tx(tenant_id) as conn:
        return conn.execute("select provider_id::text as provider_id, subject, user_id::text as user_id"
                            " from sso_links order by created_at").fetchall()
