"""The admin console's built files (console/dist, made by `npm run build` in console/), served
under /console/ by the app itself.

Two kinds of answer:

* the page: `index.html` for `/console/` and every client-side route under it (a path of
  lower-case words, digits and dashes), `no-store`, with the console's own CSP
  (`CONSOLE_HEADERS`), which admits scripts and styles from this origin only;
* assets: `/console/assets/<name>` where the name is one the build wrote (content-hashed, so
  `immutable` for a year). Names are looked up in a listing of the directory taken once, never
  joined onto a path: a name that is not in the listing (`..`, `%2e%2e`, a backslash, an
  absolute path) is simply not found.

Anything else under /console/ (a path with a dot that is no asset, an upper-case or odd
character) is a 404 problem, so a typo in an asset URL is never answered with the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from shared.core.errors import NotFound
from shared.web.errors import ConsoleNotBuilt

DIST = Path(__file__).resolve().parent.parent.parent / "console" / "dist"

CONSOLE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
               "object-src 'none'; require-trusted-types-for 'script'; trusted-types 'none'")
"""The issue's policy, plus: `img-src data:` for nothing but the browser's own form icons
(no page sets one); `connect-src 'self'` spelled out; `object-src 'none'`; Trusted Types
required for every script sink with no policy allowed (`trusted-types 'none'`): the console
builds its DOM with `createElement`/`textContent` only, so an `innerHTML` slipped in later
throws in browsers that enforce Trusted Types (see docs/console.md)."""

CONSOLE_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONSOLE_CSP,
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), "
                          "publickey-credentials-get=(self), publickey-credentials-create=(self)",
}
"""What the console's answers use instead of the API's `SECURITY_HEADERS` entries of the same name."""

ASSET_CACHE = "public, max-age=31536000, immutable"
PAGE_PATH = re.compile(r"(?:[a-z0-9-]{1,64}/){0,4}[a-z0-9-]{0,64}")

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
    ".json": "application/json",
    ".map": "application/json",
}


@dataclass(frozen=True)
class Served:
    """One file to answer with."""

    body: bytes
    media_type: str
    cache_control: str


def serve(path: str, *, dist: Path = DIST) -> Served:
    """The answer for `/console/<path>`.

    Raises:
        NotFound: not a page route and not a built asset.
        ConsoleNotBuilt: console/dist holds no index.html (the build did not run).
    """
    if path.startswith("assets/"):
        body, media_type = _assets(dist).get(path.removeprefix("assets/"), (None, ""))
        if body is None:
            raise NotFound("no such console asset")
        return Served(body, media_type, ASSET_CACHE)
    if not PAGE_PATH.fullmatch(path):
        raise NotFound("no such console page")
    return Served(_index(dist), "text/html; charset=utf-8", "no-store")


@lru_cache(maxsize=4)
def _index(dist: Path) -> bytes:
    try:
        return (dist / "index.html").read_bytes()
    except FileNotFoundError:
        raise ConsoleNotBuilt("the console is not built: run `make run` (or `npm --prefix console run build`)") from None


@lru_cache(maxsize=4)
def _assets(dist: Path) -> dict[str, tuple[bytes, str]]:
    """Every file the build wrote to dist/assets, by bare name, read once per worker (the
    files are immutable: a new build is a new deployment)."""
    folder = dist / "assets"
    if not folder.is_dir():
        return {}
    return {p.name: (p.read_bytes(), CONTENT_TYPES[p.suffix])
            for p in folder.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES}
