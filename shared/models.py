"""Request-model building blocks shared by several endpoints."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Reason = Annotated[str, Field(min_length=3, max_length=500, description="Why: recorded in the audit trail")]


class Strict(BaseModel):
    """A request body that refuses unknown fields (a typo is an error, not a no-op)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ReasonBody(Strict):
    reason: Reason


class ReasonQuery(Strict):
    reason: Reason


class Out(BaseModel):
    """A response body: exactly these fields (the OpenAPI document says
    `additionalProperties: false`, and the tests hold every answer to it)."""

    model_config = ConfigDict(extra="forbid")
