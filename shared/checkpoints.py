"""Signed checkpoints of each audit chain head, kept outside the database.

A checkpoint is `{tenant_id, seq, checksum, created_at, key_id}` signed with Ed25519 over
its RFC 8785 canonical JSON, written as a new blob `audit-checkpoints/<tenant>/<seq>.json`
that is never overwritten (the container is immutable in Azure). Someone with database
rights can rewrite the chain, but not these blobs: a cut tail or a recomputed chain then
disagrees with the newest checkpoint.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

import rfc8785
from azure.core.exceptions import ResourceExistsError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from shared import audit, db, storage
from shared.keys import (
    dev_private_key_pem,
    ed25519_public_jwk,
    jwk_thumbprint,
    load_pem_private,
    split_pem_public,
)
from shared.settings import SettingsError, get_settings

CONTAINER = "audit-checkpoints"
log = logging.getLogger("custos.audit")


@dataclass(frozen=True)
class AuditKeys:
    signing: ed25519.Ed25519PrivateKey
    signing_kid: str
    verifying: dict[str, ed25519.Ed25519PublicKey]

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {**ed25519_public_jwk(pub), "kid": kid, "use": "sig", "alg": "EdDSA"}
                for kid, pub in self.verifying.items()
            ]
        }


@functools.cache
def audit_keys() -> AuditKeys:
    """This worker's checkpoint keys: one signs, retired ones still verify.

    Raises:
        SettingsError: AUDIT_SIGNING_KEY or AUDIT_VERIFY_KEYS is not Ed25519 PEM.
    """
    s = get_settings()
    pem = s.audit_signing_key or dev_private_key_pem(s, "audit-ed25519", ed25519.Ed25519PrivateKey.generate)
    signing = load_pem_private(pem, "audit_signing_key")
    if not isinstance(signing, ed25519.Ed25519PrivateKey):
        raise SettingsError("AUDIT_SIGNING_KEY: must be an Ed25519 private key")
    kid = jwk_thumbprint(ed25519_public_jwk(signing.public_key()))
    verifying = {kid: signing.public_key()}
    for pub in split_pem_public(s.audit_verify_keys, "audit_verify_keys"):
        if not isinstance(pub, ed25519.Ed25519PublicKey):
            raise SettingsError("AUDIT_VERIFY_KEYS: every key must be Ed25519")
        verifying[jwk_thumbprint(ed25519_public_jwk(pub))] = pub
    return AuditKeys(signing=signing, signing_kid=kid, verifying=verifying)


def signed_payload(doc: dict[str, Any]) -> bytes:
    return rfc8785.dumps({k: doc[k] for k in ("tenant_id", "seq", "checksum", "created_at", "key_id")})


def sign(tenant_id: str, seq: int, checksum: str, created_at: str) -> dict[str, Any]:
    keys = audit_keys()
    doc: dict[str, Any] = {
        "tenant_id": tenant_id,
        "seq": seq,
        "checksum": checksum,
        "created_at": created_at,
        "key_id": keys.signing_kid,
    }
    doc["signature"] = base64.urlsafe_b64encode(keys.signing.sign(signed_payload(doc))).rstrip(b"=").decode()
    return doc


class CheckpointInvalid(ValueError):
    """A checkpoint blob is malformed, signed by an unknown key, or its signature fails."""


def check_signature(doc: dict[str, Any], keys: AuditKeys) -> audit.CheckpointRef:
    """Raises CheckpointInvalid unless the document is signed by one of our keys."""
    try:
        pub = keys.verifying[doc["key_id"]]
        sig = base64.urlsafe_b64decode(doc["signature"] + "=" * (-len(doc["signature"]) % 4))
        pub.verify(sig, signed_payload(doc))
        return audit.CheckpointRef(seq=int(doc["seq"]), checksum=str(doc["checksum"]), created_at=str(doc["created_at"]))
    except KeyError as exc:
        raise CheckpointInvalid(f"checkpoint lacks {exc} or names an unknown key") from None
    except (InvalidSignature, ValueError, TypeError):
        raise CheckpointInvalid("checkpoint signature does not verify") from None


def blob_name(tenant_id: str, seq: int) -> str:
    return f"{tenant_id}/{seq:020d}.json"


def write(doc: dict[str, Any]) -> bool:
    """Store a checkpoint as a new blob; False if one for that seq already exists."""
    blob = storage.blob_service().get_blob_client(CONTAINER, blob_name(doc["tenant_id"], doc["seq"]))
    try:
        blob.upload_blob(json.dumps(doc, indent=1).encode(), overwrite=False)
    except ResourceExistsError:
        return False
    return True


def newest(tenant_id: str) -> dict[str, Any] | None:
    """The newest checkpoint document of a tenant, unverified; None if it has none."""
    container = storage.blob_service().get_container_client(CONTAINER)
    last = None
    for item in container.list_blobs(name_starts_with=f"{tenant_id}/"):
        last = item.name  # names sort by zero-padded seq
    if last is None:
        return None
    return json.loads(container.download_blob(last).readall())


def all_checkpoints(tenant_id: str) -> list[dict[str, Any]]:
    container = storage.blob_service().get_container_client(CONTAINER)
    return [
        json.loads(container.download_blob(item.name).readall())
        for item in container.list_blobs(name_starts_with=f"{tenant_id}/")
    ]


def verify_tenant(tenant_id: str) -> audit.Verification:
    """Verify the tenant's chain against its newest signed checkpoint."""
    doc = newest(tenant_id)
    ref = None
    if doc is not None:
        try:
            ref = check_signature(doc, audit_keys())
        except CheckpointInvalid as exc:
            return audit.Verification(
                valid=False, events_checked=0, head=None,
                checkpoint={"seq": doc.get("seq"), "created_at": doc.get("created_at")},
                first_failure={"seq": doc.get("seq"), "reason": str(exc)}, duration_ms=0.0,
            )
    return audit.verify_tenant(tenant_id, ref)


def chain_ids() -> list[str]:
    """Every chain: each tenant that is not purged, and the platform chain."""
    with db.platform_tx() as conn:
        rows = conn.execute("select id::text as id from tenants where status <> 'PURGED' order by created_at").fetchall()
    return [audit.PLATFORM_CHAIN, *(r["id"] for r in rows)]


def checkpoint_all() -> list[dict[str, Any]]:
    """Write a checkpoint for every chain whose head moved since its last checkpoint."""
    written = []
    for tenant_id in chain_ids():
        with db.tenant_tx(tenant_id) as conn:
            head = conn.execute(
                "select seq, checksum, now() as now from audit_chain_heads where tenant_id = %s", (tenant_id,)
            ).fetchone()
            last = conn.execute(
                "select max(seq) as seq from audit_checkpoint_log where tenant_id = %s", (tenant_id,)
            ).fetchone()
            if head is None or head["seq"] == 0 or ((last or {}).get("seq") or 0) >= head["seq"]:
                continue
            doc = sign(tenant_id, int(head["seq"]), head["checksum"], audit.format_time(head["now"]))
            if write(doc):
                written.append(doc)
            conn.execute(
                "insert into audit_checkpoint_log (tenant_id, seq, checksum, created_at) values (%s, %s, %s, now())"
                " on conflict do nothing",
                (tenant_id, doc["seq"], doc["checksum"]),
            )
    return written


def verify_all() -> list[tuple[str, audit.Verification]]:
    """Verify every chain; a failure is logged and raised as a platform alert event."""
    results = []
    for tenant_id in chain_ids():
        result = verify_tenant(tenant_id)
        results.append((tenant_id, result))
        if not result.valid:
            failure = result.first_failure or {}
            log.error(
                "audit chain verification failed tenant=%s seq=%s reason=%s",
                tenant_id, failure.get("seq"), failure.get("reason"),
            )
            with db.tenant_tx(audit.PLATFORM_CHAIN) as conn:
                audit.append(
                    conn,
                    tenant_id=audit.PLATFORM_CHAIN,
                    actor=audit.Actor(id=None, name="audit verifier", type="timer"),
                    action="platform.audit_chain_invalid",
                    target_type="tenant",
                    target_id=tenant_id,
                    after={"first_failure": failure, "events_checked": result.events_checked},
                )
    return results
