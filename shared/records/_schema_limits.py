"""The limits and result types of tenant schemas, shared by `tenant_schemas` (the light
front) and `_schema_engine` (the evaluation), so neither imports the other at module level."""

from __future__ import annotations

from dataclasses import dataclass

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
MAX_SCHEMA_BYTES = 65_536
MAX_SCHEMA_DEPTH = 24
"""Below the request body's own limit (shared.web.jsonio.MAX_DEPTH), so the schema rule is the one a client meets."""
# Keyword evaluations per payload: a built-in invoice with its 500 lines at most needs about
# 7,000 (16 ms); a schema that needs more than this for one payload is refused, not run.
MAX_EVALUATIONS = 50_000

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """Why a schema may not be used: where (JSON path in the schema), which keyword, what."""

    location: Path
    code: str
    message: str


class SchemaUnusable(Exception):
    """A stored schema failed the checks or could not be evaluated without reaching outside."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("schema unusable")
        self.problems = problems


class BudgetExceeded(Exception):
    """The payload needs more keyword evaluations than `MAX_EVALUATIONS` under this schema."""
