"""The jsonschema/RE2 half of `shared.records.tenant_schemas` (see there), loaded on first use.

Not for general use; it is slow to import (jsonschema, referencing, re2), so only
`tenant_schemas` imports it, inside its functions.
"""
from __future__ import annotations

import contextvars
import functools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import re2
import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError, UnknownType, ValidationError

from shared.records._schema_limits import (
    DRAFT_2020_12,
    MAX_EVALUATIONS,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    BudgetExceeded,
    Path,
    Problem,
    SchemaUnusable,
)

_FORBIDDEN = ("$id", "$recursiveRef", "$recursiveAnchor", "$vocabulary")
_REFS = ("$ref", "$dynamicRef")
_ANCHORS = ("$anchor", "$dynamicAnchor")
# The draft 2020-12 grammar of an anchor; a fixed pattern of ours, so `re` is fine here.
_PLAIN_NAME = re.compile(r"[A-Za-z_][-A-Za-z0-9._]*\Z")


# --- regexes ------------------------------------------------------------------------------------


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a tenant's bad pattern is a 422, not a line on stderr
    return options


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """RE2 (linear time, no backreferences or lookaround). Raises re2.error when it cannot compile."""
    return re2.compile(pattern, _re2_options())


def _is_regex(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    compile_pattern(instance)
    return True


FORMATS = FormatChecker()
FORMATS.checks("regex", raises=re2.error)(_is_regex)


# --- the static screen ----------------------------------------------------------------------------


def _depth(node: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a deep value must not blow the stack)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_SCHEMA_DEPTH:
                return depth
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _walk(node: Any, path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every object anywhere in the schema: keywords are screened wherever a `$ref` could land."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, i))


def _pointer_target(root: Any, fragment: str) -> tuple[bool, Any]:
    node = root
    if fragment == "":
        return True, node
    for raw in unquote(fragment).split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False, None
    return True, node


def _keyword_problems(root: dict[str, Any]) -> Iterator[Problem]:
    valid_targets: dict[int, bool] = {}  # many $refs to one big target cost one meta-schema check
    for path, node in _walk(root):
        for key in _FORBIDDEN:
            if key in node:
                yield Problem((*path, key), "outside_uri",
                              f"{key} is not allowed: a schema may not name or change URIs")
        if "$schema" in node and (path != () or node["$schema"] != DRAFT_2020_12):
            yield Problem((*path, "$schema"), "outside_uri",
                          f"$schema may only be {DRAFT_2020_12}, and only at the root")
        for key in _ANCHORS:
            if key in node and not (isinstance(node[key], str) and _PLAIN_NAME.match(node[key])):
                yield Problem((*path, key), "outside_uri", f"{key} must be a plain name, not a URI")
        for key in _REFS:
            if key not in node:
                continue
            ref = node[key]
            if not isinstance(ref, str) or not ref.startswith("#"):
                yield Problem((*path, key), "outside_uri",
                              f"{key} must be a local reference starting with #; outside URIs are never fetched")
                continue
            if ref[1:2] not in ("", "/"):
                continue  # an anchor: referencing finds it or fails closed
            found, target = _pointer_target(root, ref[1:])
            if not found or not isinstance(target, (dict, bool)):
                yield Problem((*path, key), "bad_reference", f"{key} points at no schema in this document")
            elif isinstance(target, dict) and target is not root:
                if id(target) not in valid_targets:
                    valid_targets[id(target)] = _meta_valid(target)
                if not valid_targets[id(target)]:
                    yield Problem((*path, key), "bad_reference", f"{key} points at something that is not a valid schema")
        if isinstance(node.get("pattern"), str):
            yield from _pattern_problem("pattern", node["pattern"], (*path, "pattern"))
        if isinstance(node.get("patternProperties"), dict):
            for pattern in node["patternProperties"]:
                yield from _pattern_problem("patternProperties", pattern, (*path, "patternProperties", pattern))


def _meta_valid(schema: dict[str, Any]) -> bool:
    try:
        Draft202012Validator.check_schema(schema, format_checker=FORMATS)
    except SchemaError:
        return False
    return True


def _pattern_problem(keyword: str, pattern: str, path: Path) -> Iterator[Problem]:
    try:
        compile_pattern(pattern)
    except re2.error:
        yield Problem(path, "unsupported_regex",
                      f"{keyword} must be an RE2 regular expression (no backreferences or lookaround)")


def problems(schema: Any) -> list[Problem]:
    """Everything that keeps `schema` from being used for payloads; empty when it is usable."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return [Problem((), "not_object", 'a record schema must be a JSON Schema with "type": "object"')]
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        return [Problem((), "too_deep", f"the schema may nest at most {MAX_SCHEMA_DEPTH} levels")]
    if len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode("utf-8")) > MAX_SCHEMA_BYTES:
        return [Problem((), "too_large", f"the schema may be at most {MAX_SCHEMA_BYTES} bytes")]
    found = list(_keyword_problems(schema))
    if found:
        return found
    try:
        Draft202012Validator.check_schema(schema, format_checker=FORMATS)
    except SchemaError as exc:
        return [Problem(tuple(exc.absolute_path), "invalid_schema",
                        f"invalid JSON Schema: fails the meta-schema's {exc.validator!r} rule")]
    return []


# --- evaluation -----------------------------------------------------------------------------------


def _refuse_retrieval(uri: str) -> referencing.Resource[Any]:
    raise LookupError("tenant schemas never retrieve anything")


_REGISTRY: referencing.Registry[Any] = referencing.Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]
_BUDGET: contextvars.ContextVar[list[int]] = contextvars.ContextVar("tenant_schema_budget")


def _no_errors(errors: Iterator[ValidationError]) -> bool:
    return next(iter(errors), None) is None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not compile_pattern(pattern).search(instance):
        yield ValidationError("does not match the pattern")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = compile_pattern(pattern)
        for key, value in instance.items():
            if regex.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _matches_a_pattern(key: str, schema: dict[str, Any]) -> bool:
    return any(compile_pattern(p).search(key) for p in schema.get("patternProperties", {}))


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    extras = [k for k in instance if k not in properties and not _matches_a_pattern(k, schema)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield ValidationError("additional properties are not allowed")


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: Any) -> list[str]:
    """jsonschema's `find_evaluated_property_keys_by_schema`, with RE2 for `patternProperties`."""
    if validator.is_type(schema, "boolean"):
        return []
    keys: list[str] = []
    for keyword in _REFS:
        ref = schema.get(keyword)
        if ref is not None:
            resolved = validator._resolver.lookup(ref)
            keys += _evaluated_keys(validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                                    instance, resolved.contents)
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys += properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is not None:
            keys += (k for k, v in instance.items() if _no_errors(validator.descend(v, subschema)))
    if "patternProperties" in schema:
        keys += (k for k in instance if _matches_a_pattern(k, schema))
    for key, subschema in schema.get("dependentSchemas", {}).items():
        if key in instance:
            keys += _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _no_errors(validator.descend(instance, subschema)):
                keys += _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys += _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys += _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys += _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(validator: Any, unevaluated: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    for key in instance:
        if key not in evaluated and not _no_errors(validator.descend(instance[key], unevaluated, path=key, schema_path=key)):
            yield ValidationError("unevaluated properties are not allowed")
            return


Keyword = Callable[[Any, Any, Any, Any], Any]


def _budgeted(keyword: Keyword) -> Keyword:
    """Count every keyword evaluation, so no schema (nested `allOf` over `$ref`s...) pins a worker."""
    @functools.wraps(keyword)
    def counted(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        budget = _BUDGET.get(None)
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise BudgetExceeded
        return keyword(validator, value, instance, schema)
    return counted


_KEYWORDS: dict[str, Keyword] = {
    **Draft202012Validator.VALIDATORS,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "unevaluatedProperties": _unevaluated_properties,
}
TenantValidator = validators.extend(Draft202012Validator, {k: _budgeted(v) for k, v in _KEYWORDS.items()})


def validator(schema: dict[str, Any]) -> Any:
    """A validator for a screened schema. Raises SchemaUnusable when `problems` finds any."""
    if _depth(schema) > MAX_SCHEMA_DEPTH:  # before json.dumps recurses over it
        raise SchemaUnusable(problems(schema))
    found, checked = _screened(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    if found:
        raise SchemaUnusable(list(found))
    return checked


@functools.lru_cache(maxsize=128)
def _screened(text: str) -> tuple[tuple[Problem, ...], Any]:
    """Screen once per distinct schema text; the validator holds its own copy of the schema."""
    schema = json.loads(text)
    found = problems(schema)
    if found:
        return tuple(found), None
    # Without a $schema nothing can switch evaluation to jsonschema's own (backtracking) class.
    root = {k: v for k, v in schema.items() if k != "$schema"}
    return (), TenantValidator(root, registry=_REGISTRY, format_checker=FORMATS)


def iter_errors(schema: dict[str, Any], payload: Any) -> list[ValidationError]:
    """Every error of `payload` under `schema`, evaluated within the budget.

    Raises:
        SchemaUnusable: the schema fails the checks, names something it cannot resolve without
            retrieving it, recurses without end, or needs more than `MAX_EVALUATIONS`.
    """
    checked = validator(schema)
    token = _BUDGET.set([MAX_EVALUATIONS])
    try:
        return list(checked.iter_errors(payload))
    except referencing.exceptions.Unresolvable:
        raise SchemaUnusable([Problem((), "unresolvable", "the schema refers to something outside itself")]) from None
    except RecursionError:
        raise SchemaUnusable([Problem((), "recursive", "the schema refers to itself without end")]) from None
    except BudgetExceeded:
        raise SchemaUnusable([Problem((), "too_costly",
                                      f"the schema needs more than {MAX_EVALUATIONS} evaluations for this payload")]) from None
    except (re2.error, UnknownType):
        raise SchemaUnusable([Problem((), "invalid_schema", "the schema cannot be evaluated")]) from None
    finally:
        _BUDGET.reset(token)


__all__ = ["FORMATS", "TenantValidator", "compile_pattern", "iter_errors", "problems", "validator"]
