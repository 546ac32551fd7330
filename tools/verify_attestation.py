#!/usr/bin/env python3
"""Verify a Custos deletion attestation offline, trusting nothing of Custos but its audit keys.

    python verify_attestation.py deletions-<tenant>.json --keys audit-keys.json

Needs only Python 3.11+ and the `rfc8785` package; the Ed25519 (RFC 8032) verifier is the one
in verify_audit_export.py beside this file. The signature covers the RFC 8785 canonical JSON of
every member but `signature`; `key_id` must name a key of the JWKS published at
/.well-known/audit-keys.json. docs/purge.md describes every member.

Exit status 0: valid (a summary is printed as JSON). 1: invalid (the reason is printed).
2: unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import rfc8785

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verify_audit_export import _b64url, ed25519_verify, load_keys  # noqa: E402

TYPE = "custos.deletion-attestation"
REQUIRED = ("type", "version", "tenant_id", "slug", "cancelled_at", "purged_at", "rows_deleted",
            "rows_deleted_total", "blobs", "audit_chain", "key_id", "signature")


class Invalid(Exception):
    """The attestation does not verify; the message says why."""


def verify(doc: Any, keys: dict[str, bytes]) -> dict[str, Any]:
    """A summary of a valid attestation.

    Raises:
        Invalid: not an attestation, a member missing, an unknown key, a bad signature, or
            totals that disagree with their parts.
    """
    if not isinstance(doc, dict) or doc.get("type") != TYPE:
        raise Invalid("not a Custos deletion attestation")
    missing = [name for name in REQUIRED if name not in doc]
    if missing:
        raise Invalid(f"missing members: {', '.join(missing)}")
    public = keys.get(str(doc["key_id"]))
    if public is None:
        raise Invalid(f"signed by key {doc['key_id']!r}, which is not among the given keys")
    try:
        signature = _b64url(str(doc["signature"]))
    except ValueError:
        raise Invalid("signature is not base64url") from None
    payload = rfc8785.dumps({k: v for k, v in doc.items() if k != "signature"})
    if len(signature) != 64 or not ed25519_verify(public, payload, signature):
        raise Invalid("signature does not verify with the given keys")
    if sum(doc["rows_deleted"].values()) != doc["rows_deleted_total"]:
        raise Invalid("rows_deleted_total is not the sum of rows_deleted")
    return {"valid": True, "tenant_id": doc["tenant_id"], "slug": doc["slug"], "purged_at": doc["purged_at"],
            "rows_deleted_total": doc["rows_deleted_total"], "blobs_deleted": doc["blobs"]["deleted"]["count"],
            "final_head": doc["audit_chain"]["final_head"], "key_id": doc["key_id"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attestation", help="the attestation JSON file")
    parser.add_argument("--keys", required=True, help="JWKS from /.well-known/audit-keys.json")
    args = parser.parse_args(argv)
    try:
        with open(args.attestation, encoding="utf-8") as fh:
            doc = json.load(fh)
        with open(args.keys, encoding="utf-8") as fh:
            keys = load_keys(json.load(fh)["keys"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"unreadable input: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(verify(doc, keys)))
    except Invalid as exc:
        print(json.dumps({"valid": False, "reason": str(exc)}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
