"""Security incidents: each signal provoked opens one incident with evidence, a second signal
updates it, an operator's notice reaches exactly the affected tenants' ADMINs through the
outbox, the 24-hour clock escalates at 20 hours (time injected), and a tenant never sees
another tenant's incident or id. Real PostgreSQL, Azurite and the HTTP host."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from shared.audit import chain as audit
from shared.audit import checkpoints
from shared.core import db, health, mail
from shared.core.errors import BlankValue, NotFound, Unauthenticated
from shared.identity import sessions
from shared.lifecycle import incidents
from shared.lifecycle.errors import IncidentStateConflict
from shared.tenancy.tenants import Tenant
from tests.conftest import (
    PersonFactory,
    auth,
    create_operator,
    create_operator_session,
    create_user,
    token_for,
)

OPERATOR = audit.Actor(id=None, name="Olive Operator", type="operator")


@contextmanager
def superuser() -> Iterator[psycopg.Connection]:
    """A database superuser: bypasses row-level security and may disable the audit triggers."""
    with psycopg.connect(os.environ["DATABASE_ADMIN_URL"]) as conn:
        yield conn


def tamper(tenant_id: str) -> None:
    """What an attacker with database rights does: rewrite an event's reason in place."""
    with superuser() as conn:
        conn.execute("alter table audit_events disable trigger user")
        conn.execute("update audit_events set reason = 'nothing to see' where tenant_id = %s and seq = 1", (tenant_id,))
        conn.execute("alter table audit_events enable trigger user")


def of(tenant_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The incidents (operator view) affecting exactly this tenant."""
    return [i for i in incidents.list_incidents(tenant_id=tenant_id)
            if i["affected"] == [tenant_id] and kind in (None, i["kind"])]


def one(tenant_id: str, kind: str) -> dict[str, Any]:
    found = of(tenant_id, kind)
    assert len(found) == 1, found
    return found[0]


def chain_actions(tenant_id: str) -> list[dict[str, Any]]:
    with db.tenant_tx(tenant_id) as conn:
        return [dict(r) for r in conn.execute(
            "select seq, action, target_id, after, reason from audit_events where action like %s order by seq",
            ("%incident%",)).fetchall()]


def signal(tenant_id: str, action: str, n: int = 1) -> None:
    """The event a source appends (same action and fields as the source writes)."""
    for i in range(n):
        with db.tenant_tx(tenant_id) as conn:
            audit.append(conn, tenant_id=tenant_id, actor=audit.Actor(id=None, name="source", type="system"),
                         action=action, target_type="thing", target_id=str(i))


@contextmanager
def forged_attachment(tenant: Tenant) -> Iterator[str]:
    """An attachment blob whose content someone with storage rights rewrote; put right after
    the test, so later snapshot runs (and tests) see a sound container."""
    from shared.core import storage
    from shared.records import attachments

    original = b"the original protocol " + uuid.uuid4().bytes
    sha = hashlib.sha256(original).hexdigest()
    blob = storage.blob_service().get_blob_client(attachments.CONTAINER, attachments.blob_name(tenant.id, sha))
    blob.upload_blob(b"a forged protocol", overwrite=True)
    try:
        yield sha
    finally:
        blob.upload_blob(original, overwrite=True)


def opened_tampered(tenant: Tenant) -> dict[str, Any]:
    tamper(tenant.id)
    checkpoints.verify_all()
    incidents.sweep()
    return one(tenant.id, "audit_chain_invalid")


# --- signals ---------------------------------------------------------------------------------


def test_tampered_chain_found_by_the_nightly_verify_opens_one_incident_with_the_verifier_event_as_evidence(
        tenant: Tenant) -> None:
    incident = opened_tampered(tenant)

    assert incident["state"] == "OPEN" and incident["severity"] == "CRITICAL" and incident["tenant_data"]
    [ref] = incident["evidence"]
    assert ref["chain"] == audit.PLATFORM_CHAIN and ref["action"] == "platform.audit_chain_invalid"
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        event = conn.execute("select action, target_id from audit_events where seq = %s", (ref["seq"],)).fetchone()
    assert event == {"action": "platform.audit_chain_invalid", "target_id": tenant.id}
    assert [e["action"] for e in chain_actions(tenant.id)] == ["incident.opened"]


def test_a_second_verify_failure_updates_the_open_incident_instead_of_opening_another(tenant: Tenant) -> None:
    first = opened_tampered(tenant)
    checkpoints.verify_all()
    incidents.sweep()
    incidents.sweep()  # nothing new: the watermark holds

    again = one(tenant.id, "audit_chain_invalid")
    assert again["id"] == first["id"] and len(again["evidence"]) == 2
    assert [e["action"] for e in chain_actions(tenant.id)] == ["incident.opened", "incident.updated"]


def test_a_stale_checkpoint_opens_a_checkpoint_incident(tenant: Tenant) -> None:
    signal(tenant.id, "test.event")
    checkpoints.verify_all(now=db.one_statement("select now() + interval '3 years' as t", ())[0]["t"])
    incidents.sweep()
    incident = one(tenant.id, "checkpoint_stale")
    assert incident["tenant_data"] and incident["evidence"][0]["action"] == "platform.audit_checkpoint_stale"


def test_refresh_token_reuse_burst_opens_an_incident_only_at_the_threshold(tenant: Tenant) -> None:
    user = create_user(tenant.id, "VIEWER")

    def reuse() -> None:
        with db.tenant_tx(tenant.id) as conn:
            first = sessions.create_session(conn, tenant_id=tenant.id, user={**user, "role": "VIEWER", "display_name": "V"},
                                            remember_me=False, ip="198.51.100.7", user_agent="thief")
        second = sessions.refresh(first.refresh_token, meta=audit.RequestMeta())
        sessions.refresh(second.refresh_token, meta=audit.RequestMeta())
        with pytest.raises(Unauthenticated):
            sessions.refresh(first.refresh_token, meta=audit.RequestMeta())  # a stolen, retired token

    reuse()
    reuse()
    incidents.sweep()
    assert of(tenant.id) == []  # two reuses: below the burst of 3
    reuse()
    incidents.sweep()
    incident = one(tenant.id, "refresh_token_reuse_burst")
    assert [e["action"] for e in incident["evidence"]] == ["security.refresh_token_reused"]


def test_a_throttling_spike_past_the_threshold_opens_an_incident_without_a_clock(tenant: Tenant) -> None:
    from shared.core.errors import TooManyRequests
    from shared.identity import signin
    from shared.identity.errors import InvalidCredentials

    base = uuid.uuid4().int % 250

    def guess(victim: int) -> None:
        """Five wrong passwords for one address from one IP (the real sign-in and its Table
        Storage throttle): the email+IP key crosses once."""
        for _ in range(5):
            with pytest.raises((InvalidCredentials, TooManyRequests)):
                signin.login(tenant_slug=tenant.slug, email=f"v{victim}@example.test", password="wrong-password-123",  # pragma: allowlist secret
                             remember_me=False, meta=audit.RequestMeta(ip=f"198.18.{base}.{victim + 1}"))

    for victim in range(9):
        guess(victim)
    incidents.sweep()
    assert of(tenant.id) == []  # nine crossings: below the spike of ten
    guess(9)
    incidents.sweep()
    incident = one(tenant.id, "throttling_spike")
    assert not incident["tenant_data"] and incident["notify_due_at"] is None
    assert [e["action"] for e in incident["evidence"]] == ["security.throttled"]


def test_a_support_token_used_after_its_grant_is_revoked_opens_an_incident_a_mistyped_read_does_not(
        client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin, operator = make_person(tenant.id, "ADMIN"), make_person(None)
    grant = client.post("/api/support-access", json={"operator_email": operator.email, "hours": 2, "reason": "ticket 7"},
                        headers=auth(admin.token))
    assert grant.status_code == 201, grant.text
    token = client.post(f"/api/platform/tenants/{tenant.id}/support-token", headers=auth(operator.token)).json()["access_token"]
    assert client.get(f"/api/records/{uuid.uuid4()}", headers=auth(token)).status_code == 404  # inside the grant
    incidents.sweep()
    assert of(tenant.id) == []

    assert client.delete(f"/api/support-access/{grant.json()['id']}", params={"reason": "ticket closed"},
                         headers=auth(admin.token)).status_code == 200
    assert client.get("/api/users", headers=auth(token)).status_code == 401  # outside it
    incidents.sweep()
    incident = one(tenant.id, "support_access_refused")
    assert [e["action"] for e in incident["evidence"]] == ["support.refused"]


def test_an_attachment_rewritten_in_storage_and_then_read_opens_an_integrity_incident(tenant: Tenant) -> None:
    from shared.records import attachments
    from shared.records.errors import IntegrityFailure

    with forged_attachment(tenant) as sha:
        with pytest.raises(IntegrityFailure):
            attachments.read_verified(tenant.id, sha, record_id=str(uuid.uuid4()), meta=audit.RequestMeta(),
                                      actor=audit.Actor(id=None, name="reader", type="user"))
    incidents.sweep()
    incident = one(tenant.id, "attachment_integrity")
    assert incident["tenant_data"] and incident["severity"] == "CRITICAL"
    assert [e["chain"] for e in incident["evidence"]] == [tenant.id]


def test_racing_signals_of_one_kind_and_tenant_make_one_incident(tenant: Tenant) -> None:
    now = db.one_statement("select now() as t", ())[0]["t"]

    def raise_one(i: int) -> str:
        return str(incidents.raise_signal("attachment_integrity", [tenant.id],
                                          [{"chain": tenant.id, "seq": i, "action": "integrity.attachment_mismatch"}],
                                          seen_at=now)["id"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = set(pool.map(raise_one, range(8)))
    incident = one(tenant.id, "attachment_integrity")
    assert ids == {incident["id"]} and len(incident["evidence"]) == 8
    assert [e["action"] for e in chain_actions(tenant.id)].count("incident.opened") == 1


def test_two_sweeps_that_read_the_same_signals_count_them_once(tenant: Tenant) -> None:
    incidents.sweep()  # the chain's watermark row exists
    signal(tenant.id, "integrity.attachment_mismatch")
    window = timedelta(minutes=10)
    with superuser() as holder, superuser() as watcher:  # hold the watermark while both sweeps read the new event
        watcher.autocommit = True  # pg_stat_activity is a snapshot per transaction: look afresh each time
        holder.execute("select 1 from incident_watermarks where source = %s for update", (f"chain:{tenant.id}",))
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = [pool.submit(incidents._sweep_chain, tenant.id, window=window) for _ in range(2)]
            for _ in range(2000):  # until both wait on the row (a state, not a time)
                waiting = watcher.execute(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and query like %s",
                    ("%incident_watermarks%",)).fetchone()
                if waiting and waiting[0] >= 2:
                    break
                time.sleep(0.005)
            holder.commit()
            counted = sorted(r.result()[0] for r in runs)
    assert counted == [0, 1]
    incident = one(tenant.id, "attachment_integrity")
    assert len(incident["evidence"]) == 1
    assert [e["action"] for e in chain_actions(tenant.id)] == ["incident.opened"]


def test_the_ops_cli_lists_shows_and_resolves_with_a_reason(tenant: Tenant, capsys: Any) -> None:
    from shared import cli

    incident = opened_tampered(tenant)
    assert cli.main(["incidents", "list", "--state", "OPEN"]) == 0
    assert incident["id"] in capsys.readouterr().out
    assert cli.main(["incidents", "resolve", "--id", incident["id"]]) == 2  # no reason
    assert "blank-value" in capsys.readouterr().err
    assert cli.main(["incidents", "resolve", "--id", incident["id"], "--reason", "false positive: test"]) == 0
    capsys.readouterr()
    assert cli.main(["incidents", "show", "--id", incident["id"]]) == 0
    shown = capsys.readouterr().out
    assert "RESOLVED" in shown and "false positive: test" in shown


def test_a_failed_snapshot_run_opens_a_platform_incident_once(tenant: Tenant) -> None:
    from shared.lifecycle import snapshots

    incidents.sweep()  # earlier beats are history
    kind = "snapshot_timer_failed"
    before = incidents.list_incidents(state="OPEN", kind=kind)
    with forged_attachment(tenant), pytest.raises(snapshots.SnapshotRunFailed):
        snapshots.scheduled_run()  # the timer's run: it finds the forged blob and fails
    incidents.sweep()
    incidents.sweep()
    after = incidents.list_incidents(state="OPEN", kind=kind)
    assert len(after) == 1 and after[0]["affected"] == []
    assert len(after[0]["evidence"]) == (len(before[0]["evidence"]) if before else 0) + 1
    assert after[0]["evidence"][-1]["action"] == "platform.timer_failed"
    assert one(tenant.id, "attachment_integrity")["tenant_data"]  # the run's mismatch event is a signal too


def test_a_failed_purge_run_opens_a_platform_incident_once() -> None:
    timer, kind = "purge_cancelled_tenants", "purge_timer_failed"
    incidents.sweep()  # earlier beats are history
    before = incidents.list_incidents(state="OPEN", kind=kind)
    health.record_heartbeat(timer, ok=False, detail="failed: OperationalError")  # what the failing timer records
    incidents.sweep()
    incidents.sweep()
    after = incidents.list_incidents(state="OPEN", kind=kind)
    assert len(after) == 1 and after[0]["affected"] == []
    assert len(after[0]["evidence"]) == (len(before[0]["evidence"]) if before else 0) + 1
    assert after[0]["evidence"][-1]["action"] == "platform.timer_failed"


# --- notice, escalation ------------------------------------------------------------------------


def test_notify_mails_the_fixed_notice_to_exactly_the_affected_tenants_admins(tenant: Tenant) -> None:
    admins = sorted([create_user(tenant.id, "ADMIN")["email"], create_user(tenant.id, "ADMIN")["email"]])
    create_user(tenant.id, "MANAGER")
    with db.platform_tx() as conn:
        from shared.tenancy.tenants import create_tenant
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    create_user(other.id, "ADMIN")
    incident = opened_tampered(tenant)

    done = incidents.notify(uuid.UUID(incident["id"]), reason="confirmed by on-call", actor=OPERATOR)

    assert done["state"] == "NOTIFIED" and done["mails"] == 2
    sent = [m for m in mail.list_outbox([tenant.id, other.id]) if m["kind"] == "incident_notice"]
    assert sorted(m["to"] for m in sent) == admins
    body = sent[0]["body"]
    for field in ("What happened:", "What data:", "What we do:", "Contact: security@custos.example"):
        assert field in body
    events = chain_actions(tenant.id)
    assert events[-1]["action"] == "incident.notified" and events[-1]["reason"] == "confirmed by on-call"
    assert chain_actions(other.id) == []


def test_escalation_fires_at_20_hours_without_notice_and_not_at_19(tenant: Tenant, caplog: Any) -> None:
    incident = opened_tampered(tenant)
    first_seen = db.one_statement("select first_seen from incidents where id = %s", (incident["id"],))[0]["first_seen"]

    assert all(e["id"] != incident["id"] for e in incidents.escalate(now=first_seen + timedelta(hours=19, minutes=59)))
    escalated = incidents.escalate(now=first_seen + timedelta(hours=20))
    assert [e["id"] for e in escalated if e["id"] == incident["id"]] == [incident["id"]]
    assert any("incident notice overdue" in r.getMessage() and incident["id"] in r.getMessage() for r in caplog.records)
    assert all(e["id"] != incident["id"] for e in incidents.escalate(now=first_seen + timedelta(hours=21)))  # once
    assert chain_actions(tenant.id)[-1]["action"] == "incident.escalated"


def test_a_notified_incident_is_not_escalated(tenant: Tenant) -> None:
    incident = opened_tampered(tenant)
    incidents.notify(uuid.UUID(incident["id"]), reason="sent", actor=OPERATOR)
    first_seen = db.one_statement("select first_seen from incidents where id = %s", (incident["id"],))[0]["first_seen"]
    assert all(e["id"] != incident["id"] for e in incidents.escalate(now=first_seen + timedelta(hours=23)))


def test_every_change_needs_a_reason_and_resolved_is_final(tenant: Tenant) -> None:
    incident_id = uuid.UUID(opened_tampered(tenant)["id"])
    with pytest.raises(BlankValue):
        incidents.resolve(incident_id, reason="   ", actor=OPERATOR)
    with pytest.raises(BlankValue):
        incidents.notify(incident_id, reason="", actor=OPERATOR)
    incidents.resolve(incident_id, reason="chain restored from archive", actor=OPERATOR)
    with pytest.raises(IncidentStateConflict):
        incidents.resolve(incident_id, reason="again", actor=OPERATOR)
    with pytest.raises(IncidentStateConflict):
        incidents.notify(incident_id, reason="late", actor=OPERATOR)
    with pytest.raises(NotFound):
        incidents.resolve(uuid.uuid4(), reason="nothing", actor=OPERATOR)
    history = incidents.get_incident(incident_id)["history"]
    assert [h["action"] for h in history] == ["opened", "resolved"] and all(h["reason"] for h in history)


# --- HTTP -------------------------------------------------------------------------------------


def test_tenant_admins_see_their_incidents_and_never_another_tenants(
        client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    with db.platform_tx() as conn:
        from shared.tenancy.tenants import create_tenant
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    mine = opened_tampered(tenant)
    theirs = opened_tampered(other)
    # one incident naming both tenants: each sees only itself in it
    both = incidents.raise_signal("attachment_integrity", [tenant.id, other.id],
                                  [{"chain": tenant.id, "seq": 1, "action": "integrity.attachment_mismatch"},
                                   {"chain": other.id, "seq": 1, "action": "integrity.attachment_mismatch"}],
                                  seen_at=db.one_statement("select now() as t", ())[0]["t"])
    admin = make_person(tenant.id, "ADMIN")

    listed = client.get("/api/incidents", headers=auth(admin.token))
    assert listed.status_code == 200, listed.text
    ids = {i["id"] for i in listed.json()["incidents"]}
    assert ids == {mine["id"], str(both["id"])}
    assert other.id not in listed.text and theirs["id"] not in listed.text
    shared = next(i for i in listed.json()["incidents"] if i["id"] == str(both["id"]))
    assert shared["affected"] == [tenant.id] and [e["chain"] for e in shared["evidence"]] == [tenant.id]
    assert client.get(f"/api/incidents/{theirs['id']}", headers=auth(admin.token)).status_code == 404
    assert client.get(f"/api/incidents/{mine['id']}", headers=auth(admin.token)).json()["id"] == mine["id"]
    opened = [e for e in chain_actions(tenant.id) if e["target_id"] == str(both["id"])]
    assert [e["after"]["affected"] for e in opened] == [[tenant.id]] and other.id not in str(opened)
    viewer = make_person(tenant.id, "VIEWER")
    assert client.get("/api/incidents", headers=auth(viewer.token)).status_code == 403


def test_operator_routes_list_notify_resolve_and_refuse_tenant_tokens(
        client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    incident = opened_tampered(tenant)
    operator = make_person(None)
    admin = make_person(tenant.id, "ADMIN")
    for method, path in (("GET", "/api/platform/incidents"), ("GET", f"/api/platform/incidents/{incident['id']}"),
                         ("POST", f"/api/platform/incidents/{incident['id']}/notify")):
        refused = client.request(method, path, headers=auth(admin.token), json={"reason": "let me"})
        assert refused.status_code in (401, 403) and refused.headers["content-type"] == "application/problem+json"

    enrolled = create_operator("Stale Session")  # has a factor, but this session has not proved it
    stale = token_for(enrolled["id"], None, "PLATFORM_OPERATOR",
                      session_id=create_operator_session(enrolled["id"], mfa_verified=False))
    for step in ("notify", "resolve"):
        refused = client.post(f"/api/platform/incidents/{incident['id']}/{step}", headers=auth(stale),
                              json={"reason": "stolen token"})
        assert refused.status_code == 403 and refused.json()["type"].endswith("mfa-step-up-required")
    assert one(tenant.id, "audit_chain_invalid")["state"] == "OPEN"

    listed = client.get("/api/platform/incidents", params={"state": "OPEN", "tenant": tenant.id},
                        headers=auth(operator.token))
    assert listed.status_code == 200 and [i["id"] for i in listed.json()["incidents"]] == [incident["id"]]
    bad = client.get("/api/platform/incidents", params={"state": "CLOSED"}, headers=auth(operator.token))
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    blank = client.post(f"/api/platform/incidents/{incident['id']}/notify", headers=auth(operator.token),
                        json={"reason": "     "})
    assert blank.status_code == 422 and blank.json()["type"].endswith("blank-value")
    notified = client.post(f"/api/platform/incidents/{incident['id']}/notify", headers=auth(operator.token),
                           json={"reason": "customer informed"})
    assert notified.status_code == 200, notified.text
    assert notified.json()["state"] == "NOTIFIED"
    resolved = client.post(f"/api/platform/incidents/{incident['id']}/resolve", headers=auth(operator.token),
                           json={"reason": "chain restored"})
    assert resolved.json()["state"] == "RESOLVED"
    again = client.post(f"/api/platform/incidents/{incident['id']}/resolve", headers=auth(operator.token),
                        json={"reason": "chain restored"})
    assert again.status_code == 409 and again.json()["type"].endswith("incident-state-conflict")
    missing = client.get(f"/api/platform/incidents/{uuid.uuid4()}", headers=auth(operator.token))
    assert missing.status_code == 404
    detail = client.get(f"/api/platform/incidents/{incident['id']}", headers=auth(operator.token)).json()
    assert [h["to_state"] for h in detail["history"]] == ["OPEN", "NOTIFIED", "RESOLVED"]
    platform = chain_actions(audit.PLATFORM_CHAIN)
    assert {"platform.incident_notified", "platform.incident_resolved"} <= {
        e["action"] for e in platform if e["target_id"] == incident["id"]}


def test_the_sweep_timer_runs_on_demand_through_the_host_and_heartbeats(client: httpx.Client, tenant: Tenant) -> None:
    signal(tenant.id, "integrity.attachment_mismatch")
    assert client.post("/admin/functions/incidents_sweep").status_code == 202
    assert health.heartbeats()["incidents_sweep"]["ok"] is True
    assert one(tenant.id, "attachment_integrity")["state"] == "OPEN"


def test_an_incident_opens_even_when_the_damaged_chain_refuses_its_event(tenant: Tenant) -> None:
    """The attacker also wound the chain head back: every append to that chain now collides.
    The incident about it must still open (its step recorded in the platform chain, naming the
    refused tenant chain), and the sweep must go on for other chains."""
    tamper(tenant.id)
    with superuser() as conn:
        conn.execute("update audit_chain_heads set seq = 0 where tenant_id = %s", (tenant.id,))
    checkpoints.verify_all()
    report = incidents.sweep()
    assert audit.PLATFORM_CHAIN not in report.failed_chains
    found = one(tenant.id, "audit_chain_invalid")
    with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
        opened = [e for e in audit.list_events(conn, action="platform.incident_opened", target_id=found["id"], limit=10)]
    assert opened and opened[0]["after"]["tenant_chains_refused"] == [tenant.id]


def test_the_first_sweep_of_a_chain_leaves_history_older_than_its_lookback_alone(
        tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a deployment, the first sweep of a chain must not open incidents for years of
    history: it starts after the chain's last event older than INCIDENT_FIRST_SWEEP_LOOKBACK_S
    before the sweep (a minute here, seven days by default). Later sweeps start at their watermark."""
    from datetime import UTC, datetime

    from shared.core.settings import get_settings

    signal(tenant.id, "integrity.attachment_mismatch")  # history, for a sweep a minute later
    time.sleep(0.05)
    history_ends = datetime.now(UTC)
    time.sleep(0.05)
    signal(tenant.id, "integrity.attachment_mismatch")
    monkeypatch.setenv("INCIDENT_FIRST_SWEEP_LOOKBACK_S", "60")
    get_settings.cache_clear()
    try:
        incidents.sweep(now=history_ends + timedelta(seconds=60))
        with db.tenant_tx(tenant.id) as conn:
            seqs = [r["seq"] for r in conn.execute(
                "select seq from audit_events where action = 'integrity.attachment_mismatch' order by seq").fetchall()]
        assert [e["seq"] for e in one(tenant.id, "attachment_integrity")["evidence"]] == [seqs[1]]
        signal(tenant.id, "integrity.attachment_mismatch")  # after the first sweep: counted by the next
        incidents.sweep()
        assert len(one(tenant.id, "attachment_integrity")["evidence"]) == 2
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
