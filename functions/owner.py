"""The owner jobs: the only functions that run as the schema owner (DATABASE_OWNER_URL).

They are registered only where CUSTOS_FUNCTION_GROUPS names `owner`: in Azure that is the
owner-jobs Function App, whose identity is mapped to the owner role and which has no HTTP
route; the HTTP-facing app's role cannot delete audit events or immutable rows, and holds no
owner login (docs/purge.md, "The owner-jobs app"). Schedules come from settings.
"""

from __future__ import annotations

import azure.functions as func

from shared.core import health

bp = func.Blueprint()


@bp.timer_trigger(arg_name="timer", schedule="%TENANT_PURGE_SCHEDULE%", run_on_startup=False)
def purge_cancelled_tenants(timer: func.TimerRequest) -> None:
    """Purge every cancelled tenant whose purge date has passed, and finish any purge that
    stopped half way; each leaves a signed deletion attestation (docs/purge.md)."""
    from shared.lifecycle import purge  # storage and Ed25519 machinery load on first use, not at import

    try:
        results = purge.purge_due()
    except Exception as exc:
        health.record_heartbeat("purge_cancelled_tenants", ok=False, detail=f"failed: {type(exc).__name__}")
        raise
    health.record_heartbeat("purge_cancelled_tenants", ok=True, detail=f"{len(results)} purged")


@bp.timer_trigger(arg_name="timer", schedule="%AUDIT_RETENTION_SCHEDULE%", run_on_startup=False)
def audit_retention(timer: func.TimerRequest) -> None:
    """Queue one job per tenant with a retention window; each job archives and cuts the tenant's
    events only up to its newest signed checkpoint, behind a signed retention checkpoint."""
    from shared.lifecycle import audit_retention  # loads the audit machinery on first use, not at import
    audit_retention.enqueue_due()


@bp.queue_trigger(arg_name="msg", queue_name="%OWNER_JOBS_QUEUE%", connection="JobsStorage")
def run_owner_job(msg: func.QueueMessage) -> None:
    """Run the owner job (audit retention) a message of OWNER_JOBS_QUEUE names; any other kind
    is failed, not run. An unexpected failure raises, so the host retries it and, after
    maxDequeueCount tries, moves it to the poison queue."""
    from shared.lifecycle import api  # loads the lifecycle machinery on first message, not at import

    api.run_owner_job_message(msg.get_body().decode("utf-8", errors="replace"))
