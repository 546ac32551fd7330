"""The problems of tenants, their settings and their users."""

from __future__ import annotations

from shared.core.errors import ValidationFailed


class UnknownTimeZone(ValidationFailed):
    """A user's time zone is not a name of the IANA time zone database."""

    code, title = "unknown-time-zone", "Not a time zone of the IANA database"
