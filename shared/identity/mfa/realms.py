"""The kinds of account that have second factors, and the tables of each.

A `Realm` names the tables of one kind of account: tenant users (tenant tables under row-level
security, events in the tenant's chain) or platform operators (platform tables, events in the
platform chain, tickets `opmfa.<nil>.<random>`). Every recipe takes a realm, so operators get the
same factors, recipes and checks as users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.identity.mfa import passkeys

Method = Literal["totp", "recovery_code", "passkey"]
TICKET_KIND = "mfa"
AAD_CONTEXT = b"custos/mfa/totp-secret/v1"
OPERATOR_AAD_CONTEXT = b"custos/mfa/operator-totp-secret/v1"


@dataclass(frozen=True)
class Realm:
    """The tables of one kind of account's second factors: tenant users (tenant tables under
    row-level security, events in the tenant's chain) or platform operators (platform
    tables, events in the platform chain). Identifiers here are constants, never input."""

    kind: Literal["user", "operator"]
    owner: str
    people: str
    totp: str
    recovery: str
    tickets: str
    sessions: str
    ticket_kind: str
    credentials: passkeys.CredentialStore
    aad_context: bytes

    @property
    def tenant_scoped(self) -> bool:
        return self.kind == "user"


USERS = Realm("user", "user_id", "users", "mfa_totp", "mfa_recovery_codes", "mfa_tickets", "sessions", TICKET_KIND,
              passkeys.USER_CREDENTIALS, AAD_CONTEXT)
OPERATORS = Realm("operator", "operator_id", "platform_operators", "operator_mfa_totp", "operator_mfa_recovery_codes",
                  "operator_mfa_tickets", "operator_sessions", "opmfa", passkeys.OPERATOR_CREDENTIALS,
                  OPERATOR_AAD_CONTEXT)


def owner_insert(realm: Realm, tenant_id: str, owner_id: str) -> tuple[str, str, tuple[str, ...]]:
    """Column list, placeholders and values that name a row's owner in an insert."""
    if realm.tenant_scoped:
        return f"tenant_id, {realm.owner}", "%s, %s", (tenant_id, owner_id)
    return realm.owner, "%s", (owner_id,)
