"""The problems of the request path: JSON that is too deep or holds forbidden characters, card data."""

from __future__ import annotations

from shared.core.errors import AppError, ValidationFailed


class JsonTooDeep(ValidationFailed):
    """A JSON body (or query value) nested deeper than the parser accepts."""

    code, title = "json-too-deep", "The JSON body is nested too deeply"


class ForbiddenCharacters(ValidationFailed):
    """A JSON key or string holds NUL or a lone surrogate, which PostgreSQL text cannot store."""

    code, title = "forbidden-characters", "The request holds characters that are not accepted"


class CardDataRefused(AppError):
    """A card number or CVV was sent: refused before it is stored or logged."""

    status, code, title = 422, "card-data-refused", "Card numbers and security codes are not accepted"

    def __init__(self, location: list[str | int]) -> None:
        super().__init__(
            "send a payment gateway token instead of card data",
            errors=[{"location": location, "message": "card number or security code", "code": "card_data"}],
        )


class ConsoleNotBuilt(AppError):
    """The admin console's assets are missing from this deployment (its build did not run)."""

    status, code, title = 503, "console-not-built", "The console is not available"


class CsrfHeaderMissing(AppError):
    """A request that a browser's cookie would authenticate lacks the console's custom header
    (`X-Custos-CSRF: 1`), which no cross-site form or script can add."""

    status, code, title = 403, "csrf-header-missing", "The request lacks its CSRF header"
