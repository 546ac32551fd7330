#!/usr/bin/env python3
"""Verify a Custos audit export offline, trusting nothing of Custos but its checkpoint keys.

    python verify_audit_export.py audit-<tenant>.jsonl [--keys audit-keys.json] [--archive A.jsonl ...]

Needs only Python 3.11+ and the `rfc8785` package (pip install rfc8785). It re-derives every
event's checksum from the RFC 8785 canonical JSON of its fields, follows the chain links
from the genesis value, and checks every signed checkpoint's Ed25519 signature (a small
RFC 8032 verifier is included below) and that the chain agrees with it. Pass the keys
published at /.well-known/audit-keys.json with --keys; without it the keys inside the
export are used, which only shows the export is self-consistent.

After a retention cut the export's chain begins after a signed retention checkpoint: its first
event must link to that checkpoint's checksum. The archives of the removed events
(`--archive`, from the exports container) are walked first, so the chain is then proved from
the genesis value.

Exit status 0: valid. 1: invalid (the first failure is printed). 2: unreadable input.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from typing import Any

import rfc8785

GENESIS = "0" * 64
FIELDS = (
    "action", "actor_id", "actor_name", "actor_type", "after", "app_version", "before", "ip",
    "occurred_at", "previous_checksum", "reason", "request_id", "seq", "session_id",
    "target_id", "target_type", "tenant_id", "user_agent",
)

# --- Ed25519 verification (RFC 8032, section 5.1.7) -------------------------------------

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
assert _GX is not None  # noqa: S101  # nosec B101  # the Ed25519 base point is a curve constant: checked once, for mypy
_G = (_GX, _GY, 1, _GX * _GY % _P)


def _add(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    aa = (a[1] - a[0]) * (b[1] - b[0]) % _P
    bb = (a[1] + a[0]) * (b[1] + b[0]) % _P
    cc = 2 * a[3] * b[3] * _D % _P
    dd = 2 * a[2] * b[2] % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, point: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    result = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            result = _add(result, point)
        point = _add(point, point)
        s >>= 1
    return result


def _decode_point(data: bytes) -> tuple[int, int, int, int] | None:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


def _equal(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is a valid Ed25519 signature of `message` by `public`."""
    if len(signature) != 64:
        return False
    a = _decode_point(public)
    r = _decode_point(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % _L
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


MAX_SAFE_INT = 2**53 - 1


def parse_int(text: str) -> int | float:
    """JSON numbers are IEEE doubles (RFC 8785): an integer beyond 2**53 is a double."""
    value = int(text)
    return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else float(value)


# --- the export ---------------------------------------------------------------------------


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Invalid(Exception):
    def __init__(self, seq: Any, reason: str) -> None:
        super().__init__(f"seq {seq}: {reason}")
        self.seq = seq
        self.reason = reason


def checksum(event: dict[str, Any]) -> str:
    return hashlib.sha256(rfc8785.dumps({name: event.get(name) for name in FIELDS})).hexdigest()


RETENTION_KIND = "custos-audit-retention/1"


def _retention_cuts(lines: list[dict[str, Any]], keys: dict[str, bytes], tenant_id: str) -> dict[int, str]:
    """seq -> checksum of the last removed event, for every retention checkpoint, each checked
    for its signature (over every field but `signature`, `kind` included)."""
    cuts: dict[int, str] = {}
    for line in lines:
        if line.get("type") != "retention":
            continue
        doc = {k: v for k, v in line.items() if k != "type"}
        public = keys.get(doc.get("key_id", ""))
        payload = rfc8785.dumps({k: v for k, v in doc.items() if k != "signature"})
        if (doc.get("kind") != RETENTION_KIND or public is None
                or not ed25519_verify(public, payload, _b64url(doc.get("signature", "")))):
            raise Invalid(doc.get("seq"), "retention checkpoint signature does not verify with the given keys")
        if doc.get("tenant_id") != tenant_id:
            raise Invalid(doc.get("seq"), "retention checkpoint of another tenant")
        cuts[int(doc["seq"])] = str(doc.get("checksum"))
    return cuts


def verify(lines: list[dict[str, Any]], keys: dict[str, bytes]) -> dict[str, Any]:
    """Raises Invalid at the first failure; returns a summary when the export is valid."""
    if not lines or lines[0].get("type") != "header":
        raise Invalid(None, "the export has no header line")
    tenant_id = lines[0]["tenant_id"]
    events = [line for line in lines if line.get("type") == "event"]
    marks = [line for line in lines if line.get("type") == "checkpoint"]
    cuts = _retention_cuts(lines, keys, tenant_id)
    by_seq: dict[int, str] = {}
    # Where the chain begins: the genesis value, or the newest signed cut below its first event.
    first = events[0].get("seq") if events else None
    base = max((seq for seq in cuts if first is None or (isinstance(first, int) and seq < first)), default=0)
    previous = cuts[base] if base else GENESIS
    for expected, event in enumerate(events, start=base + 1):
        if event.get("seq") != expected:
            raise Invalid(expected, "missing, duplicate or reordered event")
        if event.get("tenant_id") != tenant_id:
            raise Invalid(expected, "event of another tenant")
        if event.get("previous_checksum") != previous:
            raise Invalid(expected, "previous_checksum does not link to the event before")
        digest = checksum(event)
        if digest != event.get("checksum"):
            raise Invalid(expected, "checksum does not match the event's content")
        by_seq[expected] = digest
        previous = digest
    for seq, cut in cuts.items():
        if seq > base and by_seq.get(seq) != cut:
            raise Invalid(seq, "event differs from the signed retention checkpoint")
    for mark in marks:
        public = keys.get(mark.get("key_id", ""))
        payload = rfc8785.dumps({k: mark.get(k) for k in ("tenant_id", "seq", "checksum", "created_at", "key_id")})
        if public is None or not ed25519_verify(public, payload, _b64url(mark.get("signature", ""))):
            raise Invalid(mark.get("seq"), "checkpoint signature does not verify with the given keys")
        if mark.get("tenant_id") != tenant_id:
            raise Invalid(mark.get("seq"), "checkpoint of another tenant")
        if mark["seq"] <= base and mark["seq"] not in by_seq:
            if mark["seq"] in cuts and cuts[mark["seq"]] != mark.get("checksum"):
                raise Invalid(mark["seq"], "retention checkpoint differs from the signed checkpoint")
            continue  # removed by a signed retention cut
        if mark["seq"] not in by_seq:
            raise Invalid(mark["seq"], "chain ends before a signed checkpoint")
        if by_seq[mark["seq"]] != mark.get("checksum"):
            raise Invalid(mark["seq"], "event differs from the signed checkpoint")
    return {"valid": True, "tenant_id": tenant_id, "events": len(events), "checkpoints": len(marks),
            "retention_cuts": len(cuts), "from_seq": base + 1, "head": events[-1]["seq"] if events else base}


def load_keys(jwks: list[dict[str, Any]]) -> dict[str, bytes]:
    return {k["kid"]: _b64url(k["x"]) for k in jwks if k.get("kty") == "OKP" and k.get("crv") == "Ed25519"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="the .jsonl file from GET /api/audit/export")
    parser.add_argument("--keys", help="JWKS from /.well-known/audit-keys.json")
    parser.add_argument("--archive", action="append", default=[],
                        help="a retention archive (.jsonl) of removed events; repeat for each")
    args = parser.parse_args(argv)
    try:
        with open(args.export, encoding="utf-8") as fh:
            lines = [json.loads(line, parse_int=parse_int) for line in fh if line.strip()]
        archived: list[dict[str, Any]] = []
        for name in args.archive:
            with open(name, encoding="utf-8") as fh:
                archived += [e for e in (json.loads(line, parse_int=parse_int) for line in fh if line.strip())
                             if e.get("type") == "event"]
        # The archives' events come before the export's, oldest archive first.
        archived.sort(key=lambda e: e.get("seq") if isinstance(e.get("seq"), int) else -1)
        lines = lines[:1] + archived + lines[1:]
        if args.keys:
            with open(args.keys, encoding="utf-8") as fh:
                keys = load_keys(json.load(fh)["keys"])
        else:
            keys = load_keys(lines[0].get("keys", []) if lines else [])
            print("warning: using the keys inside the export; pass --keys to check against published keys",
                  file=sys.stderr)
    except (OSError, ValueError, KeyError) as exc:
        print(json.dumps({"error": f"cannot read input: {exc}"}))
        return 2
    try:
        print(json.dumps(verify(lines, keys)))
        return 0
    except Invalid as exc:
        print(json.dumps({"valid": False, "first_failure": {"seq": exc.seq, "reason": exc.reason}}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
