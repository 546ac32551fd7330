"""The problems of the tenant lifecycle (jobs, export, purge, snapshots, retention, restore drill)."""

from __future__ import annotations

from shared.core.errors import AppError, Conflict, Forbidden, InternalError, NotFound


class SnapshotNotFound(NotFound):
    """No such attachment blob or snapshot of it in the tenant's attachments."""

    code, title = "snapshot-not-found", "No such snapshot"


class SnapshotContentMismatch(Conflict):
    """A snapshot's content does not hash to the attachment's content address: restoring it
    would put wrong content behind a name that promises other bytes, so it is refused."""

    code, title = "snapshot-content-mismatch", "The snapshot does not match the attachment's content address"


class DrillFailed(AppError):
    """The restore drill could not back up or restore, or found a chain or blob that does not verify."""

    status, code, title = 500, "restore-drill-failed", "The restore drill failed"


class PurgeNotDue(Conflict):
    """The tenant is not cancelled, or its purge date has not come yet: nothing was deleted."""

    code, title = "tenant-purge-not-due", "The tenant's purge is not due"


class PurgeInProgress(Conflict):
    """Another worker is purging this tenant right now; it will finish (or the next run resumes)."""

    code, title = "tenant-purge-in-progress", "The tenant is being purged by another worker"


class UnknownJobKind(AppError):
    """A job's kind has no handler in this worker (the code that made it is gone)."""

    status, code, title = 500, "job-kind-unknown", "No handler for this kind of job"


class JobWrongApp(AppError):
    """A job message reached the other app's queue: an owner job (audit retention) on the API
    app's queue, whose database role cannot run it, or an API job on the owner-jobs app's queue,
    which must run nothing but the owner jobs (docs/purge.md, "The owner-jobs app")."""

    status, code, title = 500, "job-wrong-app", "The job was sent to an app that does not run its kind"


class JobCrashed(InternalError):
    """A job attempt raised an unexpected error (details only in the logs, never in the job)."""

    code, title = "job-crashed", "The job failed"


class ExportNotReady(Conflict):
    """The export has not finished (or failed): there is nothing to download yet."""

    code, title = "export-not-ready", "The export is not ready"


class ExportLinkInvalid(Forbidden):
    """A download link that this app did not sign for this export and file, or that was altered."""

    code, title = "export-link-invalid", "The download link is not valid"


class ExportLinkExpired(Forbidden):
    """A download link past its expiry (EXPORT_LINK_TTL_S): ask the export for a new one."""

    code, title = "export-link-expired", "The download link has expired"


class ExportIntegrityFailure(AppError):
    """A stored file no longer matches the hash recorded when it was written (attachment or export file)."""

    status, code, title = 502, "export-integrity", "A stored file failed its integrity check"


class ExportSchemaUnknown(InternalError):
    """A tenant column looks like a secret and the export has not been told whether to include it."""

    code, title = "export-schema-unknown", "The export does not know a column of the schema"


class AuditRetentionRefused(Conflict):
    """The audit retention cut was refused: the tenant's chain, its checkpoints or its retention
    checkpoints do not verify, or a stored archive for the cut differs. Nothing was removed; the
    evidence stays for an operator to examine."""

    code, title = "audit-retention-refused", "The audit retention cut was refused"


class IncidentStateConflict(Conflict):
    """The incident is not in a state that allows this step (notify an incident already
    RESOLVED, resolve one twice): nothing changed."""

    code, title = "incident-state-conflict", "The incident's state does not allow this step"
