"""Passwords: Argon2id hashing, legacy bcrypt verification, and the password policy.

Hashing. New hashes are Argon2id (m=64 MiB, t=3, p=1, 16-byte random salt, 32-byte tag) in
PHC string form, computed over the NFKC form of the password. `verify_password` also accepts
Argon2 hashes with other parameters and imported bcrypt hashes (`$2a$`, `$2b$`, `$2y$`); it
says `needs_rehash` so the caller replaces them with a current hash right after the login
succeeds, while it still holds the plain password. Each hash or verification takes a slot of a
per-worker `threading.BoundedSemaphore` (setting `password_hash_concurrency`), so a burst of
logins queues instead of allocating 64 MiB per request without bound.

bcrypt only looks at the first 72 bytes of a password, and the systems whose hashes are
imported silently truncated longer ones (bcrypt 5 refuses them instead). Verification of a
bcrypt hash therefore truncates the UTF-8 password to 72 bytes, as they did: a user whose long
password was imported logs in with it, and the Argon2id hash that replaces it covers it whole.
Those systems did not normalise either, so for bcrypt the password as typed is tried when its
NFKC form does not match.

Policy. 12 to 128 code points after NFKC normalisation, any Unicode, and not breached: first
the offline list (below, no network), then, when `hibp_api_url` is set, the Have I Been Pwned
range API. Only the first 5 hex digits of the password's SHA-1 leave the process
(k-anonymity), the response is padded (`Add-Padding: true`), and padding entries (count 0) are
ignored. If the API cannot be used, the setting `hibp_fail_open` decides: accept (the offline
list still applied) or refuse with `ServiceUnavailable`.

The offline list `data/common-passwords.txt` (~38,000 entries, all of 12 to 128 code points,
lowercased, NFKC) is built by `data/build_common_passwords.py` from Django 5.2.17's
`common-passwords.txt.gz` (Royce Williams's 20,000 most common breached passwords) and the
`passwords` list of zxcvbn 4.5.0 (the 30,000 most common of the Xato corpus); licences in
`data/NOTICE.md`. It holds their entries of 12+ characters, their 1,000 most common shorter
ones with the suffixes people add to pass a length rule ("password1234", "iloveyou2024") or
doubled, and keyboard walks and digit runs. It is compared case-insensitively.

No function here logs, returns or puts into an error any password, hash or digest material.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Literal

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shared.core.errors import ServiceUnavailable, ValidationFailed
from shared.core.settings import get_settings

log = logging.getLogger("custos.passwords")

MIN_LENGTH = 12
MAX_LENGTH = 128
"""Length bounds in Unicode code points of the NFKC form."""

ARGON2_MEMORY_KIB = 65_536
ARGON2_TIME_COST = 3
ARGON2_PARALLELISM = 1
ARGON2_SALT_BYTES = 16
ARGON2_HASH_BYTES = 32

BCRYPT_MAX_BYTES = 72
"""bcrypt ignores every byte past this; legacy systems truncated, so verification does too."""

COMMON_PASSWORDS_PATH = Path(__file__).resolve().parent / "data" / "common-passwords.txt"
HIBP_USER_AGENT = "custos-password-check"
HIBP_MAX_RESPONSE_BYTES = 1_048_576
"""A padded range response is about 40 KB; anything far larger is not the range API."""

PolicyCode = Literal["password_too_short", "password_too_long", "password_breached", "password_invalid"]

_ARGON2_PREFIXES = ("$argon2id$", "$argon2i$", "$argon2d$")
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_RANGE_LINE = re.compile(rb"([0-9A-Fa-f]{35}):([0-9]{1,12})")

_HASHER = argon2.PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=ARGON2_HASH_BYTES,
    salt_len=ARGON2_SALT_BYTES,
    type=argon2.Type.ID,
)

_hash_slots: threading.BoundedSemaphore | None = None
_hash_slots_lock = threading.Lock()


@dataclass(frozen=True)
class PasswordCheck:
    """The outcome of `verify_password`.

    `needs_rehash` is only ever true with `ok`: the caller then stores `hash_password(password)`.
    """

    ok: bool
    needs_rehash: bool


_FAILED = PasswordCheck(ok=False, needs_rehash=False)


# --- normalisation and hashing ------------------------------------------------------------


def normalize(password: str) -> str:
    """The NFKC form of a password: what is measured, hashed and checked for breaches."""
    return unicodedata.normalize("NFKC", password)


def _encode(text: str) -> bytes:
    # JSON can carry lone surrogates; they must not turn a login into a 500. check_policy
    # refuses them, so such a password never matches anything.
    return text.encode("utf-8", "surrogatepass")


def _semaphore() -> threading.BoundedSemaphore:
    """This worker's hash slots, created on first use from `password_hash_concurrency`."""
    global _hash_slots
    slots = _hash_slots
    if slots is None:
        with _hash_slots_lock:
            if _hash_slots is None:
                _hash_slots = threading.BoundedSemaphore(get_settings().password_hash_concurrency)
            slots = _hash_slots
    return slots


def hash_password(password: str) -> str:
    """Argon2id PHC string of the NFKC form of `password`, with a fresh random salt.

    Does not apply the policy: call `check_policy` first when a password is set.
    Blocks while `password_hash_concurrency` other hashes run in this worker.
    """
    secret = _encode(normalize(password))
    with _semaphore():
        return _HASHER.hash(secret)


@functools.cache
def _dummy_hash() -> str:
    # A random secret: the dummy never verifies, whatever is typed.
    return _HASHER.hash(secrets.token_bytes(32))


def _dummy_verify_in_slot(secret: bytes) -> None:
    try:
        _HASHER.verify(_dummy_hash(), secret)
    except VerificationError:
        pass


def dummy_verify(password: str) -> None:
    """Spend what verifying a current hash costs, for sign-ins of unknown users.

    Takes a hash slot like `verify_password`, so timing and queueing match.
    """
    secret = _encode(normalize(password))
    with _semaphore():
        _dummy_verify_in_slot(secret)


def verify_password(stored_hash: str | None, password: str) -> PasswordCheck:
    """Check `password` against a stored Argon2 or bcrypt hash.

    A missing, unknown or garbled hash costs a dummy verification and yields ok=False.
    Never raises for anything in `stored_hash`.
    """
    candidate = normalize(password)
    secret = _encode(candidate)
    if isinstance(stored_hash, str) and stored_hash.startswith(_ARGON2_PREFIXES):
        return _verify_argon2(stored_hash, secret)
    if isinstance(stored_hash, str) and stored_hash.startswith(_BCRYPT_PREFIXES):
        return _verify_bcrypt(stored_hash, secret, _encode(password))
    dummy_verify(password)
    return _FAILED


def _verify_argon2(stored_hash: str, secret: bytes) -> PasswordCheck:
    with _semaphore():
        try:
            _HASHER.verify(stored_hash, secret)
        except VerifyMismatchError:
            return _FAILED
        except (InvalidHashError, VerificationError):
            _dummy_verify_in_slot(secret)
            return _FAILED
        try:
            needs_rehash = _HASHER.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            needs_rehash = True
    return PasswordCheck(ok=True, needs_rehash=needs_rehash)


def _verify_bcrypt(stored_hash: str, secret: bytes, as_typed: bytes) -> PasswordCheck:
    try:
        hashed = stored_hash.encode("ascii")
    except UnicodeEncodeError:
        hashed = b""
    tries = [secret[:BCRYPT_MAX_BYTES]]
    if as_typed != secret:
        tries.append(as_typed[:BCRYPT_MAX_BYTES])
    with _semaphore():
        for attempt in tries:
            try:
                if bcrypt.checkpw(attempt, hashed):
                    return PasswordCheck(ok=True, needs_rehash=True)
            except ValueError:
                _dummy_verify_in_slot(secret)
                return _FAILED
    return _FAILED


# --- policy ----------------------------------------------------------------------------------


def check_policy(password: str, *, field: str = "password") -> None:
    """Refuse a new password that is too short, too long, not text, or breached.

    Raises:
        ValidationFailed: one error at `["body", field]` with code `password_too_short`,
            `password_too_long`, `password_invalid` (lone surrogates) or `password_breached`;
            the detail names the rule, never the password.
        ServiceUnavailable: the breach API failed and `hibp_fail_open` is false.
    """
    candidate = normalize(password)
    if len(candidate) < MIN_LENGTH:
        _refuse(field, "password_too_short", f"the password must be at least {MIN_LENGTH} characters")
    if len(candidate) > MAX_LENGTH:
        _refuse(field, "password_too_long", f"the password must be at most {MAX_LENGTH} characters")
    if any("\ud800" <= ch <= "\udfff" for ch in candidate):
        _refuse(field, "password_invalid", "the password must be valid Unicode text")
    if is_breached(candidate):
        _refuse(
            field, "password_breached",
            "the password appears in a list of breached passwords; choose another",
        )


def _refuse(field: str, code: PolicyCode, message: str) -> None:
    raise ValidationFailed(message, errors=[{"location": ["body", field], "message": message, "code": code}])


# --- breached passwords ---------------------------------------------------------------------


@functools.cache
def _common_passwords() -> frozenset[str]:
    text = COMMON_PASSWORDS_PATH.read_text(encoding="utf-8")
    # split("\n"), not splitlines(): entries may hold characters splitlines() breaks on.
    return frozenset(normalize(line).lower() for line in text.split("\n") if line)


def in_offline_list(password: str) -> bool:
    """Whether the password (case-insensitively, NFKC) is in the shipped common-password list."""
    return normalize(password).lower() in _common_passwords()


def is_breached(password: str) -> bool:
    """Whether the password is known from breaches: offline list, then the range API if set.

    Reads the settings at each call.

    Raises:
        ServiceUnavailable: the range API failed, the password is not in the offline list,
            and `hibp_fail_open` is false.
    """
    candidate = normalize(password)
    if in_offline_list(candidate):
        return True
    settings = get_settings()
    base_url = settings.hibp_api_url.strip()
    if not base_url:
        return False
    try:
        return _range_api_lists(candidate, base_url=base_url, timeout_s=settings.hibp_timeout_s)
    except _RangeApiFailed as exc:
        log.warning("breached-password range API unavailable (%s); fail_open=%s", exc, settings.hibp_fail_open)
    if settings.hibp_fail_open:
        return False
    raise ServiceUnavailable("the breached-password check is unavailable", component="hibp")


class _RangeApiFailed(Exception):
    """The range API gave no usable answer; the message is safe to log (no hash material)."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 3xx then surfaces as HTTPError: the range API never redirects


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirects())


def _range_url(base_url: str, prefix: str) -> str:
    parts = urllib.parse.urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme == "http" and not _is_loopback(host):
        raise _RangeApiFailed("hibp_api_url must be https (http only for a loopback test server)")
    if parts.scheme not in ("https", "http") or not host:
        raise _RangeApiFailed("hibp_api_url is not an http(s) URL")
    return f"{base_url.rstrip('/')}/range/{prefix}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _range_api_lists(candidate: str, *, base_url: str, timeout_s: float) -> bool:
    digest = hashlib.sha1(_encode(candidate), usedforsecurity=False).hexdigest().upper()
    prefix, suffix = digest[:5], digest[5:].encode("ascii")
    request = urllib.request.Request(  # noqa: S310  (_range_url allows https, or http to loopback only)
        _range_url(base_url, prefix),
        headers={"Add-Padding": "true", "User-Agent": HIBP_USER_AGENT, "Accept": "text/plain"},
        method="GET",
    )
    body = _fetch(request, timeout_s=timeout_s)
    found = False
    for line in body.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        match = _RANGE_LINE.fullmatch(line)
        if match is None:
            raise _RangeApiFailed("response is not in range API format")
        if hmac.compare_digest(match[1].upper(), suffix) and int(match[2]) > 0:
            found = True  # no early exit: every line gets the same work
    return found


def _fetch(request: urllib.request.Request, *, timeout_s: float) -> bytes:
    deadline = time.monotonic() + timeout_s
    try:
        with _opener().open(request, timeout=timeout_s) as response:
            if response.status != 200:
                raise _RangeApiFailed(f"HTTP {response.status}")
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read(65_536):
                size += len(chunk)
                if size > HIBP_MAX_RESPONSE_BYTES:
                    raise _RangeApiFailed("response too large")
                if time.monotonic() > deadline:
                    raise _RangeApiFailed("timed out")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise _RangeApiFailed(f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        reason = "timed out" if isinstance(exc.reason, TimeoutError) else type(exc.reason).__name__
        raise _RangeApiFailed(reason) from None
    except TimeoutError:
        raise _RangeApiFailed("timed out") from None
    except (OSError, HTTPException, ValueError) as exc:
        raise _RangeApiFailed(type(exc).__name__) from None
