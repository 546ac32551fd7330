"""Scheduled jobs. NCRONTAB schedules (six fields, seconds first) come from settings."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.core import health, mail
from shared.identity import signin as auth

bp = func.Blueprint()
log = logging.getLogger("custos.timers")


@bp.timer_trigger(arg_name="timer", schedule="%HEARTBEAT_SCHEDULE%", run_on_startup=False)
def heartbeat(timer: func.TimerRequest) -> None:
    """Probe the database and storage every few minutes and record the result."""
    result = health.check()
    if not result["ok"]:
        log.error("heartbeat: dependency down %s", result["components"])
    health.record_heartbeat("heartbeat", ok=result["ok"], detail=str(result["components"]))


@bp.timer_trigger(arg_name="timer", schedule="%AUDIT_CHECKPOINT_SCHEDULE%", run_on_startup=False)
def audit_checkpoint(timer: func.TimerRequest) -> None:
    """Sign the head of every audit chain that moved past its newest signed checkpoint (read
    from blob storage, never from the database) and store it outside the database."""
    from shared.audit import checkpoints  # Ed25519 and blob machinery load on first use, not at import
    written = checkpoints.checkpoint_all()
    log.info("audit checkpoints written: %d", len(written))
    health.record_heartbeat("audit_checkpoint", ok=True, detail=f"{len(written)} written")


@bp.timer_trigger(arg_name="timer", schedule="%AUDIT_VERIFY_SCHEDULE%", run_on_startup=False)
def audit_verify_all(timer: func.TimerRequest) -> None:
    """Verify every audit chain and that checkpoints keep up; failures are logged and raised
    as platform alert events (a stale checkpoint as one of its own)."""
    from shared.audit import checkpoints  # Ed25519 and blob machinery load on first use, not at import
    results = checkpoints.verify_all()
    bad = [result for _, result in results if not result.valid]
    stale = sum(1 for result in bad if (result.first_failure or {}).get("code") == "checkpoint_stale")
    health.record_heartbeat(
        "audit_verify", ok=not bad, detail=f"{len(results)} chains, {len(bad) - stale} invalid, {stale} stale"
    )


@bp.timer_trigger(arg_name="timer", schedule="%MAIL_DELIVERY_SCHEDULE%", run_on_startup=False)
def deliver_mail(timer: func.TimerRequest) -> None:
    """Turn queued password-reset requests into mail, then send due outbox mail over SMTP;
    without SMTP_HOST it waits in the outbox (shared.cli outbox)."""
    resets = auth.process_reset_requests()
    if resets:
        log.info("reset requests handled: %d", resets)
    report = mail.deliver_pending()
    if report.sent or report.failed or report.skipped:
        log.info("mail delivery: sent=%d failed=%d skipped=%d", report.sent, report.failed, report.skipped)
    detail = f"{report.sent} sent, {report.failed} failed, {report.skipped} skipped"
    health.record_heartbeat(
        "deliver_mail", ok=report.error is None and report.failed == 0,
        detail=f"{detail}: {report.error}" if report.error else detail,
    )


@bp.timer_trigger(arg_name="timer", schedule="%BLOB_SNAPSHOT_SCHEDULE%", run_on_startup=False)
def snapshot_blobs(timer: func.TimerRequest) -> None:
    """Snapshot attachment blobs changed since the last run, delete snapshots past
    BLOB_SNAPSHOT_RETENTION_DAYS; heartbeats, and fails the run when a blob does not match
    its content address."""
    from shared.lifecycle import snapshots  # the Blob SDK loads on first use, not at import
    snapshots.scheduled_run()


@bp.timer_trigger(arg_name="timer", schedule="%HOUSEKEEPING_SCHEDULE%", run_on_startup=False)
def housekeeping(timer: func.TimerRequest) -> None:
    """Delete expired throttle rows, WebAuthn challenges, MFA tickets and one-time tokens and
    old sent mail, end idle sessions; counts logged and in the heartbeat, and the run fails
    (an alert sees it) when a step did."""
    from shared.identity import housekeeping as hk  # the Storage SDK loads on first use, not at import
    report = hk.run()
    health.record_heartbeat("housekeeping", ok=report.ok, detail=report.detail())
    if not report.ok:
        raise RuntimeError(f"housekeeping failed: {report.detail()}")


@bp.timer_trigger(arg_name="timer", schedule="%INCIDENT_SCHEDULE%", run_on_startup=False)
def incidents_sweep(timer: func.TimerRequest) -> None:
    """Turn security signals (audit events, failed timers) into incidents and escalate notices
    overdue 20 hours (docs/incidents.md); heartbeats, and fails the run when a chain could not be read."""
    from shared.lifecycle import api  # the audit machinery loads on first use, not at import

    log.info("incident sweep: %s", api.sweep_incidents())
