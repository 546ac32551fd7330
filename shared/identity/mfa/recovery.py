"""Recovery codes: 10 per set, 16 characters from a 31-letter alphabet (79 bits), stored as
SHA-256 of user id and code. Each works once; a new set voids the old one.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from shared.core.db import Conn
from shared.identity.mfa._common import Rejected
from shared.identity.mfa.realms import USERS, Realm, owner_insert

RECOVERY_CODE_COUNT = 10
RECOVERY_CODE_LENGTH = 16
RECOVERY_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
"""No 0/o, 1/l/i: nothing to misread. 31**16 is about 2**79."""


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CODE_LENGTH))
    return "-".join(raw[i:i + 4] for i in range(0, RECOVERY_CODE_LENGTH, 4))


def normalize_recovery_code(code: str) -> str | None:
    """Lower-cased, without spaces and dashes; None if it cannot be a recovery code."""
    cleaned = "".join(ch for ch in str(code).lower() if ch not in " -\t")
    if len(cleaned) != RECOVERY_CODE_LENGTH or any(ch not in RECOVERY_ALPHABET for ch in cleaned):
        return None
    return cleaned


def recovery_code_hash(user_id: str, code: str) -> str:
    """SHA-256 of user id and normalized code: the user id keeps one search from covering everyone."""
    return hashlib.sha256(f"{uuid.UUID(user_id)}:{code}".encode("ascii")).hexdigest()


def issue_recovery_codes(conn: Conn, *, tenant_id: str, user_id: str,
                         realm: Realm = USERS) -> tuple[list[str], int]:
    """A new set in the caller's transaction; returns the codes and how many old unused ones it voided."""
    voided = conn.execute(
        f"delete from {realm.recovery} where {realm.owner} = %s returning used_at", (user_id,)  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
    ).fetchall()
    set_id, codes = uuid.uuid4(), [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    cols, marks, owner = owner_insert(realm, tenant_id, user_id)
    with conn.cursor() as cur:
        cur.executemany(
            f"insert into {realm.recovery} ({cols}, set_id, code_hash) values ({marks}, %s, %s)",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
            [(*owner, set_id, recovery_code_hash(user_id, normalize_recovery_code(c) or "")) for c in codes],
        )
    return codes, len([r for r in voided if r["used_at"] is None])


def use_recovery_code(conn: Conn, *, user_id: str, code: str, realm: Realm = USERS) -> int:
    """Spend one recovery code; returns how many are left. Raises Rejected."""
    normalized = normalize_recovery_code(code)
    if normalized is None:
        raise Rejected("recovery_code", "code_malformed")
    used = conn.execute(
        f"update {realm.recovery} set used_at = now() where {realm.owner} = %s and code_hash = %s and used_at is null"  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
        " returning id",
        (user_id, recovery_code_hash(user_id, normalized)),
    ).fetchone()
    if used is None:
        raise Rejected("recovery_code", "code_invalid")
    row = conn.execute(f"select count(*) as n from {realm.recovery} where {realm.owner} = %s and used_at is null",  # noqa: S608  # nosec B608  # names come from the fixed MFA realm tables in code; values are bound
                       (user_id,)).fetchone()
    return int(row["n"]) if row else 0
