"""Guards: authentication costs one database round trip, for every kind of caller.

Round trips are counted on the wire (`tests.conftest.wire`).
"""

from __future__ import annotations

import uuid

import pytest

from shared.audit import chain as audit
from shared.core import db
from shared.core.errors import Unauthenticated
from shared.identity.guards import Principal, principal_for, principal_in_tenant_tx
from shared.identity.tokens import verify_access_token
from shared.tenancy.tenants import Tenant
from tests.conftest import PersonFactory, Wire, token_for


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


def _in_tx(token: str) -> tuple[Principal, db.Conn | None]:
    return principal_in_tenant_tx(verify_access_token(token), audit.RequestMeta())


def test_a_tenant_user_and_their_request_transaction_share_one_round_trip(tenant: Tenant, make_person: PersonFactory,
                                                                         wire: Wire) -> None:
    person = make_person(tenant.id, "ADMIN")
    _principal(person.token)  # the session was just touched: no touch is due below
    wire.clear()
    principal, conn = _in_tx(person.token)
    assert conn is not None
    with db.held_tx(conn) as c:
        assert principal.user_id == person.id
        assert len(wire.round_trips()) == 1, wire.round_trips()
        row = c.execute("select current_setting('app.tenant_id') as tid, (select count(*) from users) as n").fetchone()
        assert row is not None and row["tid"] == tenant.id and row["n"] >= 1
    # the transaction's own statement and its commit: three waits in all, where a separate
    # authentication and transaction took four
    assert len(wire.round_trips()) == 3, wire.round_trips()


def test_a_session_due_for_its_touch_is_touched_and_holds_no_transaction(tenant: Tenant,
                                                                         make_person: PersonFactory) -> None:
    person = make_person(tenant.id, "VIEWER")
    session_id = str(verify_access_token(person.token).session_id)
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update sessions set last_seen_at = now() - interval '5 minutes' where id = %s", (session_id,))
    principal, conn = _in_tx(person.token)
    assert principal.user_id == person.id and conn is None
    with db.tenant_tx(tenant.id) as c:
        row = c.execute("select last_seen_at > now() - interval '1 minute' as fresh from sessions where id = %s",
                        (session_id,)).fetchone()
    assert row is not None and row["fresh"]


def test_refused_callers_give_back_every_transaction_opened_for_them(tenant: Tenant,
                                                                     make_person: PersonFactory) -> None:
    """A revoked session and a token forged for another tenant are refused as by
    `principal_for`, more times than the pool has connections: none is kept."""
    revoked, victim = (make_person(tenant.id, "VIEWER") for _ in range(2))
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update sessions set revoked_at = now() where id = %s",
                     (str(verify_access_token(revoked.token).session_id),))
    claims = verify_access_token(victim.token)
    forged = token_for(victim.id, str(uuid.uuid4()), "VIEWER", session_id=claims.session_id)
    for _ in range(db.pool().max_size + 1):
        with pytest.raises(Unauthenticated, match="the session has ended"):
            _in_tx(revoked.token)
        with pytest.raises(Unauthenticated, match="not active"):
            _in_tx(forged)
    stats = db.pool().get_stats()
    assert stats.get("pool_size", 0) - stats.get("pool_available", 0) == 0, stats
    principal, conn = _in_tx(victim.token)
    assert principal.user_id == victim.id
    if conn is not None:
        db.release(conn)
