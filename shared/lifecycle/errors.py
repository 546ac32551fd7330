"""The problems of the tenant lifecycle (jobs, export, purge, snapshots, retention, restore drill)."""

from __future__ import annotations

from shared.core.errors import AppError, Conflict, NotFound


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
