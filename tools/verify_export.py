#!/usr/bin/env python3
"""Verify a downloaded Custos tenant export offline, trusting nothing of Custos but its keys.

    python verify_export.py <folder> --keys audit-keys.json

`<folder>` holds the export's files at their paths (manifest.json, manifest.json.sig,
tables/..., schemas/..., attachments/...). `--keys` is the JWK set published at
/.well-known/audit-keys.json (the keys that sign audit checkpoints sign exports too).
Checks: the Ed25519 signature of manifest.json's exact bytes by a published key; every
file the manifest lists is present with its SHA-256 and size; each table's JSONL has as
many lines, and its CSV as many records after the header, as the manifest counts; no file
is present that the manifest does not list; each audit retention archive's signed retention
checkpoint verifies and names that archive's SHA-256, and the archives plus
tables/audit_events.jsonl hold one unbroken chain from seq 1 (every checksum recomputed, every
link followed, every cut's checksum found at its seq).

Needs only Python 3.11+ (the Ed25519 verifier of verify_audit_export.py beside it).
Exit status 0: valid. 1: invalid (every failure is printed). 2: unreadable input.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rfc8785  # noqa: E402
from verify_audit_export import FIELDS, RETENTION_KIND, Invalid, ed25519_verify  # noqa: E402
from verify_audit_export import verify as verify_chain  # noqa: E402

SIGNED_FILES = ("manifest.json", "manifest.json.sig")


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _csv_records(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.reader(fh)) - 1  # minus the header


def _jsonl_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def verify(folder: Path, jwks: dict[str, Any]) -> list[str]:
    """Every failure found (empty: the export is intact and signed by a published key)."""
    failures: list[str] = []
    manifest_bytes = (folder / "manifest.json").read_bytes()
    signature = json.loads((folder / "manifest.json.sig").read_bytes())
    keys = {k["kid"]: _b64url(k["x"]) for k in jwks.get("keys", []) if k.get("crv") == "Ed25519"}
    public = keys.get(str(signature.get("key_id")))
    if public is None:
        failures.append(f"manifest signed by key {signature.get('key_id')!r}, not one of the published keys")
    elif signature.get("alg") != "EdDSA" or not ed25519_verify(public, manifest_bytes, _b64url(signature["signature"])):
        failures.append("manifest signature does not verify")
    manifest = json.loads(manifest_bytes)
    if manifest.get("key_id") != signature.get("key_id"):
        failures.append("manifest and signature name different keys")
    listed = {entry["path"]: entry for entry in manifest["files"]}
    for path, entry in sorted(listed.items()):
        target = folder / path
        if not target.is_file():
            failures.append(f"{path}: missing")
            continue
        sha256, size = _sha256(target)
        if (sha256, size) != (entry["sha256"], entry["bytes"]):
            failures.append(f"{path}: SHA-256 or size differs from the manifest")
    for table in manifest["tables"].values():
        for kind, count in (("jsonl", _jsonl_lines), ("csv", _csv_records)):
            target = folder / table[kind]
            if target.is_file() and count(target) != table["rows"]:
                failures.append(f"{table[kind]}: row count differs from the manifest's {table['rows']}")
    if "audit_events" in manifest["tables"] or manifest.get("audit_retention"):
        failures += _verify_audit(folder, manifest, keys)
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    for extra in sorted(present - set(listed) - set(SIGNED_FILES)):
        failures.append(f"{extra}: not listed in the manifest")
    return failures


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _utc(text: str) -> str:
    """A time as the audit chain hashes it (UTC, microseconds, Z); the table export writes
    PostgreSQL's JSON form (offset, trailing zeros of the fraction dropped)."""
    moment = datetime.fromisoformat(text).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _retention_doc(folder: Path, entry: dict[str, Any], tenant_id: str, keys: dict[str, bytes]) -> dict[str, Any]:
    """The archive's signed retention checkpoint, checked against the keys and the entry.

    Raises:
        ValueError: it does not verify or does not describe this archive.
    """
    doc = json.loads((folder / entry["manifest"]).read_bytes())
    public = keys.get(str(doc.get("key_id")))
    payload = rfc8785.dumps({k: v for k, v in doc.items() if k != "signature"})
    if doc.get("kind") != RETENTION_KIND or public is None or not ed25519_verify(
            public, payload, _b64url(str(doc.get("signature", "")))):
        raise ValueError("its retention checkpoint's signature does not verify with the published keys")
    archive = doc.get("archive") or {}
    if (doc.get("tenant_id"), doc.get("from_seq"), doc.get("seq")) != (tenant_id, entry["from_seq"], entry["to_seq"]):
        raise ValueError("its retention checkpoint is of another tenant or range")
    if archive.get("sha256") != entry["sha256"] or _sha256(folder / entry["archive"])[0] != entry["sha256"]:
        raise ValueError("the archive's SHA-256 differs from its signed retention checkpoint")
    return dict(doc)


def _verify_audit(folder: Path, manifest: dict[str, Any], keys: dict[str, bytes]) -> list[str]:
    """The retention archives and the audit table: one chain from seq 1 to the head."""
    tenant_id = manifest["tenant_id"]
    lines: list[dict[str, Any]] = [{"type": "header", "tenant_id": tenant_id}]
    failures: list[str] = []
    for entry in sorted(manifest.get("audit_retention") or [], key=lambda e: e["from_seq"]):
        try:
            doc = _retention_doc(folder, entry, tenant_id, keys)
            archived = _read_jsonl(folder / entry["archive"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            failures.append(f"{entry.get('archive')}: {exc}")
            continue
        lines += [line for line in archived if line.get("type") == "event"]
        lines.append({**doc, "type": "retention"})
    table = manifest["tables"].get("audit_events")
    if table is not None and (folder / table["jsonl"]).is_file():
        for row in _read_jsonl(folder / table["jsonl"]):
            event = {name: row.get(name) for name in FIELDS}
            event.update(tenant_id=tenant_id, occurred_at=_utc(str(row["occurred_at"])), checksum=row.get("checksum"),
                         type="event")
            lines.append(event)
    if failures:
        return failures
    events = sorted((line for line in lines if line.get("type") == "event"), key=lambda e: e.get("seq", 0))
    lines = [lines[0], *events, *(line for line in lines if line.get("type") == "retention")]
    try:
        summary = verify_chain(lines, keys)
    except Invalid as exc:
        return [f"audit chain (retention archives + tables/audit_events.jsonl): {exc}"]
    if events and summary["from_seq"] != 1:
        return [f"audit chain begins at seq {summary['from_seq']}, not 1: a retention archive is missing"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--keys", type=Path, required=True, help="JWK set from /.well-known/audit-keys.json")
    args = parser.parse_args(argv)
    try:
        jwks = json.loads(args.keys.read_text(encoding="utf-8"))
        failures = verify(args.folder, jwks)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"unreadable export: {exc}", file=sys.stderr)
        return 2
    for failure in failures:
        print(f"INVALID {failure}")
    if not failures:
        print("VALID export: signature verifies, every file and count matches the manifest")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
