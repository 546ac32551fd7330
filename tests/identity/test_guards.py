"""Guards: authentication costs one database round trip, for every kind of caller.

Round trips are counted on the wire: libpq's protocol trace of every pooled connection
records each message the client sends, and each `Query` (simple protocol) or `Sync`
(extended protocol) is one wait for the server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.audit import chain as audit
from shared.core import db
from shared.core.errors import Unauthenticated
from shared.identity.guards import Principal, principal_for
from shared.identity.tokens import verify_access_token
from shared.tenancy.tenants import Tenant
from tests.conftest import PersonFactory, token_for


class Wire:
    """The client messages of every pooled connection since the last `clear`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def clear(self) -> None:
        self.path.write_text("")

    def round_trips(self) -> list[str]:
        """The messages that wait for the server: the simple `Query` and the extended `Sync`."""
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[0] == "F" and parts[2].split(" ")[0] in ("Query", "Sync"):
                out.append(line)
        return out


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[Wire]:
    from psycopg.pq import Trace

    path = tmp_path / "wire.trace"
    p = db.pool()
    # Take every connection the pool may hold, so whichever one a call gets is traced.
    conns = [p.getconn() for _ in range(p.max_size)]
    handle = open(path, "w")  # noqa: SIM115 - libpq writes to it until untraced below
    try:
        for c in conns:
            c.pgconn.trace(handle.fileno())
            c.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        for c in conns:
            p.putconn(c)
        yield Wire(path)
    finally:
        conns = [p.getconn() for _ in range(p.max_size)]
        for c in conns:
            c.pgconn.untrace()
            p.putconn(c)
        handle.close()


def _principal(token: str) -> Principal:
    return principal_for(verify_access_token(token), audit.RequestMeta())


def test_a_tenant_user_is_authenticated_in_one_round_trip(tenant: Tenant, make_person: PersonFactory,
                                                          wire: Wire) -> None:
    person = make_person(tenant.id, "ADMIN")
    wire.clear()
    principal = _principal(person.token)
    assert principal.user_id == person.id
    assert len(wire.round_trips()) == 1, wire.round_trips()


def test_an_operator_is_authenticated_in_one_round_trip(make_person: PersonFactory, wire: Wire) -> None:
    operator = make_person(None)
    wire.clear()
    principal = _principal(operator.token)
    assert principal.is_operator
    assert len(wire.round_trips()) == 1, wire.round_trips()


def test_a_support_token_is_authenticated_in_one_round_trip(tenant: Tenant, make_person: PersonFactory,
                                                            wire: Wire) -> None:
    admin, operator = make_person(tenant.id, "ADMIN"), make_person(None)
    with db.tenant_tx(tenant.id) as conn:
        row = conn.execute(
            """insert into support_access_grants (tenant_id, operator_id, granted_by, reason, expires_at)
               values (%s, %s, %s, 'ticket 1', now() + interval '1 hour') returning id::text as id""",
            (tenant.id, operator.id, admin.id),
        ).fetchone()
    assert row is not None
    token = token_for(operator.id, tenant.id, "SUPPORT", session_id=row["id"])
    wire.clear()
    principal = _principal(token)
    assert principal.support_grant_id == row["id"]
    assert len(wire.round_trips()) == 1, wire.round_trips()

    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update support_access_grants set revoked_at = now(), revoked_by = %s where id = %s",
                     (admin.id, row["id"]))
    with pytest.raises(Unauthenticated, match="support access has ended"):
        _principal(token)


def test_one_round_trip_still_refuses_a_revoked_session_on_the_next_request(tenant: Tenant,
                                                                             make_person: PersonFactory) -> None:
    person = make_person(tenant.id, "VIEWER")
    _principal(person.token)
    session_id = str(verify_access_token(person.token).session_id)
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update sessions set revoked_at = now() where id = %s", (session_id,))
    with pytest.raises(Unauthenticated, match="the session has ended"):
        _principal(person.token)


def test_a_token_for_another_tenant_finds_no_user(tenant: Tenant, make_person: PersonFactory) -> None:
    """The tenant the function sets is the token's: row-level security hides the user of
    another tenant even when the user and session ids are real."""
    person = make_person(tenant.id, "VIEWER")
    claims = verify_access_token(person.token)
    forged = token_for(person.id, str(uuid.uuid4()), "VIEWER", session_id=claims.session_id)
    with pytest.raises(Unauthenticated, match="not active"):
        _principal(forged)
