"""Records (ALCOA+) through the real host: versions, schemas, frozen context, attachments, card data."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from shared.audit import chain as audit
from shared.core import db, storage
from shared.core.errors import InvalidValue, NotFound
from shared.records import attachments
from shared.tenancy.tenants import Tenant
from shared.web.card_data import MARKER, normalise
from tests.conftest import Host, Person, PersonFactory, Wire, auth

INVOICE = {"number": "INV-1", "issue_date": "2026-11-01", "currency": "EUR",
           "lines": [{"description": "Audit support", "quantity": 2, "unit_price": 150.5}]}
CARD = "4111 1111 1111 1111"


def create(c: httpx.Client, who: Person, type_: str, payload: dict[str, Any], **extra: Any) -> httpx.Response:
    return c.post("/api/records", json={"type": type_, "payload": payload, **extra}, headers=auth(who.token))


def events(tenant_id: str, action: str) -> list[dict[str, Any]]:
    with db.tenant_tx(tenant_id) as conn:
        return audit.list_events(conn, action=action)


@pytest.fixture
def people(tenant: Tenant, make_person: PersonFactory) -> dict[str, Person]:
    return {"admin": make_person(tenant.id, "ADMIN", name="Ada Admin"),
            "op": make_person(tenant.id, "OPERATOR", name="Otto Operator"),
            "viewer": make_person(tenant.id, "VIEWER")}


@pytest.mark.requirement("21CFR11.10(e)", "ALCOA+:Attributable", "ALCOA+:Original", "ALCOA+:Complete")
def test_version_chain_with_authors_reasons_and_checksums(client: httpx.Client, tenant: Tenant, people: dict[str, Person]) -> None:
    op, admin = people["op"], people["admin"]
    created = create(client, op, "invoice", INVOICE)
    assert created.status_code == 201, created.text
    rec = created.json()
    assert rec["status"] == "DRAFT" and rec["current_version"] == 1 and rec["type"] == "invoice"
    v1 = rec["version"]
    assert v1["created_by"] == op.id and v1["created_by_name"] == "Otto Operator" and v1["created_tz"] == "UTC"
    assert v1["previous_version"] is None and v1["reason"] is None
    import rfc8785

    assert v1["checksum"] == hashlib.sha256(rfc8785.dumps(INVOICE)).hexdigest()
    edited = client.patch(f"/api/records/{rec['id']}", json={"version": 1, "payload": {**INVOICE, "number": "INV-1a"},
                                                             "reason": "typo in number"}, headers=auth(admin.token))
    assert edited.status_code == 200, edited.text
    v2 = edited.json()["version"]
    assert (v2["version"], v2["previous_version"], v2["reason"], v2["created_by"]) == (2, 1, "typo in number", admin.id)
    versions = client.get(f"/api/records/{rec['id']}/versions", headers=auth(people["viewer"].token)).json()["versions"]
    assert [v["payload"]["number"] for v in versions] == ["INV-1", "INV-1a"]
    assert client.get(f"/api/records/{rec['id']}/versions/1", headers=auth(op.token)).json()["payload"] == INVOICE
    assert client.get(f"/api/records/{rec['id']}/versions/9", headers=auth(op.token)).status_code == 404
    changed = events(tenant.id, "record.updated")[-1]
    assert changed["before"]["payload"]["number"] == "INV-1" and changed["after"]["payload"]["number"] == "INV-1a"
    assert changed["reason"] == "typo in number"


@pytest.mark.requirement("21CFR11.10(f)")
def test_stale_version_edit_is_409_and_changes_nothing(client: httpx.Client, people: dict[str, Person]) -> None:
    op = people["op"]
    rec = create(client, op, "document", {"title": "SOP-1"}).json()
    ok = client.patch(f"/api/records/{rec['id']}", json={"version": 1, "payload": {"title": "SOP-1 rev A"}, "reason": "review"},
                      headers=auth(op.token))
    assert ok.status_code == 200
    stale = client.patch(f"/api/records/{rec['id']}", json={"version": 1, "payload": {"title": "lost update"}, "reason": "late"},
                         headers=auth(op.token))
    assert stale.status_code == 409 and stale.json()["current_version"] == 2
    assert client.get(f"/api/records/{rec['id']}", headers=auth(op.token)).json()["version"]["payload"]["title"] == "SOP-1 rev A"


def test_edits_need_a_reason(client: httpx.Client, people: dict[str, Person]) -> None:
    rec = create(client, people["op"], "document", {"title": "x"}).json()
    resp = client.patch(f"/api/records/{rec['id']}", json={"version": 1, "payload": {"title": "y"}}, headers=auth(people["op"].token))
    assert resp.status_code == 422


def test_schema_violation_names_the_path(client: httpx.Client, people: dict[str, Person]) -> None:
    bad = {**INVOICE, "lines": [{"description": "x", "quantity": -1, "unit_price": 5}], "currency": "euro", "secret": "s3cret"}
    resp = create(client, people["op"], "invoice", bad)
    assert resp.status_code == 422
    body = resp.json()
    paths = {tuple(e["location"]) for e in body["errors"]}
    assert ("body", "payload", "lines", 0, "quantity") in paths
    assert ("body", "payload", "currency") in paths
    assert ("body", "payload") in paths  # the additional property
    assert "s3cret" not in resp.text and "euro" not in resp.text
    assert create(client, people["op"], "invoice", {**INVOICE, "issue_date": "2026-13-45"}).status_code == 422


def test_custom_type_schema_versions_never_invalidate_records(client: httpx.Client, people: dict[str, Person]) -> None:
    admin, op = people["admin"], people["op"]
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}, "additionalProperties": False}
    resp = client.post("/api/record-types", json={"name": "employee", "display_name": "Employee", "schema": schema, "reason": "HR records"},
                       headers=auth(admin.token))
    assert resp.status_code == 201, resp.text
    assert client.post("/api/record-types", json={"name": "employee", "display_name": "E", "schema": schema, "reason": "duplicate"},
                       headers=auth(admin.token)).status_code == 409
    old = create(client, op, "employee", {"name": "Jo"}).json()
    v2 = {**schema, "required": ["name", "grade"], "properties": {**schema["properties"], "grade": {"type": "integer"}}}
    changed = client.put("/api/record-types/employee/schema", json={"schema": v2, "reason": "grades"}, headers=auth(admin.token))
    assert changed.status_code == 200 and changed.json()["schema_version"] == 2
    assert client.get(f"/api/records/{old['id']}", headers=auth(op.token)).json()["version"]["schema_version"] == 1
    assert create(client, op, "employee", {"name": "Al"}).status_code == 422
    assert create(client, op, "employee", {"name": "Al", "grade": 3}).json()["version"]["schema_version"] == 2
    # an edit of the old record is validated against the current schema
    assert client.patch(f"/api/records/{old['id']}", json={"version": 1, "payload": {"name": "Jo"}, "reason": "x" * 4},
                        headers=auth(op.token)).status_code == 422
    assert client.put("/api/record-types/invoice/schema", json={"schema": v2, "reason": "not allowed"}, headers=auth(admin.token)).status_code == 409
    assert client.put("/api/record-types/employee/schema", json={"schema": v2, "reason": "x" * 4},
                      headers=auth(op.token)).status_code == 403


@pytest.mark.parametrize("schema", [{"type": "string"}, {"type": "object", "properties": {"a": {"$ref": "https://evil.example/s"}}},
                                    {"type": "object", "properties": {"a": {"type": "nonsense"}}}, []])
def test_bad_schemas_are_refused(client: httpx.Client, people: dict[str, Person], schema: Any) -> None:
    resp = client.post("/api/record-types", json={"name": f"t{uuid.uuid4().hex[:6]}", "display_name": "T", "schema": schema,
                                                  "reason": "test"}, headers=auth(people["admin"].token))
    assert resp.status_code == 422


def test_frozen_snapshot_keeps_content_after_source_changes(client: httpx.Client, people: dict[str, Person]) -> None:
    admin, op = people["admin"], people["op"]
    client.post("/api/record-types", json={"name": "customer", "display_name": "Customer", "reason": "CRM data",
                                           "schema": {"type": "object", "properties": {"name": {"type": "string"}}}},
                headers=auth(admin.token))
    customer = create(client, op, "customer", {"name": "Acme Ltd", "address": "1 Old Road"}).json()
    invoice = create(client, op, "invoice", INVOICE, references=[{"name": "customer", "record_id": customer["id"]}]).json()
    frozen = invoice["version"]["frozen_context"]["customer"]
    assert frozen["payload"]["address"] == "1 Old Road" and frozen["source_changed"] is False
    client.patch(f"/api/records/{customer['id']}", json={"version": 1, "payload": {"name": "Acme Ltd", "address": "9 New Street"},
                                                         "reason": "moved"}, headers=auth(op.token))
    now = client.get(f"/api/records/{invoice['id']}", headers=auth(op.token)).json()["version"]["frozen_context"]["customer"]
    assert now["payload"]["address"] == "1 Old Road" and now["version"] == 1
    assert now["source_changed"] is True and now["source_current_version"] == 2
    # a later edit of the invoice keeps the frozen context unless references are given again
    edited = client.patch(f"/api/records/{invoice['id']}", json={"version": 1, "payload": {**INVOICE, "notes": "paid"},
                                                                "reason": "note"}, headers=auth(op.token)).json()
    assert edited["version"]["frozen_context"]["customer"]["payload"]["address"] == "1 Old Road"
    bad_ref = create(client, op, "invoice", INVOICE, references=[{"name": "customer", "record_id": str(uuid.uuid4())}])
    assert bad_ref.status_code == 422


@pytest.mark.requirement("21CFR11.10(c)", "ALCOA+:Complete")
def test_retire_replaces_delete(client: httpx.Client, tenant: Tenant, people: dict[str, Person]) -> None:
    admin, op = people["admin"], people["op"]
    rec = create(client, op, "document", {"title": "Obsolete SOP"}).json()
    assert client.post(f"/api/records/{rec['id']}/retire", json={"reason": "superseded"}, headers=auth(op.token)).status_code == 403
    resp = client.post(f"/api/records/{rec['id']}/retire", json={"reason": "superseded by SOP-2"}, headers=auth(admin.token))
    assert resp.status_code == 200 and resp.json()["status"] == "RETIRED"
    assert client.get(f"/api/records/{rec['id']}", headers=auth(people["viewer"].token)).json()["retire_reason"] == "superseded by SOP-2"
    assert client.patch(f"/api/records/{rec['id']}", json={"version": 1, "payload": {"title": "zombie"}, "reason": "revive"},
                        headers=auth(op.token)).status_code == 409
    assert client.delete(f"/api/records/{rec['id']}", headers=auth(admin.token)).status_code == 405


@pytest.mark.requirement("21CFR11.10(c)", "ALCOA+:Original", "ALCOA+:Enduring")
def test_versions_are_immutable_in_the_database(client: httpx.Client, tenant: Tenant, people: dict[str, Person]) -> None:
    rec = create(client, people["op"], "document", {"title": "Original"}).json()
    for statement in ("update record_versions set payload = '{\"title\":\"forged\"}'", "delete from record_versions"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with db.tenant_tx(tenant.id) as conn:
                conn.execute(statement + " where record_id = %s", (rec["id"],))
    with psycopg.connect(os.environ["DATABASE_OWNER_URL"]) as conn:
        conn.execute("select set_config('app.tenant_id', %s, false)", (tenant.id,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="immutable"):
            conn.execute("update record_versions set reason = 'x' where record_id = %s", (rec["id"],))


def test_list_records_filters_and_paginates(client: httpx.Client, people: dict[str, Person]) -> None:
    op = people["op"]
    ids = [create(client, op, "document", {"title": f"Doc {n}"}).json()["id"] for n in range(5)]
    create(client, op, "invoice", INVOICE)
    seen, after = [], None
    while True:
        params: dict[str, Any] = {"type": "document", "limit": 2, **({"after": after} if after else {})}
        page = client.get("/api/records", params=params, headers=auth(op.token)).json()
        seen += [r["id"] for r in page["records"]]
        if not (after := page["next"]):
            break
    assert seen == ids
    assert client.get("/api/records", params={"after": "bm90IGEgY3Vyc29y"}, headers=auth(op.token)).status_code == 422


# --- attachments -------------------------------------------------------------------------------


def attach(c: httpx.Client, who: Person, record_id: str, data: bytes, name: str = "report.pdf",
           content_type: str = "application/pdf", **params: Any) -> httpx.Response:
    return c.post(f"/api/records/{record_id}/attachments", content=data, params=params,
                  headers={**auth(who.token), "Content-Type": content_type,
                           "Content-Disposition": f'attachment; filename="{name}"'})


def _blobs(tenant_id: str, sha256: str) -> list[str]:
    container = storage.blob_service().get_container_client(attachments.CONTAINER)
    return [b.name for b in container.list_blobs(name_starts_with="tenants/") if b.name.endswith(sha256)
            and (tenant_id is None or b.name.startswith(f"tenants/{tenant_id}/"))]


def test_same_attachment_is_one_blob_per_tenant_never_shared(
    client: httpx.Client, tenant: Tenant, people: dict[str, Person], make_person: PersonFactory
) -> None:
    from tests.conftest import create_tenant

    data = b"%PDF-1.7\n" + uuid.uuid4().bytes * 100
    sha = hashlib.sha256(data).hexdigest()
    op = people["op"]
    r1 = create(client, op, "document", {"title": "A"}).json()
    r2 = create(client, op, "document", {"title": "B"}).json()
    first = attach(client, op, r1["id"], data)
    assert first.status_code == 201, first.text
    assert first.json()["sha256"] == sha and first.json()["version"] == 2
    assert attach(client, op, r2["id"], data).status_code == 201
    assert _blobs(tenant.id, sha) == [f"tenants/{tenant.id}/sha256/{sha}"]
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:10]}", name="Other", region="uksouth")
    other_op = make_person(other.id, "OPERATOR")
    r3 = create(client, other_op, "document", {"title": "C"}).json()
    assert attach(client, other_op, r3["id"], data).status_code == 201
    assert _blobs(other.id, sha) == [f"tenants/{other.id}/sha256/{sha}"]
    # tenant B cannot read tenant A's copy through its own record or A's record id
    assert client.get(f"/api/records/{r1['id']}/attachments/{sha}", headers=auth(other_op.token)).status_code == 404
    down = client.get(f"/api/records/{r1['id']}/attachments/{sha}", headers=auth(op.token))
    assert down.status_code == 200 and down.content == data
    assert down.headers["content-type"] == "application/pdf" and down.headers["x-content-sha256"] == sha
    assert 'filename="report.pdf"' in down.headers["content-disposition"]


@pytest.mark.requirement("21CFR11.10(c)", "ALCOA+:Accurate", "ALCOA+:Original")
def test_altered_blob_is_refused_and_recorded(client: httpx.Client, tenant: Tenant, people: dict[str, Person]) -> None:
    op = people["op"]
    data = b"original contents " + uuid.uuid4().bytes
    sha = hashlib.sha256(data).hexdigest()
    rec = create(client, op, "document", {"title": "Evidence"}).json()
    assert attach(client, op, rec["id"], data, name="e.txt", content_type="text/plain").status_code == 201
    blob = storage.blob_service().get_blob_client(attachments.CONTAINER, attachments.blob_name(tenant.id, sha))
    blob.upload_blob(b"tampered contents", overwrite=True)  # someone with storage rights
    resp = client.get(f"/api/records/{rec['id']}/attachments/{sha}", headers=auth(op.token))
    assert resp.status_code == 502 and resp.json()["type"] == "urn:custos:problem:integrity-failure"
    assert b"tampered" not in resp.content
    assert events(tenant.id, "integrity.attachment_mismatch")[-1]["after"]["expected_sha256"] == sha


def test_attachment_rules(client: httpx.Client, people: dict[str, Person]) -> None:
    op = people["op"]
    rec = create(client, op, "document", {"title": "Rules"}).json()
    assert attach(client, op, rec["id"], b"MZ\x90\x00", name="x.exe", content_type="application/x-msdownload").status_code == 415
    assert attach(client, op, rec["id"], b"", content_type="text/plain").status_code == 422
    assert attach(client, op, rec["id"], b"hello", content_type="text/plain", version=7).status_code == 409
    assert attach(client, op, str(uuid.uuid4()), b"hello", content_type="text/plain").status_code == 404
    ok = attach(client, op, rec["id"], b"hello", name="../../etc/passwd", content_type="text/plain", version=1)
    assert ok.status_code == 201 and "/" not in ok.json()["filename"]


def test_attachment_size_limit() -> None:
    h = Host(env={"ATTACHMENT_MAX_BYTES": "2048"})
    try:
        from tests.conftest import create_session_row, create_tenant, create_user, token_for

        with db.platform_tx() as conn:
            t = create_tenant(conn, slug=f"s-{uuid.uuid4().hex[:10]}", name="Size", region="uksouth")
        user = create_user(t.id, "OPERATOR")
        token = token_for(user["id"], t.id, "OPERATOR", session_id=create_session_row(t.id, user["id"]))
        with httpx.Client(base_url=h.url, timeout=30) as c:
            rec = c.post("/api/records", json={"type": "document", "payload": {"title": "Big"}}, headers=auth(token)).json()
            resp = c.post(f"/api/records/{rec['id']}/attachments", content=b"x" * 4096,
                          headers={**auth(token), "Content-Type": "text/plain"})
            assert resp.status_code == 413
    finally:
        h.stop()


# --- card data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    {"title": "Card", "body": f"charge {CARD} please"},
    {"title": "Card", "body": "4111-1111-1111-1111"},
    {"title": "Card", "document_number": "5555555555554444"},
    {"title": "CVV", "cvv": "123"},
    {"title": "Nested", "body": "x", "extra": [{"card": {"security_code": "999"}}]},
])
def test_card_data_is_refused_and_stored_nowhere(host: Host, client: httpx.Client, tenant: Tenant, people: dict[str, Person],
                                                 payload: dict[str, Any]) -> None:
    resp = create(client, people["op"], "document", payload)
    assert resp.status_code == 422, resp.text
    assert resp.json()["type"] == "urn:custos:problem:card-data-refused"
    numbers = [CARD, CARD.replace(" ", ""), CARD.replace(" ", "-"), "5555555555554444"]
    assert not any(n in resp.text for n in numbers)
    dump = _tenant_dump(tenant.id)
    assert not any(n in dump for n in numbers) and "security_code" not in dump and '"cvv"' not in dump
    assert not any(n in host.log() for n in numbers)


def test_card_numbers_in_queries_and_payment_methods(client: httpx.Client, people: dict[str, Person]) -> None:
    admin = people["admin"]
    assert client.get("/api/records", params={"type": "4111111111111111"}, headers=auth(admin.token)).status_code == 422
    pm = {"gateway": "stripe", "gateway_token": "pm_1Nq2", "brand": "visa", "last4": "1111", "exp_month": 12, "exp_year": 2030}
    resp = client.post("/api/payment-methods", json=pm, headers=auth(admin.token))
    assert resp.status_code == 201 and resp.json()["last4"] == "1111" and "gateway_token" not in resp.json()
    assert client.post("/api/payment-methods", json={**pm, "card_number": CARD}, headers=auth(admin.token)).status_code == 422
    assert client.post("/api/payment-methods", json={**pm, "last4": "11111"}, headers=auth(admin.token)).status_code == 422
    listed = client.get("/api/payment-methods", headers=auth(admin.token)).json()["payment_methods"]
    assert [p["brand"] for p in listed] == ["visa"] and "pm_1Nq2" not in json.dumps(listed)
    # numbers that fail Luhn, or are too short, are ordinary numbers
    assert create(client, admin, "document", {"title": "PO 4111111111111112"}).status_code == 201


DISGUISED = {
    "dots": "4111.1111.1111.1111",
    "no-break spaces": "4111\u00a01111\u202f1111\u20071111",
    "zero-width": "4111\u200b1111\u20601111\ufeff1111",
    "full-width digits": "\uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11",
    "Arabic-Indic digits": "\u0665\u0665\u0665\u0665\u0665\u0665\u0665\u0665\u0665\u0665\u0665\u0665\u0664\u0664\u0664\u0664",
    "Devanagari digits": "\u096a\u0967\u0967\u0967 \u0967\u0967\u0967\u0967 \u0967\u0967\u0967\u0967 \u0967\u0967\u0967\u0967",
    "en dashes and soft hyphens": "5555\u20135555\u00ad5555\u20144444",
    "underscores": "5555_5555_5555_4444",
    "slashes": "4111/1111/1111/1111",
}


def _pan(text: str) -> str:
    return re.sub(r"[ ._/+-]", "", normalise(text))


def _leaks(text: str, *disguised: str) -> bool:
    """Whether the digits of any of the numbers can be read from the text, in any disguise."""
    flat = _pan(text)
    return any(_pan(d) in flat for d in disguised)


@pytest.mark.parametrize("disguise", DISGUISED)
def test_disguised_card_numbers_are_refused_in_payloads_and_queries(
    host: Host, client: httpx.Client, tenant: Tenant, people: dict[str, Person], disguise: str
) -> None:
    number, op = DISGUISED[disguise], people["op"]
    resp = create(client, op, "document", {"title": "Card", "body": f"charge {number} please"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["type"] == "urn:custos:problem:card-data-refused"
    assert resp.json()["errors"][0]["location"] == ["body", "payload", "body"]
    query = client.get("/api/records", params={"type": number}, headers=auth(op.token))
    assert query.status_code == 422 and query.json()["errors"][0]["location"] == ["query", "type"]
    assert not _leaks(resp.text + query.text + _tenant_dump(tenant.id) + host.log(), number)


@pytest.mark.parametrize("key", ["card_cvv2", "cvn", "cvv_code", "card-verification", "CardSecurityCode"])
def test_security_codes_under_any_key_are_refused(client: httpx.Client, tenant: Tenant, people: dict[str, Person],
                                                  key: str) -> None:
    resp = create(client, people["op"], "document", {"title": "Pay", "payment": {key: "737"}})
    assert resp.status_code == 422 and resp.json()["type"] == "urn:custos:problem:card-data-refused"
    assert key not in _tenant_dump(tenant.id)


@pytest.mark.parametrize(("content_type", "data"), [
    ("text/plain", f"Customer called; card {DISGUISED['dots']} exp 12/30".encode()),
    ("text/csv", b"name,card,amount\nAda,4111 1111 1111 1111,10.00\n"),
    ("text/csv", f"name,card\nAda,{DISGUISED['Arabic-Indic digits']}\n".encode()),
    ("text/plain; charset=utf-16", f"card {DISGUISED['full-width digits']}".encode("utf-16")),
    ("text/plain", "card 4111 1111 1111 1111".encode("utf-16-le")),  # no byte-order mark, no charset
    ("application/xml", b"<payment><pan>&#52;111&#160;1111&#160;1111&#160;1111</pan></payment>"),
    ("application/json", json.dumps({"note": DISGUISED["zero-width"]}).encode()),
])
def test_text_attachments_holding_card_numbers_are_refused_and_stored_nowhere(
    host: Host, client: httpx.Client, tenant: Tenant, people: dict[str, Person], content_type: str, data: bytes
) -> None:
    op = people["op"]
    rec = create(client, op, "document", {"title": "Call notes"}).json()
    resp = attach(client, op, rec["id"], data, name="notes.txt", content_type=content_type)
    assert resp.status_code == 422, resp.text
    assert resp.json()["type"] == "urn:custos:problem:card-data-refused"
    assert resp.json()["errors"][0]["location"][0] == "body"
    assert _blobs(tenant.id, hashlib.sha256(data).hexdigest()) == []
    assert client.get(f"/api/records/{rec['id']}", headers=auth(op.token)).json()["version"]["version"] == 1
    assert events(tenant.id, "record.attachment_added") == []


def test_text_attachments_with_ordinary_numbers_are_stored(client: httpx.Client, people: dict[str, Person]) -> None:
    op = people["op"]
    rec = create(client, op, "document", {"title": "Lot list"}).json()
    text = "lot,batch,amount\n" + "".join(f"{uuid.uuid4()},4111111111111112,{i}.50\n" for i in range(200))
    resp = attach(client, op, rec["id"], text.encode(), name="lots 2026-11-22.csv", content_type="text/csv")
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize("disposition", [
    'attachment; filename="card 4111.1111.1111.1111.pdf"',
    'attachment; filename="receipt_5555_5555_5555_4444.pdf"',
    "attachment; filename*=UTF-8''4111%C2%A01111%E2%80%8B1111%EF%BC%8D1111.pdf",
])
def test_file_names_holding_card_numbers_are_refused(host: Host, client: httpx.Client, tenant: Tenant,
                                                     people: dict[str, Person], disposition: str) -> None:
    op = people["op"]
    rec = create(client, op, "document", {"title": "Receipt"}).json()
    data = b"%PDF-1.7\n" + uuid.uuid4().bytes
    resp = client.post(f"/api/records/{rec['id']}/attachments", content=data,
                       headers={**auth(op.token), "Content-Type": "application/pdf", "Content-Disposition": disposition})
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["location"] == ["header", "Content-Disposition", "filename"]
    assert _blobs(tenant.id, hashlib.sha256(data).hexdigest()) == []
    assert not _leaks(_tenant_dump(tenant.id) + host.log(), "4111111111111111", "5555555555554444")


def test_card_numbers_in_the_path_and_user_agent_never_reach_logs_or_the_audit_trail(
    host: Host, client: httpx.Client, tenant: Tenant, people: dict[str, Person]
) -> None:
    op = people["op"]
    agent = "Mozilla/5.0 (X11; card 4111.1111.1111.1111) Gecko/20100101"
    paths = ["/api/records/5555-5555-5555-4444", "/api/records/4111%C2%A01111%C2%A01111%C2%A01111",
             "/api/no-such-route/4111_1111_1111_1111"]
    for path in paths:
        assert client.get(path, headers={**auth(op.token), "User-Agent": agent}).status_code == 404
    created = client.post("/api/records", json={"type": "document", "payload": {"title": "UA"}},
                          headers={**auth(op.token), "User-Agent": agent})
    assert created.status_code == 201
    event = events(tenant.id, "record.created")[-1]
    assert event["user_agent"].startswith("Mozilla/5.0 (X11; card ") and MARKER in event["user_agent"]
    log = host.log()
    assert MARKER in log and "Gecko/20100101" in log
    assert not _leaks(log + _tenant_dump(tenant.id), "4111111111111111", "5555555555554444")


def _tenant_dump(tenant_id: str) -> str:
    parts = []
    with db.tenant_tx(tenant_id) as conn:
        for table in ("records", "record_versions", "audit_events", "payment_methods", "outbox"):
            parts += [json.dumps(r, default=str) for r in conn.execute(f"select * from {table}").fetchall()]  # noqa: S608
    return "\n".join(parts)


# --- cancelled tenants -----------------------------------------------------------------------------


def test_cancelled_tenant_is_read_only(client: httpx.Client, tenant: Tenant, people: dict[str, Person],
                                       make_person: PersonFactory) -> None:
    op, admin = people["op"], people["admin"]
    rec = create(client, op, "document", {"title": "Keep"}).json()
    operator = make_person(None)
    resp = client.post(f"/api/platform/tenants/{tenant.id}/cancel", json={"reason": "contract ended"}, headers=auth(operator.token))
    assert resp.status_code == 200 and resp.json()["status"] == "CANCELLED"
    locked = create(client, op, "document", {"title": "New"})
    assert locked.status_code == 423 and locked.json()["type"] == "urn:custos:problem:tenant-read-only"
    assert client.patch(f"/api/records/{rec['id']}", json={"version": 1, "payload": {"title": "x"}, "reason": "edit"},
                        headers=auth(op.token)).status_code == 423
    assert client.get(f"/api/records/{rec['id']}", headers=auth(op.token)).status_code == 200
    assert client.get("/api/audit/export", headers=auth(admin.token)).status_code == 200
    assert client.post(f"/api/platform/tenants/{tenant.id}/cancel", json={"reason": "again"},
                       headers=auth(operator.token)).status_code == 409


# --- poison payloads -------------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth - 1):
        value = [value]
    return value


def test_a_payload_nested_deeper_than_the_limit_is_refused_and_nothing_is_stored(
        client: httpx.Client, tenant: Tenant, people: dict[str, Person]) -> None:
    admin = people["admin"]
    assert client.post("/api/record-types", json={"name": "free", "display_name": "Free", "schema": {"type": "object"},
                                                  "reason": "any shape"}, headers=auth(admin.token)).status_code == 201
    before = len(events(tenant.id, "record.created"))
    resp = create(client, admin, "free", {"deep": _nested(300)})
    assert resp.status_code == 422 and resp.json()["type"] == "urn:custos:problem:json-too-deep"
    assert len(events(tenant.id, "record.created")) == before
    assert client.get("/api/records", headers=auth(admin.token)).json()["records"] == []


@pytest.mark.parametrize("depth", [300, 440])
def test_a_poison_payload_stored_by_an_older_version_still_reads_back(
        client: httpx.Client, tenant: Tenant, people: dict[str, Person], depth: int) -> None:
    """Older versions stored whatever depth their canonicalisation survived (~450). Such rows must render."""
    from shared.identity.guards import Principal
    from shared.records import records
    from shared.tenancy.rbac import role_permissions

    admin = people["admin"]
    principal = Principal(user_id=admin.id, tenant_id=tenant.id, session_id=str(uuid.uuid4()), role="ADMIN",
                          permissions=role_permissions("ADMIN"), name="Ada Admin")
    payload = {"deep": _nested(depth)}
    with db.tenant_tx(tenant.id) as conn:
        records.create_type(conn, actor=principal, name="free", display_name="Free", schema={"type": "object"},
                            reason="any shape", meta=audit.RequestMeta(), audit_actor=audit.Actor(admin.id, "Ada Admin"))
        rec = records.create_record(conn, actor=principal, type_name="free", payload=payload, references=[],
                                    meta=audit.RequestMeta(), audit_actor=audit.Actor(admin.id, "Ada Admin"))
    h = auth(admin.token)
    for path in (f"/api/records/{rec['id']}", f"/api/records/{rec['id']}/versions/1"):
        resp = client.get(path, headers=h)
        assert resp.status_code == 200, (path, resp.text[:300])
        body = resp.json()
        assert (body.get("payload") or body["version"]["payload"]) == payload
    versions = client.get(f"/api/records/{rec['id']}/versions", headers=h)
    assert versions.status_code == 200 and versions.json()["versions"][0]["payload"] == payload
    manifest = client.get(f"/api/records/{rec['id']}/versions/1/manifest", headers=h)
    assert manifest.status_code == 200, manifest.text[:300]
    page = client.get("/api/audit", params={"action": "record.created"}, headers=h)
    assert page.status_code == 200 and page.json()["events"][-1]["after"]["payload"] == payload
    listing = client.get("/api/records", headers=h)
    assert listing.status_code == 200


def test_a_record_is_created_and_read_in_one_statement_each(tenant: Tenant, people: dict[str, Person],
                                                            wire: Wire) -> None:
    """A create is: its type, the record with its first version, its audit event; a read is
    one statement with its signatures. Each answers what the separate statements answered."""
    from shared.identity.guards import Principal
    from shared.records import records
    from shared.tenancy.rbac import role_permissions

    op = people["op"]
    principal = Principal(user_id=op.id, tenant_id=tenant.id, session_id=str(uuid.uuid4()), role="OPERATOR",
                          permissions=role_permissions("OPERATOR"), name="Otto Operator")
    actor = audit.Actor(op.id, "Otto Operator")
    with db.tenant_tx(tenant.id) as conn:  # the tenant's first event and its built-in types exist before counting
        records.create_record(conn, actor=principal, type_name="document", payload={"title": "first"},
                              references=[], meta=audit.RequestMeta(), audit_actor=actor)
    with db.tenant_tx(tenant.id) as conn:
        wire.clear()
        created = records.create_record(conn, actor=principal, type_name="document", payload={"title": "T"},
                                        references=[], meta=audit.RequestMeta(), audit_actor=actor)
        assert len(wire.round_trips()) == 3, wire.round_trips()
        wire.clear()
        read = records.get_record(conn, created["id"])
        assert len(wire.round_trips()) == 1, wire.round_trips()
        assert read == created
        locked = records.get_record(conn, created["id"], lock=True)
        assert locked == read
    wire.clear()
    with db.tenant_tx(tenant.id) as conn:  # a create that commits with its event: begin, type, insert + event + commit
        again = records.create_record(conn, actor=principal, type_name="document", payload={"title": "C"},
                                      references=[], meta=audit.RequestMeta(), audit_actor=actor, commit=True)
    assert len(wire.round_trips()) == 3, wire.round_trips()
    with db.tenant_tx(tenant.id) as conn:
        assert records.get_record(conn, again["id"]) == again
    wire.clear()
    with db.tenant_tx(tenant.id) as conn:  # a read that commits with its statement: begin, read + commit
        committed = records.get_record(conn, created["id"], commit=True)
    assert len(wire.round_trips()) == 2, wire.round_trips()
    assert committed == read
    with pytest.raises(NotFound), db.tenant_tx(tenant.id) as conn:
        records.get_record(conn, str(uuid.uuid4()), commit=True)
    assert read["version"]["payload"] == {"title": "T"} and read["signatures"] == []
    for done in (created, again):
        [event] = [e for e in events(tenant.id, "record.created") if e["target_id"] == done["id"]]
        assert event["after"]["checksum"] == done["version"]["checksum"]
        assert event["after"]["references"] == done["version"]["references"] == []
    assert audit.verify_tenant(tenant.id, None).valid


def test_a_committed_create_whose_insert_fails_writes_no_event(tenant: Tenant, people: dict[str, Person]) -> None:
    """The record's statement, its event and the commit travel together: when the database
    refuses the record, the event queued after it is never written and nothing commits."""
    from shared.identity.guards import Principal
    from shared.records import records
    from shared.tenancy.rbac import role_permissions

    op = people["op"]
    with db.tenant_tx(tenant.id) as conn:  # the chain and the built-in types exist
        audit.append(conn, tenant_id=tenant.id, actor=audit.Actor(op.id, "Otto"), action="test.ready")
    # An actor id the records table cannot hold (not a UUID): the insert fails inside the pipeline.
    forged = Principal(user_id="not-a-uuid", tenant_id=tenant.id, session_id=str(uuid.uuid4()), role="OPERATOR",
                       permissions=role_permissions("OPERATOR"), name="Forged")
    before = len(events(tenant.id, "record.created"))
    with pytest.raises(InvalidValue), db.tenant_tx(tenant.id) as conn:
        records.create_record(conn, actor=forged, type_name="document", payload={"title": "refused"}, references=[],
                              meta=audit.RequestMeta(), audit_actor=audit.Actor(op.id, "Otto"), commit=True)
    assert len(events(tenant.id, "record.created")) == before
    assert audit.verify_tenant(tenant.id, None).valid
