"""JSON in and out of the API: strict on the way in, unbreakable on the way out.

In (`parse_body`, `check_text`): every JSON body is parsed once, then walked once without
recursion. It is refused (422 problem+json) when it is nested deeper than `MAX_DEPTH`, or when
any key or string holds a NUL character or a lone UTF-16 surrogate (`"\\u0000"` and
`"\\ud800"` are valid JSON escapes, but PostgreSQL cannot store either in text or jsonb and
neither belongs in a business value). Query values and route parameters go through
`check_text` for the same characters. The size limit is the wrapper's (`MAX_BODY_BYTES`).

Out (`dumps`, `loads_stored`): rendering must not fail on data that is already stored. A
value written by an older version may be nested far deeper than `MAX_DEPTH` (up to what
Python's parser accepted then). `loads_stored` falls back to a `RawJSON` holder when the
parser's recursion limit is hit, and `dumps` splices such text back verbatim; values too
deep for the fast encoders are written by an iterative encoder that has no depth limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from shared.web.errors import ForbiddenCharacters, JsonTooDeep

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a request body (the top level is 1)."""


class RawJSON:
    """JSON text taken from storage that is rendered verbatim (too deep to parse here).

    Deliberately not a dataclass: pydantic's serializer must not know it, so `dumps` takes
    the iterative path that splices it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawJSON) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _bad_char(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (U+0000)"
    for ch in text:
        if "\ud800" <= ch <= "\udfff":
            return "a lone surrogate code point"
    return None


def check_text(text: str, location: list[str | int]) -> None:
    """Raises ForbiddenCharacters if `text` holds NUL or a lone surrogate."""
    problem = _bad_char(text)
    if problem is not None:
        raise ForbiddenCharacters(
            "strings may not hold NUL characters or lone surrogates",
            errors=[{"location": location, "message": f"holds {problem}", "code": "forbidden_character"}],
        )


def check_value(value: Any, where: str = "body") -> None:
    """Walk a parsed JSON value once, without recursion.

    Raises:
        JsonTooDeep: nested deeper than MAX_DEPTH.
        ForbiddenCharacters: a key or string holds NUL or a lone surrogate.
    """
    stack: list[tuple[Any, int, list[str | int]]] = [(value, 1, [where])]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            check_text(node, path)
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            raise JsonTooDeep(
                f"JSON may be nested at most {MAX_DEPTH} levels deep",
                errors=[{"location": path[:MAX_DEPTH + 1], "message": f"deeper than {MAX_DEPTH} levels",
                         "code": "json_too_deep"}],
            )
        if isinstance(node, dict):
            for key, item in node.items():
                check_text(key, [*path, "(key)"])
                stack.append((item, depth + 1, [*path, key]))
        else:
            stack.extend((item, depth + 1, [*path, i]) for i, item in enumerate(node))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(raw: bytes) -> Any:
    """Parse and check a JSON request body.

    Raises:
        ValueError: not UTF-8 or not JSON (json.JSONDecodeError / UnicodeDecodeError carry where).
        JsonTooDeep, ForbiddenCharacters: as `check_value`.
    """
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise JsonTooDeep(
            f"JSON may be nested at most {MAX_DEPTH} levels deep",
            errors=[{"location": ["body"], "message": f"deeper than {MAX_DEPTH} levels", "code": "json_too_deep"}],
        ) from None
    check_value(value)
    return value


def loads_stored(text: str) -> Any:
    """Parse JSON text read from the database; text too deep for the parser is kept as RawJSON."""
    try:
        return json.loads(text)
    except RecursionError:
        return RawJSON(text)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of a response body. Never fails on depth; RawJSON is spliced verbatim.

    Raises:
        TypeError: a value that has no JSON form (a programming error, not bad input).
    """
    try:
        return json.dumps(to_jsonable_python(value, by_alias=True), ensure_ascii=False,
                          separators=(",", ":")).encode()
    except (ValueError, RecursionError, TypeError):
        pass  # too deep for pydantic's serializer or the C encoder, or holds RawJSON
    return "".join(_iter_encode(value, _shallow)).encode()


def _shallow(obj: Any) -> Any:
    """One level of a non-JSON object as JSON types (pydantic's rules for scalars and models)."""
    if isinstance(obj, BaseModel):
        return {(f.alias or name): getattr(obj, name) for name, f in type(obj).model_fields.items()}
    if hasattr(obj, "__dataclass_fields__"):
        return {name: getattr(obj, name) for name in obj.__dataclass_fields__}
    return to_jsonable_python(obj, by_alias=True)


_string = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _iter_encode(value: Any, default: Callable[[Any], Any]) -> list[str]:
    """JSON text of `value` with an explicit stack instead of recursion."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, _Lit):
            out.append(node.text)
        elif isinstance(node, RawJSON):
            out.append(node.text)
        elif node is None:
            out.append("null")
        elif node is True:
            out.append("true")
        elif node is False:
            out.append("false")
        elif isinstance(node, str):
            out.append(_string(node))
        elif isinstance(node, int):
            out.append(int.__repr__(node))
        elif isinstance(node, float):
            out.append(float.__repr__(node) if math.isfinite(node) else "null")
        elif isinstance(node, dict):
            items = list(node.items())
            stack.append(_Lit("}"))
            for i in range(len(items) - 1, -1, -1):
                key, item = items[i]
                stack.append(item)
                stack.append(_Lit(("," if i else "") + _string(str(key)) + ":"))
            stack.append(_Lit("{"))
        elif isinstance(node, (list, tuple)):
            stack.append(_Lit("]"))
            for i in range(len(node) - 1, -1, -1):
                stack.append(node[i])
                if i:
                    stack.append(_Lit(","))
            stack.append(_Lit("["))
        else:
            stack.append(default(node))
    return out


@dataclass(frozen=True)
class _Lit:
    text: str
