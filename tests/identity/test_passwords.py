"""shared.identity.passwords: Argon2id hashing, bcrypt import, policy, and the breached-password check.

The range API is a real HTTP server on 127.0.0.1 speaking the Have I Been Pwned protocol;
settings are switched through the environment, as a worker would read them.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import argon2
import bcrypt
import pytest

from shared.core.errors import ServiceUnavailable, ValidationFailed
from shared.core.settings import get_settings
from shared.identity import passwords
from shared.identity.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    PasswordCheck,
    check_policy,
    dummy_verify,
    hash_password,
    is_breached,
    normalize,
    verify_password,
)

CURRENT_PREFIX = "$argon2id$v=19$m=65536,t=3,p=1$"
GOOD = "correct horse battery staple"


def use_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name.upper(), value)
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def offline_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with the offline list only; settings are re-read after each test."""
    use_settings(monkeypatch, hibp_api_url="", hibp_fail_open="true", hibp_timeout_s="2")
    yield
    get_settings.cache_clear()


def sha1_hex(password: str) -> str:
    return hashlib.sha1(normalize(password).encode()).hexdigest().upper()


# --- hashing ----------------------------------------------------------------------------------


@pytest.mark.requirement("21CFR11.200(a)(2)")
def test_hash_is_argon2id_with_the_required_parameters_and_a_fresh_salt() -> None:
    first, second = hash_password(GOOD), hash_password(GOOD)
    assert first.startswith(CURRENT_PREFIX)
    assert first != second
    params = argon2.extract_parameters(first)
    assert (params.salt_len, params.hash_len) == (16, 32)


def test_right_password_verifies_and_wrong_one_does_not() -> None:
    stored = hash_password(GOOD)
    assert verify_password(stored, GOOD) == PasswordCheck(ok=True, needs_rehash=False)
    assert verify_password(stored, GOOD + " ") == PasswordCheck(ok=False, needs_rehash=False)


def test_compatibility_forms_verify_against_the_hash_of_their_nfkc_form() -> None:
    fullwidth = "ｃｏｒｒｅｃｔ ｈｏｒｓｅ ｂａｔｔｅｒｙ"
    assert normalize(fullwidth) == "correct horse battery"
    assert verify_password(hash_password("correct horse battery"), fullwidth).ok

    ligature = "ﬁnancial ﬁreworks 7"
    assert verify_password(hash_password(ligature), "financial fireworks 7").ok


def test_unicode_passwords_of_twelve_code_points_are_accepted_and_verify() -> None:
    emoji = "🔐🔑🗝🦄🌈🍕🚀🎉🐙🌵⚡🧩"
    cjk = "密码安全很重要我们一起保护"
    for password in (emoji, cjk):
        assert len(password) >= MIN_LENGTH
        check_policy(password)
    assert verify_password(hash_password(emoji), emoji).ok


def test_parameters_older_than_current_verify_and_ask_for_a_rehash() -> None:
    old = argon2.PasswordHasher(time_cost=2, memory_cost=19456).hash(GOOD)
    assert verify_password(old, GOOD) == PasswordCheck(ok=True, needs_rehash=True)
    assert verify_password(old, "not the password") == PasswordCheck(ok=False, needs_rehash=False)


def test_argon2i_hashes_verify_and_ask_for_a_rehash() -> None:
    legacy = argon2.PasswordHasher(time_cost=1, memory_cost=8192, type=argon2.Type.I).hash(GOOD)
    assert verify_password(legacy, GOOD) == PasswordCheck(ok=True, needs_rehash=True)


# --- bcrypt import ------------------------------------------------------------------------


def test_imported_bcrypt_hash_verifies_and_is_always_rehashed() -> None:
    stored = bcrypt.hashpw(GOOD.encode(), bcrypt.gensalt(12)).decode()
    assert stored.startswith("$2b$12$")
    assert verify_password(stored, GOOD) == PasswordCheck(ok=True, needs_rehash=True)
    assert verify_password("$2y$" + stored[4:], GOOD) == PasswordCheck(ok=True, needs_rehash=True)
    assert verify_password(stored, "Correct horse battery staple") == PasswordCheck(ok=False, needs_rehash=False)


def test_bcrypt_passwords_longer_than_72_bytes_verify_as_legacy_systems_truncated_them() -> None:
    long_password = "a long passphrase that legacy bcrypt systems cut at seventy-two bytes, silently"
    assert len(long_password.encode()) > 72
    stored = bcrypt.hashpw(long_password.encode()[:72], bcrypt.gensalt(4)).decode()
    assert verify_password(stored, long_password) == PasswordCheck(ok=True, needs_rehash=True)
    assert not verify_password(stored, long_password[:70]).ok


def test_bcrypt_hash_of_a_non_normalised_password_verifies_as_typed() -> None:
    typed = "ｆｕｌｌｗｉｄｔｈ password"  # the legacy system hashed it as typed
    stored = bcrypt.hashpw(typed.encode(), bcrypt.gensalt(4)).decode()
    assert verify_password(stored, typed) == PasswordCheck(ok=True, needs_rehash=True)


# --- bad stored hashes and unknown users -----------------------------------------------------


@pytest.mark.parametrize(
    "stored",
    [None, "", "plaintext-password", "$argon2id$v=19$m=65536,t=3,p=1$garbage", "$2b$12$garbage", "$2b$12$ünïcode",
     "$argon2id$" + "x" * 200, "$5$rounds=5000$salt$hash"],
    ids=["none", "empty", "plain", "argon2-garbled", "bcrypt-garbled", "bcrypt-non-ascii", "argon2-long", "sha256crypt"],
)
def test_missing_or_garbled_stored_hash_fails_without_raising(stored: str | None) -> None:
    assert verify_password(stored, GOOD) == PasswordCheck(ok=False, needs_rehash=False)
    slots = passwords._semaphore()
    assert slots._value == get_settings().password_hash_concurrency  # no slot leaked


def test_dummy_verify_costs_a_current_verification_and_returns_nothing() -> None:
    dummy_verify(GOOD)
    assert passwords._dummy_hash().startswith(CURRENT_PREFIX)


def test_lone_surrogates_never_raise() -> None:
    odd = "abc\ud800def-ghijkl"
    assert verify_password(hash_password(GOOD), odd) == PasswordCheck(ok=False, needs_rehash=False)
    with pytest.raises(ValidationFailed) as info:
        check_policy(odd)
    assert info.value.extensions["errors"][0]["code"] == "password_invalid"


# --- policy ---------------------------------------------------------------------------------


def refused(password: str, **kw: str) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        check_policy(password, **kw)
    exc = info.value
    rendered = json.dumps(exc.to_problem(), ensure_ascii=False) + str(exc)
    assert password not in rendered and normalize(password) not in rendered
    return exc


def test_eleven_characters_are_refused_as_too_short() -> None:
    exc = refused("Xq7#mP2$vL9")
    assert exc.detail == "the password must be at least 12 characters"
    assert exc.extensions["errors"] == [
        {"location": ["body", "password"], "message": exc.detail, "code": "password_too_short"}
    ]


def test_length_is_counted_in_code_points_after_nfkc() -> None:
    refused("密码安全很重要我们一起")  # 11 code points, 33 bytes
    check_policy("ﬃ" * 4)  # 4 code points typed, "ffiffiffiffi" after NFKC


def test_129_characters_are_refused_as_too_long_and_128_accepted() -> None:
    exc = refused("Zy8!" * 32 + "k", field="new_password")
    assert exc.detail == f"the password must be at most {MAX_LENGTH} characters"
    assert exc.extensions["errors"][0]["location"] == ["body", "new_password"]
    assert exc.extensions["errors"][0]["code"] == "password_too_long"
    check_policy("Zy8!" * 32)


def test_twelve_characters_not_breached_are_accepted() -> None:
    check_policy("Xq7#mP2$vL9w")


@pytest.mark.requirement("21CFR11.300(b)")
@pytest.mark.parametrize("password", ["password1234", "Password1234", "ｐａｓｓｗｏｒｄ１２３４", "qwertyuiop123", "iloveyou1234"])
def test_passwords_in_the_offline_list_are_refused_as_breached(password: str) -> None:
    exc = refused(password)
    assert exc.extensions["errors"][0]["code"] == "password_breached"
    assert exc.detail == "the password appears in a list of breached passwords; choose another"


def test_offline_list_is_large_and_only_holds_entries_that_can_decide() -> None:
    entries = passwords._common_passwords()
    assert len(entries) >= 10_000
    assert all(MIN_LENGTH <= len(e) <= MAX_LENGTH and e == normalize(e).lower() for e in entries)


# --- Have I Been Pwned range API ------------------------------------------------------------


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    raw: bytes


@dataclass
class RangeApi:
    """State of the local range API: known hashes with counts, and what it was sent."""

    url: str = ""
    mode: str = "ok"  # ok | error | slow | garbage
    entries: dict[str, int] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    wake: threading.Event = field(default_factory=threading.Event)

    def add(self, password: str, count: int) -> None:
        self.entries[sha1_hex(password)] = count


class RangeHandler(BaseHTTPRequestHandler):
    server: RangeServer

    def do_GET(self) -> None:
        api = self.server.api
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        raw = (self.requestline + "\r\n" + str(self.headers)).encode() + body
        api.requests.append(Recorded(self.path, dict(self.headers.items()), raw))
        if api.mode == "error":
            return self.reply(500, b"internal error")
        if api.mode == "slow":
            api.wake.wait(10)
            return self.reply(200, b"")
        if api.mode == "garbage":
            return self.reply(200, b"<html>maintenance</html>")
        match = re.fullmatch(r"/range/([0-9A-F]{5})", self.path)
        if match is None:
            return self.reply(404, b"not found")
        prefix = match[1]
        lines = [f"{h[5:]}:{n}" for h, n in api.entries.items() if h.startswith(prefix)]
        if self.headers.get("Add-Padding") == "true":
            lines += [f"{hashlib.sha1(f'pad{i}'.encode()).hexdigest().upper()[5:]}:0" for i in range(800)]
        self.reply(200, "\r\n".join(sorted(lines)).encode())

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: RangeApi) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.api = api

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the slow mode writes to a client that already gave up


@pytest.fixture
def range_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[RangeApi]:
    api = RangeApi()
    server = RangeServer(api)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    use_settings(monkeypatch, hibp_api_url=api.url, hibp_timeout_s="0.5")
    yield api
    api.wake.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def assert_only_the_prefix_left(api: RangeApi, password: str, *, times: int = 1) -> None:
    digest = sha1_hex(password)
    assert [r.path for r in api.requests] == [f"/range/{digest[:5]}"] * times
    for request in api.requests:
        assert request.headers["Add-Padding"] == "true"
        assert request.headers["User-Agent"] == "custos-password-check"
        for secret in (digest[5:], digest[5:].lower(), digest[5:12], password, normalize(password)):
            assert secret.encode() not in request.raw


def test_range_api_listing_the_suffix_with_a_count_means_breached(range_api: RangeApi) -> None:
    password = "Gentle-Harbour-Lantern-42"
    range_api.add(password, 17)
    assert is_breached(password) is True
    assert_only_the_prefix_left(range_api, password)


@pytest.mark.requirement("21CFR11.300(b)")
def test_check_policy_refuses_a_password_the_range_api_lists(range_api: RangeApi) -> None:
    password = "Velvet-Orchard-Compass-7"
    range_api.add(password, 3)
    exc = refused(password)
    assert exc.extensions["errors"][0]["code"] == "password_breached"


def test_range_api_suffix_only_as_padding_means_not_breached(range_api: RangeApi) -> None:
    password = "Quiet-Meadow-Ferris-Wheel-9"
    range_api.add(password, 0)
    assert is_breached(password) is False
    check_policy(password)
    assert_only_the_prefix_left(range_api, password, times=2)


def test_range_api_not_listing_the_suffix_means_not_breached(range_api: RangeApi) -> None:
    password = "Amber-Kestrel-Tundra-301"
    assert is_breached(password) is False
    assert_only_the_prefix_left(range_api, password)


def test_offline_list_decides_without_asking_the_range_api(range_api: RangeApi) -> None:
    assert is_breached("Password1234") is True
    assert range_api.requests == []


@pytest.mark.parametrize("mode", ["error", "slow", "garbage"])
def test_range_api_failure_fails_open_when_set(
    range_api: RangeApi, mode: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    use_settings(monkeypatch, hibp_fail_open="true", hibp_timeout_s="0.3")
    range_api.mode = mode
    password = "Copper-Lighthouse-Nebula-5"
    range_api.add(password, 99)
    assert is_breached(password) is False
    assert len(range_api.requests) == 1
    assert "range API unavailable" in caplog.text
    digest = sha1_hex(password)
    for secret in (password, digest[:5], digest[5:]):
        assert secret not in caplog.text


@pytest.mark.parametrize("mode", ["error", "slow", "garbage"])
def test_range_api_failure_fails_closed_when_set(range_api: RangeApi, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, hibp_fail_open="false", hibp_timeout_s="0.3")
    range_api.mode = mode
    with pytest.raises(ServiceUnavailable) as info:
        check_policy("Copper-Lighthouse-Nebula-6")
    assert info.value.status == 503
    assert info.value.detail == "the breached-password check is unavailable"
    assert info.value.extensions == {"component": "hibp"}


def test_offline_list_still_refuses_when_the_range_api_is_down(range_api: RangeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, hibp_fail_open="true")
    range_api.mode = "error"
    assert refused("iloveyou1234").extensions["errors"][0]["code"] == "password_breached"


def test_unreachable_range_api_follows_fail_open(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    use_settings(monkeypatch, hibp_api_url=f"http://127.0.0.1:{closed_port}", hibp_fail_open="true")
    assert is_breached("Silver-Anchor-Drizzle-88") is False
    use_settings(monkeypatch, hibp_fail_open="false")
    with pytest.raises(ServiceUnavailable):
        is_breached("Silver-Anchor-Drizzle-88")


def test_plain_http_to_a_remote_range_api_is_refused_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, hibp_api_url="http://range.example.invalid", hibp_fail_open="false")
    with pytest.raises(ServiceUnavailable):
        is_breached("Silver-Anchor-Drizzle-89")


# --- concurrency bound --------------------------------------------------------------------


@pytest.fixture
def one_hash_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, password_hash_concurrency="1")
    monkeypatch.setattr(passwords, "_hash_slots", None)  # a fresh worker


def test_hash_slots_are_created_once_from_the_setting(one_hash_slot: None) -> None:
    assert passwords._hash_slots is None
    hash_password(GOOD)
    slots = passwords._semaphore()
    assert slots is passwords._hash_slots is passwords._semaphore()
    assert slots._value == 1


def test_hash_waits_while_every_slot_is_taken(one_hash_slot: None) -> None:
    slots = passwords._semaphore()
    results: list[str] = []
    slots.acquire()
    try:
        worker = threading.Thread(target=lambda: results.append(hash_password(GOOD)))
        worker.start()
        waiting = threading.Event()
        for _ in range(1000):  # until the worker is queued on the semaphore (no timing assertion)
            if slots._cond._waiters:  # type: ignore[attr-defined]
                waiting.set()
                break
            waiting.wait(0.01)
        assert waiting.is_set()
        assert results == []
    finally:
        slots.release()
    worker.join(30)
    assert len(results) == 1 and verify_password(results[0], GOOD).ok


class CountingSemaphore(threading.BoundedSemaphore):
    """Records how many holders it ever had at once."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self._count_lock = threading.Lock()
        self.holders = 0
        self.most = 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        got = super().acquire(blocking, timeout)
        if got:
            with self._count_lock:
                self.holders += 1
                self.most = max(self.most, self.holders)
        return got

    __enter__ = acquire

    def release(self, n: int = 1) -> None:
        with self._count_lock:
            self.holders -= n
        super().release(n)


def test_concurrent_hashes_never_exceed_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    slots = CountingSemaphore(1)
    monkeypatch.setattr(passwords, "_hash_slots", slots)
    start = threading.Barrier(3)
    outcomes: list[bool] = []

    def work(i: int) -> None:
        start.wait()
        if i == 0:
            outcomes.append(hash_password(GOOD).startswith(CURRENT_PREFIX))
        elif i == 1:
            outcomes.append(not verify_password(None, GOOD).ok)
        else:
            outcomes.append(not verify_password("$2b$12$garbage", GOOD).ok)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcomes == [True, True, True]
    assert slots.most == 1 and slots.holders == 0
