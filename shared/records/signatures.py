"""21 CFR Part 11 electronic signatures and the review/approval workflow.

A signature is the signer's re-entered password (and TOTP code when they have one), a
meaning and a reason from the tenant's controlled vocabulary, bound to exactly one record
version and that version's content checksum (§11.70). Its `binding` is the SHA-256 of the
canonical JSON of everything it asserts, so an edited signature row, an edited version or a
signature moved to another version all fail verification. docs/part11.md maps each clause.

Workflow: DRAFT -AUTHORED-> IN_REVIEW -REVIEWED x N, APPROVED x M-> APPROVED, or
-REJECTED-> REJECTED; an edit makes a new, unsigned version and returns the record to DRAFT.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import rfc8785

from shared.audit import chain as audit
from shared.core import db
from shared.core.db import Conn
from shared.core.errors import Conflict, NotFound, ValidationFailed
from shared.identity import passwords, ratelimit
from shared.identity.guards import Principal
from shared.records.errors import InvalidSigningCredentials, SignatureRefused
from shared.records.manifestations import SIGNATURE_COLUMNS, manifest_entry
from shared.records.records import canonical, get_record, get_version, payload_checksum

WORKFLOW_MEANINGS = ("AUTHORED", "REVIEWED", "APPROVED", "REJECTED")
BUILTIN_MEANINGS = {
    "AUTHORED": "I am the author of this version",
    "REVIEWED": "I have reviewed this version",
    "APPROVED": "I approve this version",
    "REJECTED": "I reject this version",
}
DEFAULT_REASONS = {
    "authorship": "I am responsible for the content of this record",
    "review_complete": "I have reviewed this record and found it complete and accurate",
    "approval": "I approve this record for use",
    "rejection_errors": "The record contains errors and must be corrected",
    "rejection_incomplete": "The record is incomplete",
}


def ensure_vocabulary(conn: Conn, tenant_id: str) -> None:
    for code, text in BUILTIN_MEANINGS.items():
        conn.execute("insert into signature_meanings (tenant_id, code, description, builtin) values (%s, %s, %s, true) "
                     "on conflict do nothing", (tenant_id, code, text))
    existing = conn.execute("select count(*) as n from signature_reasons").fetchone()
    if existing and existing["n"] == 0:
        for code, text in DEFAULT_REASONS.items():
            conn.execute("insert into signature_reasons (tenant_id, code, text) values (%s, %s, %s) on conflict do nothing",
                         (tenant_id, code, text))


def vocabulary(conn: Conn, tenant_id: str) -> dict[str, Any]:
    ensure_vocabulary(conn, tenant_id)
    meanings = conn.execute("select code, description, builtin from signature_meanings where retired_at is null order by code").fetchall()
    reasons = conn.execute("select code, text from signature_reasons where retired_at is null order by code").fetchall()
    return {"meanings": meanings, "reasons": reasons}


def add_vocabulary(
    conn: Conn, *, tenant_id: str, kind: str, code: str, text: str, actor: audit.Actor,
    meta: audit.RequestMeta, reason: str,
) -> dict[str, Any]:
    """Add a tenant-defined meaning or reason. Raises Conflict if the code exists."""
    ensure_vocabulary(conn, tenant_id)
    table, column = ("signature_meanings", "description") if kind == "meaning" else ("signature_reasons", "text")
    with db.savepoint_or_conflict(conn, f"the {kind} {code} exists"):
        conn.execute(f"insert into {table} (tenant_id, code, {column}) values (%s, %s, %s)", (tenant_id, code, text))  # noqa: S608  # nosec B608  # table and column are one of two literal pairs chosen by kind; values are bound
    audit.append(conn, tenant_id=tenant_id, actor=actor, action=f"signature_vocabulary.{kind}_added",
                 target_type=f"signature_{kind}", target_id=code, after={"code": code, "text": text}, reason=reason, meta=meta)
    return vocabulary(conn, tenant_id)


@dataclass(frozen=True)
class Policy:
    required_reviews: int = 1
    required_approvals: int = 1
    review_permission: str = "signatures.review"
    approve_permission: str = "signatures.approve"


def policy_for(conn: Conn, type_id: str) -> Policy:
    row = conn.execute(
        "select required_reviews, required_approvals, review_permission, approve_permission from signature_policies where type_id = %s",
        (type_id,),
    ).fetchone()
    return Policy(**row) if row else Policy()


def set_policy(conn: Conn, *, type_id: str, tenant_id: str, policy: Policy, actor: audit.Actor,
               meta: audit.RequestMeta, reason: str) -> Policy:
    before = policy_for(conn, type_id)
    conn.execute(
        """insert into signature_policies (tenant_id, type_id, required_reviews, required_approvals, review_permission, approve_permission)
           values (%s, %s, %s, %s, %s, %s)
           on conflict (tenant_id, type_id) do update set required_reviews = excluded.required_reviews,
               required_approvals = excluded.required_approvals, review_permission = excluded.review_permission,
               approve_permission = excluded.approve_permission, updated_at = now()""",
        (tenant_id, type_id, policy.required_reviews, policy.required_approvals, policy.review_permission,
         policy.approve_permission),
    )
    audit.append(conn, tenant_id=tenant_id, actor=actor, action="signature_policy.changed", target_type="record_type",
                 target_id=type_id, before=before.__dict__, after=policy.__dict__, reason=reason, meta=meta)
    return policy


def binding(row: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of what a signature asserts (signed_at as UTC ISO text)."""
    fields = {
        "record_id": str(row["record_id"]), "version": int(row["version"]), "content_checksum": row["content_checksum"],
        "signer_id": str(row["signer_id"]), "signer_name": row["signer_name"], "meaning": row["meaning"],
        "reason_code": row["reason_code"], "reason_text": row["reason_text"], "comment": row["comment"],
        "signed_at": audit.format_time(row["signed_at"]), "signer_tz": row["signer_tz"],
    }
    return hashlib.sha256(rfc8785.dumps(fields)).hexdigest()


def _verify_credentials(conn: Conn, signer: Principal, password: str, code: str | None,
                        meta: audit.RequestMeta) -> None:
    """The re-entered password (always) and the TOTP code when the signer has TOTP.

    Raises:
        TooManyRequests: the sign-in throttle for this signer's email and IP.
        InvalidSigningCredentials: wrong password or code (counted, audited).
    """
    tenant_id = str(signer.tenant_id)
    user = conn.execute("select email, password_hash from users where id = %s", (signer.user_id,)).fetchone()
    assert user is not None
    keys = ratelimit.login_keys(email=user["email"], ip=meta.ip or "unknown", tenant=tenant_id)
    attempt = ratelimit.throttle().attempt("login", keys)
    failure = None
    if not passwords.verify_password(user["password_hash"], password).ok:
        failure = "bad_password"
    else:
        failure = _second_factor_failure(conn, signer, code)
    if failure is None:
        attempt.succeeded()
        return
    crossings = attempt.crossings
    with db.tenant_tx(tenant_id) as fail_conn:  # recorded even though the signing transaction rolls back
        audit.append(fail_conn, tenant_id=tenant_id, actor=audit.Actor(signer.user_id, signer.name or "", "user"),
                     action="signature.failed", target_type="user", target_id=signer.user_id,
                     after={"reason": failure}, meta=meta)
        for crossing in crossings:  # §11.300(d): repeated failures are reported to the tenant
            audit.append(fail_conn, tenant_id=tenant_id, actor=audit.Actor(None, "throttle", "system"),
                         action="security.signature_attempts_exceeded", target_type="user", target_id=signer.user_id,
                         after={"key": crossing.kind, "failures": crossing.failures, "delay_s": crossing.delay_s}, meta=meta)
    raise InvalidSigningCredentials("the password or code is wrong")


def _second_factor_failure(conn: Conn, signer: Principal, code: str | None) -> str | None:
    """'missing_code' / 'bad_code' when the signer has TOTP and the code is absent or wrong."""
    try:
        from shared.identity import mfa
    except ImportError:  # pragma: no cover - MFA ships with the app
        return None
    if not mfa.has_totp(conn, signer.user_id):
        return None
    if not code:
        return "missing_code"
    return None if mfa.verify_totp_for_signing(conn, tenant_id=str(signer.tenant_id), user_id=signer.user_id, code=code) else "bad_code"


def _db_time(conn: Conn, function: str) -> Any:
    row = conn.execute(f"select {function} as t").fetchone()
    assert row is not None
    return row["t"]


def _count(sigs: list[dict[str, Any]], meaning: str) -> int:
    return sum(1 for s in sigs if s["meaning"] == meaning)


def sign(
    *, signer: Principal, record_id: str, version: int, password: str, meaning: str, reason_code: str,
    comment: str | None, code: str | None, meta: audit.RequestMeta, actor: audit.Actor,
) -> dict[str, Any]:
    """Sign a record version and apply the workflow transition its meaning implies.

    Raises:
        NotFound: no such record/version. Conflict: not the latest version, or out of order.
        ValidationFailed: meaning or reason outside the vocabulary.
        SignatureRefused: permission or separation of duties.
        InvalidSigningCredentials, TooManyRequests.
    """
    tenant_id = str(signer.tenant_id)
    with db.tenant_tx(tenant_id) as conn:
        record = get_record(conn, record_id, lock=True)
        if version != record["current_version"]:
            raise Conflict(f"only the latest version ({record['current_version']}) can be signed",
                           current_version=record["current_version"])
        ensure_vocabulary(conn, tenant_id)
        m = conn.execute("select code from signature_meanings where code = %s and retired_at is null", (meaning,)).fetchone()
        r = conn.execute("select code, text from signature_reasons where code = %s and retired_at is null", (reason_code,)).fetchone()
        errors = []
        if m is None:
            errors.append({"location": ["body", "meaning"], "message": "not a meaning of this tenant's vocabulary"})
        if r is None:
            errors.append({"location": ["body", "reason"], "message": "not a reason of this tenant's vocabulary"})
        if errors:
            raise ValidationFailed("the meaning and reason must come from the controlled vocabulary", errors=errors)
        assert r is not None
        policy = policy_for(conn, record["type_id"])
        sigs = [s for s in _signatures(conn, record_id) if s["version"] == version]
        new_status = _transition(record, sigs, signer, meaning, policy)
        if any(str(s["signer_id"]) == signer.user_id and s["meaning"] == meaning for s in sigs):
            raise Conflict(f"you have already signed this version as {meaning}")
        _verify_credentials(conn, signer, password, code, meta)
        current = record["version"]
        row = {
            "record_id": record_id, "version": version, "content_checksum": current["checksum"],
            "signer_id": signer.user_id, "signer_name": signer.name or signer.user_id, "signer_tz": signer.time_zone,
            "meaning": meaning, "reason_code": r["code"], "reason_text": r["text"], "comment": comment,
        }
        row["signed_at"] = _db_time(conn, "clock_timestamp()")
        row["binding"] = binding(row)
        with db.savepoint_or_conflict(conn, f"you have already signed this version as {meaning}"):
            saved = conn.execute(
                f"""insert into signatures (tenant_id, record_id, version, content_checksum, signer_id, signer_name, signer_tz,
                                            meaning, reason_code, reason_text, comment, signed_at, binding)
                    values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning {SIGNATURE_COLUMNS}""",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
                (tenant_id, record_id, version, row["content_checksum"], row["signer_id"], row["signer_name"],
                 row["signer_tz"], meaning, row["reason_code"], row["reason_text"], comment, row["signed_at"], row["binding"]),
            ).fetchone()
        assert saved is not None
        audit.append(conn, tenant_id=tenant_id, actor=actor, action="signature.applied", target_type="record",
                     target_id=record_id, after={"signature_id": str(saved["id"]), "version": version, "meaning": meaning,
                                                 "reason": r["code"], "content_checksum": current["checksum"]},
                     reason=r["text"], meta=meta)
        if new_status != record["status"]:
            conn.execute("update records set status = %s, updated_at = now() where id = %s", (new_status, record_id))
            audit.append(conn, tenant_id=tenant_id, actor=actor, action="record.status_changed", target_type="record",
                         target_id=record_id, before={"status": record["status"]}, after={"status": new_status},
                         reason=f"{meaning} signature", meta=meta)
        return {"signature": manifest_entry(saved), "record": get_record(conn, record_id)}


def _transition(record: dict[str, Any], sigs: list[dict[str, Any]], signer: Principal, meaning: str, policy: Policy) -> str:
    """The status after this signature, or Conflict/SignatureRefused when it is out of order or not allowed."""
    status = record["status"]
    author = record["version"]["created_by"]
    if status == "RETIRED":
        raise Conflict("a retired record cannot be signed")
    if meaning not in WORKFLOW_MEANINGS:
        _need(signer, "signatures.sign")
        return status
    if meaning == "AUTHORED":
        _need(signer, "signatures.sign")
        if status != "DRAFT":
            raise Conflict(f"AUTHORED is for DRAFT records; this one is {status}")
        if signer.user_id != author:
            raise SignatureRefused("only the author of this version signs it as AUTHORED")
        return "IN_REVIEW"
    if status != "IN_REVIEW":
        raise Conflict(f"{meaning} needs a record IN_REVIEW; this one is {status}")
    if signer.user_id == author or any(s["meaning"] == "AUTHORED" and str(s["signer_id"]) == signer.user_id for s in sigs):
        raise SignatureRefused("separation of duties: an author can neither review nor approve their own version")
    if meaning == "REVIEWED":
        _need(signer, policy.review_permission)
        return status
    if meaning == "REJECTED":
        if policy.review_permission not in signer.permissions and policy.approve_permission not in signer.permissions:
            raise SignatureRefused(f"requires permission {policy.approve_permission}")
        return "REJECTED"
    _need(signer, policy.approve_permission)  # APPROVED
    if _count(sigs, "REVIEWED") < policy.required_reviews:
        raise Conflict(f"{policy.required_reviews} review signature(s) are needed before approval")
    if any(s["meaning"] == "REVIEWED" and str(s["signer_id"]) == signer.user_id for s in sigs) and policy.required_reviews:
        raise SignatureRefused("separation of duties: a reviewer of this version cannot also approve it")
    return "APPROVED" if _count(sigs, "APPROVED") + 1 >= policy.required_approvals else status


def _need(signer: Principal, permission: str) -> None:
    if permission not in signer.permissions:
        raise SignatureRefused(f"requires permission {permission}")


def _signatures(conn: Conn, record_id: str) -> list[dict[str, Any]]:
    return conn.execute(f"select {SIGNATURE_COLUMNS} from signatures where record_id = %s order by signed_at",  # noqa: S608  # nosec B608  # only module constants are interpolated; values are bound
                        (str(record_id),)).fetchall()


def verify(conn: Conn, record_id: str) -> dict[str, Any]:
    """Re-check every signature's link to its version's content."""
    record = get_record(conn, record_id)
    results = []
    for sig in _signatures(conn, record_id):
        v = conn.execute("select payload::text as payload, checksum from record_versions where record_id = %s and version = %s",
                         (record_id, sig["version"])).fetchone()
        problems = []
        if v is None:
            problems.append("the signed version is missing")
        else:
            if payload_checksum(canonical(json.loads(v["payload"]))) != v["checksum"]:
                problems.append("the version's content no longer matches its checksum")
            if v["checksum"] != sig["content_checksum"]:
                problems.append("the signature names another content checksum than the version's")
        if binding(sig) != sig["binding"]:
            problems.append("the signature record was altered")
        results.append({"id": str(sig["id"]), "version": sig["version"], "meaning": sig["meaning"],
                        "valid": not problems, "problems": problems})
    return {"record_id": record_id, "valid": all(r["valid"] for r in results), "signatures": results,
            "current_version": record["current_version"]}


def manifest(conn: Conn, record_id: str, version: int) -> dict[str, Any]:
    """A printable manifest of one version: content, checksum, signatures, audit extract."""
    record = get_record(conn, record_id)
    v = get_version(conn, record_id, version)
    sigs = [manifest_entry(s) for s in _signatures(conn, record_id) if s["version"] == version]
    events = audit.list_events(conn, target_type="record", target_id=record_id, limit=1000)
    now = _db_time(conn, "now()")
    return {
        "title": f"{record['type']} {record_id} version {version}",
        "generated_at": audit.format_time(now),
        "record": {"id": record_id, "type": record["type"], "status": record["status"],
                   "current_version": record["current_version"]},
        "version": {k: v[k] for k in ("version", "payload", "checksum", "created_at", "created_by", "created_by_name",
                                      "created_tz", "reason", "previous_version", "attachments")},
        "signatures": sigs,
        "audit_extract": [{k: e[k] for k in ("seq", "occurred_at", "actor_name", "action", "reason", "checksum")}
                          for e in events],
    }


def require_record(conn: Conn, record_id: str) -> None:
    if conn.execute("select 1 from records where id = %s", (record_id,)).fetchone() is None:
        raise NotFound("no such record")
