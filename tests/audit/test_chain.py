"""The audit trail: appends, the verifier under attack, checkpoints, export, offline check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.audit import chain as audit
from shared.audit import checkpoints
from shared.core import db, storage
from shared.core.errors import InvalidValue
from shared.tenancy.tenant_settings import put_setting
from shared.tenancy.tenants import Tenant, create_tenant
from tests.conftest import ROOT, TokenFactory, Wire, auth

ACTOR = audit.Actor(id="u-1", name="Ada Lovelace", type="user")


def add_events(tenant_id: str, n: int) -> None:
    for i in range(n):
        with db.tenant_tx(tenant_id) as conn:
            audit.append(
                conn, tenant_id=tenant_id, actor=ACTOR, action="test.event", target_type="thing",
                target_id=str(i), before={"n": i}, after={"n": i + 1, "note": "é ✓"}, reason=f"step {i}",
                meta=audit.RequestMeta(ip="203.0.113.5", user_agent="pytest", request_id=str(uuid.uuid4())),
            )


@contextmanager
def attacker(tenant_id: str) -> Iterator[psycopg.Connection]:
    """The owner role with the append-only triggers disabled: an attacker with database rights."""
    with psycopg.connect(os.environ["DATABASE_OWNER_URL"]) as conn:
        conn.execute("alter table audit_events disable trigger user")
        conn.execute("select set_config('app.tenant_id', %s, false)", (tenant_id,))
        yield conn
        conn.execute("alter table audit_events enable trigger user")
        conn.commit()


def verify(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> dict[str, Any]:
    resp = client.get("/api/audit/verify", headers=auth(make_token(tenant.id, "VIEWER")))
    assert resp.status_code == 200, resp.text
    return resp.json()


def checkpoint_now(client: httpx.Client) -> None:
    assert client.post("/admin/functions/audit_checkpoint").status_code == 202


@pytest.fixture
def chain(tenant: Tenant) -> Tenant:
    """A tenant whose chain holds 6 events (tenant.created and 5 more)."""
    add_events(tenant.id, 5)
    return tenant


def row(conn: psycopg.Connection, seq: int) -> dict[str, Any]:
    cur = conn.execute(audit._SELECT + " where seq = %s", (seq,))
    return dict(zip(audit._COLUMNS, cur.fetchone(), strict=True))


# --- verifier ------------------------------------------------------------------------------


def test_untouched_chain_is_valid(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    result = verify(client, chain, make_token)
    assert result["valid"] is True
    assert result["events_checked"] == 6
    assert result["head"]["seq"] == 6
    assert result["first_failure"] is None
    assert set(result) == {"valid", "from_seq", "events_checked", "head", "checkpoint", "first_failure", "duration_ms"}


@pytest.mark.requirement("21CFR11.10(e)", "ALCOA+:Accurate")
def test_edited_field_is_caught(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    with attacker(chain.id) as conn:
        conn.execute("update audit_events set reason = 'nothing to see' where tenant_id = %s and seq = 3", (chain.id,))
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert result["first_failure"]["seq"] == 3
    assert "checksum" in result["first_failure"]["reason"]


def test_edited_json_whitespace_is_caught(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    with attacker(chain.id) as conn:
        conn.execute("""update audit_events set after = '{"n": 3, "note":"é ✓"}' where tenant_id = %s and seq = 4""", (chain.id,))
    assert verify(client, chain, make_token)["first_failure"]["seq"] == 4


@pytest.mark.requirement("21CFR11.10(e)", "ALCOA+:Complete")
def test_deleted_row_is_caught(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    with attacker(chain.id) as conn:
        conn.execute("delete from audit_events where tenant_id = %s and seq = 3", (chain.id,))
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert result["first_failure"] == {"seq": 3, "code": "missing_event", "reason": "missing event"}


@pytest.mark.requirement("21CFR11.10(e)", "ALCOA+:Accurate")
def test_inserted_forged_row_is_caught(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    """A well-formed forged event slipped in at seq 3: it links to 2 and its own checksum
    holds, so the first event that no longer holds is the one pushed to seq 4."""
    with attacker(chain.id) as conn:
        conn.execute("update audit_events set seq = seq + 100 where tenant_id = %s and seq >= 3", (chain.id,))
        conn.execute("update audit_events set seq = seq - 99 where tenant_id = %s and seq >= 103", (chain.id,))
        forged = row(conn, 2)
        forged.update(seq=3, action="test.forged", reason="forged", previous_checksum=forged["checksum"])
        forged["checksum"] = audit.compute_checksum(forged)
        conn.execute(
            f"insert into audit_events ({', '.join(audit._COLUMNS)}) values ({', '.join(['%s'] * len(audit._COLUMNS))})",
            [forged[c] for c in audit._COLUMNS],
        )
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert result["first_failure"]["seq"] == 4


@pytest.mark.requirement("21CFR11.10(e)", "ALCOA+:Consistent")
def test_swapped_rows_are_caught(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    with attacker(chain.id) as conn:
        conn.execute("update audit_events set seq = 1000 where tenant_id = %s and seq = 2", (chain.id,))
        conn.execute("update audit_events set seq = 2 where tenant_id = %s and seq = 3", (chain.id,))
        conn.execute("update audit_events set seq = 3 where tenant_id = %s and seq = 1000", (chain.id,))
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert result["first_failure"]["seq"] == 2


@pytest.mark.requirement("21CFR11.10(e)", "ALCOA+:Complete")
def test_cut_tail_is_caught_by_checkpoint(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    checkpoint_now(client)
    assert verify(client, chain, make_token)["checkpoint"]["seq"] == 6
    with attacker(chain.id) as conn:
        conn.execute("delete from audit_events where tenant_id = %s and seq >= 5", (chain.id,))
        conn.execute("update audit_chain_heads set seq = 4, checksum = %s where tenant_id = %s",
                     (row(conn, 4)["checksum"], chain.id))
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert result["first_failure"]["seq"] == 5
    assert "checkpoint" in result["first_failure"]["reason"]


@pytest.mark.requirement("21CFR11.10(e)")
def test_recomputed_chain_is_caught_by_checkpoint(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    checkpoint_now(client)
    with attacker(chain.id) as conn:
        conn.execute("update audit_events set reason = 'rewritten' where tenant_id = %s and seq = 2", (chain.id,))
        previous = row(conn, 1)["checksum"]
        for seq in range(2, 7):
            r = row(conn, seq)
            r["previous_checksum"] = previous
            r["checksum"] = previous = audit.compute_checksum(r)
            conn.execute("update audit_events set previous_checksum = %s, checksum = %s where tenant_id = %s and seq = %s",
                         (r["previous_checksum"], r["checksum"], chain.id, seq))
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert result["first_failure"] == {
        "seq": 6, "code": "checkpoint_mismatch", "reason": "event differs from the signed checkpoint"
    }


def test_forged_checkpoint_blob_is_caught(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    doc = {"tenant_id": chain.id, "seq": 99, "checksum": "0" * 64, "created_at": "2026-01-01T00:00:00Z",
           "key_id": checkpoints.audit_keys().signing_kid}
    doc["signature"] = ed25519.Ed25519PrivateKey.generate().sign(checkpoints.signed_payload(doc)).hex()
    blob = storage.blob_service().get_blob_client(checkpoints.CONTAINER, checkpoints.blob_name(chain.id, 99))
    blob.upload_blob(json.dumps(doc).encode())
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert "signature" in result["first_failure"]["reason"]


def test_verify_returns_no_event_content(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    body = json.dumps(verify(client, chain, make_token))
    assert "Ada Lovelace" not in body and "step" not in body


def verify_query(client: httpx.Client, tenant: Tenant, make_token: TokenFactory, query: str) -> httpx.Response:
    return client.get(f"/api/audit/verify?{query}", headers=auth(make_token(tenant.id, "VIEWER")))


def rechain(conn: psycopg.Connection, tenant_id: str, first: int, last: int) -> str:
    """What an attacker does after an edit: recompute links and checksums from `first` to `last`."""
    previous = row(conn, first - 1)["checksum"]
    for seq in range(first, last + 1):
        r = row(conn, seq)
        r["previous_checksum"] = previous
        r["checksum"] = previous = audit.compute_checksum(r)
        conn.execute("update audit_events set previous_checksum = %s, checksum = %s where tenant_id = %s and seq = %s",
                     (r["previous_checksum"], r["checksum"], tenant_id, seq))
    return previous


def test_verify_walks_from_the_newest_signed_checkpoint_unless_full(
    client: httpx.Client, chain: Tenant, make_token: TokenFactory
) -> None:
    checkpoint_now(client)
    add_events(chain.id, 3)
    incremental = verify(client, chain, make_token)
    assert incremental["valid"] is True
    assert (incremental["from_seq"], incremental["events_checked"], incremental["head"]["seq"]) == (6, 4, 9)
    full = verify_query(client, chain, make_token, "full=true").json()
    assert full["valid"] is True
    assert (full["from_seq"], full["events_checked"], full["head"]["seq"]) == (1, 9, 9)


def test_history_rewritten_under_the_checkpoint_with_its_stored_checksum_kept_is_caught(
    client: httpx.Client, chain: Tenant, make_token: TokenFactory
) -> None:
    """The attacker edits event 3, recomputes 3 to 5, points event 6 at the new 5, and leaves
    event 6's checksum column equal to the signed one. Only recomputing the checkpointed
    event from its fields (not trusting its checksum column) sees it."""
    checkpoint_now(client)
    add_events(chain.id, 2)
    with attacker(chain.id) as conn:
        conn.execute("update audit_events set reason = 'rewritten' where tenant_id = %s and seq = 3", (chain.id,))
        new_five = rechain(conn, chain.id, 3, 5)
        conn.execute("update audit_events set previous_checksum = %s where tenant_id = %s and seq = 6", (new_five, chain.id))
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert result["from_seq"] == 6
    assert result["first_failure"]["seq"] == 6
    assert result["first_failure"]["code"] == "checksum_mismatch"


def test_edit_under_the_checkpoint_not_carried_through_it_is_caught_by_full_and_nightly(
    client: httpx.Client, chain: Tenant, make_token: TokenFactory
) -> None:
    """The limit of the incremental walk, stated as a test: an edit before the checkpoint that
    is not recomputed through it leaves the checkpointed event intact; the full walk (asked
    for, or the nightly timer's) reports it."""
    checkpoint_now(client)
    with attacker(chain.id) as conn:
        conn.execute("update audit_events set reason = 'edited' where tenant_id = %s and seq = 3", (chain.id,))
    assert verify(client, chain, make_token)["valid"] is True
    full = verify_query(client, chain, make_token, "full=true").json()
    assert full["valid"] is False
    assert full["first_failure"] == {"seq": 3, "code": "checksum_mismatch",
                                     "reason": "checksum does not match the event's content"}
    assert client.post("/admin/functions/audit_verify_all").status_code == 202
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        alerts = audit.list_events(conn, action="platform.audit_chain_invalid", target_id=chain.id)
    assert alerts and alerts[-1]["after"]["first_failure"]["seq"] == 3


@pytest.mark.parametrize("query", ["full=maybe", "full=", "full=true&full=false", "everything=true"])
def test_verify_refuses_a_malformed_full_parameter(
    client: httpx.Client, chain: Tenant, make_token: TokenFactory, query: str
) -> None:
    resp = verify_query(client, chain, make_token, query)
    assert resp.status_code in (400, 422), resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")


_ATTACKS: dict[str, list[str]] = {
    "untouched": [],
    "edit": ["update audit_events set reason = 'x' where seq = 7"],
    "edit_checkpointed_event": ["update audit_events set actor_name = 'Mallory' where seq = 5"],
    "delete": ["delete from audit_events where seq = 6"],
    "delete_first": ["delete from audit_events where seq = 1"],
    "delete_checkpointed_event": ["delete from audit_events where seq = 5"],
    "cut_tail": ["delete from audit_events where seq >= 4"],
    # Runs of missing events that empty a whole piece of a parallel verify, or end one.
    "delete_run": ["delete from audit_events where seq between 2 and 5"],
    "delete_run_late": ["delete from audit_events where seq between 6 and 7"],
    "delete_first_two": ["delete from audit_events where seq between 1 and 2"],
    "delete_checkpoint_and_next": ["delete from audit_events where seq between 5 and 6"],
    "cut_all": ["delete from audit_events"],
    "broken_link": ["update audit_events set previous_checksum = repeat('a', 64) where seq = 8"],
    "genesis_link": ["update audit_events set previous_checksum = repeat('b', 64) where seq = 1"],
    "gap_then_edit": ["delete from audit_events where seq = 7", "update audit_events set reason = 'y' where seq = 8"],
    "far_seq": ["update audit_events set seq = 1000000 where seq = 9"],
    "checksum_column_only": ["update audit_events set checksum = repeat('c', 64) where seq = 6"],
    # The links and the checksums are checked in separate passes: which failure comes first.
    "edit_then_gap": ["update audit_events set reason = 'z' where seq = 3", "delete from audit_events where seq = 6"],
    "edit_and_link_on_one_event": ["update audit_events set previous_checksum = repeat('d', 64), reason = 'w' "
                                   "where seq = 4"],
    "link_then_edit": ["update audit_events set previous_checksum = repeat('e', 64) where seq = 3",
                       "update audit_events set reason = 'v' where seq = 7"],
    "edit_checkpoint_and_after": ["update audit_events set checksum = repeat('f', 64) where seq = 5",
                                  "update audit_events set reason = 'u' where seq = 8"],
}


@pytest.mark.parametrize("attack", sorted(_ATTACKS))
def test_database_verifier_reports_what_the_streaming_walk_reports(tenant: Tenant, attack: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_segment (the checks in SQL) against verify_rows (every event walked in
    Python), in full and from a checkpoint at seq 5, on the same tampered chain; and
    verify_segment in 2 and 3 pieces on sibling connections (their boundaries fall on the
    attacked events) against the one-statement walk."""
    monkeypatch.setattr(audit, "PARALLEL_MIN_EVENTS", 1)
    add_events(tenant.id, 8)
    with db.tenant_tx(tenant.id) as conn:
        at_five = conn.execute("select checksum from audit_events where seq = 5").fetchone()
    assert at_five is not None
    checkpoint = audit.CheckpointRef(seq=5, checksum=at_five["checksum"], created_at="2026-01-01T00:00:00.000000Z")
    with attacker(tenant.id) as conn:
        for statement in _ATTACKS[attack]:
            conn.execute(statement.replace(" where ", " where tenant_id = %(t)s and ") if " where " in statement
                         else statement + " where tenant_id = %(t)s", {"t": tenant.id})
    full_walk_valid = None
    for start, ref in ((1, None), (1, checkpoint), (5, checkpoint)):
        with db.tenant_tx(tenant.id) as conn:
            in_sql = audit.verify_segment(conn, tenant_id=tenant.id, checkpoint=ref, start_seq=start).as_dict()
            walked = audit.verify_rows(audit.stream_checksums(conn, from_seq=start), tenant_id=tenant.id,
                                       checkpoint=ref, start_seq=start).as_dict()
            end = conn.execute("select coalesce(max(seq), 0) as end from audit_events").fetchone()["end"]
        in_sql.pop("duration_ms"), walked.pop("duration_ms")
        if walked["head"] is None and (walked["first_failure"] or {}).get("code") == "chain_truncated":
            # A walk that met no event names where it started; the database knows where the chain ends.
            walked["first_failure"]["seq"] = end + 1
        assert in_sql == walked, (start, ref)
        for pieces in (2, 3):
            used: list[int] = []
            with db.tenant_snapshot_tx(tenant.id) as conn:

                @contextmanager
                def siblings(conn: db.Conn = conn, pieces: int = pieces, used: list[int] = used) -> Iterator[list[db.Conn]]:
                    with db.sibling_txs(conn, tenant.id, pieces - 1) as given:
                        used.append(len(given))
                        yield given

                in_pieces = audit.verify_segment(conn, tenant_id=tenant.id, checkpoint=ref, start_seq=start,
                                                 siblings=siblings).as_dict()
            in_pieces.pop("duration_ms")
            assert in_pieces == in_sql, (start, ref, pieces)
            assert used in ([pieces - 1], []), used  # cut in pieces whenever there was an event to walk
        if start == 1 and ref is not None:
            full_walk_valid = walked["valid"]
    assert full_walk_valid is (attack == "untouched")


def test_a_full_verify_of_a_long_chain_walks_it_in_pieces_on_one_snapshot(tenant: Tenant,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_tenant cuts a long segment in pieces on sibling connections (here any segment is
    long) and finds what the one-statement walk finds: nothing on a sound chain, the first of
    two edits on a tampered one."""
    add_events(tenant.id, 12)
    expected = {}
    for long_from in (10**9, 1):  # first the one-statement walk, then pieces
        monkeypatch.setattr(audit, "PARALLEL_MIN_EVENTS", long_from)
        expected.setdefault("sound", audit.verify_tenant(tenant.id, None, full=True).as_dict())
        sound = audit.verify_tenant(tenant.id, None, full=True).as_dict()
        assert sound["valid"] and sound["events_checked"] == sound["head"]["seq"] >= 12
        sound.pop("duration_ms"), expected["sound"].pop("duration_ms", None)
        assert sound == expected["sound"]
    with attacker(tenant.id) as conn:
        conn.execute("update audit_events set reason = 'x' where tenant_id = %s and seq in (9, 4)", (tenant.id,))
    for long_from in (10**9, 1):
        monkeypatch.setattr(audit, "PARALLEL_MIN_EVENTS", long_from)
        tampered = audit.verify_tenant(tenant.id, None, full=True).as_dict()
        assert not tampered["valid"] and tampered["first_failure"]["seq"] == 4, tampered
        assert tampered["first_failure"]["code"] == "checksum_mismatch" and tampered["events_checked"] == 3


# --- append-only and transactions -------------------------------------------------------------


@pytest.mark.requirement("21CFR11.10(e)", "ALCOA+:Enduring")
def test_app_role_cannot_update_delete_or_truncate(chain: Tenant) -> None:
    for statement in ("update audit_events set reason = 'x'", "delete from audit_events", "truncate audit_events"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with db.tenant_tx(chain.id) as conn:
                conn.execute(statement)


def test_triggers_refuse_the_owner_too(chain: Tenant) -> None:
    with psycopg.connect(os.environ["DATABASE_OWNER_URL"]) as conn:
        for statement in ("update audit_events set reason = 'x'", "delete from audit_events", "truncate audit_events"):
            conn.execute("select set_config('app.tenant_id', %s, false)", (chain.id,))
            assert conn.execute("select count(*) from audit_events").fetchone() == (6,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
            conn.rollback()


def test_owner_may_delete_only_when_it_names_purge_or_retention(chain: Tenant) -> None:
    """The one door the purge and the retention cut use; a wrong or missing name, UPDATE and
    TRUNCATE stay refused, and the app role cannot use the door at all."""
    with psycopg.connect(os.environ["DATABASE_OWNER_URL"]) as conn:
        for name in ("", "other", "PURGE"):
            conn.execute("select set_config('app.tenant_id', %s, true)", (chain.id,))
            conn.execute("select set_config('custos.audit_delete', %s, true)", (name,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute("delete from audit_events where seq = 6")
            conn.rollback()
        conn.execute("select set_config('app.tenant_id', %s, true)", (chain.id,))
        conn.execute("select set_config('custos.audit_delete', 'retention', true)")
        for statement in ("update audit_events set reason = 'x'", "truncate audit_events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
            conn.rollback()
            conn.execute("select set_config('app.tenant_id', %s, true)", (chain.id,))
            conn.execute("select set_config('custos.audit_delete', 'retention', true)")
        assert conn.execute("delete from audit_events where seq = 6").rowcount == 1
        conn.rollback()  # the chain stays whole for the other tests
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with db.tenant_tx(chain.id) as app:
            app.execute("select set_config('custos.audit_delete', 'purge', true)")
            app.execute("delete from audit_events where seq = 6")


def test_failing_change_rolls_back_its_event(chain: Tenant) -> None:
    with pytest.raises(RuntimeError):
        with db.tenant_tx(chain.id) as conn:
            audit.append(conn, tenant_id=chain.id, actor=ACTOR, action="test.doomed")
            raise RuntimeError("the change failed")
    with db.tenant_tx(chain.id) as conn:
        assert audit.list_events(conn, action="test.doomed") == []
        assert conn.execute("select seq from audit_chain_heads").fetchone()["seq"] == 6


def test_failing_append_rolls_back_the_change(chain: Tenant) -> None:
    with pytest.raises(InvalidValue) as err:
        with db.tenant_tx(chain.id) as conn:
            put_setting(conn, tenant_id=chain.id, key="sessions.max_idle_minutes", value=30, actor_id=None)
            audit.append(conn, tenant_id=chain.id, actor=ACTOR, action="Not A Valid Action")
    assert isinstance(err.value.__cause__, psycopg.errors.CheckViolation)
    with db.tenant_tx(chain.id) as conn:
        assert conn.execute("select count(*) as n from tenant_settings").fetchone()["n"] == 0


def test_cannot_append_to_another_tenants_chain(chain: Tenant, tenant: Tenant) -> None:
    other = str(uuid.uuid4())
    with pytest.raises((psycopg.errors.InsufficientPrivilege, RuntimeError)):
        with db.tenant_tx(chain.id) as conn:
            audit.append(conn, tenant_id=other, actor=ACTOR, action="test.cross")


@pytest.mark.requirement("ALCOA+:Consistent")
def test_sixteen_concurrent_writers_make_a_gapless_valid_chain(tenant: Tenant) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            add_events(tenant.id, 10)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = audit.verify_tenant(tenant.id, None)
    assert result.valid, result.first_failure
    assert result.events_checked == 161


# --- canonical form -----------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)


def offline_parse(text: str | None) -> Any:
    sys.path.insert(0, str(ROOT / "tools"))
    import verify_audit_export as offline

    return None if text is None else json.loads(text, parse_int=offline.parse_int)


@settings(max_examples=300, deadline=None)
@given(fields=st.fixed_dictionaries({name: st.one_of(st.none(), _text) for name in audit.FIELDS}),
       seq=st.integers(1, 2**40), before=_json, after=_json)
def test_fast_canonical_form_equals_rfc8785(fields: dict, seq: int, before: Any, after: Any) -> None:
    fields.update(seq=seq, before=audit.canonical_json(before), after=audit.canonical_json(after))
    parsed = {**fields, "before": offline_parse(fields["before"]), "after": offline_parse(fields["after"])}
    assert audit.canonical_bytes(fields) == rfc8785.dumps(parsed)


def test_checksum_known_answer() -> None:
    row = {name: None for name in audit.FIELDS}
    row.update(seq=1, tenant_id="00000000-0000-0000-0000-000000000001", action="tenant.created",
               actor_name="Custos", actor_type="system", app_version="1", previous_checksum=audit.GENESIS,
               occurred_at="2026-01-01T00:00:00.000000Z", after='{"a":1}')
    expected = ('{"action":"tenant.created","actor_id":null,"actor_name":"Custos","actor_type":"system",'
                '"after":{"a":1},"app_version":"1","before":null,"ip":null,"occurred_at":"2026-01-01T00:00:00.000000Z",'
                f'"previous_checksum":"{audit.GENESIS}","reason":null,"request_id":null,"seq":1,"session_id":null,'
                '"target_id":null,"target_type":null,"tenant_id":"00000000-0000-0000-0000-000000000001","user_agent":null}')
    assert audit.canonical_bytes(row) == expected.encode()
    import hashlib
    assert audit.compute_checksum(row) == hashlib.sha256(expected.encode()).hexdigest()


# --- API ------------------------------------------------------------------------------------


@pytest.mark.requirement("21CFR11.10(e)", "ALCOA+:Attributable")
def test_setting_change_is_audited_with_old_and_new(client: httpx.Client, tenant: Tenant, make_token: TokenFactory) -> None:
    token = make_token(tenant.id, "ADMIN", name="Grace Hopper")
    url = "/api/tenant/settings/sessions.max_idle_minutes"
    client.put(url, json={"value": 30, "reason": "first"}, headers=auth(token))
    client.put(url, json={"value": 60, "reason": "longer shifts"}, headers={**auth(token), "User-Agent": "ua/1"})
    resp = client.get("/api/audit", params={"action": "tenant.setting_changed"}, headers=auth(token))
    assert resp.status_code == 200
    events = resp.json()["events"]
    assert [(e["before"], e["after"], e["reason"]) for e in events] == [(None, 30, "first"), (30, 60, "longer shifts")]
    last = events[-1]
    assert last["actor_name"] == "Grace Hopper" and last["user_agent"] == "ua/1" and last["ip"] == "127.0.0.1"
    assert last["request_id"] and last["session_id"]


def test_audit_list_paginates_and_filters(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    token = make_token(chain.id, "MANAGER")
    page1 = client.get("/api/audit", params={"limit": 4}, headers=auth(token)).json()
    assert [e["seq"] for e in page1["events"]] == [1, 2, 3, 4]
    page2 = client.get("/api/audit", params={"limit": 4, "after": page1["next"]}, headers=auth(token)).json()
    assert [e["seq"] for e in page2["events"]] == [5, 6] and page2["next"] is None
    only = client.get("/api/audit", params={"target_type": "thing", "target_id": "2"}, headers=auth(token)).json()
    assert [e["seq"] for e in only["events"]] == [4]
    bad = client.get("/api/audit", params={"since": "yesterday"}, headers=auth(token))
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"


def test_audit_list_needs_permission(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    assert client.get("/api/audit", headers=auth(make_token(chain.id, "VIEWER"))).status_code == 403


@pytest.mark.requirement("21CFR11.10(d)")
def test_audit_is_tenant_isolated(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    events = client.get("/api/audit", headers=auth(make_token(other.id))).json()["events"]
    assert [(e["tenant_id"], e["action"]) for e in events] == [(other.id, "tenant.created")]
    assert all(e["action"] != "test.event" for e in events)


def test_operator_verifies_any_tenant(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    op = make_token(None, "PLATFORM_OPERATOR")
    resp = client.get(f"/api/platform/tenants/{chain.id}/audit/verify", headers=auth(op))
    assert resp.status_code == 200 and resp.json()["valid"] is True
    assert client.get(f"/api/platform/tenants/{uuid.uuid4()}/audit/verify", headers=auth(op)).status_code == 404
    assert client.get("/api/platform/tenants/not-a-uuid/audit/verify", headers=auth(op)).status_code == 404
    tenant_admin = make_token(chain.id, "ADMIN")
    assert client.get(f"/api/platform/tenants/{chain.id}/audit/verify", headers=auth(tenant_admin)).status_code == 403
    assert client.get("/api/audit", headers=auth(op)).status_code == 403


def test_nightly_verify_raises_a_platform_alert(client: httpx.Client, chain: Tenant) -> None:
    with attacker(chain.id) as conn:
        conn.execute("update audit_events set reason = 'x' where tenant_id = %s and seq = 2", (chain.id,))
    assert client.post("/admin/functions/audit_verify_all").status_code == 202
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        alerts = audit.list_events(conn, action="platform.audit_chain_invalid", target_id=chain.id)
    assert alerts and alerts[-1]["after"]["first_failure"]["seq"] == 2


# --- export and offline verification -------------------------------------------------------------


def _export(client: httpx.Client, tenant: Tenant, make_token: TokenFactory, tmp_path) -> tuple[Any, Any]:
    resp = client.get("/api/audit/export", headers=auth(make_token(tenant.id, "ADMIN")))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/jsonl")
    export = tmp_path / "export.jsonl"
    export.write_bytes(resp.content)
    keys = tmp_path / "keys.json"
    keys.write_text(client.get("/.well-known/audit-keys.json").text)
    return export, keys


def _offline(export: Any, keys: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "verify_audit_export.py"), str(export), "--keys", str(keys)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.requirement("21CFR11.10(b)", "ALCOA+:Legible", "ALCOA+:Available")
def test_offline_verifier_accepts_a_real_export(client: httpx.Client, chain: Tenant, make_token: TokenFactory, tmp_path) -> None:
    checkpoint_now(client)
    export, keys = _export(client, chain, make_token, tmp_path)
    out = _offline(export, keys)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    # six events, and the export itself recorded as the seventh before the export was taken
    assert summary["valid"] is True and summary["events"] == 7 and summary["checkpoints"] == 1


@pytest.mark.requirement("21CFR11.10(b)")
def test_offline_verifier_rejects_a_tampered_export(client: httpx.Client, chain: Tenant, make_token: TokenFactory, tmp_path) -> None:
    checkpoint_now(client)
    export, keys = _export(client, chain, make_token, tmp_path)
    lines = export.read_text().splitlines()
    event = json.loads(lines[3])
    event["after"]["n"] = 999
    lines[3] = json.dumps(event)
    export.write_text("\n".join(lines) + "\n")
    out = _offline(export, keys)
    assert out.returncode == 1
    assert json.loads(out.stdout)["first_failure"]["seq"] == 3


def test_offline_verifier_rejects_a_recomputed_export(client: httpx.Client, chain: Tenant, make_token: TokenFactory, tmp_path) -> None:
    """Recomputing every checksum in the file still disagrees with the signed checkpoint."""
    sys.path.insert(0, str(ROOT / "tools"))
    import verify_audit_export as offline

    checkpoint_now(client)
    export, keys = _export(client, chain, make_token, tmp_path)
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    previous = audit.GENESIS
    for line in lines:
        if line["type"] == "event":
            if line["seq"] == 2:
                line["reason"] = "rewritten"
            line["previous_checksum"] = previous
            line["checksum"] = previous = offline.checksum(line)
    export.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = _offline(export, keys)
    assert out.returncode == 1
    assert "checkpoint" in json.loads(out.stdout)["first_failure"]["reason"]


def test_offline_ed25519_known_answer() -> None:
    """RFC 8032 section 7.1, test 1 (empty message)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import verify_audit_export as offline

    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signature = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert offline.ed25519_verify(public, b"", signature)
    assert not offline.ed25519_verify(public, b"x", signature)


_pg_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({
    "action": _pg_text, "actor_id": st.none() | _pg_text, "actor_name": _pg_text, "actor_type": _pg_text,
    "ip": st.none() | _pg_text, "reason": st.none() | _pg_text, "request_id": st.none() | _pg_text,
    "session_id": st.none() | _pg_text, "target_id": st.none() | _pg_text, "target_type": st.none() | _pg_text,
    "user_agent": st.none() | _pg_text, "app_version": _pg_text, "previous_checksum": _pg_text,
    "seq": st.integers(1, 2**62), "before": st.none() | _json, "after": st.none() | _json,
}), min_size=1, max_size=5))
def test_database_canonical_form_equals_the_python_one(rows: list[dict]) -> None:
    """The verifier's fast path (PostgreSQL builds and hashes the canonical JSON) must be
    byte-identical to canonical_bytes, or a sound chain would read as tampered."""
    with psycopg.connect(os.environ["DATABASE_OWNER_URL"]) as conn:
        conn.execute("create temp table t (like audit_events) on commit drop")
        for r in rows:
            r = {**r, "tenant_id": str(uuid.uuid4()), "occurred_at": "2026-01-02T03:04:05.123456Z", "checksum": "0" * 64,
                 "before": audit.canonical_json(r["before"]), "after": audit.canonical_json(r["after"])}
            conn.execute(
                f"insert into t ({', '.join(audit._COLUMNS)}) values ({', '.join(['%s'] * len(audit._COLUMNS))})",
                [r[c] for c in audit._COLUMNS],
            )
            text, digest = conn.execute(
                f"select convert_to({audit._SQL_CANONICAL}, 'UTF8'), {audit.SQL_CHECKSUM} from t where seq = %s and tenant_id = %s",
                (r["seq"], r["tenant_id"]),
            ).fetchone()
            assert bytes(text) == audit.canonical_bytes(r)
            assert digest == audit.compute_checksum(r)


@pytest.mark.requirement("ALCOA+:Contemporaneous", "21CFR11.10(e)")
def test_event_time_is_the_database_clock_at_the_append_not_the_callers(tenant: Tenant) -> None:
    from datetime import datetime

    with db.tenant_tx(tenant.id) as conn:
        before = conn.execute("select clock_timestamp() as t").fetchone()["t"]
        appended = audit.append(conn, tenant_id=tenant.id, actor=audit.Actor(id=None, name="clock test", type="system"),
                                action="test.clock", after={"occurred_at": "1999-01-01T00:00:00Z"})
        after = conn.execute("select clock_timestamp() as t").fetchone()["t"]
        stored = conn.execute("select occurred_at from audit_events where seq = %s", (appended.seq,)).fetchone()
    stamped = datetime.fromisoformat(appended.occurred_at)
    assert before <= stamped <= after and stored["occurred_at"] == stamped


def test_an_append_to_an_existing_chain_is_one_round_trip(tenant: Tenant, wire: Wire) -> None:
    add_events(tenant.id, 1)  # the chain head exists from here on
    with db.tenant_tx(tenant.id) as conn:
        wire.clear()
        appended = audit.append(conn, tenant_id=tenant.id, actor=audit.SYSTEM, action="test.counted",
                                after={"n": 1}, meta=audit.RequestMeta(request_id="r-1"))
        assert len(wire.round_trips()) == 1, wire.round_trips()
        [row] = audit.list_events(conn, after_seq=appended.seq - 1, limit=1)
    assert (row["seq"], row["checksum"], row["occurred_at"]) == (appended.seq, appended.checksum, appended.occurred_at)
    assert audit.verify_tenant(tenant.id, None).valid


@settings(max_examples=40, deadline=None)
@given(texts=st.fixed_dictionaries({name: st.one_of(st.none(), _text) for name in
                                    ("target_type", "target_id", "reason", "ip", "user_agent", "session_id",
                                     "request_id")}),
       name=_text.filter(bool), before=_json, after=_json)
def test_the_database_computed_checksum_of_an_append_is_the_python_one(
        texts: dict, name: str, before: Any, after: Any) -> None:
    """The one-statement append checksums the event in PostgreSQL: for any text (quotes,
    backslashes, controls, any plane) it is the checksum of canonical_bytes, so the offline
    verifier and the streaming walk agree with it."""
    with db.platform_tx() as conn:
        tenant = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Canonical", region="uksouth")
    add_events(tenant.id, 1)
    with db.tenant_tx(tenant.id) as conn:
        appended = audit.append(conn, tenant_id=tenant.id, actor=audit.Actor(id=name, name=name),
                                action="test.canonical", before=before, after=after,
                                meta=audit.RequestMeta(texts["ip"], texts["user_agent"], texts["session_id"],
                                                       texts["request_id"]),
                                target_type=texts["target_type"], target_id=texts["target_id"], reason=texts["reason"])
        rows = list(audit.stream_rows(conn))
    assert rows[-1]["seq"] == appended.seq
    assert audit.compute_checksum(rows[-1]) == rows[-1]["checksum"] == appended.checksum
    assert audit.verify_tenant_streaming(tenant.id, None).valid


def _count(tenant_id: str) -> int:
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute("select count(*) as n from audit_events").fetchone()
    assert row is not None
    return int(row["n"])


def test_an_append_that_commits_starts_a_chain_and_commits_in_its_one_round_trip(wire: Wire) -> None:
    chain = str(uuid.uuid4())  # a chain with no head yet (a new tenant's creation starts its own)
    for n in (1, 2):
        with db.tenant_tx(chain) as conn:
            wire.clear()
            appended = audit.append(conn, tenant_id=chain, actor=audit.SYSTEM, action="test.committed",
                                    after={"n": n}, commit=True)
            assert len(wire.round_trips()) == 1, wire.round_trips()
        assert appended.seq == n
    assert _count(chain) == 2
    assert audit.verify_tenant(chain, None).valid
    assert audit.verify_tenant_streaming(chain, None).valid


def test_an_append_that_commits_and_fails_commits_nothing_of_its_transaction(tenant: Tenant) -> None:
    add_events(tenant.id, 1)
    before = _count(tenant.id)
    with pytest.raises(InvalidValue), db.tenant_tx(tenant.id) as conn:
        audit.append(conn, tenant_id=tenant.id, actor=audit.SYSTEM, action="test.kept_only_if_all_commit")
        audit.append(conn, tenant_id=tenant.id, actor=audit.SYSTEM, action="Not An Action", commit=True)
    assert _count(tenant.id) == before
    assert audit.verify_tenant(tenant.id, None).valid


def test_concurrent_appends_that_commit_make_a_gapless_valid_chain() -> None:
    with db.platform_tx() as conn:
        tenant = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Race", region="uksouth")
    add_events(tenant.id, 1)
    first = _count(tenant.id)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(10):
                with db.tenant_tx(tenant.id) as conn:
                    audit.append(conn, tenant_id=tenant.id, actor=audit.SYSTEM, action="test.raced", commit=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = audit.verify_tenant(tenant.id, None)
    assert result.valid, result.first_failure
    assert result.events_checked == first + 80
