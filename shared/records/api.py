"""What the record triggers call: one function per endpoint, each owning its transaction.

Every function takes the `Caller` first (see shared.web.caller) and opens the caller's tenant
transaction itself, so a change and its audit event commit together. The functions of
`records`, `signatures`, `attachments` and `payments` that take a connection are the
building blocks these compose.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.core.errors import NotFound
from shared.records import attachments, payments, records, signatures
from shared.web.caller import Caller

# --- record types ----------------------------------------------------------------------------


def list_types(caller: Caller) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return {"types": records.list_types(conn, caller.tenant_id)}


def get_type(caller: Caller, name: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return records.get_type(conn, caller.tenant_id, name)


def create_type(caller: Caller, *, name: str, display_name: str, schema: dict[str, Any], reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return records.create_type(conn, actor=caller.user, name=name, display_name=display_name, schema=schema,
                                   reason=reason, meta=caller.meta, audit_actor=caller.actor)


def change_type_schema(caller: Caller, *, name: str, schema: dict[str, Any], reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return records.change_type_schema(conn, actor=caller.user, name=name, schema=schema, reason=reason,
                                          meta=caller.meta, audit_actor=caller.actor)


# --- records -----------------------------------------------------------------------------------


def create_record(caller: Caller, *, type_name: str, payload: Any, references: list[dict[str, Any]]) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return records.create_record(conn, actor=caller.user, type_name=type_name, payload=payload,
                                     references=references, meta=caller.meta, audit_actor=caller.actor, commit=True)


def list_records(caller: Caller, *, type_name: str | None, status: str | None, after: str | None,
                 limit: int) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return records.list_records(conn, caller.tenant_id, type_name=type_name, status=status, after=after, limit=limit)


def get_record(caller: Caller, record_id: uuid.UUID) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return records.get_record(conn, record_id, commit=True)


def update_record(caller: Caller, *, record_id: uuid.UUID, expected_version: int, payload: Any,
                  references: list[dict[str, Any]] | None, reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return records.update_record(conn, actor=caller.user, record_id=record_id, expected_version=expected_version,
                                     payload=payload, references=references, reason=reason, meta=caller.meta,
                                     audit_actor=caller.actor)


def list_versions(caller: Caller, record_id: uuid.UUID) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return {"versions": records.list_versions(conn, record_id)}


def get_version(caller: Caller, record_id: uuid.UUID, version: int) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        records.get_record(conn, record_id)
        return records.get_version(conn, str(record_id), version)


def retire_record(caller: Caller, *, record_id: uuid.UUID, reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return records.retire_record(conn, actor=caller.user, record_id=record_id, reason=reason, meta=caller.meta,
                                     audit_actor=caller.actor)


# --- attachments -------------------------------------------------------------------------------


def attach(caller: Caller, *, record_id: uuid.UUID, data: bytes, content_type: str, content_disposition: str | None,
           expected_version: int | None) -> dict[str, Any]:
    """Store the file (content-addressed, once per tenant) and add it to a new version.

    The blob is written between two transactions: the record must exist before anything is
    uploaded, and no transaction is held open during the upload.
    """
    with caller.tenant_tx() as conn:
        records.get_record(conn, record_id)  # 404 before any upload
    stored = attachments.store(caller.tenant_id, data, content_type=content_type,
                               filename=attachments.filename_from(content_disposition))
    with caller.tenant_tx() as conn:
        r = records.add_attachment_version(conn, actor=caller.user, record_id=record_id,
                                           expected_version=expected_version, attachment=stored.as_dict(),
                                           meta=caller.meta, audit_actor=caller.actor)
    return {**stored.as_dict(), "version": r["current_version"], "record": r}


def download(caller: Caller, *, record_id: uuid.UUID, sha256: str) -> tuple[bytes, dict[str, Any]]:
    """An attachment's bytes (hash checked again) and its entry (file name, content type).

    Raises:
        NotFound: no such record, or no such attachment on it.
        IntegrityFailure: the stored bytes no longer match their hash (recorded in the trail).
    """
    sha256 = sha256.lower()
    with caller.tenant_tx() as conn:
        versions = records.list_versions(conn, record_id)
    entry = next((a for v in versions for a in v["attachments"] if a["sha256"] == sha256), None)
    if entry is None:
        raise NotFound("no such attachment on this record")
    data = attachments.read_verified(caller.tenant_id, sha256, record_id=str(record_id), meta=caller.meta,
                                     actor=caller.actor)
    return data, entry


# --- signatures --------------------------------------------------------------------------------


def sign(caller: Caller, *, record_id: uuid.UUID, version: int, password: str, meaning: str, reason_code: str,
         comment: str | None, code: str | None) -> dict[str, Any]:
    """Signing owns its transactions (failed attempts must commit their events before refusing)."""
    return signatures.sign(signer=caller.user, record_id=str(record_id), version=version, password=password,
                           meaning=meaning, reason_code=reason_code, comment=comment, code=code, meta=caller.meta,
                           actor=caller.actor)


def verify_signatures(caller: Caller, record_id: uuid.UUID) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return signatures.verify(conn, str(record_id))


def manifest(caller: Caller, record_id: uuid.UUID, version: int) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return signatures.manifest(conn, str(record_id), version)


def vocabulary(caller: Caller) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return signatures.vocabulary(conn, caller.tenant_id)


def add_vocabulary(caller: Caller, *, kind: str, code: str, text: str, reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return signatures.add_vocabulary(conn, tenant_id=caller.tenant_id, kind=kind, code=code, text=text,
                                         actor=caller.actor, meta=caller.meta, reason=reason)


def signature_policy(caller: Caller, type_name: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        t = records.get_type(conn, caller.tenant_id, type_name)
        return signatures.policy_for(conn, t["id"]).__dict__


def set_signature_policy(caller: Caller, *, type_name: str, policy: signatures.Policy, reason: str) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        t = records.get_type(conn, caller.tenant_id, type_name)
        return signatures.set_policy(conn, type_id=t["id"], tenant_id=caller.tenant_id, policy=policy,
                                     actor=caller.actor, meta=caller.meta, reason=reason).__dict__


# --- payment methods ---------------------------------------------------------------------------


def list_payment_methods(caller: Caller) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return {"payment_methods": payments.list_methods(conn)}


def create_payment_method(caller: Caller, *, gateway: str, gateway_token: str, brand: str, last4: str,
                          exp_month: int, exp_year: int, label: str | None) -> dict[str, Any]:
    with caller.tenant_tx() as conn:
        return payments.create_method(conn, tenant_id=caller.tenant_id, created_by=caller.user.user_id,
                                      gateway=gateway, gateway_token=gateway_token, brand=brand, last4=last4,
                                      exp_month=exp_month, exp_year=exp_year, label=label, actor=caller.actor,
                                      meta=caller.meta)
