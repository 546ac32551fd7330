"""What the lifecycle triggers call: jobs and tenant exports, each owning its transaction
(see shared.web.caller)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from shared.audit import chain as audit
from shared.core import db, storage
from shared.core.errors import NotFound
from shared.core.settings import get_settings
from shared.lifecycle import export, jobs, signing
from shared.lifecycle.errors import ExportIntegrityFailure, ExportNotReady
from shared.web.caller import Caller


def run_job_message(text: str) -> str:
    """Handle one message of the job queue (see `jobs.run_message`).

    Raises:
        Exception: an unexpected failure of the job's attempt, so the host retries the message.
    """
    from shared.lifecycle import audit_retention  # noqa: F401  registers its job kind; loads on first message

    return jobs.run_message(text)


def run_owner_job_message(text: str) -> str:
    """Handle one message of the owner jobs' queue (the owner-jobs app): only owner kinds run.

    Raises:
        Exception: an unexpected failure of the job's attempt, so the host retries the message.
    """
    from shared.lifecycle import audit_retention  # noqa: F401  registers its job kind; loads on first message

    return jobs.run_message(text, owner=True)


def get_job(caller: Caller, job_id: uuid.UUID) -> dict[str, Any]:
    """The job's state, progress and error.

    Raises:
        NotFound: no such job in the caller's tenant.
    """
    with caller.tenant_tx() as conn:
        return jobs.get(conn, job_id).as_dict()


def start_export(caller: Caller, *, reason: str) -> dict[str, Any]:
    """Create the export job (audited with its reason) and queue it; the view of `get_export`.

    Raises:
        ServiceUnavailable: the queue could not be reached (the job stays QUEUED, visible).
    """
    def requested(conn: db.Conn, job: jobs.Job) -> None:
        audit.append(conn, tenant_id=caller.tenant_id, actor=caller.actor, action="export.requested",
                     target_type="export", target_id=job.id, reason=reason, meta=caller.meta)

    job = jobs.start(caller.tenant_tx(), tenant_id=caller.tenant_id, kind=export.KIND,
                     created_by=caller.user.user_id, then=requested)
    return _export_view(job, links=None)


def get_export(caller: Caller, export_id: uuid.UUID, *, now: datetime | None = None) -> dict[str, Any]:
    """The export's job state and, once DONE, short-lived download links of every file (issuing
    them is audited: it is who got access to the tenant's data).

    Raises:
        NotFound: no such export in the caller's tenant.
    """
    now = now or datetime.now(UTC)
    with caller.tenant_tx() as conn:
        job = jobs.get(conn, export_id, kind=export.KIND)
        if job.state != jobs.State.DONE:
            return _export_view(job, links=None)
        expires = now + timedelta(seconds=get_settings().export_link_ttl_s)
        audit.append(conn, tenant_id=caller.tenant_id, actor=caller.actor, action="export.links_issued",
                     target_type="export", target_id=job.id, after={"expires_at": audit.format_time(expires)},
                     meta=caller.meta)
    user = caller.user
    links = [
        {**entry, "url": _url(job, entry["path"], expires, user.user_id, caller.actor.name), "expires_at": audit.format_time(expires)}
        for entry in (job.result or {}).get("files", [])
    ]
    return _export_view(job, links=links)


def _url(job: jobs.Job, path: str, expires: datetime, user_id: str | None, user_name: str) -> str:
    prefix = export.prefix_of(job.tenant_id, job.id)
    if not get_settings().storage_connection_string:
        return signing.sas_url(export.CONTAINER, prefix + path, expires=expires)
    token = signing.link_token(tenant_id=job.tenant_id, export_id=job.id, path=path, expires=expires,
                               user_id=user_id, user_name=user_name)
    return f"/api/exports/{job.id}/download?file={quote(path, safe='/')}&token={token}"


def _export_view(job: jobs.Job, *, links: list[dict[str, Any]] | None) -> dict[str, Any]:
    view = job.as_dict()
    result = job.result or {}
    view["tables"] = result.get("tables") if job.state == jobs.State.DONE else None
    view["files"] = links
    return view


@dataclass(frozen=True)
class Download:
    body: bytes
    filename: str
    media_type: str


def download(export_id: uuid.UUID, *, file: str, token: str, meta: audit.RequestMeta,
             now: datetime | None = None) -> Download:
    """One file of a finished export, through a signed link (the link is the credential, as a
    SAS is); the file is re-hashed against the manifest entry and the download is audited.

    Raises:
        ExportLinkInvalid, ExportLinkExpired: the token does not grant this file now.
        NotFound: the export or the file is not there (another tenant's export too).
        ExportNotReady: the export has not finished.
        ExportIntegrityFailure: the stored file no longer matches its hash.
    """
    link = signing.check_token(token, expected_export_id=str(export_id), now=now)
    if link.path != file:
        from shared.lifecycle.errors import ExportLinkInvalid

        raise ExportLinkInvalid("the token is for another file")
    with db.tenant_tx(link.tenant_id) as conn:
        job = jobs.get(conn, export_id, kind=export.KIND)
    if job.state != jobs.State.DONE:
        raise ExportNotReady("the export has not finished")
    entry = next((f for f in (job.result or {}).get("files", []) if f["path"] == file), None)
    if entry is None:
        raise NotFound("no such file in this export")
    blob = storage.blob_service().get_blob_client(export.CONTAINER, export.prefix_of(link.tenant_id, job.id) + file)
    body = blob.download_blob().readall()
    if hashlib.sha256(body).hexdigest() != entry["sha256"]:
        raise ExportIntegrityFailure("the export file no longer matches its manifest")
    with db.tenant_tx(link.tenant_id) as conn:
        audit.append(conn, tenant_id=link.tenant_id, actor=audit.Actor(id=link.user_id, name=link.user_name),
                     action="export.downloaded", target_type="export", target_id=job.id,
                     after={"file": file, "sha256": entry["sha256"]}, meta=meta)
    media = ("application/json" if file.endswith(".json") or file.endswith(".sig") else
             "text/csv; charset=utf-8" if file.endswith(".csv") else
             "application/jsonl" if file.endswith(".jsonl") else "application/octet-stream")
    return Download(body=body, filename=file.rsplit("/", 1)[-1], media_type=media)


def list_exports(caller: Caller, *, limit: int) -> dict[str, Any]:
    """The tenant's newest exports, for the console's list (no links: `get_export` issues them,
    audited, for one export at a time).

    Raises:
        Nothing of its own (the caller's permission is checked by the endpoint).
    """
    with caller.tenant_tx() as conn:
        rows = jobs.recent(conn, kind=export.KIND, limit=limit)
    return {"exports": [_export_view(job, links=None) for job in rows]}


# --- security incidents (docs/incidents.md) -------------------------------------------------


def list_incidents(caller: Caller, *, state: str | None = None, tenant_id: uuid.UUID | None = None) -> dict[str, Any]:
    """Incidents for operators (OPEN first), optionally in one state or affecting one tenant."""
    from shared.lifecycle import incidents

    return {"incidents": incidents.list_incidents(state=state, tenant_id=str(tenant_id) if tenant_id else None)}


def get_incident(caller: Caller, incident_id: uuid.UUID) -> dict[str, Any]:
    """One incident with its history (operators).

    Raises:
        NotFound: no such incident.
    """
    from shared.lifecycle import incidents

    return incidents.get_incident(incident_id)


def notify_incident(caller: Caller, incident_id: uuid.UUID, *, reason: str) -> dict[str, Any]:
    """Mail the affected tenants' ADMINs the fixed notice; the incident turns NOTIFIED.

    Raises:
        StepUpRequired: no recent second factor (a notice goes to customers in the platform's name).
        BlankValue, NotFound, IncidentStateConflict: see `incidents.notify`.
    """
    from shared.identity import mfa
    from shared.lifecycle import incidents

    mfa.require_recent_second_factor(caller.user)

    return incidents.notify(incident_id, reason=reason, actor=caller.actor, meta=caller.meta)


def resolve_incident(caller: Caller, incident_id: uuid.UUID, *, reason: str) -> dict[str, Any]:
    """Resolve the incident with a reason.

    Raises:
        StepUpRequired: no recent second factor (resolving stops the 24-hour clock).
        BlankValue, NotFound, IncidentStateConflict: see `incidents.resolve`.
    """
    from shared.identity import mfa
    from shared.lifecycle import incidents

    mfa.require_recent_second_factor(caller.user)

    return incidents.resolve(incident_id, reason=reason, actor=caller.actor, meta=caller.meta)


def my_incidents(caller: Caller) -> dict[str, Any]:
    """The incidents affecting the caller's tenant (no other tenant is named in them)."""
    from shared.lifecycle import incidents

    with caller.tenant_tx() as conn:
        return {"incidents": incidents.tenant_incidents(conn)}


def my_incident(caller: Caller, incident_id: uuid.UUID) -> dict[str, Any]:
    """One incident affecting the caller's tenant.

    Raises:
        NotFound: no such incident, or one not affecting the caller's tenant.
    """
    from shared.lifecycle import incidents

    with caller.tenant_tx() as conn:
        return incidents.tenant_incident(conn, incident_id)


def sweep_incidents() -> str:
    """The incident timer's run: sweep signals, escalate overdue notices, heartbeat; a chain
    that could not be swept fails the run (after the heartbeat).

    Raises:
        RuntimeError: a chain could not be swept. Exception: the sweep itself failed.
    """
    import logging

    from shared.core import health
    from shared.lifecycle import incidents

    try:
        report = incidents.sweep()
    except Exception as exc:
        logging.getLogger("custos.incidents").exception("incident sweep failed")
        health.record_heartbeat("incidents_sweep", ok=False, detail=f"failed: {type(exc).__name__}")
        raise
    detail = f"{report.signals} signals, {report.escalated} escalated, {len(report.failed_chains)} chains failed"
    health.record_heartbeat("incidents_sweep", ok=not report.failed_chains, detail=detail)
    if report.failed_chains:
        raise RuntimeError(f"incident sweep failed for {len(report.failed_chains)} chains")
    return detail
