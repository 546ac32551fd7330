"""Route templates as the Azure Functions host understands them (ASP.NET Core syntax).

Pure functions and immutable data only, so the rules can be unit-tested without a server.

Supported template syntax:

* literal segments, matched case-insensitively (``api/items``);
* parameters ``{name}``, with inline constraints ``{id:guid}``, ``{n:int}``,
  ``{n:int:min(1)}``, an optional marker ``{name?}`` or a default ``{name=value}``;
* catch-all parameters ``{*rest}`` / ``{**rest}`` in the last segment, matching the
  rest of the path including slashes (possibly empty);
* complex segments mixing literals and parameters (``{name}.{ext}``).

Precedence follows ASP.NET Core's inbound route precedence: templates are compared
segment by segment, and at each position a literal beats a constrained parameter (or a
complex segment), which beats a plain parameter, which beats a catch-all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar
from urllib.parse import unquote

__all__ = [
    "Literal",
    "Param",
    "RouteTemplate",
    "Segment",
    "decode_path",
    "join_route",
    "parse_template",
    "sort_by_precedence",
]

T = TypeVar("T")

# ---------------------------------------------------------------------------
# Constraints


def _parse_int(value: str, bits: int) -> int | None:
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        return None
    number = int(value)
    limit = 1 << (bits - 1)
    return number if -limit <= number < limit else None


def _is_float(value: str) -> bool:
    if not re.fullmatch(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", value):
        return False
    return math.isfinite(float(value))


_GUID_D = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_GUID = re.compile(rf"{_GUID_D}|[0-9a-f]{{32}}|\{{{_GUID_D}\}}|\({_GUID_D}\)", re.IGNORECASE)


def _is_guid(value: str) -> bool:
    # .NET Guid.TryParse accepts the "D", "N", "B" and "P" formats.
    return _GUID.fullmatch(value) is not None


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _int_args(args: Sequence[str], count: int, name: str) -> list[int]:
    if len(args) != count:
        raise ValueError(f"constraint {name!r} takes {count} argument(s)")
    return [int(a.strip()) for a in args]


def _make_constraint(name: str, arg_text: str | None) -> Callable[[str], bool]:
    """Build a predicate for one inline constraint; raise ValueError if it is unknown."""
    key = name.lower()
    args = [] if arg_text is None else arg_text.split(",")
    simple: dict[str, Callable[[str], bool]] = {
        "int": lambda v: _parse_int(v, 32) is not None,
        "long": lambda v: _parse_int(v, 64) is not None,
        "double": _is_float,
        "float": _is_float,
        "decimal": _is_float,
        "bool": lambda v: v.lower() in ("true", "false"),
        "guid": _is_guid,
        "alpha": lambda v: re.fullmatch(r"[A-Za-z]*", v) is not None,
        "datetime": _is_datetime,
        "required": lambda v: v != "",
    }
    if key in simple:
        if arg_text is not None:
            raise ValueError(f"constraint {name!r} takes no arguments")
        return simple[key]
    if key == "regex":
        if arg_text is None:
            raise ValueError("constraint 'regex' needs a pattern")
        pattern = re.compile(arg_text, re.IGNORECASE)
        return lambda v: pattern.search(v) is not None
    if key in ("min", "max"):
        (bound,) = _int_args(args, 1, key)
        if key == "min":
            return lambda v: (n := _parse_int(v, 64)) is not None and n >= bound
        return lambda v: (n := _parse_int(v, 64)) is not None and n <= bound
    if key == "range":
        low, high = _int_args(args, 2, key)
        return lambda v: (n := _parse_int(v, 64)) is not None and low <= n <= high
    if key in ("minlength", "maxlength"):
        (size,) = _int_args(args, 1, key)
        if key == "minlength":
            return lambda v: len(v) >= size
        return lambda v: len(v) <= size
    if key == "length":
        if len(args) == 1:
            (size,) = _int_args(args, 1, key)
            return lambda v: len(v) == size
        low, high = _int_args(args, 2, key)
        return lambda v: low <= len(v) <= high
    raise ValueError(f"unknown route constraint {name!r}")


# ---------------------------------------------------------------------------
# Template model


@dataclass(frozen=True)
class Literal:
    """A literal piece of a segment (compared case-insensitively)."""

    text: str


@dataclass(frozen=True)
class Param:
    """A route parameter such as ``{id:guid}``, ``{name?}`` or ``{*rest}``."""

    name: str
    constraints: tuple[str, ...] = ()
    optional: bool = False
    default: str | None = None
    catch_all: bool = False
    checks: tuple[Callable[[str], bool], ...] = field(default=(), compare=False, repr=False)

    def accepts(self, value: str) -> bool:
        """Whether ``value`` satisfies every inline constraint."""
        return all(check(value) for check in self.checks)

    @property
    def may_be_absent(self) -> bool:
        """Whether the parameter may be missing from the path."""
        return self.optional or self.default is not None or self.catch_all


@dataclass(frozen=True)
class Segment:
    """One ``/``-separated part of a template: a literal, a parameter, or a mix of both."""

    parts: tuple[Literal | Param, ...]
    patterns: tuple[tuple[re.Pattern[str], tuple[Param, ...]], ...] = field(default=(), compare=False, repr=False)

    @property
    def param(self) -> Param | None:
        """The parameter when the segment is exactly one parameter."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Param):
            return self.parts[0]
        return None

    @property
    def precedence_digit(self) -> int:
        """ASP.NET Core inbound precedence digit (lower = more specific)."""
        if len(self.parts) > 1:
            return 2
        part = self.parts[0]
        if isinstance(part, Literal):
            return 1
        digit = 5 if part.catch_all else 3
        return digit - 1 if part.constraints else digit

    def match(self, text: str) -> dict[str, str] | None:
        """Match one path segment; return the captured parameter values or None."""
        part = self.parts[0]
        if len(self.parts) == 1 and isinstance(part, Literal):
            return {} if text.lower() == part.text.lower() else None
        if len(self.parts) == 1 and isinstance(part, Param):
            return {part.name: text} if text and part.accepts(text) else None
        for pattern, params in self.patterns:
            found = pattern.fullmatch(text)
            if found is None:
                continue
            values = dict(zip((p.name for p in params), found.groups(), strict=True))
            if not all(p.accepts(values[p.name]) for p in params):
                return None
            for param in self.parts:
                if isinstance(param, Param) and param.name not in values and param.default is not None:
                    values[param.name] = param.default
            return values
        return None


@dataclass(frozen=True)
class RouteTemplate:
    """A parsed route template; ``match`` maps a decoded request path to route values."""

    text: str
    segments: tuple[Segment, ...]

    @property
    def precedence(self) -> tuple[int, ...]:
        """Sort key: one ASP.NET precedence digit per segment, compared left to right."""
        return tuple(s.precedence_digit for s in self.segments)

    @property
    def param_names(self) -> list[str]:
        return [p.name for s in self.segments for p in s.parts if isinstance(p, Param)]

    def match(self, path: str) -> dict[str, str] | None:
        """Match a decoded path (leading ``/`` optional, one trailing ``/`` ignored).

        Returns the route values (strings) or None. Optional parameters that are absent
        are left out; a catch-all always has a value, possibly ``""``.
        """
        body = path.removeprefix("/")
        starts: list[int] = []
        tokens: list[str] = []
        if body:
            pos = 0
            for token in body.split("/"):
                starts.append(pos)
                tokens.append(token)
                pos += len(token) + 1
            if tokens[-1] == "":  # trailing slash
                tokens.pop()
                starts.pop()
        values: dict[str, str] = {}
        for index, segment in enumerate(self.segments):
            param = segment.param
            if param is not None and param.catch_all:
                rest = body[starts[index] :] if index < len(tokens) else ""
                if rest == "" and param.default is not None:
                    rest = param.default
                if rest and not param.accepts(rest):
                    return None
                values[param.name] = rest
                return values
            if index >= len(tokens):
                if param is None or not param.may_be_absent:
                    return None
                if param.default is not None:
                    values[param.name] = param.default
                continue
            captured = segment.match(tokens[index])
            if captured is None:
                return None
            values.update(captured)
        if len(tokens) > len(self.segments):
            return None
        return values


# ---------------------------------------------------------------------------
# Parsing

_PARAM_HEAD = re.compile(r"(\*{0,2})([^:?=*{}/]+)")
_CONSTRAINT_NAME = re.compile(r"[A-Za-z0-9_]+")


def _parse_param(text: str, template: str) -> Param:
    """Parse the inside of ``{...}``: ``[*]name[:constraint[(args)]]...[?|=default]``."""
    head = _PARAM_HEAD.match(text)
    if head is None:
        raise ValueError(f"invalid parameter {{{text}}} in route {template!r}")
    stars, name = head.groups()
    pos = head.end()
    constraints: list[str] = []
    checks: list[Callable[[str], bool]] = []
    while pos < len(text) and text[pos] == ":":
        found = _CONSTRAINT_NAME.match(text, pos + 1)
        if found is None:
            raise ValueError(f"invalid constraint in {{{text}}} in route {template!r}")
        cname = found.group()
        pos = found.end()
        args: str | None = None
        if pos < len(text) and text[pos] == "(":
            # The argument ends at the first ')' followed by a delimiter or the end,
            # so regex arguments may contain parentheses.
            close = pos + 1
            while True:
                close = text.find(")", close)
                if close < 0:
                    raise ValueError(f"unclosed constraint argument in route {template!r}")
                if close + 1 == len(text) or text[close + 1] in ":?=":
                    break
                close += 1
            args = text[pos + 1 : close]
            pos = close + 1
        constraints.append(cname if args is None else f"{cname}({args})")
        checks.append(_make_constraint(cname, args))
    optional = False
    default: str | None = None
    if text[pos : pos + 1] == "?":
        optional = True
        pos += 1
    elif text[pos : pos + 1] == "=":
        default = text[pos + 1 :]
        pos = len(text)
    if pos != len(text):
        raise ValueError(f"invalid parameter {{{text}}} in route {template!r}")
    if stars and optional:
        raise ValueError(f"a catch-all parameter cannot be optional in route {template!r}")
    return Param(
        name=name,
        constraints=tuple(constraints),
        optional=optional,
        default=default,
        catch_all=bool(stars),
        checks=tuple(checks),
    )


def _split_parts(segment: str, template: str) -> list[Literal | Param]:
    """Split one segment into literals and ``{...}`` parameters (``{{``/``}}`` escape)."""
    parts: list[Literal | Param] = []
    literal: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if segment.startswith("{{", i) or segment.startswith("}}", i):
            literal.append(char)
            i += 2
        elif char == "{":
            j = i + 1
            inner: list[str] = []
            while True:
                if j >= len(segment):
                    raise ValueError(f"unclosed '{{' in route {template!r}")
                if segment.startswith("}}", j):
                    inner.append("}")
                    j += 2
                elif segment.startswith("{{", j):
                    inner.append("{")
                    j += 2
                elif segment[j] == "}":
                    break
                else:
                    inner.append(segment[j])
                    j += 1
            if literal:
                parts.append(Literal("".join(literal)))
                literal = []
            if parts and isinstance(parts[-1], Param):
                raise ValueError(f"two parameters must be separated by a literal in {template!r}")
            parts.append(_parse_param("".join(inner), template))
            i = j + 1
        elif char == "}":
            raise ValueError(f"unmatched '}}' in route {template!r}")
        else:
            literal.append(char)
            i += 1
    if literal:
        parts.append(Literal("".join(literal)))
    return parts


def _complex_patterns(
    parts: Sequence[Literal | Param], template: str
) -> tuple[tuple[re.Pattern[str], tuple[Param, ...]], ...]:
    """Regexes for a segment such as ``{name}.{ext?}``, tried in order.

    Greedy groups reproduce ASP.NET's right-to-left matching (``a.b.c`` gives
    name ``a.b``, ext ``c``). A trailing optional parameter adds a second pattern
    without it and the literal before it (``abc`` gives name ``abc``).
    """
    for index, part in enumerate(parts):
        if isinstance(part, Param):
            if part.catch_all:
                raise ValueError(f"a catch-all must be a whole segment in route {template!r}")
            if part.may_be_absent and index != len(parts) - 1:
                raise ValueError(f"an optional parameter must end its segment in {template!r}")

    def compile_parts(chosen: Sequence[Literal | Param]) -> tuple[re.Pattern[str], tuple[Param, ...]]:
        regex = "".join(re.escape(p.text) if isinstance(p, Literal) else "(.+)" for p in chosen)
        params = tuple(p for p in chosen if isinstance(p, Param))
        return re.compile(regex, re.IGNORECASE | re.DOTALL), params

    patterns = [compile_parts(parts)]
    last = parts[-1]
    if isinstance(last, Param) and last.may_be_absent:
        patterns.append(compile_parts(parts[:-2] if len(parts) > 2 else parts[:-1]))
    return tuple(patterns)


def _split_segments(text: str) -> list[str]:
    """Split on ``/`` outside braces (constraint arguments may contain slashes)."""
    segments: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(depth - 1, 0)
        if char == "/" and depth == 0:
            segments.append("".join(current))
            current = []
        else:
            current.append(char)
    segments.append("".join(current))
    return segments


def parse_template(text: str) -> RouteTemplate:
    """Parse an ASP.NET Core route template; raise ValueError if it is malformed."""
    body = text
    body = body.removeprefix("~/")
    body = body.strip("/")
    raw_segments = _split_segments(body) if body else []
    segments: list[Segment] = []
    names: set[str] = set()
    for index, raw in enumerate(raw_segments):
        if raw == "":
            raise ValueError(f"empty segment in route {text!r}")
        parts = _split_parts(raw, text)
        for part in parts:
            if isinstance(part, Param):
                if part.name.lower() in names:
                    raise ValueError(f"duplicate parameter {part.name!r} in route {text!r}")
                names.add(part.name.lower())
                if part.catch_all and index != len(raw_segments) - 1:
                    raise ValueError(f"a catch-all must be the last segment in route {text!r}")
        patterns = _complex_patterns(parts, text) if len(parts) > 1 else ()
        segments.append(Segment(parts=tuple(parts), patterns=patterns))
    # Only trailing segments may be left out of a path.
    seen_absent = False
    for segment in segments:
        param = segment.param
        absent = param is not None and param.may_be_absent
        if seen_absent and not absent:
            raise ValueError(f"an optional parameter must be followed only by optional ones: {text!r}")
        seen_absent = seen_absent or absent
    return RouteTemplate(text=text, segments=tuple(segments))


def join_route(prefix: str, route: str) -> str:
    """Combine the host's ``routePrefix`` with a function route, as the host does."""
    prefix = prefix.strip("/")
    route = route.removeprefix("~/")
    route = route.strip("/")
    return "/".join(p for p in (prefix, route) if p)


def sort_by_precedence(items: Iterable[T], key: Callable[[T], RouteTemplate]) -> list[T]:
    """Order items most specific first; ties by template text, then input order."""
    return sorted(items, key=lambda item: (key(item).precedence, key(item).text.lower()))


def decode_path(raw_path: str) -> str:
    """Percent-decode a raw URL path like Kestrel: everything except ``%2F`` (stays encoded)."""
    pieces = re.split(r"(%2[fF])", raw_path)
    return "".join(piece if index % 2 else unquote(piece, errors="replace") for index, piece in enumerate(pieces))
