"""SCIM bearer tokens: created by an ADMIN (shown once, stored hashed), listed, revoked, audited;
and the authentication of a /scim/v2 request by one.

A token is an opaque token of kind `scim` (shared.identity.opaque): `scim.<tenant hex>.<secret>`,
256 random bits, only its SHA-256 stored. The tenant in the clear lets the lookup run under
row-level security for that tenant alone; the token, not the URL, decides the tenant. A token
acts as itself: its principal has role SCIM_TOKEN, reaches only the SCIM endpoints, and is the
actor (type `scim_token`, id = the token's id) of every change it makes.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from shared.audit import chain as audit
from shared.core import db
from shared.core.errors import NotFound, Unauthenticated
from shared.identity.guards import Principal
from shared.identity.opaque import new_token, parse_token, same_hash
from shared.tenancy.rbac import SCIM_TOKEN

if TYPE_CHECKING:
    from shared.web.caller import Caller

PUBLIC_COLUMNS = "id::text as id, name, created_at, created_by::text as created_by, last_used_at, revoked_at"
TOUCH_EVERY_S = 60
"""`last_used_at` is written at most this often per token, so a busy sync costs no write per request."""


def create_token(caller: Caller, *, name: str) -> dict[str, Any]:
    """A new SCIM token for the caller's tenant; the answer is the only place its secret appears.

    Raises:
        ValidationFailed: the database refused the name (see shared.core.db).
    """
    tenant_id = caller.tenant_id
    token, hashed = new_token("scim", tenant_id)
    with caller.tenant_tx() as conn:
        row = conn.execute(
            f"""insert into scim_tokens (tenant_id, name, token_hash, created_by) values (%s, %s, %s, %s)
                returning {PUBLIC_COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            (tenant_id, name.strip(), hashed, caller.user.user_id),
        ).fetchone()
        assert row is not None
        audit.append(conn, tenant_id=tenant_id, actor=caller.actor, action="scim.token_created",
                     target_type="scim_token", target_id=row["id"], after={"name": row["name"]}, meta=caller.meta)
    return {**row, "token": token}


def list_tokens(caller: Caller) -> dict[str, Any]:
    """The tenant's SCIM tokens, newest first, revoked ones included (never their secrets)."""
    with caller.tenant_tx() as conn:
        rows = conn.execute(f"select {PUBLIC_COLUMNS} from scim_tokens order by created_at desc, id").fetchall()  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
    return {"tokens": rows}


def revoke_token(caller: Caller, token_id: uuid.UUID) -> dict[str, Any]:
    """Revoke a token: its next request is refused (401).

    Raises:
        NotFound: no such live token in the caller's tenant (another tenant's id included).
    """
    tenant_id = caller.tenant_id
    with caller.tenant_tx() as conn:
        row = conn.execute(
            f"""update scim_tokens set revoked_at = now(), revoked_by = %s where id = %s and revoked_at is null
                returning {PUBLIC_COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
            (caller.user.user_id, str(token_id)),
        ).fetchone()
        if row is None:
            raise NotFound("no such live SCIM token")
        audit.append(conn, tenant_id=tenant_id, actor=caller.actor, action="scim.token_revoked",
                     target_type="scim_token", target_id=row["id"], before={"name": row["name"]}, meta=caller.meta)
    return row


def authenticate(token: str) -> Principal:
    """The principal of a SCIM bearer token.

    Raises:
        Unauthenticated: not a SCIM token, unknown, revoked, or its tenant purged.
    """
    parsed = parse_token(token, "scim")
    if parsed is None:
        raise Unauthenticated("a SCIM bearer token is required")
    with db.tenant_tx(parsed.tenant_id) as conn:
        row = conn.execute(
            """select s.id::text as id, s.name, s.token_hash, s.revoked_at, t.status as tenant_status,
                      s.last_used_at is null or s.last_used_at < now() - make_interval(secs => %s) as stale
                 from scim_tokens s join tenants t on t.id = s.tenant_id
                where s.token_hash = %s""",
            (TOUCH_EVERY_S, parsed.hash),
        ).fetchone()
        if (row is None or not same_hash(parsed.hash, row["token_hash"]) or row["revoked_at"] is not None
                or row["tenant_status"] == "PURGED"):
            raise Unauthenticated("the SCIM token is not valid")
        if row["stale"]:
            conn.execute("update scim_tokens set last_used_at = now() where id = %s", (row["id"],))
    return Principal(
        user_id=row["id"], tenant_id=parsed.tenant_id, session_id=row["id"], role=SCIM_TOKEN,
        permissions=frozenset(), name=f"SCIM token {row['name']}", tenant_status=row["tenant_status"],
    )
