"""An administrator's reset of another user's second factors."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from shared.audit import chain as audit
from shared.core import db, mail
from shared.core.errors import Forbidden
from shared.identity.mfa._common import lock_user, tenant_of
from shared.identity.mfa.enrolment import factor_state
from shared.identity.sessions import revoke_all

if TYPE_CHECKING:
    from shared.identity.guards import Principal


def reset_factors(*, actor: Principal, user_id: uuid.UUID, reason: str, audit_actor: audit.Actor,
                  meta: audit.RequestMeta) -> dict[str, Any]:
    """Remove every second factor of another user of the tenant, with a reason; their
    sessions end and they are told by mail. If their role requires a factor, their next
    sign-in can only enrol a new one.

    Raises:
        NotFound: no such user in the tenant. Forbidden: one's own factors (self-service instead).
    """
    tenant_id = tenant_of(actor)
    if str(user_id) == actor.user_id:
        raise Forbidden("you cannot reset your own second factors: manage them under /api/mfa")
    with db.tenant_tx(tenant_id) as conn:
        user = lock_user(conn, str(user_id))
        state = factor_state(conn, user_id=user["id"], role=user["role"])
        conn.execute("delete from mfa_totp where user_id = %s", (user["id"],))
        removed_keys = conn.execute("delete from webauthn_credentials where user_id = %s returning id",
                                    (user["id"],)).fetchall()
        conn.execute("delete from mfa_recovery_codes where user_id = %s", (user["id"],))
        conn.execute("update mfa_tickets set used_at = now() where user_id = %s and used_at is null", (user["id"],))
        ended = revoke_all(conn, user_id=user["id"], reason="second factors reset")
        when = conn.execute("select now() as now").fetchone()["now"]  # type: ignore[index]
        mail.enqueue(
            conn, tenant_id=tenant_id, to=user["email"], subject="Your Custos second factors were reset", kind="mfa_reset",
            body=(f"{audit_actor.name} reset the second factors (authenticator app, passkeys, recovery codes) of your "
                  f"Custos account on {when.isoformat()}.\n\nReason given: {reason}\n\n"
                  f"Your sessions were ended. {'Sign in and enrol a new second factor.' if state.required else 'Sign in again.'}\n"
                  "If you did not ask for this, tell your administrator or security team now.\n"),
        )
        before = {"totp": state.totp, "passkeys": len(removed_keys), "recovery_codes": state.recovery_codes_remaining}
        audit.append(conn, tenant_id=tenant_id, actor=audit_actor, action="mfa.factors_reset", target_type="user",
                     target_id=user["id"], before=before, after={"sessions_ended": ended}, reason=reason, meta=meta)
    return {"user_id": user["id"], "removed": before, "sessions_ended": ended, "enrolment_required": state.required}
