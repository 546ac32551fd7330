"""Tenant JSON Schemas: screened when defined, evaluated without reaching outside or backtracking.

Not for general use: `shared.records.records.check_schema` and `shared.records.records.validate_payload` are
the front door. This module holds the hazardous parts below them:

- `problems` lists why a schema may not be used: too deep or large, a keyword naming a URI
  outside the schema (`$ref`/`$dynamicRef` not starting with `#`, any `$id`, `$schema` other than
  draft 2020-12 at the root, `$recursiveRef`, `$vocabulary`, anchors that are not plain names),
  a `$ref` pointing at something that is not a valid schema, a regex RE2 cannot compile, or a
  meta-schema violation. The same list is computed again before every validation, so a schema
  stored by an older version fails closed instead of fetching.
- `validator` evaluates with a registry whose `retrieve` refuses every URI, RE2 for `pattern`,
  `patternProperties` (also where `additionalProperties` and `unevaluatedProperties` consult
  it) and the `regex` format, and a budget of keyword evaluations per payload.

Python's backtracking `re` never sees a tenant's pattern.

The limits and result types live here; the evaluation (jsonschema, referencing, re2: a
large part of a worker's import time) is in `_schema_engine`, imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import FormatChecker
    from jsonschema.exceptions import ValidationError

from shared.records._schema_limits import (  # noqa: F401  (re-exported: the limits are part of this front)
    DRAFT_2020_12,
    MAX_EVALUATIONS,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    BudgetExceeded,
    Path,
    Problem,
    SchemaUnusable,
)


def problems(schema: Any) -> list[Problem]:
    """Why `schema` may not be used as a tenant schema; empty when it may."""
    from shared.records import _schema_engine

    return _schema_engine.problems(schema)


def validator(schema: dict[str, Any]) -> Any:
    """A validator for a screened schema. Raises SchemaUnusable when `problems` finds any."""
    from shared.records import _schema_engine

    return _schema_engine.validator(schema)


def iter_errors(schema: dict[str, Any], payload: Any) -> list[ValidationError]:
    """Every error of `payload` under `schema`, evaluated within the budget.

    Raises:
        SchemaUnusable: the schema fails the checks, names something it cannot resolve without
            retrieving it, recurses without end, or needs more than `MAX_EVALUATIONS`.
    """
    from shared.records import _schema_engine

    return _schema_engine.iter_errors(schema, payload)


def compile_pattern(pattern: str) -> Any:
    """RE2 (linear time, no backreferences or lookaround). Raises re2.error when it cannot compile."""
    from shared.records import _schema_engine

    return _schema_engine.compile_pattern(pattern)


def formats() -> FormatChecker:
    """The format checker tenant schemas are evaluated with (`regex` through RE2)."""
    from shared.records import _schema_engine

    return _schema_engine.FORMATS


__all__ = ["DRAFT_2020_12", "MAX_EVALUATIONS", "MAX_SCHEMA_BYTES", "MAX_SCHEMA_DEPTH", "Problem",
           "SchemaUnusable", "compile_pattern", "formats", "iter_errors", "problems", "validator"]
