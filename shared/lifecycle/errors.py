"""The problems of the tenant lifecycle (jobs, export, purge, snapshots, retention, restore drill)."""

from __future__ import annotations

from shared.core.errors import Conflict


class PurgeNotDue(Conflict):
    """The tenant is not cancelled, or its purge date has not come yet: nothing was deleted."""

    code, title = "tenant-purge-not-due", "The tenant's purge is not due"


class PurgeInProgress(Conflict):
    """Another worker is purging this tenant right now; it will finish (or the next run resumes)."""

    code, title = "tenant-purge-in-progress", "The tenant is being purged by another worker"
