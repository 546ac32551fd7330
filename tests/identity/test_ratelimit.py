"""shared.identity.ratelimit against real Azurite, with pinned clocks instead of sleeping."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient

from shared.core import storage
from shared.core.errors import TooManyRequests
from shared.core.settings import SettingsError, get_settings
from shared.identity.ratelimit import (
    FAMILIES,
    TABLE,
    ApiRateLimiter,
    Crossing,
    Key,
    Policy,
    RowKeys,
    Throttle,
    key_id,
    load_row_keys,
    login_keys,
    normalize_ip,
)
from shared.tenancy.tenants import Tenant

T0 = 1_800_000_000.0
POLICY = Policy(threshold_email_ip=3, threshold_ip=6, threshold_email=10, window_s=600, delay_base_s=2, delay_max_s=16)
KEYS = RowKeys(current=os.urandom(32))


def rk(family: str, key: Key) -> str:
    return KEYS.row_key(family, key)


@pytest.fixture(scope="module")
def table() -> TableClient:
    return storage.table_service().get_table_client(TABLE)


@pytest.fixture
def throttle(table: TableClient) -> Throttle:
    return Throttle(table=table, policies=dict.fromkeys(FAMILIES, POLICY), keys=KEYS)


def new_email() -> str:
    return f"User-{uuid.uuid4().hex[:12]}@Example.test"


def new_ip() -> str:
    n = uuid.uuid4().int
    return f"10.{n % 256}.{(n >> 8) % 256}.{(n >> 16) % 256}"


def new_tenant() -> str:
    return str(uuid.uuid4())


def retry_after(th: Throttle, keys: list[Key], now: float, family: str = "login") -> int | None:
    """None if an attempt would be let through now, else the Retry-After it would get. Reads only."""
    states = th._read_many(th._table(), family, keys, now=now)
    try:
        th._refuse_if_delayed(family, states, now)
    except TooManyRequests as exc:
        return exc.retry_after_s
    return None


def fail(th: Throttle, keys: list[Key], times: int, now: float, family: str = "login") -> list[Crossing]:
    """`times` attempts that each get through and fail (the reservation is the failure)."""
    crossings: list[Crossing] = []
    for _ in range(times):
        crossings += th.attempt(family, keys, now=now).crossings  # type: ignore[arg-type]
    return crossings


def succeed(th: Throttle, keys: list[Key], now: float, family: str = "login") -> None:
    th.attempt(family, keys, now=now).succeeded()  # type: ignore[arg-type]


def entity(table: TableClient, family: str, key: Key) -> dict | None:
    try:
        return dict(table.get_entity(family, rk(family, key)))
    except ResourceNotFoundError:
        return None


def failures(table: TableClient, family: str, key: Key) -> int:
    found = entity(table, family, key)
    return 0 if found is None else int(found["failures"])


def test_failures_below_threshold_are_not_blocked(throttle: Throttle) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(throttle, keys, POLICY.threshold_email_ip - 1, T0)
    assert retry_after(throttle, keys, T0) is None


def test_reaching_the_threshold_delays_by_the_base_delay_as_a_429(throttle: Throttle) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(throttle, keys, POLICY.threshold_email_ip, T0)
    with pytest.raises(TooManyRequests) as caught:
        throttle.attempt("login", keys, now=T0)
    exc = caught.value
    assert exc.retry_after_s == POLICY.delay_base_s
    assert exc.status == 429
    assert exc.headers() == {"Retry-After": str(POLICY.delay_base_s)}
    problem = exc.to_problem()
    assert problem["status"] == 429 and problem["retry_after"] == POLICY.delay_base_s
    assert "@" not in str(problem)


def test_each_further_failure_doubles_the_delay_up_to_the_cap(throttle: Throttle) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    now = T0
    fail(throttle, keys, POLICY.threshold_email_ip, now)
    seen = []
    for _ in range(5):
        wait = retry_after(throttle, keys, now)
        assert wait is not None
        seen.append(wait)
        now += wait  # the delay has passed: one more attempt, which fails
        fail(throttle, keys, 1, now)
    assert seen == [2, 4, 8, 16, 16]


def test_a_delay_expires_by_itself(throttle: Throttle) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(throttle, keys, POLICY.threshold_email_ip, T0)
    with pytest.raises(TooManyRequests) as caught:
        throttle.attempt("login", keys, now=T0 + POLICY.delay_base_s - 0.5)
    assert caught.value.retry_after_s == 1
    succeed(throttle, keys, T0 + POLICY.delay_base_s)


def test_failures_older_than_the_window_are_forgotten(throttle: Throttle, table: TableClient) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(throttle, keys, POLICY.threshold_email_ip - 1, T0)
    later = T0 + POLICY.window_s
    fail(throttle, keys, 1, later)
    assert retry_after(throttle, keys, later) is None
    assert failures(table, "login", keys[0]) == 1


def test_a_delayed_key_is_forgotten_only_after_a_quiet_window_past_its_delay(throttle: Throttle) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(throttle, keys, POLICY.threshold_email_ip, T0)
    # Past the first window but not quiet for a window since the delay ended: still escalating.
    now = T0 + POLICY.window_s
    fail(throttle, keys, 1, now)
    assert retry_after(throttle, keys, now) == 2 * POLICY.delay_base_s
    # A full quiet window after that delay: a fresh count, below the threshold again.
    now += 2 * POLICY.delay_base_s + POLICY.window_s
    fail(throttle, keys, 1, now)
    assert retry_after(throttle, keys, now) is None


def test_an_attempt_is_counted_before_its_outcome_is_known(throttle: Throttle, table: TableClient) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    attempt = throttle.attempt("login", keys, now=T0)
    assert [failures(table, "login", k) for k in keys] == [1, 1, 1]  # a caller that never reports still counted
    attempt.succeeded()
    attempt.succeeded()  # idempotent: the count is given back once
    assert [failures(table, "login", k) for k in keys] == [0, 0, 0]


def test_a_refused_attempt_writes_nothing(throttle: Throttle, table: TableClient) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(throttle, keys, POLICY.threshold_email_ip, T0)
    before = [table.get_entity("login", rk("login", k)).metadata["etag"] for k in keys]
    for _ in range(3):
        with pytest.raises(TooManyRequests):
            throttle.attempt("login", keys, now=T0 + 1)
    assert [table.get_entity("login", rk("login", k)).metadata["etag"] for k in keys] == before


def test_each_crossing_is_reported_once_per_key(throttle: Throttle) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    crossings: list[Crossing] = []
    now = T0
    for _ in range(POLICY.threshold_email + 5):
        while (wait := retry_after(throttle, keys, now)) is not None:
            now += wait
        crossings += fail(throttle, keys, 1, now)
    assert sorted(crossings, key=lambda c: c.failures) == [
        Crossing(kind="email_ip", failures=POLICY.threshold_email_ip, delay_s=POLICY.delay_base_s),
        Crossing(kind="ip", failures=POLICY.threshold_ip, delay_s=POLICY.delay_base_s),
        Crossing(kind="email", failures=POLICY.threshold_email, delay_s=POLICY.delay_base_s),
    ]


def test_families_count_separately(throttle: Throttle) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(throttle, keys, POLICY.threshold_email_ip, T0, family="mfa")
    assert retry_after(throttle, keys, T0, family="mfa") == POLICY.delay_base_s
    assert retry_after(throttle, keys, T0, family="login") is None


def test_an_attacker_on_one_ip_does_not_lock_the_user_out_from_another(throttle: Throttle, table: TableClient) -> None:
    email, tenant, ip_a, ip_b = new_email(), new_tenant(), new_ip(), new_ip()
    attacker, user = login_keys(email=email, ip=ip_a, tenant=tenant), login_keys(email=email, ip=ip_b, tenant=tenant)
    fail(throttle, attacker, POLICY.threshold_email_ip, T0)

    assert retry_after(throttle, attacker, T0) is not None
    assert retry_after(throttle, user, T0) is None

    succeed(throttle, user, T0)
    assert [failures(table, "login", k) for k in attacker] == [POLICY.threshold_email_ip] * 3
    assert retry_after(throttle, attacker, T0) is not None


def test_the_email_delay_spares_ips_the_user_signed_in_from(throttle: Throttle) -> None:
    email, tenant, home = new_email(), new_tenant(), new_ip()
    succeed(throttle, login_keys(email=email, ip=home, tenant=tenant), T0)
    for _ in range(POLICY.threshold_email):  # one failure from each of many IPs
        fail(throttle, login_keys(email=email, ip=new_ip(), tenant=tenant), 1, T0 + 60)

    assert retry_after(throttle, login_keys(email=email, ip=new_ip(), tenant=tenant), T0 + 60) == POLICY.delay_base_s
    succeed(throttle, login_keys(email=email, ip=home, tenant=tenant), T0 + 60)


def test_a_success_resets_the_email_ip_counter_and_gives_back_its_own_count(throttle: Throttle, table: TableClient) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(throttle, keys, POLICY.threshold_email_ip - 1, T0)
    succeed(throttle, keys, T0)
    fail(throttle, keys, POLICY.threshold_email_ip - 1, T0)
    assert retry_after(throttle, keys, T0) is None
    assert failures(table, "login", keys[0]) == POLICY.threshold_email_ip - 1
    assert failures(table, "login", keys[1]) == 2 * (POLICY.threshold_email_ip - 1)  # the success itself is not counted
    assert failures(table, "login", keys[2]) == 2 * (POLICY.threshold_email_ip - 1)


def test_a_success_that_reached_a_threshold_does_not_leave_a_delay(throttle: Throttle, table: TableClient) -> None:
    ip, tenant = new_ip(), new_tenant()
    for _ in range(POLICY.threshold_ip - 1):  # other accounts from one address (an office, say)
        fail(throttle, login_keys(email=new_email(), ip=ip, tenant=tenant), 1, T0)
    keys = login_keys(email=new_email(), ip=ip, tenant=tenant)
    attempt = throttle.attempt("login", keys, now=T0)
    assert [c.kind for c in attempt.crossings] == ["ip"]  # reported only if the attempt fails
    attempt.succeeded()
    assert failures(table, "login", keys[1]) == POLICY.threshold_ip - 1
    assert retry_after(throttle, login_keys(email=new_email(), ip=ip, tenant=tenant), T0) is None
    fail(throttle, keys, 1, T0)  # the same attempt failing does start the delay
    assert retry_after(throttle, login_keys(email=new_email(), ip=ip, tenant=tenant), T0) == POLICY.delay_base_s


def test_interleaved_successes_do_not_hide_guesses_from_the_ip_key(throttle: Throttle, table: TableClient) -> None:
    ip, tenant = new_ip(), new_tenant()
    own = login_keys(email=new_email(), ip=ip, tenant=tenant)
    for _ in range(POLICY.threshold_ip):
        succeed(throttle, own, T0)
        fail(throttle, login_keys(email=new_email(), ip=ip, tenant=tenant), 1, T0)
    assert failures(table, "login", own[1]) == POLICY.threshold_ip
    assert retry_after(throttle, own, T0) == POLICY.delay_base_s


def test_parallel_attempts_get_through_at_most_the_threshold(throttle: Throttle, table: TableClient) -> None:
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    n = 30
    start = threading.Barrier(n)

    def one(_: int) -> str:
        start.wait()
        try:
            throttle.attempt("login", keys, now=T0)
        except TooManyRequests:
            return "refused"
        return "reserved"

    with ThreadPoolExecutor(max_workers=n) as pool:
        outcomes = list(pool.map(one, range(n)))
    assert outcomes.count("reserved") == POLICY.threshold_email_ip
    assert [failures(table, "login", k) for k in keys] == [POLICY.threshold_email_ip] * 3


def test_parallel_attempts_below_the_threshold_are_all_counted(table: TableClient) -> None:
    roomy = Policy(threshold_email_ip=100, threshold_ip=100, threshold_email=100, window_s=600, delay_base_s=2,
                   delay_max_s=16)
    th = Throttle(table=table, policies=dict.fromkeys(FAMILIES, roomy), keys=KEYS)
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    n = 12
    start = threading.Barrier(n)

    def one(_: int) -> None:
        start.wait()
        th.attempt("login", keys, now=T0)

    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(one, range(n)))
    assert [failures(table, "login", k) for k in keys] == [n] * 3


def test_row_keys_and_properties_hold_no_email_or_ip(throttle: Throttle, table: TableClient) -> None:
    email, ip, tenant = new_email(), new_ip(), new_tenant()
    keys = login_keys(email=email, ip=ip, tenant=tenant)
    fail(throttle, keys, 1, T0, family="reset")
    succeed(throttle, keys, T0, family="reset")

    stored = [entity(table, "reset", k) for k in keys]
    assert [e["RowKey"] for e in stored if e] == [rk("reset", k) for k in keys]
    assert [rk("reset", k).split(":")[0] for k in keys] == ["email_ip", "ip", "email"]
    row_keys = [row["RowKey"] for row in table.query_entities("PartitionKey eq 'reset'", select=["RowKey"])]
    assert rk("reset", keys[0]) in row_keys
    for needle in (email, email.lower(), ip, tenant):
        assert needle not in str(stored)
        assert not [rk for rk in row_keys if needle in rk]


def test_an_attacker_who_knows_an_email_cannot_find_its_row_by_sha256(throttle: Throttle, table: TableClient) -> None:
    email, ip, tenant = new_email(), new_ip(), new_tenant()
    keys = login_keys(email=email, ip=ip, tenant=tenant)
    fail(throttle, keys, 1, T0)
    stored = {row["RowKey"] for row in table.query_entities("PartitionKey eq 'login'", select=["RowKey"])}
    assert {rk("login", k) for k in keys} <= stored
    # Everything an attacker could hash: each key's exact value (the old naming) and its parts.
    guesses = {k.value for k in keys} | {email.strip().lower(), ip, tenant, f"{tenant}\n{email.strip().lower()}"}
    digests = {hashlib.sha256(g.encode()).hexdigest() for g in guesses}
    assert not [row_key for row_key in stored if any(d in row_key for d in digests)]
    # Under another key the same email has unrelated rows: the key, not the email, names them.
    other = RowKeys(current=os.urandom(32))
    assert not {other.row_key("login", k) for k in keys} & stored


def test_rotation_keeps_a_live_lockout(table: TableClient) -> None:
    old, new = os.urandom(32), os.urandom(32)
    policies = dict.fromkeys(FAMILIES, POLICY)
    before = Throttle(table=table, policies=policies, keys=RowKeys(current=old))
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(before, keys, POLICY.threshold_email_ip, T0)
    assert retry_after(before, keys, T0 + 1) == POLICY.delay_base_s - 1

    rotated = Throttle(table=table, policies=policies, keys=RowKeys(current=new, previous=(old,)))
    with pytest.raises(TooManyRequests) as refused:
        rotated.attempt("login", keys, now=T0 + 1)
    assert refused.value.retry_after_s == POLICY.delay_base_s - 1
    # Without the retired key the same rotation would have handed the attacker a fresh start.
    forgetful = Throttle(table=table, policies=policies, keys=RowKeys(current=new))
    assert retry_after(forgetful, keys, T0 + 1) is None

    # After the delay the next failure counts on from the old count, under the new key only,
    # and the delay it sets doubles as it would have without the rotation.
    after_delay = T0 + POLICY.delay_base_s
    crossings = fail(rotated, keys, 1, after_delay)
    assert crossings == []
    new_ring = RowKeys(current=new)
    old_ring = RowKeys(current=old)
    moved = [dict(table.get_entity("login", new_ring.row_key("login", k))) for k in keys]
    assert [m["failures"] for m in moved] == [POLICY.threshold_email_ip + 1] * 3
    assert moved[0]["blocked_until"] == after_delay + 2 * POLICY.delay_base_s
    for k in keys:
        with pytest.raises(ResourceNotFoundError):
            table.get_entity("login", old_ring.row_key("login", k))
    with pytest.raises(TooManyRequests):
        rotated.attempt("login", keys, now=after_delay + 1)


def test_parallel_attempts_move_a_rotated_throttle_once_and_count_every_failure(table: TableClient) -> None:
    old, new = os.urandom(32), os.urandom(32)
    policies = dict.fromkeys(FAMILIES, POLICY)
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(Throttle(table=table, policies=policies, keys=RowKeys(current=old)), keys, 1, T0)
    ring = RowKeys(current=new, previous=(old,))
    n = 12
    start = threading.Barrier(n)

    def one(_: int) -> str:
        th = Throttle(table=table, policies=policies, keys=ring)  # one worker each: no shared memory
        start.wait()
        try:
            th.attempt("login", keys, now=T0 + 1)
        except TooManyRequests:
            return "refused"
        return "reserved"

    with ThreadPoolExecutor(max_workers=n) as pool:
        outcomes = list(pool.map(one, range(n)))
    # The old row's one failure still counts: only threshold - 1 more get through.
    assert outcomes.count("reserved") == POLICY.threshold_email_ip - 1
    new_row = dict(table.get_entity("login", RowKeys(current=new).row_key("login", keys[0])))
    assert new_row["failures"] == POLICY.threshold_email_ip
    with pytest.raises(ResourceNotFoundError):
        table.get_entity("login", RowKeys(current=old).row_key("login", keys[0]))


def test_a_success_after_rotation_remembers_the_pair_under_the_new_key(table: TableClient) -> None:
    old, new = os.urandom(32), os.urandom(32)
    policies = dict.fromkeys(FAMILIES, POLICY)
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(Throttle(table=table, policies=policies, keys=RowKeys(current=old)), keys, 2, T0)
    rotated = Throttle(table=table, policies=policies, keys=RowKeys(current=new, previous=(old,)))
    succeed(rotated, keys, T0 + 1)
    rows = [dict(table.get_entity("login", RowKeys(current=new).row_key("login", k))) for k in keys]
    assert [r["failures"] for r in rows] == [0, 2, 2]  # the email+IP row restarts, the others keep the old counts
    assert rows[0]["last_success"] == T0 + 1


def test_production_refuses_to_run_without_a_rate_limit_key() -> None:
    settings = get_settings().model_copy(update={"custos_env": "production", "rate_limit_key": ""})
    with pytest.raises(SettingsError, match="RATE_LIMIT_KEY"):
        load_row_keys(settings)


def test_the_local_dev_key_is_generated_once_and_named_by_its_id(tmp_path: Path) -> None:
    settings = get_settings().model_copy(update={"custos_local_dir": tmp_path, "rate_limit_key": ""})
    first, again = load_row_keys(settings), load_row_keys(settings)
    assert first == again and len(first.current) == 32
    assert (tmp_path / "keys" / "ratelimit-hmac.key").stat().st_mode & 0o777 == 0o600
    key = Key("ip", "192.0.2.1")
    assert first.row_key("login", key).split(":")[1] == key_id(first.current)
    assert first.row_key("login", key) != first.row_key("reset", key)  # families never share a row name


# --- purging expired rows (the housekeeping timer calls it) ---------------------------------------


def present(table: TableClient, th: Throttle, keys: list[Key], family: str = "login") -> list[bool]:
    out = []
    for k in keys:
        try:
            table.get_entity(family, th.row_key(family, k))
            out.append(True)
        except ResourceNotFoundError:
            out.append(False)
    return out


def test_purge_deletes_exactly_the_rows_every_reader_would_treat_as_empty(table: TableClient) -> None:
    th = Throttle(table=table, policies=dict.fromkeys(FAMILIES, POLICY), keys=RowKeys(current=os.urandom(32)),
                  known_pair_ttl_s=10_000)
    t = T0 + 10_000_000  # clear of every other test's rows
    stale = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(th, stale, 1, t)                                       # below threshold; window over at t+600
    known = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    succeed(th, known, t)                                       # email+IP marker in force until t+10000
    fresh = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(th, fresh, 1, t + 650)                                 # window runs to t+1250
    locked = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    fail(th, locked, POLICY.threshold_email_ip, t + 700)        # email+IP delayed until t+702

    now = t + 701
    assert th.purge_expired(now=now) >= 5
    assert present(table, th, stale) == [False, False, False]
    assert present(table, th, known) == [True, False, False]    # the marker stays; the given-back counters go
    assert present(table, th, fresh) == [True, True, True]
    assert present(table, th, locked) == [True, True, True]
    with pytest.raises(TooManyRequests):                        # a live throttle still refuses after housekeeping
        th.attempt("login", locked, now=now)
    assert retry_after(th, known, now) is None


class WritesWhileListing:
    """The real table, with a real write to it between listing a row and deleting it."""

    def __init__(self, table: TableClient, during: Callable[[dict], None]) -> None:
        self._table, self._during = table, during

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def query_entities(self, *args: Any, **kw: Any) -> Iterator[Any]:
        for entity in self._table.query_entities(*args, **kw):
            self._during(entity)
            yield entity


def test_purge_spares_a_row_counted_again_after_it_was_read(table: TableClient) -> None:
    ring = RowKeys(current=os.urandom(32))
    policies = dict.fromkeys(FAMILIES, POLICY)
    writer = Throttle(table=table, policies=policies, keys=ring)
    t = T0 + 20_000_000
    keys = [Key("ip", new_ip())]
    fail(writer, keys, 1, t)
    row_key = writer.row_key("login", keys[0])

    def count_again(entity: dict) -> None:
        if entity["RowKey"] == row_key:
            fail(writer, keys, 1, t + 601)  # a new window: the row is live again, with a new ETag

    purger = Throttle(table=WritesWhileListing(table, count_again), policies=policies, keys=ring)  # type: ignore[arg-type]
    purger.purge_expired(now=t + 601)
    assert table.get_entity("login", row_key)["failures"] == 1
    assert table.get_entity("login", row_key)["window_start"] == t + 601


def test_emails_are_compared_trimmed_and_lower_cased() -> None:
    tenant, ip = new_tenant(), new_ip()
    assert login_keys(email=" A@Example.test ", ip=ip, tenant=tenant) == login_keys(
        email="a@example.test", ip=ip, tenant=tenant
    )
    assert login_keys(email="a@example.test", ip=ip, tenant=tenant)[2] != login_keys(
        email="a@example.test", ip=ip, tenant=new_tenant()
    )[2]


def test_ipv6_addresses_count_per_64() -> None:
    assert normalize_ip("2001:db8:1:2:aaaa::1") == normalize_ip("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert normalize_ip("2001:db8:1:3::1") != normalize_ip("2001:db8:1:2::1")
    assert normalize_ip("::ffff:192.0.2.7") == "192.0.2.7"
    assert normalize_ip(" 192.0.2.7 ") == "192.0.2.7"
    assert normalize_ip("") == "unknown"


def test_unknown_family_and_kind_are_refused(throttle: Throttle) -> None:
    with pytest.raises(ValueError, match="family 'signup'"):
        throttle.attempt("signup", [], now=T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key kind 'user'"):
        Key("user", "x")  # type: ignore[arg-type]


def test_storage_failures_fail_open_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = TableClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UOm5uD5WazFLtKt7rHkIJCvJMQGUuL8nAuB8w==;"
        f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
        table_name=TABLE,
    )
    th = Throttle(table=dead, policies=dict.fromkeys(FAMILIES, POLICY))
    keys = login_keys(email=new_email(), ip=new_ip(), tenant=new_tenant())
    with caplog.at_level(logging.ERROR, logger="custos.ratelimit"):
        attempt = th.attempt("login", keys, now=T0)
        assert attempt.crossings == []
        attempt.succeeded()
    assert "failed open" in caplog.text


def test_default_policy_comes_from_settings() -> None:
    settings = get_settings()
    policy = Throttle().policy("login")
    assert policy == Policy.from_settings(settings)
    assert policy.threshold("email_ip") == settings.login_threshold_email_ip
    assert policy.threshold("ip") == settings.login_threshold_ip
    assert policy.threshold("email") == settings.login_threshold_email
    assert policy.delay(10**6, 1) == settings.login_delay_max_s


def test_api_limiter_allows_the_rate_then_refuses() -> None:
    limiter = ApiRateLimiter(rate_per_minute=60)
    ip = new_ip()
    for _ in range(60):
        limiter.take(ip, now=100.0)
    with pytest.raises(TooManyRequests) as caught:
        limiter.take(ip, now=100.0)
    assert caught.value.retry_after_s >= 1
    assert caught.value.headers()["Retry-After"] == str(caught.value.retry_after_s)
    limiter.take(new_ip(), now=100.0)  # another IP has its own bucket


def test_api_limiter_refills_with_time() -> None:
    limiter = ApiRateLimiter(rate_per_minute=60)
    ip = new_ip()
    for _ in range(60):
        limiter.take(ip, now=100.0)
    with pytest.raises(TooManyRequests) as caught:
        limiter.take(ip, now=100.5)
    assert caught.value.retry_after_s == 1
    limiter.take(ip, now=101.0)
    for _ in range(60):
        limiter.take(ip, now=200.0)  # a full minute later the bucket is full again, not fuller
    with pytest.raises(TooManyRequests):
        limiter.take(ip, now=200.0)


def test_api_limiter_keeps_at_most_max_ips_buckets() -> None:
    limiter = ApiRateLimiter(rate_per_minute=10, max_ips=3)
    first = new_ip()
    for _ in range(10):
        limiter.take(first, now=0.0)
    for _ in range(3):
        limiter.take(new_ip(), now=0.0)
    assert len(limiter) == 3
    limiter.take(first, now=0.0)  # its bucket was the oldest and was dropped


def test_api_limiter_rate_defaults_to_the_setting() -> None:
    assert ApiRateLimiter().capacity == get_settings().api_rate_per_minute


# --- callers: a second factor guessed in parallel ------------------------------------------------


def test_parallel_wrong_totp_codes_on_one_ticket_reach_the_code_check_at_most_the_threshold(tenant: Tenant) -> None:
    import pyotp

    from shared.audit import chain as audit
    from shared.core import db
    from shared.identity import mfa
    from shared.identity import signin as auth
    from shared.identity.passwords import hash_password
    from tests.conftest import create_user

    password = "Parallel-Totp-Lantern-" + uuid.uuid4().hex[:6]
    user = create_user(tenant.id, "ADMIN")
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update users set password_hash = %s where id = %s", (hash_password(password), user["id"]))
    meta = audit.RequestMeta(ip=new_ip(), user_agent="pytest")
    challenge = auth.login(tenant_slug=tenant.slug, email=user["email"], password=password, remember_me=False, meta=meta)
    assert isinstance(challenge, mfa.SecondFactorRequired)
    right = pyotp.TOTP(user["totp_secret"]).now()
    wrong = f"{(int(right) + 500_000) % 1_000_000:06d}"
    n = 25
    start = threading.Barrier(n)

    def one(_: int) -> str:
        start.wait()
        try:
            mfa.verify_second_factor(ticket=challenge.ticket, code=wrong, meta=meta)
        except mfa.InvalidSecondFactor:
            return "checked"
        except TooManyRequests:
            return "refused"
        return "signed in"

    with ThreadPoolExecutor(max_workers=n) as pool:
        outcomes = list(pool.map(one, range(n)))
    threshold = get_settings().login_threshold_email_ip
    assert set(outcomes) <= {"checked", "refused"}
    assert 1 <= outcomes.count("checked") <= threshold
    with db.tenant_tx(tenant.id) as conn:
        failed = audit.list_events(conn, action="auth.mfa_failed")
    assert len(failed) == outcomes.count("checked")
