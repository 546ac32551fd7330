"""Payment methods as the gateway's token with brand, last four digits and expiry: never card
data (the wrapper refuses card numbers and security codes before anything is stored)."""

from __future__ import annotations

from typing import Any

from shared.audit import chain as audit
from shared.core.db import Conn

COLUMNS = "id::text as id, gateway, brand, last4, exp_month, exp_year, label, created_at"


def list_methods(conn: Conn) -> list[dict[str, Any]]:
    """The tenant's live payment methods, oldest first."""
    return conn.execute(
        f"select {COLUMNS} from payment_methods where retired_at is null order by created_at"  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
    ).fetchall()


def create_method(
    conn: Conn, *, tenant_id: str, created_by: str, gateway: str, gateway_token: str, brand: str, last4: str,
    exp_month: int, exp_year: int, label: str | None, actor: audit.Actor, meta: audit.RequestMeta,
) -> dict[str, Any]:
    """Store a payment method and append its event (the token itself is never in the trail).

    Raises:
        InvalidValue: a value the table's checks refuse (from shared.core.db).
    """
    row = conn.execute(
        f"""insert into payment_methods (tenant_id, gateway, gateway_token, brand, last4, exp_month, exp_year, label,
                                         created_by)
           values (%s, %s, %s, %s, %s, %s, %s, %s, %s) returning {COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
        (tenant_id, gateway, gateway_token, brand, last4, exp_month, exp_year, label, created_by),
    ).fetchone()
    assert row is not None
    audit.append(conn, tenant_id=tenant_id, actor=actor, action="payment_method.created",
                 target_type="payment_method", target_id=row["id"],
                 after={"gateway": gateway, "brand": brand, "last4": last4, "expiry": f"{exp_month:02d}/{exp_year}"},
                 meta=meta)
    return row
