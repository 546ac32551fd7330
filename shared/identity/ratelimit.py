"""Brute-force throttling of the credential routes, and a per-worker limiter for the rest of the API.

Credential routes (`Throttle`)
------------------------------
Each route family ("login", "invitation", "reset", "mfa") keeps its own failure counters
in the Table Storage table "ratelimits", shared by every worker: PartitionKey is the
family, RowKey is `kind:<key id>:` + hex HMAC-SHA-256 of family, kind and value under the
secret `RATE_LIMIT_KEY` (`RowKeys`), so no email or IP address is stored in clear, and
nobody who can read the table but lacks the key can find a known address's row (a plain
SHA-256 of an email or an IPv4 address is found by hashing candidates). A request is
counted under three keys (`login_keys`):

- `email_ip`: tenant + email + client IP (default threshold 5),
- `ip`: the client IP across all accounts and tenants (default threshold 30),
- `email`: tenant + email from any IP (default threshold 50).

Every attempt is counted before its secret is checked, not after. The caller runs
`attempt(family, keys)` before anything expensive (password hashing above all): one query
reads the keys, and unless one is delayed (then `TooManyRequests`, a 429 problem+json with
`Retry-After`, and nothing is written), one entity-group transaction raises every key's
count by one, conditional on the ETags just read. The attempt is thereby reserved and
already counts as a failure; the caller only reports a success (`Attempt.succeeded`). A
caller that forgets, or crashes, or raises, leaves the failure counted. Counting after the
check let parallel guesses through: 25 simultaneous wrong passwords all passed a read-only
check before the first failure was written. With reservation the writes serialize on the
ETag, so of N parallel attempts at most the threshold pass (each lost race reads again and
then sees the delay). `Attempt.crossings` lists the keys that reached their threshold with
this reservation, once per episode, so a failed attempt records one security event per
crossing rather than one per attempt.

A success gives the reservation back, so successes never count (as before reservation):
the email+IP row restarts and remembers the pair as known; the IP and email rows lose this
attempt's one count (and a delay that count started), conditional on their ETag. Only that
one count: an attacker who interleaves good sign-ins to their own account with guesses at
someone else's from one IP still has every guess counted under the IP.

Why an attacker cannot lock the real user out:

- Nothing is locked permanently. Crossing a threshold sets a delay (`login_delay_base_s`,
  doubling with each further failure, capped at `login_delay_max_s`) after which the key
  passes again by itself; an administrator never has to unlock anyone.
- An attacker guessing one user's password from IP X trips `email_ip(X)` and `ip(X)` long
  before `email` (5 and 30 failures against 50), so X is delayed while the real user,
  coming from another IP, is not.
- Only a distributed attacker (many IPs) reaches the `email` threshold. Even then the
  `email` delay does not apply from an IP the user has already signed in from successfully
  within `known_pair_ttl_s` (30 days by default): a success leaves a marker on that
  email+IP row, which `attempt` reads anyway. Users on new IPs see delays, never a lock.
- A success resets only the `email_ip` row of the IP that succeeded: a success from
  one IP never wipes the evidence gathered against an attacker's IP elsewhere.

Counters are forgotten after `login_window_s`: below its threshold a key's count restarts
once the window since its first failure has passed; once delayed, a key is forgotten only
after a full quiet window following the end of its last delay. (Restarting a delayed key
when its first window ended would hand an attacker fresh free attempts every window and
keep the delay from ever growing to its cap.) Attempts refused as delayed are not counted,
so an attacker's hammering during a delay neither lengthens it nor lets it lapse early.

Every update is an ETag-conditional read-modify-write (create-if-absent, replace
`IfNotModified`), retried with jitter on a conflict, so concurrent workers never lose a
count. Storage failures never lock users out: `attempt` logs an error and lets the request
through unreserved (fail open: a storage hiccup must not refuse every sign-in), and a
success that cannot be written is logged. Contention is not a storage failure: an attempt
that loses `MAX_WRITE_ATTEMPTS` races in a row is refused with a 429 (fail closed), since
only a burst of parallel attempts on one key gets there, and letting it through would
reopen the hole reservation closes.

Key rotation (`RATE_LIMIT_PREVIOUS_KEYS`)
-----------------------------------------
Every read also looks up each key's rows under the retired keys, and folds what it finds
into the current row's state: the failures of rows still inside their window add up, the
longest delay and the newest success win. So a delay set under the old key still refuses
after the new key is deployed. The next reservation moves the folded state to the row of the
current key and deletes the retired rows in the same entity-group transaction, each op
conditional (create-if-absent or `IfNotModified`, the delete on the retired row's ETag), so
two workers moving one throttle at once cannot both succeed: the loser reads again, as for
any lost race. Retired keys can be removed once a full `login_delay_max_s` +
`login_window_s` has passed after the rotation; housekeeping deletes whatever rows they
left behind once those rows have expired (`Throttle.purge_expired`).

General API (`ApiRateLimiter`)
------------------------------
A per-IP token bucket kept in memory by each worker (`api_rate_per_minute` per IP per
worker). It is deliberately not in Table Storage: a storage round trip on every API
request would cost more than most requests themselves. The credential routes above are the
ones whose counts must be shared across workers, and they pay for the round trip.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import ipaddress
import logging
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from shared.core import keys as core_keys
from shared.core import storage
from shared.core.errors import ServiceUnavailable, TooManyRequests
from shared.core.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger("custos.ratelimit")

TABLE = "ratelimits"

Family = Literal["login", "invitation", "reset", "mfa"]
FAMILIES: frozenset[str] = frozenset(get_args(Family))

KeyKind = Literal["email_ip", "ip", "email"]
KEY_KINDS: frozenset[str] = frozenset(get_args(KeyKind))

REMEMBERED_BLOCKS = 50_000
KNOWN_PAIR_TTL_S = 30 * 86_400
"""How long a successful sign-in from an IP exempts that email+IP from the `email` delay."""

MAX_WRITE_ATTEMPTS = 16
"""Read-modify-write attempts per key before a failure is dropped (logged)."""

_MAX_DOUBLINGS = 40  # beyond this every delay is at its cap; keeps 2**n small

# A sign-in must not hang on storage: short timeouts and one retry, then fail open.
_IO: dict[str, Any] = {"retry_total": 1, "connection_timeout": 3, "read_timeout": 5}

_TOO_MANY = "Too many failed attempts. Try again later."


@dataclass(frozen=True)
class Key:
    """One counter: `kind` picks the threshold, `value` is MACed into the RowKey (`RowKeys`)."""

    kind: KeyKind
    value: str

    def __post_init__(self) -> None:
        if self.kind not in KEY_KINDS:
            raise ValueError(f"key kind {self.kind!r} is not one of {sorted(KEY_KINDS)}")


def key_id(secret: bytes) -> str:
    """First 16 hex of SHA-256 of a rate-limit key: names it in RowKeys without revealing it."""
    return hashlib.sha256(secret).hexdigest()[:16]


@dataclass(frozen=True)
class RowKeys:
    """The HMAC-SHA-256 keys that name throttle rows: `current` names the rows written,
    `previous` (retired keys) name rows that are still read until they expire."""

    current: bytes
    previous: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if len(self.current) < 32 or any(len(k) < 32 for k in self.previous):
            raise ValueError("rate-limit keys must be at least 32 bytes")

    def row_key(self, family: str, key: Key, secret: bytes | None = None) -> str:
        """`kind:<key id>:<hex HMAC>` of `key` in `family` under `secret` (default: the current key)."""
        secret = self.current if secret is None else secret
        message = f"{family}\n{key.kind}\n{key.value}".encode()
        return f"{key.kind}:{key_id(secret)}:{hmac.new(secret, message, hashlib.sha256).hexdigest()}"

    def retired_row_keys(self, family: str, key: Key) -> list[str]:
        """The row keys `key` had under each retired key (the current key's own row excluded)."""
        current = key_id(self.current)
        return [self.row_key(family, key, old) for old in self.previous if key_id(old) != current]


def load_row_keys(settings: Settings) -> RowKeys:
    """The rate-limit keys from settings (locally a generated dev key).

    Raises:
        SettingsError: no key in production (settings validation names malformed ones).
    """
    current = base64.b64decode(
        settings.rate_limit_key or core_keys.dev_secret_b64(settings, "ratelimit-hmac", "RATE_LIMIT_KEY")
    )
    previous = tuple(base64.b64decode(part.strip()) for part in settings.rate_limit_previous_keys.split(",")
                     if part.strip())
    try:
        return RowKeys(current=current, previous=previous)
    except ValueError as exc:
        raise SettingsError(f"RATE_LIMIT_KEY: {exc}") from None


@functools.cache
def row_keys() -> RowKeys:
    """This worker's rate-limit keys, loaded on first use."""
    return load_row_keys(get_settings())


@dataclass(frozen=True)
class Crossing:
    """A key whose failures reached its threshold in this call: worth one security event."""

    kind: KeyKind
    failures: int
    delay_s: int


@dataclass(frozen=True)
class Policy:
    """Thresholds and delays of one route family."""

    threshold_email_ip: int
    threshold_ip: int
    threshold_email: int
    window_s: int
    delay_base_s: int
    delay_max_s: int

    def __post_init__(self) -> None:
        if min(self.threshold_email_ip, self.threshold_ip, self.threshold_email) < 1:
            raise ValueError("thresholds must be at least 1")
        if self.window_s < 1 or self.delay_base_s < 1 or self.delay_max_s < 1:
            raise ValueError("window and delays must be at least 1 second")

    @classmethod
    def from_settings(cls, settings: Settings, *, scale: float = 1.0) -> Policy:
        """The login settings, thresholds multiplied by `scale` (at least 1 each)."""
        return cls(
            threshold_email_ip=max(1, round(settings.login_threshold_email_ip * scale)),
            threshold_ip=max(1, round(settings.login_threshold_ip * scale)),
            threshold_email=max(1, round(settings.login_threshold_email * scale)),
            window_s=settings.login_window_s,
            delay_base_s=settings.login_delay_base_s,
            delay_max_s=settings.login_delay_max_s,
        )

    def threshold(self, kind: KeyKind) -> int:
        if kind == "email_ip":
            return self.threshold_email_ip
        if kind == "ip":
            return self.threshold_ip
        return self.threshold_email

    def delay(self, failures: int, threshold: int) -> int:
        """Seconds of delay after `failures` (>= threshold): base, doubling, capped."""
        doublings = min(failures - threshold, _MAX_DOUBLINGS)
        return int(min(self.delay_base_s * 2**doublings, self.delay_max_s))


def default_policies(settings: Settings) -> dict[str, Policy]:
    """Every family uses the login settings; each keeps its own counters."""
    policy = Policy.from_settings(settings)
    return dict.fromkeys(FAMILIES, policy)


def normalize_ip(ip: str) -> str:
    """The address a limit applies to: IPv4 as is, IPv6 as its /64.

    One IPv6 subscriber usually holds a whole /64, so counting single v6 addresses would
    give an attacker 2**64 fresh counters. IPv4-mapped v6 becomes plain v4. An empty or
    unparsable value is kept (lower-cased) so that it still counts, under one shared key.
    """
    raw = ip.strip()
    try:
        addr = ipaddress.ip_address(raw.split("%", 1)[0])
    except ValueError:
        return raw.lower() or "unknown"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def subject_keys(*, subject: str, ip: str, tenant: str) -> list[Key]:
    """The email+IP, IP and email keys of an attempt on `subject` (any stable account id)."""
    net = normalize_ip(ip)
    return [
        Key("email_ip", f"{tenant}\n{subject}\n{net}"),
        Key("ip", net),
        Key("email", f"{tenant}\n{subject}"),
    ]


def login_keys(*, email: str, ip: str, tenant: str) -> list[Key]:
    """The keys of a sign-in attempt; the email is compared trimmed and lower-cased."""
    return subject_keys(subject=email.strip().lower(), ip=ip, tenant=tenant)


@dataclass(frozen=True)
class _State:
    failures: int = 0
    window_start: float = 0.0
    blocked_until: float = 0.0
    level: int = 0
    last_success: float = 0.0
    etag: str | None = None
    stored: bool = True
    """False when the current key has no row yet (the state came from retired rows)."""
    retired: tuple[tuple[str, str | None], ...] = ()
    """Rows under retired keys folded into this state (RowKey, ETag): the next write deletes them."""

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any], etag: str | None) -> _State:
        return cls(
            failures=int(entity.get("failures") or 0),
            window_start=float(entity.get("window_start") or 0.0),
            blocked_until=float(entity.get("blocked_until") or 0.0),
            level=int(entity.get("level") or 0),
            last_success=float(entity.get("last_success") or 0.0),
            etag=etag,
        )

    def entity(self, family: str, row_key: str) -> dict[str, Any]:
        return {
            "PartitionKey": family,
            "RowKey": row_key,
            "failures": self.failures,
            "window_start": float(self.window_start),
            "blocked_until": float(self.blocked_until),
            "level": self.level,
            "last_success": float(self.last_success),
        }

    def forgotten(self, policy: Policy, now: float) -> bool:
        if self.level > 0:
            return now >= self.blocked_until + policy.window_s
        return now >= self.window_start + policy.window_s


def _fold(current: _State | None, retired: Sequence[tuple[str, _State]], policy: Policy, now: float) -> _State | None:
    """One state from a key's current row and its rows under retired keys (rotation).

    Failures of rows still inside their window add up (a retired row's failures were never
    counted under the current key), the earliest window start, the longest delay and level
    and the newest success win. Forgotten rows add nothing but their success marker.
    """
    if not retired:
        return current
    rows = ([current] if current is not None else []) + [s for _, s in retired]
    live = [s for s in rows if not s.forgotten(policy, now)]
    last_success = max(s.last_success for s in rows)
    base = _State(etag=current.etag if current else None, stored=current is not None,
                  retired=tuple((rk, s.etag) for rk, s in retired))
    if not live:
        return dataclasses.replace(base, last_success=last_success)
    return dataclasses.replace(
        base,
        failures=sum(s.failures for s in live),
        window_start=min(s.window_start for s in live),
        blocked_until=max(s.blocked_until for s in live),
        level=max(s.level for s in live),
        last_success=last_success,
    )


def _after_failure(current: _State | None, threshold: int, policy: Policy, now: float) -> tuple[_State, int]:
    """The state after one more failure, and the delay it sets (0 below the threshold)."""
    if current is None or current.forgotten(policy, now):
        last_success = current.last_success if current else 0.0
        current = _State(window_start=now, last_success=last_success)
    failures = current.failures + 1
    if failures < threshold:
        return _State(failures, current.window_start, current.blocked_until, 0, current.last_success), 0
    delay = policy.delay(failures, threshold)
    blocked_until = max(current.blocked_until, now + delay)
    return _State(failures, current.window_start, blocked_until, failures - threshold + 1, current.last_success), delay


def _jitter(attempt: int) -> None:
    # Spreads racing writers apart; not a secret, so the plain PRNG is right.
    time.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))  # noqa: S311  (retry jitter, not a secret)


class Attempt:
    """One attempt reserved by `Throttle.attempt`: it is already counted as a failure.

    Call `succeeded` once the secret checked out; otherwise do nothing and the count stays.
    `crossings` lists the keys whose count reached their threshold with this reservation
    (report them only if the attempt fails: a success gives its reservation back).
    """

    def __init__(self, throttle: Throttle | None, family: str, reserved: Sequence[_Reserved], now: float) -> None:
        self._throttle = throttle
        self._family = family
        self._reserved = list(reserved)
        self._now = now
        self._settled = False
        self.crossings: list[Crossing] = [r.crossing for r in self._reserved if r.crossing is not None]

    def succeeded(self) -> None:
        """Give the reservation back: the email+IP counter restarts (and the pair is remembered
        as known), the IP and email counters lose this attempt's one count. Idempotent; storage
        errors are logged."""
        if self._settled or self._throttle is None:
            return
        self._settled = True
        self._throttle._release(self._family, self._reserved, self._now)


@dataclass(frozen=True)
class _Reserved:
    key: Key
    before: _State | None
    after: _State
    crossing: Crossing | None


def _is_conflict(exc: Exception) -> bool:
    """A lost ETag race or create race (a transaction reports it with the failing op's status)."""
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
    from azure.data.tables import TableTransactionError

    if isinstance(exc, (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError)):
        return True
    return isinstance(exc, TableTransactionError) and exc.status_code in (404, 409, 412)


class Throttle:
    """Failure counters of the credential routes in Table Storage; see the module docstring."""

    def __init__(
        self,
        *,
        table: TableClient | None = None,
        policies: Mapping[str, Policy] | None = None,
        known_pair_ttl_s: float = KNOWN_PAIR_TTL_S,
        keys: RowKeys | None = None,
    ) -> None:
        """`table` defaults to "ratelimits" of `shared.core.storage`, opened on first use;
        `policies` (family -> Policy) default to the login settings for every family;
        `keys` default to the settings' rate-limit keys (`row_keys()`), loaded on first use."""
        self._table_client = table
        self._keys = keys
        self._policies = dict(policies) if policies is not None else default_policies(get_settings())
        self.known_pair_ttl_s = known_pair_ttl_s
        # Per-worker memory of delays already seen: a delay only ever grows until it ends
        # and refused attempts are not counted, so a remembered "blocked until T" stays true
        # and a throttled request is refused without a storage round trip.
        self._blocked: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._blocked_lock = threading.Lock()

    def _table(self) -> TableClient:
        if self._table_client is None:
            self._table_client = storage.table_service().get_table_client(TABLE)
        return self._table_client

    def _row_keys(self) -> RowKeys:
        if self._keys is None:
            self._keys = row_keys()
        return self._keys

    def row_key(self, family: str, key: Key) -> str:
        """The RowKey `key` is counted under in `family` (under the current rate-limit key)."""
        return self._row_keys().row_key(family, key)

    def policy(self, family: str) -> Policy:
        """Raises ValueError for a family without a policy."""
        try:
            return self._policies[family]
        except KeyError:
            raise ValueError(f"rate-limit family {family!r} is not one of {sorted(self._policies)}") from None

    def attempt(self, family: Family, keys: Sequence[Key], *, now: float | None = None) -> Attempt:
        """Reserve one attempt under every key, counted as a failure, before any secret is checked.

        One query reads the keys; if none is delayed, one entity-group transaction raises
        each count, each op conditional on the ETag just read (all keys of a family share a
        partition, so the keys move together or not at all). A lost race reads again, so of
        any number of parallel attempts at most the threshold get through. Run it before
        any password hashing; call `Attempt.succeeded` after a success.

        If storage fails the attempt is let through unreserved and an error is logged
        (fail open). If the rows stay contended for `MAX_WRITE_ATTEMPTS` rounds the attempt
        is refused (fail closed: only a burst of parallel attempts on one key gets there).

        Raises:
            TooManyRequests: a key is delayed (`retry_after_s` is the longest remaining
                delay), or the reservation kept losing races.
            ValueError: `family` is unknown.
        """
        from azure.core import MatchConditions  # the Storage SDK loads on first use (import time)
        from azure.core.exceptions import AzureError
        from azure.data.tables import UpdateMode

        policy = self.policy(family)
        now = time.time() if now is None else now
        keys = list({self.row_key(family, key): key for key in keys}.values())  # one op per entity in a transaction
        remembered = self._remembered_wait(family, keys, now)
        if remembered > 0:
            raise TooManyRequests(max(1, math.ceil(remembered)), _TOO_MANY)
        for round_ in range(MAX_WRITE_ATTEMPTS):
            try:
                table = self._table()
                states = self._read_many(table, family, keys, now=now)
            except (AzureError, ServiceUnavailable) as exc:
                log.error("rate-limit check failed open (family=%s): %s", family, type(exc).__name__)
                return Attempt(None, family, [], now)
            self._refuse_if_delayed(family, states, now)
            planned = [self._plan(family, policy, key, state, now) for key, state in states]
            if not planned:
                return Attempt(self, family, [], now)
            ops: list[Any] = []
            positions: list[int] = []
            for r in planned:
                entity = r.after.entity(family, self.row_key(family, r.key))
                positions.append(len(ops))
                if r.before is None or not r.before.stored:
                    ops.append(("create", entity))
                else:
                    ops.append(("update", entity, {"mode": UpdateMode.REPLACE, "etag": r.before.etag,
                                                   "match_condition": MatchConditions.IfNotModified}))
                for row_key, etag in r.before.retired if r.before is not None else ():
                    # Moved to the current key in the same transaction; the ETag makes a
                    # concurrent mover (or a count written meanwhile under the old key) lose.
                    ops.append(("delete", {"PartitionKey": family, "RowKey": row_key},
                                {"etag": etag, "match_condition": MatchConditions.IfNotModified}))
            try:
                results = table.submit_transaction(ops, **_IO)
            except (AzureError, ServiceUnavailable) as exc:
                if _is_conflict(exc):
                    _jitter(round_)  # another attempt got there first: read again
                    continue
                log.error("rate-limit check failed open (family=%s): %s", family, type(exc).__name__)
                return Attempt(None, family, [], now)
            reserved = [
                _Reserved(r.key, r.before, dataclasses.replace(r.after, etag=(results[i] or {}).get("etag")), r.crossing)
                for r, i in zip(planned, positions, strict=True)
            ]
            return Attempt(self, family, reserved, now)
        log.error("rate-limit reservation refused (family=%s): %d write conflicts", family, MAX_WRITE_ATTEMPTS)
        raise TooManyRequests(1, _TOO_MANY)

    def _refuse_if_delayed(self, family: str, states: Sequence[tuple[Key, _State | None]], now: float) -> None:
        """Raises TooManyRequests while a key is delayed (the email key not for a known email+IP pair)."""
        known_pair = any(
            key.kind == "email_ip" and state is not None and state.last_success > now - self.known_pair_ttl_s
            for key, state in states
        )
        waits = [
            state.blocked_until - now
            for key, state in states
            if state is not None and state.blocked_until > now and not (known_pair and key.kind == "email")
        ]
        for key, state in states:
            if key.kind != "email" and state is not None and state.blocked_until > now:
                self._remember(family, self.row_key(family, key), state.blocked_until)
        if waits:
            raise TooManyRequests(max(1, math.ceil(max(waits))), _TOO_MANY)

    @staticmethod
    def _plan(family: str, policy: Policy, key: Key, state: _State | None, now: float) -> _Reserved:
        threshold = policy.threshold(key.kind)
        after, delay = _after_failure(state, threshold, policy, now)
        crossing = Crossing(kind=key.kind, failures=after.failures, delay_s=delay) if after.failures == threshold else None
        return _Reserved(key, state, after, crossing)

    def _remembered_wait(self, family: str, keys: Sequence[Key], now: float) -> float:
        """The longest remembered delay of the keys that always apply (not the email key,
        which a known email+IP pair may skip)."""
        with self._blocked_lock:
            waits = [self._blocked.get((family, self.row_key(family, k)), 0.0) - now for k in keys if k.kind != "email"]
        return max(waits, default=0.0)

    def _remember(self, family: str, row_key: str, until: float) -> None:
        with self._blocked_lock:
            self._blocked[(family, row_key)] = until
            self._blocked.move_to_end((family, row_key))
            while len(self._blocked) > REMEMBERED_BLOCKS:
                self._blocked.popitem(last=False)

    def _read_many(
        self, table: TableClient, family: str, keys: Sequence[Key], *, now: float | None = None
    ) -> list[tuple[Key, _State | None]]:
        """Every key's state in one query: its current row with its rows under retired keys
        folded in (`_fold`). Row keys are `kind:hex:hex`, safe to put in a filter."""
        now = time.time() if now is None else now
        ring = self._row_keys()
        wanted = {key: (ring.row_key(family, key), ring.retired_row_keys(family, key)) for key in keys}
        all_rows = [rk for current, retired in wanted.values() for rk in (current, *retired)]
        if not all_rows:
            return []
        rows = " or ".join(f"RowKey eq '{row_key}'" for row_key in all_rows)
        found: dict[str, _State] = {}
        for entity in table.query_entities(f"PartitionKey eq '{family}' and ({rows})", **_IO):
            found[entity["RowKey"]] = _State.from_entity(entity, entity.metadata.get("etag"))
        policy = self._policies.get(family)
        result: list[tuple[Key, _State | None]] = []
        for key, (current, retired) in wanted.items():
            old = [(rk, found[rk]) for rk in retired if rk in found]
            if old and policy is None:
                raise ValueError(f"rate-limit family {family!r} has no policy")
            result.append((key, _fold(found.get(current), old, policy, now) if old and policy else found.get(current)))
        return result

    def purge_expired(self, *, now: float | None = None, limit: int = 10_000) -> int:
        """Delete rows that every reader would treat as empty: forgotten under their family's
        policy, no delay running and no known-pair marker still in force. At most `limit`
        rows per call; returns how many were deleted.

        Each delete is conditional on the ETag just read, so a row counted again meanwhile
        stays. Rows under retired keys and of the old SHA-256 naming are deleted by the same
        rule once they have expired; rows of a family without a policy are left alone.

        Raises:
            ServiceUnavailable: Table Storage did not answer.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError

        now = time.time() if now is None else now
        table, purged = self._table(), 0
        try:
            for family, policy in sorted(self._policies.items()):
                # The server filter only narrows the scan (it is stricter than `forgotten` for
                # rows that never crossed a threshold); the check below decides.
                cutoff = float(now - policy.window_s)
                rows = table.query_entities(
                    "PartitionKey eq @p and window_start lt @w and blocked_until lt @w and last_success lt @s",
                    parameters={"p": family, "w": cutoff, "s": float(now - self.known_pair_ttl_s)},
                    results_per_page=1000, **_IO,
                )
                for entity in rows:
                    if purged >= limit:
                        return purged
                    state = _State.from_entity(entity, entity.metadata.get("etag"))
                    if (not state.forgotten(policy, now) or state.blocked_until > now
                            or state.last_success > now - self.known_pair_ttl_s):
                        continue
                    try:
                        # A one-op transaction: delete_entity would hide a 404 and count it.
                        table.submit_transaction(
                            [("delete", {"PartitionKey": family, "RowKey": entity["RowKey"]},
                              {"etag": state.etag, "match_condition": MatchConditions.IfNotModified})], **_IO)
                    except AzureError as exc:
                        if _is_conflict(exc):
                            continue  # counted again, or deleted, since the read: not expired any more
                        raise
                    purged += 1
        except AzureError as exc:
            raise ServiceUnavailable("storage is unavailable", component="storage") from exc
        return purged

    def _release(self, family: str, reserved: Sequence[_Reserved], now: float) -> None:
        """`Attempt.succeeded`: restart the email+IP rows, take this attempt's count off the others."""
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError
        from azure.data.tables import UpdateMode

        pending = list(reserved)
        current = {self.row_key(family, r.key): r.after for r in pending}
        for round_ in range(MAX_WRITE_ATTEMPTS):
            ops: list[Any] = []
            for r in pending:
                row_key = self.row_key(family, r.key)
                if r.key.kind == "email_ip":
                    fresh = _State(window_start=now, last_success=now).entity(family, row_key)
                    ops.append(("upsert", fresh, {"mode": UpdateMode.REPLACE}))
                    continue
                state = current.get(row_key)
                if state is None or not state.stored or state.failures < 1:
                    continue
                ops.append(("update", _given_back(state, r).entity(family, row_key),
                            {"mode": UpdateMode.REPLACE, "etag": state.etag,
                             "match_condition": MatchConditions.IfNotModified}))
            if not ops:
                return
            try:
                self._table().submit_transaction(ops, **_IO)
                return
            except (AzureError, ServiceUnavailable) as exc:
                if not _is_conflict(exc):
                    log.error("rate-limit success not recorded (family=%s): %s", family, type(exc).__name__)
                    return
            _jitter(round_)
            try:
                fresh_states = self._read_many(self._table(), family, [r.key for r in pending], now=now)
            except (AzureError, ServiceUnavailable) as exc:
                log.error("rate-limit success not recorded (family=%s): %s", family, type(exc).__name__)
                return
            current = {self.row_key(family, key): state for key, state in fresh_states if state is not None}
        log.error("rate-limit success not recorded (family=%s): %d write conflicts", family, MAX_WRITE_ATTEMPTS)


def _given_back(state: _State, reserved: _Reserved) -> _State:
    """`state` minus the one count `reserved` added; a delay that count started is undone too."""
    prior_until = reserved.before.blocked_until if reserved.before else 0.0
    prior_level = reserved.before.level if reserved.before else 0
    blocked_until, level = state.blocked_until, state.level
    if reserved.after.blocked_until != prior_until and state.blocked_until == reserved.after.blocked_until:
        blocked_until, level = prior_until, prior_level
    return dataclasses.replace(state, failures=state.failures - 1, blocked_until=blocked_until, level=level)


@functools.cache
def throttle() -> Throttle:
    """This worker's `Throttle`, created on first use."""
    return Throttle()


class ApiRateLimiter:
    """Per-IP token buckets in this worker's memory; see the module docstring for why.

    Each IP (IPv6 per /64) may burst `rate_per_minute` requests and then gets
    `rate_per_minute / 60` per second. At most `max_ips` buckets are kept; the least
    recently used are dropped first (a dropped IP starts again with a full bucket).
    Thread-safe. `now` is a monotonic clock reading (`time.monotonic()` by default).
    """

    def __init__(self, *, rate_per_minute: int | None = None, max_ips: int = 100_000) -> None:
        rate = get_settings().api_rate_per_minute if rate_per_minute is None else rate_per_minute
        if rate < 1 or max_ips < 1:
            raise ValueError("rate_per_minute and max_ips must be at least 1")
        self.capacity = float(rate)
        self.per_second = rate / 60.0
        self.max_ips = max_ips
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, ip: str, *, now: float | None = None) -> None:
        """Spend one token of `ip`'s bucket.

        Raises:
            TooManyRequests: the bucket is empty; `retry_after_s` is when the next token arrives.
        """
        now = time.monotonic() if now is None else now
        key = normalize_ip(ip)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                tokens = self.capacity
            else:
                tokens, updated = bucket
                tokens = min(self.capacity, tokens + max(0.0, now - updated) * self.per_second)
                self._buckets.move_to_end(key)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise TooManyRequests(max(1, math.ceil((1.0 - tokens) / self.per_second)), "Too many requests.")
            self._buckets[key] = (tokens - 1.0, now)
            while len(self._buckets) > self.max_ips:
                self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


@functools.cache
def api_limiter() -> ApiRateLimiter:
    """This worker's `ApiRateLimiter`, created on first use."""
    return ApiRateLimiter()
