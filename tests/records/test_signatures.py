"""21 CFR Part 11 signatures and the review/approval workflow, through the real host."""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
import psycopg
import pyotp
import pytest

from shared.audit import chain as audit
from shared.core import db
from shared.identity.passwords import hash_password
from shared.tenancy.tenants import Tenant
from tests.conftest import Host, Person, PersonFactory, auth
from tests.identity.test_signin import client_from

PASSWORD = "Signing-Harbour-Lantern-" + uuid.uuid4().hex[:6]
HASH = hash_password(PASSWORD)


def person(make_person: PersonFactory, tenant: Tenant, role: str, name: str) -> Person:
    p = make_person(tenant.id, role, name=name)
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update users set password_hash = %s where id = %s", (HASH, p.id))
    return p


@pytest.fixture
def client(host: Host) -> Any:
    """Each test signs from its own address: failed signing counts towards the per-IP sign-in throttle."""
    with client_from(host) as c:
        yield c


@pytest.fixture
def team(tenant: Tenant, make_person: PersonFactory) -> dict[str, Person]:
    return {
        "author": person(make_person, tenant, "OPERATOR", "Alice Author"),
        "reviewer": person(make_person, tenant, "REVIEWER", "Rita Reviewer"),
        "approver": person(make_person, tenant, "REVIEWER", "Aaron Approver"),
        "admin": person(make_person, tenant, "ADMIN", "Ada Admin"),
        "viewer": person(make_person, tenant, "VIEWER", "Vic Viewer"),
    }


def sign(c: httpx.Client, who: Person, record_id: str, version: int, meaning: str, reason: str, **extra: Any) -> httpx.Response:
    """Sign with the password and, for signers with TOTP (ADMIN, REVIEWER), the current code."""
    body = {"password": PASSWORD, "meaning": meaning, "reason": reason, **extra}
    if who.totp_secret and "code" not in body:
        body["code"] = pyotp.TOTP(who.totp_secret).now()
    return c.post(f"/api/records/{record_id}/versions/{version}/signatures", json=body, headers=auth(who.token))


def new_record(c: httpx.Client, who: Person, title: str = "SOP-7 Cleaning") -> dict[str, Any]:
    resp = c.post("/api/records", json={"type": "document", "payload": {"title": title}}, headers=auth(who.token))
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.mark.requirement("21CFR11.10(b)", "21CFR11.50(a)", "21CFR11.50(b)", "ALCOA+:Attributable", "ALCOA+:Legible")
def test_full_review_and_approval(client: httpx.Client, tenant: Tenant, team: dict[str, Person]) -> None:
    rec = new_record(client, team["author"])
    authored = sign(client, team["author"], rec["id"], 1, "AUTHORED", "authorship")
    assert authored.status_code == 201, authored.text
    assert authored.json()["record"]["status"] == "IN_REVIEW"
    early = sign(client, team["approver"], rec["id"], 1, "APPROVED", "approval")
    assert early.status_code == 409  # a review is needed first
    reviewed = sign(client, team["reviewer"], rec["id"], 1, "REVIEWED", "review_complete", comment="checked against SOP-1")
    assert reviewed.status_code == 201 and reviewed.json()["record"]["status"] == "IN_REVIEW"
    approved = sign(client, team["approver"], rec["id"], 1, "APPROVED", "approval")
    assert approved.status_code == 201, approved.text
    record = approved.json()["record"]
    assert record["status"] == "APPROVED"
    shown = [(s["printed_name"], s["meaning"]) for s in record["signatures"]]
    assert shown == [("Alice Author", "AUTHORED"), ("Rita Reviewer", "REVIEWED"), ("Aaron Approver", "APPROVED")]
    sig = record["signatures"][1]
    assert sig["signed_at"].endswith("Z") and sig["time_zone"] == "UTC" and sig["signed_at_local"].endswith("+00:00")
    assert sig["reason"] == "I have reviewed this record and found it complete and accurate"
    assert sig["comment"] == "checked against SOP-1"
    assert sig["content_checksum"] == record["version"]["checksum"]
    # every read shows them; the verifier agrees; the manifest prints them with the audit extract
    read = client.get(f"/api/records/{rec['id']}", headers=auth(team["viewer"].token)).json()
    assert [s["meaning"] for s in read["version"]["signatures"]] == ["AUTHORED", "REVIEWED", "APPROVED"]
    verified = client.get(f"/api/records/{rec['id']}/signatures/verify", headers=auth(team["viewer"].token)).json()
    assert verified["valid"] is True and len(verified["signatures"]) == 3
    manifest = client.get(f"/api/records/{rec['id']}/versions/1/manifest", headers=auth(team["viewer"].token)).json()
    assert [s["printed_name"] for s in manifest["signatures"]] == ["Alice Author", "Rita Reviewer", "Aaron Approver"]
    assert {"record.created", "signature.applied", "record.status_changed"} <= {e["action"] for e in manifest["audit_extract"]}
    with db.tenant_tx(tenant.id) as conn:
        applied = audit.list_events(conn, action="signature.applied", target_id=rec["id"])
    assert [e["after"]["meaning"] for e in applied] == ["AUTHORED", "REVIEWED", "APPROVED"]


@pytest.mark.requirement("21CFR11.10(g)", "21CFR11.200(a)(3)")
def test_self_review_and_self_approval_are_refused(client: httpx.Client, tenant: Tenant, team: dict[str, Person],
                                                   make_person: PersonFactory) -> None:
    # an ADMIN who authored a version holds every permission, and still cannot review or approve it
    admin = team["admin"]
    rec = new_record(client, admin)
    assert sign(client, admin, rec["id"], 1, "AUTHORED", "authorship").status_code == 201
    for meaning, reason in (("REVIEWED", "review_complete"), ("APPROVED", "approval")):
        resp = sign(client, admin, rec["id"], 1, meaning, reason)
        assert resp.status_code == 403 and "separation of duties" in resp.json()["detail"]
    # nor may the reviewer approve what they reviewed
    assert sign(client, team["reviewer"], rec["id"], 1, "REVIEWED", "review_complete").status_code == 201
    assert sign(client, team["reviewer"], rec["id"], 1, "APPROVED", "approval").status_code == 403


@pytest.mark.requirement("21CFR11.10(f)", "21CFR11.10(g)")
def test_permissions_and_out_of_order_transitions(client: httpx.Client, team: dict[str, Person]) -> None:
    rec = new_record(client, team["author"])
    assert sign(client, team["reviewer"], rec["id"], 1, "REVIEWED", "review_complete").status_code == 409  # still DRAFT
    assert sign(client, team["reviewer"], rec["id"], 1, "AUTHORED", "authorship").status_code == 403  # not the author
    assert sign(client, team["author"], rec["id"], 1, "AUTHORED", "authorship").status_code == 201
    assert sign(client, team["author"], rec["id"], 1, "AUTHORED", "authorship").status_code == 409  # not DRAFT any more
    assert sign(client, team["viewer"], rec["id"], 1, "REVIEWED", "review_complete").status_code == 403
    rejected = sign(client, team["reviewer"], rec["id"], 1, "REJECTED", "rejection_errors", comment="section 3 wrong")
    assert rejected.status_code == 201 and rejected.json()["record"]["status"] == "REJECTED"
    assert sign(client, team["approver"], rec["id"], 1, "APPROVED", "approval").status_code == 409


@pytest.mark.requirement("21CFR11.200(a)(1)", "21CFR11.300(d)")
def test_wrong_password_is_refused_counted_and_reported(host: Host, tenant: Tenant, team: dict[str, Person]) -> None:
    with client_from(host) as c:
        rec = new_record(c, team["author"])
        statuses = []
        for _ in range(7):
            resp = c.post(f"/api/records/{rec['id']}/versions/1/signatures",
                          json={"password": "not-my-password", "meaning": "AUTHORED", "reason": "authorship"},
                          headers=auth(team["author"].token))
            statuses.append(resp.status_code)
        assert statuses[:5] == [403] * 5 and set(statuses[5:]) == {429}
        assert c.get(f"/api/records/{rec['id']}", headers=auth(team["author"].token)).json()["signatures"] == []
    with db.tenant_tx(tenant.id) as conn:
        failed = audit.list_events(conn, action="signature.failed")
        reported = audit.list_events(conn, action="security.signature_attempts_exceeded")
    assert [e["after"]["reason"] for e in failed] == ["bad_password"] * 5
    assert reported and reported[0]["target_id"] == team["author"].id


def test_reason_and_meaning_must_come_from_the_vocabulary(client: httpx.Client, team: dict[str, Person]) -> None:
    rec = new_record(client, team["author"])
    resp = sign(client, team["author"], rec["id"], 1, "AUTHORED", "because I said so")
    assert resp.status_code == 422 and resp.json()["errors"][0]["location"] == ["body", "reason"]
    assert sign(client, team["author"], rec["id"], 1, "BLESSED", "authorship").status_code == 422
    # an admin extends the vocabulary; then it can be used
    added = client.post("/api/signature-vocabulary", json={"kind": "reason", "code": "training_done",
                                                           "text": "I have completed the training for this SOP",
                                                           "reason": "QA training matrix"}, headers=auth(team["admin"].token))
    assert added.status_code == 201, added.text
    assert client.post("/api/signature-vocabulary", json={"kind": "meaning", "code": "VERIFIED", "text": "Verified",
                                                          "reason": "QA needs it"}, headers=auth(team["author"].token)).status_code == 403
    client.post("/api/signature-vocabulary", json={"kind": "meaning", "code": "VERIFIED", "text": "I verified the data",
                                                   "reason": "QA needs it"}, headers=auth(team["admin"].token))
    resp = sign(client, team["author"], rec["id"], 1, "VERIFIED", "training_done")
    assert resp.status_code == 201 and resp.json()["record"]["status"] == "DRAFT"  # tenant meanings change no state


@pytest.mark.requirement("21CFR11.10(f)", "21CFR11.70")
def test_signing_a_stale_version_is_refused(client: httpx.Client, team: dict[str, Person]) -> None:
    rec = new_record(client, team["author"])
    client.patch(f"/api/records/{rec['id']}", json={"version": 1, "payload": {"title": "v2"}, "reason": "update"},
                 headers=auth(team["author"].token))
    resp = sign(client, team["author"], rec["id"], 1, "AUTHORED", "authorship")
    assert resp.status_code == 409 and resp.json()["current_version"] == 2
    assert sign(client, team["author"], rec["id"], 3, "AUTHORED", "authorship").status_code == 409


@pytest.mark.requirement("21CFR11.70")
def test_edit_after_approval_leaves_the_new_version_unsigned(client: httpx.Client, team: dict[str, Person]) -> None:
    rec = new_record(client, team["author"])
    sign(client, team["author"], rec["id"], 1, "AUTHORED", "authorship")
    sign(client, team["reviewer"], rec["id"], 1, "REVIEWED", "review_complete")
    assert sign(client, team["approver"], rec["id"], 1, "APPROVED", "approval").json()["record"]["status"] == "APPROVED"
    edited = client.patch(f"/api/records/{rec['id']}", json={"version": 1, "payload": {"title": "SOP-7 rev B"},
                                                             "reason": "change control CC-12"}, headers=auth(team["author"].token))
    assert edited.status_code == 200
    record = edited.json()
    assert record["status"] == "DRAFT" and record["current_version"] == 2
    assert record["version"]["signatures"] == [] and record["changed_after_signing"] is True
    assert {s["version"] for s in record["signatures"]} == {1}
    v1 = client.get(f"/api/records/{rec['id']}/versions/1/manifest", headers=auth(team["viewer"].token)).json()
    assert len(v1["signatures"]) == 3 and v1["version"]["payload"] == {"title": "SOP-7 Cleaning"}
    assert client.get(f"/api/records/{rec['id']}/signatures/verify", headers=auth(team["viewer"].token)).json()["valid"] is True


def _owner(tenant_id: str) -> psycopg.Connection:
    conn = psycopg.connect(os.environ["DATABASE_OWNER_URL"], autocommit=True)
    conn.execute("select set_config('app.tenant_id', %s, false)", (tenant_id,))
    return conn


@pytest.mark.requirement("21CFR11.70", "ALCOA+:Accurate")
def test_tampered_payload_fails_signature_verification(client: httpx.Client, tenant: Tenant, team: dict[str, Person]) -> None:
    rec = new_record(client, team["author"])
    sign(client, team["author"], rec["id"], 1, "AUTHORED", "authorship")
    with _owner(tenant.id) as conn:  # someone with database rights, triggers off
        conn.execute("alter table record_versions disable trigger user")
        try:
            conn.execute("""update record_versions set payload = '{"title":"SOP-7 Cleaning (relaxed)"}'
                            where record_id = %s and version = 1""", (rec["id"],))
        finally:
            conn.execute("alter table record_versions enable trigger user")
    result = client.get(f"/api/records/{rec['id']}/signatures/verify", headers=auth(team["viewer"].token)).json()
    assert result["valid"] is False
    assert "no longer matches its checksum" in result["signatures"][0]["problems"][0]


@pytest.mark.requirement("21CFR11.70")
def test_tampered_signature_row_fails_verification(client: httpx.Client, tenant: Tenant, team: dict[str, Person]) -> None:
    rec = new_record(client, team["author"])
    sign(client, team["author"], rec["id"], 1, "AUTHORED", "authorship")
    with _owner(tenant.id) as conn:
        conn.execute("alter table signatures disable trigger user")
        try:
            conn.execute("update signatures set meaning = 'APPROVED' where record_id = %s", (rec["id"],))
        finally:
            conn.execute("alter table signatures enable trigger user")
    result = client.get(f"/api/records/{rec['id']}/signatures/verify", headers=auth(team["viewer"].token)).json()
    assert result["valid"] is False and result["signatures"][0]["problems"] == ["the signature record was altered"]


@pytest.mark.requirement("21CFR11.50(b)", "21CFR11.10(c)")
def test_signatures_are_immutable_for_the_app(client: httpx.Client, tenant: Tenant, team: dict[str, Person]) -> None:
    rec = new_record(client, team["author"])
    sign(client, team["author"], rec["id"], 1, "AUTHORED", "authorship")
    for statement in ("update signatures set meaning = 'APPROVED'", "delete from signatures"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with db.tenant_tx(tenant.id) as conn:
                conn.execute(statement)


@pytest.mark.requirement("21CFR11.10(g)")
def test_policy_requires_two_approvals(client: httpx.Client, tenant: Tenant, team: dict[str, Person],
                                       make_person: PersonFactory) -> None:
    admin = team["admin"]
    resp = client.put("/api/record-types/document/signature-policy",
                      json={"required_reviews": 0, "required_approvals": 2, "reason": "GMP documents need two approvers"},
                      headers=auth(admin.token))
    assert resp.status_code == 200, resp.text
    rec = new_record(client, team["author"])
    sign(client, team["author"], rec["id"], 1, "AUTHORED", "authorship")
    assert sign(client, team["approver"], rec["id"], 1, "APPROVED", "approval").json()["record"]["status"] == "IN_REVIEW"
    assert sign(client, team["approver"], rec["id"], 1, "APPROVED", "approval").status_code == 409  # once per signer
    assert sign(client, team["reviewer"], rec["id"], 1, "APPROVED", "approval").json()["record"]["status"] == "APPROVED"
