"""The problems of tenants, their settings and their users."""

from __future__ import annotations

from shared.core.errors import Conflict, ValidationFailed


class UnknownTimeZone(ValidationFailed):
    """A user's time zone is not a name of the IANA time zone database."""

    code, title = "unknown-time-zone", "Not a time zone of the IANA database"


class TenantNotCancelled(Conflict):
    """Only a cancelled tenant can be reinstated."""

    code, title = "tenant-not-cancelled", "The tenant is not cancelled"


class PurgeStarted(Conflict):
    """The tenant is being or has been purged: nothing brings it back."""

    code, title = "tenant-purge-started", "The tenant's purge has started"


class PurgeDue(Conflict):
    """The tenant's purge date has passed: reinstating it now would race the purge."""

    code, title = "tenant-purge-due", "The tenant's purge date has passed"
