"""Signed checkpoints under attack: what has been checkpointed is read from signed blobs, never
from a table a database attacker can write; checkpoints that stop are reported as stale."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from croniter import croniter
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from shared.audit import chain as audit
from shared.audit import checkpoints
from shared.core import db, storage
from shared.core.ncrontab import longest_gap_s
from shared.core.settings import SettingsError, load_settings
from shared.tenancy.tenants import Tenant, create_tenant
from tests.audit.test_chain import add_events, checkpoint_now, verify
from tests.conftest import TokenFactory, auth


@contextmanager
def superuser() -> Iterator[psycopg.Connection]:
    """A database superuser: bypasses row-level security and may disable the audit triggers."""
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"]) as conn:
        yield conn


@pytest.fixture
def chain(tenant: Tenant) -> Tenant:
    """A tenant whose chain holds 6 events (tenant.created and 5 more)."""
    add_events(tenant.id, 5)
    return tenant


def fake_up_to_date(tenant_id: str) -> None:
    """What an attacker writes to make the old timer believe the tenant is checkpointed."""
    with superuser() as conn:
        conn.execute(
            "insert into audit_checkpoint_log (tenant_id, seq, checksum) values (%s, %s, %s)",
            (tenant_id, 10**12, "f" * 64),
        )


def cut_tail(tenant_id: str, from_seq: int) -> None:
    with superuser() as conn:
        conn.execute("alter table audit_events disable trigger user")
        conn.execute("delete from audit_events where tenant_id = %s and seq >= %s", (tenant_id, from_seq))
        conn.execute("alter table audit_events enable trigger user")
        conn.execute(
            "update audit_chain_heads h set seq = e.seq, checksum = e.checksum from audit_events e"
            " where h.tenant_id = %s and e.tenant_id = h.tenant_id and e.seq = %s",
            (tenant_id, from_seq - 1),
        )


def event(tenant_id: str, seq: int) -> dict[str, Any]:
    with superuser() as conn:
        cur = conn.execute(
            "select seq, checksum, occurred_at from audit_events where tenant_id = %s and seq = %s", (tenant_id, seq)
        )
        row = cur.fetchone()
    assert row is not None
    return {"seq": row[0], "checksum": row[1], "occurred_at": row[2]}


def signed_checkpoints(client: httpx.Client, tenant_id: str) -> list[dict[str, Any]]:
    """Every checkpoint blob of the tenant whose Ed25519 signature verifies with the published keys."""
    keys = {}
    for jwk in client.get("/.well-known/audit-keys.json").json()["keys"]:
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        keys[jwk["kid"]] = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    container = storage.blob_service().get_container_client(checkpoints.CONTAINER)
    good = []
    for item in container.list_blobs(name_starts_with=f"{tenant_id}/"):
        doc = json.loads(container.download_blob(item.name).readall())
        key = keys.get(doc.get("key_id"))
        if key is None or not isinstance(doc.get("signature"), str):
            continue
        sig = base64.urlsafe_b64decode(doc["signature"] + "=" * (-len(doc["signature"]) % 4))
        with contextlib.suppress(InvalidSignature):
            key.verify(sig, checkpoints.signed_payload(doc))
            if doc["tenant_id"] == tenant_id:
                good.append(doc)
    return sorted(good, key=lambda d: d["seq"])


def plant(tenant_id: str, seq: int, doc: dict[str, Any]) -> None:
    """An attacker with write access to the checkpoint container (Azurite has no WORM)."""
    blob = storage.blob_service().get_blob_client(checkpoints.CONTAINER, checkpoints.blob_name(tenant_id, seq))
    blob.upload_blob(json.dumps(doc).encode(), overwrite=True)


# --- the schedule's interval ------------------------------------------------------------------


def croniter_longest_gap(expression: str, start: datetime, span: timedelta) -> int:
    it = croniter(expression, start, second_at_beginning=True)
    previous, longest = it.get_next(datetime), 0
    while previous < start + span:
        current = it.get_next(datetime)
        longest = max(longest, int((current - previous).total_seconds()))
        previous = current
    return longest


@pytest.mark.parametrize(
    ("expression", "span"),
    [
        ("0 */5 * * * *", timedelta(days=2)),
        ("*/30 * * * * *", timedelta(hours=3)),
        ("0 5/20 * * * *", timedelta(days=2)),
        ("0 0,30 1-3 * * *", timedelta(days=3)),
        ("0 30 2 * * *", timedelta(days=5)),
        ("0 0 9-17 * * MON-FRI", timedelta(weeks=3)),
        ("0 0 0 1 1 *", timedelta(days=366 * 5)),
        ("0 0 6 * * 7", timedelta(weeks=4)),
    ],
)
def test_checkpoint_interval_is_the_longest_gap_of_the_schedule(expression: str, span: timedelta) -> None:
    """Checked against croniter, an independent implementation (dev-only, hence our own parser)."""
    assert longest_gap_s(expression) == croniter_longest_gap(expression, datetime(2025, 12, 29), span)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 */5 * * *", "six fields"),
        ("0 61 * * * *", "outside"),
        ("0 5-1 * * * *", "reversed"),
        ("0 */0 * * * *", "step"),
        ("0 0 0 30 2 *", "never fires"),
        ("0 x * * * *", "not a number"),
    ],
)
def test_malformed_checkpoint_schedule_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, expression: str, message: str
) -> None:
    monkeypatch.setenv("AUDIT_CHECKPOINT_SCHEDULE", expression)
    with pytest.raises(SettingsError, match="AUDIT_CHECKPOINT_SCHEDULE|audit_checkpoint_schedule") as info:
        load_settings()
    assert message in str(info.value)


def test_production_refuses_checkpoints_less_often_than_daily(monkeypatch: pytest.MonkeyPatch) -> None:
    def pem(key: Any) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    monkeypatch.setenv("CUSTOS_ENV", "production")
    monkeypatch.setenv("CUSTOS_FUNCTION_GROUPS", "api")  # production runs one group per app
    monkeypatch.setenv("JWT_SIGNING_KEY", pem(ec.generate_private_key(ec.SECP256R1())))
    monkeypatch.setenv("AUDIT_SIGNING_KEY", pem(ed25519.Ed25519PrivateKey.generate()))
    monkeypatch.setenv("MFA_ENCRYPTION_KEY", base64.b64encode(bytes(32)).decode())
    monkeypatch.setenv("WEBAUTHN_RP_ID", "custos.example")
    monkeypatch.setenv("WEBAUTHN_ORIGINS", "https://app.custos.example")
    monkeypatch.setenv("STORAGE_CONNECTION_STRING", "")  # production: identity only
    monkeypatch.setenv("STORAGE_ACCOUNT_NAME", "custosprod")
    monkeypatch.setenv("DATABASE_AUTH", "entra")
    monkeypatch.setenv("DATABASE_URL", "postgresql://custos-id@custos.postgres.database.azure.com/custos")
    monkeypatch.setenv("DATABASE_OWNER_URL", "")
    monkeypatch.setenv("AUDIT_CHECKPOINT_SCHEDULE", "0 0 0 * * *")
    monkeypatch.setenv("RATE_LIMIT_KEY", base64.b64encode(bytes(32)).decode())
    assert load_settings().audit_checkpoint_interval_s == 86_400
    monkeypatch.setenv("AUDIT_CHECKPOINT_SCHEDULE", "0 0 0 * * MON")
    with pytest.raises(SettingsError, match="at least once a day"):
        load_settings()


# --- (a) the timer cannot be told a tenant is up to date ----------------------------------------


def test_fake_checkpoint_log_row_does_not_stop_the_timer(client: httpx.Client, chain: Tenant) -> None:
    fake_up_to_date(chain.id)
    checkpoint_now(client)
    docs = signed_checkpoints(client, chain.id)
    assert [(d["seq"], d["checksum"]) for d in docs] == [(6, event(chain.id, 6)["checksum"])]


def test_timer_writes_only_when_the_head_moved_past_the_signed_checkpoint(client: httpx.Client, chain: Tenant) -> None:
    checkpoint_now(client)
    checkpoint_now(client)
    assert [d["seq"] for d in signed_checkpoints(client, chain.id)] == [6]
    add_events(chain.id, 2)
    checkpoint_now(client)
    assert [d["seq"] for d in signed_checkpoints(client, chain.id)] == [6, 8]
    assert checkpoints.newest_signed(chain.id).ref == audit.CheckpointRef(
        seq=8, checksum=event(chain.id, 8)["checksum"], created_at=signed_checkpoints(client, chain.id)[-1]["created_at"]
    )


# --- (b) stop checkpoints, then cut the tail ----------------------------------------------------


def test_stopped_checkpoints_then_cut_tail_is_caught(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    checkpoint_now(client)
    fake_up_to_date(chain.id)
    add_events(chain.id, 4)
    checkpoint_now(client)
    cut_tail(chain.id, 8)
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert result["first_failure"]["code"] == "chain_truncated"
    assert result["first_failure"]["seq"] == 8


def test_timer_does_not_sign_over_a_rewritten_chain(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    """Rewrite signed history, let the app append on top, and ask the timer to bless it."""
    checkpoint_now(client)
    with superuser() as conn:
        conn.execute("alter table audit_events disable trigger user")
        conn.execute("update audit_events set reason = 'rewritten' where tenant_id = %s and seq = 6", (chain.id,))
        conn.execute("alter table audit_events enable trigger user")
    add_events(chain.id, 2)
    checkpoint_now(client)
    assert [d["seq"] for d in signed_checkpoints(client, chain.id)] == [6]
    result = verify(client, chain, make_token)
    assert result["valid"] is False and result["first_failure"]["seq"] == 6


# --- (c) checkpoints that stop are stale ------------------------------------------------------


def test_uncovered_events_older_than_two_intervals_are_checkpoint_stale(chain: Tenant) -> None:
    allowed = checkpoints.STALE_INTERVALS * checkpoints.checkpoint_interval()
    first = event(chain.id, 1)["occurred_at"]
    assert checkpoints.verify_tenant(chain.id, now=first + allowed - timedelta(seconds=1)).valid
    result = checkpoints.verify_tenant(chain.id, now=first + allowed + timedelta(seconds=1))
    assert result.valid is False
    assert result.first_failure is not None
    assert result.first_failure["code"] == "checkpoint_stale" and result.first_failure["seq"] == 1
    assert result.events_checked == 6


def test_staleness_counts_from_the_oldest_event_after_the_signed_checkpoint(client: httpx.Client, chain: Tenant) -> None:
    checkpoint_now(client)
    allowed = checkpoints.STALE_INTERVALS * checkpoints.checkpoint_interval()
    far = event(chain.id, 6)["occurred_at"] + allowed * 10
    assert checkpoints.verify_tenant(chain.id, now=far).valid
    add_events(chain.id, 1)
    seventh = event(chain.id, 7)["occurred_at"]
    assert checkpoints.verify_tenant(chain.id, now=seventh + allowed - timedelta(seconds=1)).valid
    stale = checkpoints.verify_tenant(chain.id, now=seventh + allowed + timedelta(seconds=1))
    assert stale.first_failure is not None
    assert (stale.first_failure["code"], stale.first_failure["seq"]) == ("checkpoint_stale", 7)


def test_nightly_verify_raises_a_stale_checkpoint_alert(chain: Tenant) -> None:
    allowed = checkpoints.STALE_INTERVALS * checkpoints.checkpoint_interval()
    later = event(chain.id, 1)["occurred_at"] + allowed + timedelta(seconds=1)
    results = dict(checkpoints.verify_all(now=later))
    assert results[chain.id].valid is False
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        alerts = audit.list_events(conn, action="platform.audit_checkpoint_stale", target_id=chain.id)
    assert len(alerts) == 1
    assert alerts[0]["after"]["first_failure"]["code"] == "checkpoint_stale"
    assert alerts[0]["actor_type"] == "timer"


# --- (d) forged checkpoints are not trusted --------------------------------------------------------


def test_forged_newest_checkpoint_does_not_stop_the_timer(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    fake_up_to_date(chain.id)
    forged = {"tenant_id": chain.id, "seq": 10**9, "checksum": "0" * 64, "created_at": "2026-01-01T00:00:00.000000Z",
              "key_id": checkpoints.audit_keys().signing_kid}
    forged["signature"] = base64.urlsafe_b64encode(
        ed25519.Ed25519PrivateKey.generate().sign(checkpoints.signed_payload(forged))
    ).rstrip(b"=").decode()
    plant(chain.id, 10**9, forged)
    checkpoint_now(client)
    assert [d["seq"] for d in signed_checkpoints(client, chain.id)] == [6]
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert result["first_failure"]["code"] == "checkpoint_invalid"
    assert "signature" in result["first_failure"]["reason"]


def test_unsigned_newest_checkpoint_is_rejected(client: httpx.Client, chain: Tenant, make_token: TokenFactory) -> None:
    checkpoint_now(client)
    plant(chain.id, 10**9, {"tenant_id": chain.id, "seq": 10**9, "checksum": "0" * 64})
    result = verify(client, chain, make_token)
    assert result["valid"] is False and result["first_failure"]["code"] == "checkpoint_invalid"
    newest = checkpoints.newest_signed(chain.id)
    assert newest.ref is not None and newest.ref.seq == 6
    assert [r["seq"] for r in newest.rejected] == [10**9]


def test_another_tenants_signed_checkpoint_is_not_this_tenants(
    client: httpx.Client, chain: Tenant, make_token: TokenFactory
) -> None:
    """A genuine signature proves nothing about a blob moved to another tenant's name or seq."""
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    add_events(other.id, 20)
    checkpoint_now(client)
    (theirs,) = signed_checkpoints(client, other.id)
    plant(chain.id, theirs["seq"], theirs)
    result = verify(client, chain, make_token)
    assert result["valid"] is False
    assert result["first_failure"] == {"seq": theirs["seq"], "code": "checkpoint_invalid",
                                       "reason": "checkpoint of another tenant"}
    (ours,) = signed_checkpoints(client, chain.id)
    plant(chain.id, 10**6, ours)
    assert "blob name" in checkpoints.newest_signed(chain.id).rejected[0]["reason"]


def test_checkpoints_in_the_earlier_blob_layout_still_count(
    client: httpx.Client, chain: Tenant, make_token: TokenFactory
) -> None:
    """Blobs written as `<tenant>/<seq>.json` before newest-first names keep protecting the chain."""
    head = event(chain.id, 6)
    doc = checkpoints.sign(chain.id, 6, head["checksum"], audit.format_time(head["occurred_at"]))
    storage.blob_service().get_blob_client(checkpoints.CONTAINER, f"{chain.id}/{6:020d}.json").upload_blob(
        json.dumps(doc).encode()
    )
    assert verify(client, chain, make_token)["checkpoint"]["seq"] == 6
    checkpoint_now(client)
    assert [d["seq"] for d in signed_checkpoints(client, chain.id)] == [6]
    cut_tail(chain.id, 5)
    result = verify(client, chain, make_token)
    assert result["first_failure"]["code"] == "chain_truncated"
    assert client.get("/api/audit/export", headers=auth(make_token(chain.id, "ADMIN"))).status_code == 200
