"""The app's route templates, compiled by Starlette and ordered like the Functions host.

Devhost serves the template forms the app uses and no others: literal segments, a
parameter ``{name}``, an integer ``{name:int}`` and a catch-all ``{*name}`` (or
``{**name}``) as the last segment. Each becomes a Starlette path (``{name}``,
``{name:int}``, ``{name:path}``) that ``starlette.routing.compile_path`` turns into a
regex. Any other ASP.NET Core form (other constraints, ``?``, ``=default``, two parts in
one segment) is refused at start-up with the template in the message: serving it with
rules devhost only approximates would let code pass here that the host treats otherwise.

What stays from ASP.NET Core because the host does it and clients see it: literals match
case-insensitively, one trailing slash is ignored, ``%2F`` stays encoded (it never splits
a segment), and the most specific template wins: segment by segment, a literal beats
``{x:int}``, which beats ``{x}``, which beats a catch-all (the host's precedence digits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from starlette.routing import compile_path

__all__ = ["RouteTemplate", "decode_path", "join_route", "parse_template"]

_PARAM = re.compile(r"\{(?P<stars>\*{0,2})(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<int>:int)?\}")
# ASP.NET Core's inbound precedence digits: lower is more specific.
_LITERAL, _INT, _PARAM_ANY, _CATCH_ALL = 1, 2, 3, 5


@dataclass(frozen=True)
class RouteTemplate:
    """A route template compiled to a case-insensitive Starlette path regex."""

    text: str
    regex: re.Pattern[str]
    precedence: tuple[int, ...]

    def match(self, path: str) -> dict[str, str] | None:
        """The route values of a decoded path, as sent (``{v:int}`` stays text), or None."""
        found = self.regex.match(path)
        if found is None and len(path) > 1 and path.endswith("/"):
            found = self.regex.match(path[:-1])
        return None if found is None else found.groupdict()

    def literal_key(self) -> tuple[str, str] | None:
        """The first two segments in lower case when both are literals (a path can only match
        if its own first two segments are these, case aside), else None."""
        segments = self.text.split("/")
        if len(segments) < 2 or self.precedence[:2] != (_LITERAL, _LITERAL):
            return None
        return segments[0].lower(), segments[1].lower()


def parse_template(text: str) -> RouteTemplate:
    """Compile a route template of a form the app uses.

    Raises:
        ValueError: the template uses a form devhost does not serve (the message says which).
    """
    segments = text.split("/") if text else []
    paths: list[str] = []
    precedence: list[int] = []
    for index, segment in enumerate(segments):
        found = _PARAM.fullmatch(segment)
        if found is None:
            if not segment or "{" in segment or "}" in segment:
                raise ValueError(
                    f"route {text!r}: segment {segment!r} is not supported by devhost "
                    "(use a literal, {name}, {name:int} or a last {*name})"
                )
            paths.append(segment)
            precedence.append(_LITERAL)
        elif found["stars"]:
            if found["int"] or index != len(segments) - 1:
                raise ValueError(f"route {text!r}: a catch-all must be the whole last segment, without constraint")
            paths.append(f"{{{found['name']}:path}}")
            precedence.append(_CATCH_ALL)
        else:
            paths.append(f"{{{found['name']}{found['int'] or ''}}}")
            precedence.append(_INT if found["int"] else _PARAM_ANY)
    regex, _, _ = compile_path("/" + "/".join(paths))
    return RouteTemplate(
        text=text, regex=re.compile(regex.pattern, re.IGNORECASE | re.DOTALL), precedence=tuple(precedence)
    )


def join_route(prefix: str, route: str) -> str:
    """Combine the host's ``routePrefix`` with a function route, as the host does."""
    return "/".join(p for p in (prefix.strip("/"), route.removeprefix("~/").strip("/")) if p)


def decode_path(raw_path: str) -> str:
    """Percent-decode a raw URL path like Kestrel: everything except ``%2F`` (stays encoded)."""
    pieces = re.split(r"(%2[fF])", raw_path)
    return "".join(piece if index % 2 else unquote(piece, errors="replace") for index, piece in enumerate(pieces))
