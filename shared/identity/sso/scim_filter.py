"""SCIM filters (RFC 7644 section 3.4.2.2) and PATCH paths (section 3.5.2), parsed by a small
recursive-descent parser and compiled to parameterised SQL over an attribute allow-list.

Why our own parser: the maintained Python ones either build SQL as text (scim2-filter-parser's
transpiler interpolates the attribute map into the query string) or parse into models without
a way to compile to SQL (scim2-models); the grammar is small and every part of it is tested
here with hostile input. Values never reach the SQL text: each one is a bound parameter, and
the only SQL fragments are the constants of the resource's attribute map. Anything outside
the grammar, an attribute outside the map, or a value of the wrong type is `invalidFilter`.

Supported: `eq ne co sw ew gt ge lt le pr`, `and`, `or`, `not (...)`, parentheses, and value
paths (`emails[type eq "work" and value co "@example.com"]`). String comparisons follow each
attribute's `caseExact` (userName, emails and names compare case-insensitively).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.identity.sso.errors import ScimInvalidFilter, ScimInvalidPath

MAX_FILTER_CHARS = 2000
MAX_TERMS = 50
MAX_DEPTH = 10

COMPARE_OPS = frozenset({"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"})

_TOKEN = re.compile(r'\s+|(?P<p>[()\[\]])|(?P<s>"(?:[^"\\]|\\.)*")|(?P<w>[A-Za-z0-9_:.$+\-]+)')


@dataclass(frozen=True)
class Compare:
    attr: str
    sub: str | None
    op: str
    value: Any


@dataclass(frozen=True)
class Present:
    attr: str
    sub: str | None


@dataclass(frozen=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    inner: Node


@dataclass(frozen=True)
class ValuePath:
    attr: str
    filter: Node


Node = Compare | Present | And | Or | Not | ValuePath


@dataclass(frozen=True)
class PatchPath:
    """`attr`, `attr.sub`, `attr[filter]` or `attr[filter].sub`, names lower-cased."""

    attr: str
    sub: str | None = None
    filter: Node | None = None


def _tokens(text: str, error: type[ValueError]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise error(f"unexpected character at position {pos + 1}")
        pos = m.end()
        if m.group("p"):
            out.append(("p", m.group("p")))
        elif m.group("s"):
            try:
                out.append(("v", json.loads(m.group("s"))))
            except ValueError:
                raise error("a string value is not a valid JSON string") from None
        elif m.group("w"):
            out.append(("w", m.group("w")))
    return out


class _Parser:
    def __init__(self, text: str, schemas: tuple[str, ...], error: type[ValueError]) -> None:
        if len(text) > MAX_FILTER_CHARS:
            raise error(f"at most {MAX_FILTER_CHARS} characters")
        self.error = error
        self.schemas = tuple(s.lower() for s in schemas)
        self.toks = _tokens(text, error)
        self.i = 0
        self.terms = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None:
            raise self.error("the expression ends too early")
        self.i += 1
        return tok

    def word(self, *words: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "w" and tok[1].lower() in words:
            self.i += 1
            return True
        return False

    def punct(self, p: str) -> bool:
        if self.peek() == ("p", p):
            self.i += 1
            return True
        return False

    def expect(self, p: str) -> None:
        if not self.punct(p):
            raise self.error(f"expected {p!r}")

    def done(self) -> None:
        if self.peek() is not None:
            raise self.error("unexpected text after the expression")

    def attr_path(self) -> tuple[str, str | None]:
        kind, text = self.take()
        if kind != "w":
            raise self.error("expected an attribute name")
        name = str(text)
        if name.lower().startswith("urn:"):
            prefix, _, name = name.rpartition(":")
            if prefix.lower() not in self.schemas:
                raise self.error(f"unknown schema {prefix[:100]}")
        if not re.fullmatch(r"[A-Za-z][\w$-]*(\.[A-Za-z][\w$-]*)?", name):
            raise self.error(f"not an attribute name: {name[:100]}")
        attr, _, sub = name.lower().partition(".")
        return attr, sub or None

    def filter(self, depth: int = 0) -> Node:
        if depth > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH}")
        node = self.conjunction(depth)
        while self.word("or"):
            node = Or(node, self.conjunction(depth))
        return node

    def conjunction(self, depth: int) -> Node:
        node = self.unary(depth)
        while self.word("and"):
            node = And(node, self.unary(depth))
        return node

    def unary(self, depth: int) -> Node:
        if self.word("not"):
            self.expect("(")
            inner = self.filter(depth + 1)
            self.expect(")")
            return Not(inner)
        if self.punct("("):
            inner = self.filter(depth + 1)
            self.expect(")")
            return inner
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self.error(f"at most {MAX_TERMS} comparisons")
        attr, sub = self.attr_path()
        if sub is None and self.punct("["):
            inner = self.filter(depth + 1)
            self.expect("]")
            return ValuePath(attr, inner)
        if self.word("pr"):
            return Present(attr, sub)
        kind, op = self.take()
        if kind != "w" or op.lower() not in COMPARE_OPS:
            raise self.error("expected an operator (eq, ne, co, sw, ew, gt, ge, lt, le, pr)")
        return Compare(attr, sub, op.lower(), self.value())

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "v":
            return text
        if kind == "w":
            low = text.lower()
            if low in ("true", "false"):
                return low == "true"
            if low == "null":
                return None
            if re.fullmatch(r"-?\d{1,15}(\.\d{1,15})?", text):
                return float(text) if "." in text else int(text)
        raise self.error("expected a value (a JSON string, number, true, false or null)")


def parse_filter(text: str, schemas: tuple[str, ...] = ()) -> Node:
    """The filter as a tree. `schemas` are the URNs an attribute may be prefixed with.

    Raises:
        ScimInvalidFilter: not valid filter syntax, or over the limits above.
    """
    p = _Parser(text, schemas, ScimInvalidFilter)
    if not p.toks:
        raise ScimInvalidFilter("the filter is empty")
    node = p.filter()
    p.done()
    return node


def parse_path(text: str, schemas: tuple[str, ...] = ()) -> PatchPath:
    """A PATCH `path` (RFC 7644 section 3.5.2: attrPath / valuePath [subAttr]).

    Raises:
        ScimInvalidPath: not a valid path.
    """
    if not isinstance(text, str) or not text.strip():
        raise ScimInvalidPath("the path is empty")
    p = _Parser(text, schemas, ScimInvalidPath)
    attr, sub = p.attr_path()
    flt = None
    if sub is None and p.punct("["):
        try:
            flt = p.filter(1)
        except ScimInvalidPath:
            raise
        p.expect("]")
        tok = p.peek()
        if tok is not None and tok[0] == "w" and str(tok[1]).startswith("."):
            p.i += 1
            name = str(tok[1])[1:]
            if not re.fullmatch(r"[A-Za-z][\w$-]*", name):
                raise ScimInvalidPath("not a sub-attribute name")
            sub = name.lower()
    p.done()
    return PatchPath(attr, sub, flt)


# --- compiling to SQL ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A single-valued attribute: its SQL expression (a constant), type and case rule."""

    sql: str
    type: str = "string"  # string | boolean | datetime | json
    case_exact: bool = False


@dataclass(frozen=True)
class Multi:
    """A multi-valued attribute: `exists` is an SQL template with `{cond}` where the condition
    on one element goes; `subs` map sub-attributes to Columns over that element; `default` is
    the sub-attribute a bare `emails eq ...` compares."""

    exists: str
    subs: Mapping[str, Column]
    default: str = "value"


AttrMap = Mapping[str, Column | Multi]


def to_sql(node: Node, attrs: AttrMap) -> tuple[str, list[Any]]:
    """SQL for a filter tree over `attrs`, with its parameters in order.

    Raises:
        ScimInvalidFilter: an attribute outside `attrs`, or an operator or value its type refuses.
    """
    params: list[Any] = []
    return _sql(node, attrs, params), params


def _sql(node: Node, attrs: AttrMap, params: list[Any]) -> str:
    if isinstance(node, And):
        return f"({_sql(node.left, attrs, params)} and {_sql(node.right, attrs, params)})"
    if isinstance(node, Or):
        return f"({_sql(node.left, attrs, params)} or {_sql(node.right, attrs, params)})"
    if isinstance(node, Not):
        return f"(not coalesce({_sql(node.inner, attrs, params)}, false))"
    if isinstance(node, ValuePath):
        multi = attrs.get(node.attr)
        if not isinstance(multi, Multi):
            raise ScimInvalidFilter(f"{node.attr} is not a multi-valued attribute that can be filtered")
        return multi.exists.format(cond=_sql(node.filter, multi.subs, params))
    dotted = attrs.get(f"{node.attr}.{node.sub}") if node.sub else None
    if isinstance(dotted, Column):
        node = Present(node.attr, None) if isinstance(node, Present) else Compare(node.attr, None, node.op, node.value)
    target = dotted or attrs.get(node.attr)
    if target is None:
        raise ScimInvalidFilter(f"cannot filter on {node.attr}")
    if isinstance(target, Multi):
        sub = node.sub or target.default
        column = target.subs.get(sub)
        if column is None:
            raise ScimInvalidFilter(f"cannot filter on {node.attr}.{sub}")
        inner = Present(sub, None) if isinstance(node, Present) else Compare(sub, None, node.op, node.value)
        return target.exists.format(cond=_sql(inner, target.subs, params))
    if node.sub is not None:
        raise ScimInvalidFilter(f"{node.attr} has no sub-attribute {node.sub}")
    if isinstance(node, Present):
        if target.type == "string":
            return f"coalesce({target.sql} <> '', false)"
        if target.type == "json":
            return f"coalesce({target.sql} not in ('{{}}'::jsonb, '[]'::jsonb, 'null'::jsonb), false)"
        return f"({target.sql} is not null)"
    return _compare(target, node.op, node.value, params)


def _compare(col: Column, op: str, value: Any, params: list[Any]) -> str:
    sql = col.sql
    if value is None:
        if op == "eq":
            return f"({sql} is null)"
        if op == "ne":
            return f"({sql} is not null)"
        raise ScimInvalidFilter(f"{op} cannot compare with null")
    if col.type == "boolean":
        if not isinstance(value, bool) or op not in ("eq", "ne"):
            raise ScimInvalidFilter("a boolean attribute takes eq or ne with true or false")
        params.append(value)
        return f"({sql} = %s)" if op == "eq" else f"({sql} is distinct from %s)"
    if col.type == "datetime":
        if not isinstance(value, str) or op in ("co", "sw", "ew"):
            raise ScimInvalidFilter("a date-time attribute takes eq, ne, gt, ge, lt or le with an ISO 8601 string")
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise ScimInvalidFilter("not an ISO 8601 date-time") from None
        if when.tzinfo is None:
            raise ScimInvalidFilter("a date-time needs its offset (e.g. Z)")
        params.append(when)
        return f"({sql} {_SQL_OPS[op]} %s)" if op != "ne" else f"({sql} is distinct from %s)"
    if col.type == "json":
        raise ScimInvalidFilter("a complex attribute takes only pr; filter on a sub-attribute")
    if not isinstance(value, str):
        raise ScimInvalidFilter("a string attribute compares with a string")
    left = sql if col.case_exact else f"lower({sql})"
    right = "%s" if col.case_exact else "lower(%s)"
    if op == "co":
        params.append(value)
        return f"coalesce(strpos({left}, {right}) > 0, false)"
    if op == "sw":
        params.append(value)
        return f"coalesce(starts_with({left}, {right}), false)"
    if op == "ew":
        params.extend([value, value])
        return f"coalesce(right({left}, char_length(%s)) = {right}, false)"
    params.append(value)
    if op == "ne":
        return f"({left} is distinct from {right})"
    return f"coalesce({left} {_SQL_OPS[op]} {right}, false)"


_SQL_OPS = {"eq": "=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


# --- evaluating on one value (PATCH value paths) ---------------------------------------------------------


def matches(node: Node, element: Mapping[str, Any], case_exact: frozenset[str] = frozenset()) -> bool:
    """Whether one value of a multi-valued attribute (a dict of sub-attributes, keys as sent)
    matches a value filter. Sub-attributes compare case-insensitively unless named in `case_exact`.

    Raises:
        ScimInvalidFilter: a value path inside a value path.
    """
    if isinstance(node, And):
        return matches(node.left, element, case_exact) and matches(node.right, element, case_exact)
    if isinstance(node, Or):
        return matches(node.left, element, case_exact) or matches(node.right, element, case_exact)
    if isinstance(node, Not):
        return not matches(node.inner, element, case_exact)
    if isinstance(node, ValuePath) or node.sub is not None:
        raise ScimInvalidFilter("a value filter compares sub-attributes only")
    lowered = {str(k).lower(): v for k, v in element.items()}
    have = lowered.get(node.attr)
    if isinstance(node, Present):
        return have not in (None, "", [], {})
    want = node.value
    if node.op in ("eq", "ne") and (isinstance(want, bool) or want is None or isinstance(have, bool)):
        same = have == want
        return same if node.op == "eq" else not same
    if not isinstance(have, str) or not isinstance(want, str):
        return node.op == "ne"
    if node.attr not in case_exact:
        have, want = have.lower(), want.lower()
    return {
        "eq": have == want, "ne": have != want, "co": want in have, "sw": have.startswith(want),
        "ew": have.endswith(want), "gt": have > want, "ge": have >= want, "lt": have < want, "le": have <= want,
    }[node.op]
