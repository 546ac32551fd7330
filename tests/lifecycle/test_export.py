"""Tenant export through the real host, PostgreSQL and Azurite: the job runs from the queue, its
files validate against their schemas, counts match the database, the manifest verifies offline,
and links, tenants and tampering are attacked."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from shared.audit.chain import RequestMeta
from shared.core import db
from shared.identity.passwords import hash_password
from shared.lifecycle import api, export
from shared.lifecycle.errors import ExportLinkExpired, ExportLinkInvalid, ExportSchemaUnknown
from shared.tenancy.tenants import Tenant, create_tenant
from tests.conftest import Person, PersonFactory, auth, create_session_row, create_user, token_for

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Export-Harbour-Lantern-" + uuid.uuid4().hex[:6]
FORMULA = "=HYPERLINK(\"http://evil.example\",\"click\")"
SECRET_MARKERS = ("$argon2", "password_hash", "refresh_hash", "secret_ciphertext", "token_hash", "gateway_token")


def _with_password(make_person: PersonFactory, tenant_id: str, role: str, name: str) -> Person:
    p = make_person(tenant_id, role, name=name)
    with db.tenant_tx(tenant_id) as conn:
        conn.execute("update users set password_hash = %s where id = %s", (hash_password(PASSWORD), p.id))
    return p


def _populate(c: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> dict[str, Any]:
    """Records with versions, a formula-looking payload, an attachment and a signature."""
    author = _with_password(make_person, tenant.id, "OPERATOR", "Alice Author")
    admin = _with_password(make_person, tenant.id, "ADMIN", "Ada Admin")
    rec = c.post("/api/records", json={"type": "document", "payload": {"title": FORMULA}}, headers=auth(author.token))
    assert rec.status_code == 201, rec.text
    rid = rec.json()["id"]
    edited = c.patch(f"/api/records/{rid}", json={"version": 1, "payload": {"title": "+SUM(A1:A9)"}, "reason": "fix"},
                     headers=auth(author.token))
    assert edited.status_code == 200, edited.text
    content = b"%PDF-1.4 export test " + uuid.uuid4().bytes
    attached = c.post(f"/api/records/{rid}/attachments", content=content, headers={
        **auth(author.token), "Content-Type": "application/pdf", "Content-Disposition": 'attachment; filename="r.pdf"'})
    assert attached.status_code in (200, 201), attached.text
    version = attached.json().get("version") or attached.json().get("record", {}).get("current_version") or 3
    signed = c.post(f"/api/records/{rid}/versions/{version}/signatures",
                    json={"password": PASSWORD, "meaning": "AUTHORED", "reason": "authorship"}, headers=auth(author.token))
    assert signed.status_code == 201, signed.text
    other = c.post("/api/records", json={"type": "document", "payload": {"title": "@SUM(1)"}}, headers=auth(author.token))
    assert other.status_code == 201
    return {"admin": admin, "author": author, "content": content}


def _wait_done(c: httpx.Client, token: str, export_id: str) -> dict[str, Any]:
    """Wait for the queue-triggered job (an event: the host's poller), with a generous deadline."""
    deadline = time.monotonic() + 120
    while True:
        shown = c.get(f"/api/exports/{export_id}", headers=auth(token))
        assert shown.status_code == 200, shown.text
        body = shown.json()
        if body["state"] in ("DONE", "FAILED"):
            return dict(body)
        assert time.monotonic() < deadline, f"export still {body['state']}"
        time.sleep(0.2)


def _download_all(c: httpx.Client, files: list[dict[str, Any]], folder: Path) -> None:
    for entry in files:
        got = c.get(entry["url"])
        assert got.status_code == 200, (entry["path"], got.text)
        target = folder / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(got.content)


def _count(tenant_id: str, sql: str) -> int:
    with db.tenant_tx(tenant_id) as conn:
        row = conn.execute(sql, (tenant_id,)).fetchone()
        assert row is not None
        return int(row["count"])


def _verify(folder: Path, keys: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "verify_export.py"), str(folder), "--keys", str(keys)],
                          capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def exported(host: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One populated tenant exported through the host, every file downloaded."""
    with db.platform_tx() as conn:
        tenant = create_tenant(conn, slug=f"x-{uuid.uuid4().hex[:12]}", name="Export Tenant", region="uksouth")

    def make_person(tenant_id: str, role: str = "ADMIN", *, name: str | None = None) -> Person:
        row = create_user(tenant_id, role, name=name)
        sid = create_session_row(tenant_id, row["id"])
        return Person(row["id"], tenant_id, role, row["email"], token_for(row["id"], tenant_id, role, name=name,
                                                                          session_id=sid))

    folder = tmp_path_factory.mktemp("export")
    with httpx.Client(base_url=host.url, timeout=30) as c:
        data = _populate(c, tenant, make_person)
        admin = data["admin"]
        started = c.post("/api/exports", json={"reason": "customer asked for their data"}, headers=auth(admin.token))
        assert started.status_code == 202, started.text
        assert started.headers["location"] == f"/api/exports/{started.json()['id']}"
        assert started.json()["state"] in ("QUEUED", "RUNNING", "DONE")
        body = _wait_done(c, admin.token, started.json()["id"])
        assert body["state"] == "DONE", body
        _download_all(c, body["files"], folder)
        keys = folder.parent / f"{folder.name}-keys.json"
        keys.write_text(c.get("/.well-known/audit-keys.json").text)
    return {"tenant": tenant, "body": body, "folder": folder, "keys": keys, **data}


@pytest.mark.requirement("21CFR11.10(b)", "ALCOA+:Complete", "ALCOA+:Available")
def test_export_files_validate_against_their_schemas_and_counts_match_the_database(exported: dict[str, Any]) -> None:
    tenant, folder, body = exported["tenant"], exported["folder"], exported["body"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["tenant_id"] == tenant.id and manifest["export_id"] == body["id"]
    for name, table in manifest["tables"].items():
        schema = json.loads((folder / table["schema"]).read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        validator = Draft202012Validator(schema, format_checker=FormatChecker())
        lines = (folder / table["jsonl"]).read_text().splitlines()
        for line in lines:
            validator.validate(json.loads(line))
        assert len(lines) == table["rows"] == body["tables"][name], name
    expected = {
        "records": "select count(*) from records where tenant_id = %s",
        "record_versions": "select count(*) from record_versions where tenant_id = %s",
        "signatures": "select count(*) from signatures where tenant_id = %s",
        "users": "select count(*) from users where tenant_id = %s",
        "sessions": "select count(*) from sessions where tenant_id = %s",
    }
    for name, sql in expected.items():
        assert manifest["tables"][name]["rows"] == _count(tenant.id, sql), name
    assert manifest["tables"]["records"]["rows"] == 2 and manifest["tables"]["record_versions"]["rows"] >= 3
    assert manifest["tables"]["signatures"]["rows"] == 1 and manifest["tables"]["attachments"]["rows"] >= 1
    # Audit events up to the snapshot: at least everything before the export was requested.
    events = [json.loads(line) for line in (folder / "tables/audit_events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert any(e["action"] == "export.requested" for e in events)


def test_attachments_are_in_the_export_byte_for_byte(exported: dict[str, Any]) -> None:
    import hashlib

    sha = hashlib.sha256(exported["content"]).hexdigest()
    assert (exported["folder"] / "attachments" / sha).read_bytes() == exported["content"]


@pytest.mark.requirement("21CFR11.10(b)", "ALCOA+:Available")
def test_the_manifest_verifies_offline_with_the_published_keys(exported: dict[str, Any]) -> None:
    result = _verify(exported["folder"], exported["keys"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "VALID" in result.stdout


def test_a_tampered_file_or_manifest_or_a_stranger_key_fails_verification(exported: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported["folder"], copy)
    records = copy / "tables/records.jsonl"
    records.write_text(records.read_text().replace("APPROVED", "REJECTED").replace("DRAFT", "APPROVED"))
    assert _verify(copy, exported["keys"]).returncode == 1
    shutil.rmtree(copy)
    shutil.copytree(exported["folder"], copy)
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"rows": 2', '"rows": 3'))
    out = _verify(copy, exported["keys"])
    assert out.returncode == 1 and "signature does not verify" in out.stdout
    stranger = tmp_path / "stranger.json"
    stranger.write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "other", "x": "AAAA"}]}))
    assert _verify(exported["folder"], stranger).returncode == 1


def test_no_secret_reaches_the_export(exported: dict[str, Any]) -> None:
    for path in exported["folder"].rglob("*"):
        if path.is_file() and "attachments" not in path.parts:
            text = path.read_text(errors="replace")
            for marker in SECRET_MARKERS:
                assert marker not in text, (path, marker)


def test_csv_cells_that_a_spreadsheet_would_run_are_defused(exported: dict[str, Any]) -> None:
    rows = list(csv.DictReader(io.StringIO((exported["folder"] / "tables/record_versions.csv").read_text())))
    payloads = [r["payload"] for r in rows]
    assert all(not p.startswith(("=", "+", "-", "@")) for p in payloads)
    jsonl = (exported["folder"] / "tables/record_versions.jsonl").read_text()
    assert json.dumps(FORMULA)[1:-1] in jsonl  # the faithful copy keeps the value
    assert export.csv_cell(FORMULA) == "'" + FORMULA and export.csv_cell("+1") == "'+1"
    assert export.csv_cell(-5) == "-5" and export.csv_cell("@x") == "'@x" and export.csv_cell("plain") == "plain"
    assert export.csv_cell("\tcmd") == "'\tcmd" and export.csv_cell(None) == ""


def test_the_export_and_each_download_are_audited(exported: dict[str, Any]) -> None:
    with db.tenant_tx(exported["tenant"].id) as conn:
        rows = conn.execute("select action, reason, after from audit_events where target_id = %s order by seq",
                            (exported["body"]["id"],)).fetchall()
    actions = [r["action"] for r in rows]
    assert actions[0] == "export.requested" and rows[0]["reason"] == "customer asked for their data"
    assert {"job.started", "job.done", "export.links_issued"} <= set(actions)
    downloaded = [r["after"]["file"] for r in rows if r["action"] == "export.downloaded"]
    assert sorted(downloaded) == sorted(f["path"] for f in exported["body"]["files"])


def test_links_are_bound_to_export_file_and_time(host: Any, exported: dict[str, Any]) -> None:
    body = exported["body"]
    manifest_link = next(f for f in body["files"] if f["path"] == "manifest.json")
    query = dict(httpx.URL(manifest_link["url"]).params)
    token = query["token"]
    with httpx.Client(base_url=host.url, timeout=30) as c:
        other_file = c.get(f"/api/exports/{body['id']}/download", params={"file": "tables/users.csv", "token": token})
        assert other_file.status_code == 403 and other_file.json()["type"] == "urn:custos:problem:export-link-invalid"
        other_export = c.get(f"/api/exports/{uuid.uuid4()}/download", params={"file": "manifest.json", "token": token})
        assert other_export.json()["type"] == "urn:custos:problem:export-link-invalid"
        payload, mac = token.split(".")
        forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
        refused = c.get(f"/api/exports/{body['id']}/download", params={"file": "manifest.json", "token": forged})
        assert refused.status_code == 403 and "traceback" not in refused.text.lower()
        garbage = c.get(f"/api/exports/{body['id']}/download", params={"file": "manifest.json", "token": "x" * 40})
        assert garbage.status_code == 403
    later = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(ExportLinkExpired):
        api.download(uuid.UUID(body["id"]), file="manifest.json", token=token, meta=RequestMeta(), now=later)
    with pytest.raises(ExportLinkInvalid):
        api.download(uuid.UUID(body["id"]), file="../manifest.json", token=token, meta=RequestMeta())


def test_another_tenant_cannot_see_or_start_from_this_export(client: httpx.Client, exported: dict[str, Any],
                                                             make_person: PersonFactory) -> None:
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    outsider = make_person(other.id, "ADMIN")
    hidden = client.get(f"/api/exports/{exported['body']['id']}", headers=auth(outsider.token))
    assert hidden.status_code == 404 and hidden.json()["type"] == "urn:custos:problem:not-found"
    job = client.get(f"/api/jobs/{exported['body']['id']}", headers=auth(exported["admin"].token))
    assert job.status_code == 200 and job.json()["kind"] == "export"


@pytest.mark.parametrize("role", ["MANAGER", "REVIEWER", "VIEWER"])
def test_only_an_admin_may_export(client: httpx.Client, tenant: Tenant, make_person: PersonFactory, role: str) -> None:
    who = make_person(tenant.id, role)
    refused = client.post("/api/exports", json={"reason": "I would like it"}, headers=auth(who.token))
    assert refused.status_code == 403, refused.text


def test_an_export_needs_a_reason(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    assert client.post("/api/exports", json={}, headers=auth(admin.token)).status_code == 422
    assert client.post("/api/exports", json={"reason": "  "}, headers=auth(admin.token)).status_code == 422


def test_a_cancelled_tenant_may_still_export(client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    operator = make_person(None)
    cancelled_now = client.post(f"/api/platform/tenants/{tenant.id}/cancel", json={"reason": "contract ended"},
                                headers=auth(operator.token))
    assert cancelled_now.status_code == 200 and cancelled_now.json()["status"] == "CANCELLED"
    cancelled = admin
    locked = client.post("/api/records", json={"type": "document", "payload": {"title": "x"}},
                         headers=auth(cancelled.token))
    assert locked.status_code == 423  # the rule for cancelled tenants is in force...
    started = client.post("/api/exports", json={"reason": "final copy before purge"}, headers=auth(cancelled.token))
    assert started.status_code == 202, started.text  # ...and does not block the export
    body = _wait_done(client, admin.token, started.json()["id"])
    assert body["state"] == "DONE"


def test_every_tenant_table_is_exported_or_excluded_with_a_reason() -> None:
    with psycopg.connect(os.environ["DATABASE_OWNER_URL"], row_factory=psycopg.rows.dict_row) as conn:
        tables = export.tenant_tables(conn)  # type: ignore[arg-type]
        planned = {t.name for t in export.plan(conn)}  # type: ignore[arg-type]
    assert set(tables) - set(export.EXCLUDED_TABLES) <= planned
    assert all(reason for reason in export.EXCLUDED_TABLES.values())


def test_a_new_secret_looking_column_stops_the_export_instead_of_leaking() -> None:
    with psycopg.connect(os.environ["DATABASE_OWNER_URL"], row_factory=psycopg.rows.dict_row) as conn:
        conn.execute("alter table users add column api_token text")  # rolled back below
        try:
            with pytest.raises(ExportSchemaUnknown, match="api_token"):
                export.plan(conn)  # type: ignore[arg-type]
        finally:
            conn.rollback()



@pytest.mark.parametrize("value", ["=1+2", "+SUM(A1)", "-3", "@cmd", "\tx", "\rx", "plain", "'quoted", "", "a=b", "ünï"])
def test_the_databases_csv_guard_is_the_documented_policy(tenant: Tenant, value: str) -> None:
    """The CSV is written by PostgreSQL (COPY): its guard must be exactly `csv_cell`'s."""
    table = export.Table("t", [export.Column("v", "text", True)], "select %(v)s::text as v", "v")
    with db.tenant_tx(tenant.id) as conn:
        row = conn.execute(table.csv_query().replace("%(v)s", "%(v)s"), {"v": value}).fetchone()
    assert row is not None and (row["v"] or "") == export.csv_cell(value)


def _export_through_host(c: httpx.Client, admin: Person, folder: Path) -> dict[str, Any]:
    started = c.post("/api/exports", json={"reason": "archive check"}, headers=auth(admin.token))
    assert started.status_code == 202, started.text
    body = _wait_done(c, admin.token, started.json()["id"])
    assert body["state"] == "DONE", body["error"]
    _download_all(c, body["files"], folder)
    return body


def _cut_twice(client: httpx.Client, tenant: Tenant) -> list[Any]:
    """Two retention cuts of the tenant's chain, at seq 4 and then seq 8 (each signed first)."""
    from shared.audit import retention
    from tests.audit.test_chain import add_events, checkpoint_now
    from tests.audit.test_retention import just_after

    add_events(tenant.id, 10)
    checkpoint_now(client)
    first = retention.cut_tenant(tenant.id, window_days=retention.get_settings().audit_retention_min_days,
                                 now=just_after(tenant.id, 4))
    checkpoint_now(client)
    second = retention.cut_tenant(tenant.id, window_days=retention.get_settings().audit_retention_min_days,
                                  now=just_after(tenant.id, 8))
    assert first is not None and second is not None and (first.seq, second.from_seq, second.seq) == (4, 5, 8)
    return [first, second]


def test_retention_archives_are_in_the_export_and_cover_the_chain_with_the_audit_table(
        client: httpx.Client, tenant: Tenant, make_person: PersonFactory, tmp_path: Path) -> None:
    admin = make_person(tenant.id, "ADMIN")
    cuts = _cut_twice(client, tenant)
    folder = tmp_path / "export"
    body = _export_through_host(client, admin, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    assert [(a["from_seq"], a["to_seq"]) for a in manifest["audit_retention"]] == [(1, 4), (5, 8)]
    for entry, made in zip(manifest["audit_retention"], cuts, strict=True):
        assert entry["sha256"] == made.archive_sha256 == listed[entry["archive"]]["sha256"]
        assert entry["manifest"] in listed and entry["archive"] in {f["path"] for f in body["files"]}
        assert json.loads((folder / entry["manifest"]).read_text())["archive"]["sha256"] == made.archive_sha256
    archived = [json.loads(line)["seq"] for entry in manifest["audit_retention"]
                for line in (folder / entry["archive"]).read_text().splitlines() if '"type":"event"' in line]
    table = [json.loads(line)["seq"] for line in (folder / "tables/audit_events.jsonl").read_text().splitlines()]
    assert archived == list(range(1, 9)) and table[0] == 9
    assert archived + table == list(range(1, table[-1] + 1))  # together: seq 1..head, no gap, no overlap
    keys = tmp_path / "keys.json"
    keys.write_text(client.get("/.well-known/audit-keys.json").text)
    result = _verify(folder, keys)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_tampered_or_missing_retention_archive_fails_verification(
        client: httpx.Client, tenant: Tenant, make_person: PersonFactory, tmp_path: Path) -> None:
    import shutil

    admin = make_person(tenant.id, "ADMIN")
    _cut_twice(client, tenant)
    folder = tmp_path / "export"
    _export_through_host(client, admin, folder)
    keys = tmp_path / "keys.json"
    keys.write_text(client.get("/.well-known/audit-keys.json").text)
    manifest = json.loads((folder / "manifest.json").read_text())
    archive = folder / manifest["audit_retention"][0]["archive"]
    # An archived event rewritten: the file's hash and its signed retention checkpoint both catch it.
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    edited = copy / archive.relative_to(folder)
    edited.write_text(edited.read_text().replace('"reason":"step 1"', '"reason":"step X"'))
    out = _verify(copy, keys)
    assert out.returncode == 1 and "retention" in out.stdout, out.stdout
    # An archive withheld: the chain no longer begins at seq 1.
    shutil.rmtree(copy)
    shutil.copytree(folder, copy)
    (copy / archive.relative_to(folder)).unlink()
    out = _verify(copy, keys)
    assert out.returncode == 1 and "missing" in out.stdout, out.stdout


def test_an_archive_changed_in_storage_fails_the_export_instead_of_shipping_it(
        client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    from shared.core import storage

    admin = make_person(tenant.id, "ADMIN")
    cuts = _cut_twice(client, tenant)
    blob = storage.blob_service().get_blob_client(export.CONTAINER, cuts[1].archive)
    blob.upload_blob(blob.download_blob().readall().replace(b'"step 6"', b'"step Y"'), overwrite=True)
    started = client.post("/api/exports", json={"reason": "archive check"}, headers=auth(admin.token))
    assert started.status_code == 202, started.text
    body = _wait_done(client, admin.token, started.json()["id"])
    assert body["state"] == "FAILED" and body["error"]["type"].endswith("export-integrity"), body


def test_the_export_list_shows_only_this_tenants_exports_newest_first(client: httpx.Client, tenant: Tenant,
                                                                      make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    started = []
    for why in ("quarterly archive", "auditor request"):
        r = client.post("/api/exports", json={"reason": why}, headers=auth(admin.token))
        assert r.status_code == 202, r.text
        started.append(r.json()["id"])
    listed = client.get("/api/exports", headers=auth(admin.token))
    assert listed.status_code == 200, listed.text
    ids = [e["id"] for e in listed.json()["exports"]]
    assert ids[:2] == started[::-1]
    assert all(e["files"] is None and e["kind"] == "export" for e in listed.json()["exports"])
    assert [e["id"] for e in client.get("/api/exports?limit=1", headers=auth(admin.token)).json()["exports"]] == ids[:1]
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"o-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    theirs = client.get("/api/exports", headers=auth(make_person(other.id, "ADMIN").token))
    assert theirs.status_code == 200 and not set(started) & {e["id"] for e in theirs.json()["exports"]}
    refused = client.get("/api/exports", headers=auth(make_person(tenant.id, "REVIEWER").token))
    assert refused.status_code == 403, refused.text
    bad = client.get("/api/exports?limit=0", headers=auth(admin.token))
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
