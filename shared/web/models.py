"""Request-model building blocks shared by several endpoints."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from shared.tenancy.rbac import PERMISSIONS

Reason = Annotated[str, Field(min_length=3, max_length=500, description="Why: recorded in the audit trail")]

EMAIL_ADDRESS = (r"[^@\s<>\"',;\x00-\x1f\x7f-\x9f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                 r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")
"""What Custos takes for an email address: no control characters (they would reach mail
headers), a host name of DNS labels."""
EMAIL_PATTERN = rf"^\s*{EMAIL_ADDRESS}\s*$"
Email = Annotated[str, Field(max_length=254, pattern=EMAIL_PATTERN, description="An email address")]
"""An email address as `shared.tenancy.users.normalize_email` accepts it (surrounding spaces are trimmed)."""

def _known_permission(value: str) -> str:
    if value not in PERMISSIONS:
        raise ValueError("not a permission of the catalogue")
    return value


Permission = Annotated[str, Field(json_schema_extra={"enum": sorted(PERMISSIONS)}), AfterValidator(_known_permission)]
"""One of the permission catalogue's names (README, shared.tenancy.rbac); the document lists them."""

BLANK = "blank_value"
"""The pydantic error type of a required text that holds only white space (see `Strict`)."""


class Strict(BaseModel):
    """A request body that refuses unknown fields (a typo is an error, not a no-op).

    Text is trimmed of surrounding white space after the field's own constraints are checked,
    so the lengths and patterns the OpenAPI document shows hold for the raw value; a text
    with a minimum length that is nothing but white space is refused as `blank_value`.
    """

    # defer_build: a model's validator is built on first use, not when its module is
    # imported (over a hundred models: a large part of a worker's start-up, bench/startup.py).
    model_config = ConfigDict(extra="forbid", defer_build=True)

    @model_validator(mode="after")
    def _trim(self) -> Any:
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if not isinstance(value, str):
                continue
            trimmed = value.strip()
            if not trimmed and value and any(getattr(m, "min_length", 0) for m in field.metadata):
                raise PydanticCustomError(BLANK, "{field} may not be only white space", {"field": name})
            if trimmed != value:
                object.__setattr__(self, name, trimmed)
        return self


class ReasonBody(Strict):
    reason: Reason


class ReasonQuery(Strict):
    reason: Reason


class Out(BaseModel):
    """A response body: exactly these fields (the OpenAPI document says
    `additionalProperties: false`, and the tests hold every answer to it)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built on first use, as Strict
