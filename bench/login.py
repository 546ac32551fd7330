"""What a login costs beyond its Argon2 verify, and what a throttled login costs.

`python -m bench.login [--n 30] [--throttled 200]`

Setup: a fresh tenant and an active OPERATOR user (a role without a second factor, so a
login opens a session) whose password is set with `shared.identity.passwords.hash_password`. Every
request comes from this run's own random loopback address (127.x.y.z), so the login
throttle's per-IP counters of other runs and of the tests are not touched.

Part 1, login against Argon2: the baseline is `argon2.PasswordHasher().verify` of the very
hash stored for the user, in this process (`shared.identity.passwords.verify_password` of it beside
it). After two warm-up logins, `--n` rounds each run one bare verify, one
`verify_password` and one `POST /api/auth/login` through one keep-alive client to a devhost
serving `function_app:app`, interleaved so drift hits them alike. For the login: the
client-observed latency, and the server's own duration (`duration_ms` of the wrapper's
access-log line with the answer's `X-Request-Id`). Aim: login p50 under 1.2 x the Argon2
p50 (judged on the client-observed p50; the server ratio is shown beside it).

Part 2, throttled logins: wrong passwords from the same address until the answer is 429
(the email+IP key crosses its threshold), then `--throttled` more logins that get 429.
Aim: server time p50 under 2 ms. A throttled login does no Argon2 work; what is left is the
wrapper and `shared.identity.ratelimit.throttle().attempt`, which reads the three keys in one query and
refuses without writing. The same `attempt` on the blocked keys, called in this process, is the lower bound row.
`LOGIN_DELAY_BASE_S` is set to 60 for this run so that one delay covers the whole phase.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.runner import (
    Table,
    access_log,
    devhost,
    http_client,
    loopback_address,
    machine,
    migrate,
    percentile,
    setup_env,
)

PASSWORD = "Bench-Harbour-Lantern-" + secrets.token_hex(4)  # new each run, as in tests/identity/test_signin.py
WRONG = "not the password at all, sorry"
LOGIN_AIM = 1.2
THROTTLED_AIM_MS = 2.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.login", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="Argon2 verifies and logins measured (default 30)")
    parser.add_argument("--throttled", type=int, default=200, help="throttled (429) logins measured (default 200)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="cap per measured phase (default 120)")
    return parser.parse_args(argv)


@dataclass
class Account:
    tenant_id: str
    slug: str
    email: str
    password_hash: str


@dataclass
class Timed:
    """Latencies (seconds) of one measurement; `request_ids` to look up server times."""

    latencies: list[float] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    unexpected: int = 0
    first_unexpected: str | None = None

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def make_account() -> Account:
    """A fresh tenant and an active OPERATOR user with a password (as tests/identity/test_signin.py does)."""
    from shared.core import db
    from shared.identity.passwords import hash_password
    from shared.tenancy.tenants import create_tenant
    from tests.conftest import create_user

    slug = f"bench-login-{uuid.uuid4().hex[:10]}"
    with db.platform_tx() as conn:
        tenant = create_tenant(conn, slug=slug, name="Bench Login", region="uksouth")
    row = create_user(tenant.id, "OPERATOR", name="Bench Login User")
    hashed = hash_password(PASSWORD)
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update users set password_hash = %s where id = %s", (hashed, row["id"]))
    return Account(tenant.id, slug, row["email"], hashed)


def time_each(fn: Callable[[], Any], n: int, max_seconds: float) -> list[float]:
    """Seconds per call of `fn`, `n` calls back to back (fewer if `max_seconds` run out)."""
    out: list[float] = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return out


def login_vs_argon2(client: Any, account: Account, body: dict[str, Any], n: int, max_seconds: float) -> dict[str, Timed]:
    """`n` rounds of: bare `argon2.PasswordHasher().verify` of the stored hash, then
    `shared.identity.passwords.verify_password` of it, both in this process, then one login through
    the host. Interleaved, so drift (other work on the machine) hits all three alike."""
    import argon2

    from shared.identity.passwords import verify_password

    hasher = argon2.PasswordHasher()
    out = {"argon2": Timed(), "shared": Timed(), "login": Timed()}
    clock = time.perf_counter
    deadline = clock() + max_seconds
    for _ in range(n):
        t0 = clock()
        hasher.verify(account.password_hash, PASSWORD)  # raises on a mismatch
        t1 = clock()
        ok = verify_password(account.password_hash, PASSWORD).ok
        t2 = clock()
        if not ok:
            raise SystemExit("shared.identity.passwords.verify_password refused the stored hash")
        out["argon2"].latencies.append(t1 - t0)
        out["shared"].latencies.append(t2 - t1)
        login = send_logins(client, body, 1, 200, max_seconds)
        out["login"].latencies += login.latencies
        out["login"].request_ids += login.request_ids
        out["login"].unexpected += login.unexpected
        out["login"].first_unexpected = out["login"].first_unexpected or login.first_unexpected
        if clock() > deadline:
            break
    return out


def send_logins(client: Any, body: dict[str, Any], n: int, expect: int, max_seconds: float) -> Timed:
    """`n` sequential logins; answers other than `expect` are counted, not timed."""
    timed = Timed()
    deadline = time.perf_counter() + max_seconds
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.post("/api/auth/login", json=body)
        elapsed = time.perf_counter() - t0
        if response.status_code == expect:
            timed.latencies.append(elapsed)
            timed.request_ids.append(response.headers.get("X-Request-Id", ""))
        else:
            timed.unexpected += 1
            if timed.first_unexpected is None:
                timed.first_unexpected = f"{response.status_code}: {response.text[:200]}"
        if time.perf_counter() > deadline:
            break
    return timed


def fail_until_throttled(client: Any, body: dict[str, Any], limit: int = 100) -> int:
    """Wrong-password logins until one is answered 429; returns the failures it took."""
    for sent in range(limit):
        response = client.post("/api/auth/login", json=body)
        if response.status_code == 429:
            return sent
        if response.status_code != 401:
            raise SystemExit(f"a wrong-password login answered {response.status_code}: {response.text[:200]}")
    raise SystemExit(f"no 429 after {limit} failed logins")


def server_ms(host: Any, timed: Timed) -> list[float]:
    """The access log's `duration_ms` of each request (milliseconds)."""
    entries = access_log(host, timed.request_ids)
    missing = [r for r in timed.request_ids if r not in entries]
    if missing:
        raise SystemExit(f"{len(missing)} request ids not found in the devhost's access log, e.g. {missing[0]!r}")
    return [float(entries[r]["duration_ms"]) for r in timed.request_ids]


def check_in_process(account: Account, ip: str, n: int, max_seconds: float) -> list[float]:
    """`throttle().attempt("login", keys)` on the blocked keys, in this process (must raise 429)."""
    from shared.core.errors import TooManyRequests
    from shared.identity import ratelimit

    keys = ratelimit.login_keys(email=account.email, ip=ip, tenant=account.slug)

    def check() -> None:
        try:
            ratelimit.throttle().attempt("login", keys)
        except TooManyRequests:
            return
        raise SystemExit("throttle().attempt let a blocked key through in process")

    check()  # opens the table client
    return time_each(check, n, max_seconds)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n, m = max(1, args.n), max(1, args.throttled)
    # One delay (base 60 s) outlasts the throttled phase; the thresholds stay the defaults.
    setup_env({"LOGIN_DELAY_BASE_S": "60"})
    migrate()
    account = make_account()
    ip = loopback_address()
    print(f"## Login ({machine()})\n", flush=True)

    good = {"tenant": account.slug, "email": account.email, "password": PASSWORD}
    bad = {**good, "password": WRONG}
    with devhost("function_app:app", ready_path="/api/health") as host, \
            http_client(host.url, headers={"User-Agent": "custos-bench/1"}, local_address=ip) as client:
        warm = send_logins(client, good, 2, 200, args.max_seconds)
        if warm.unexpected:
            raise SystemExit(f"warm-up login failed: {warm.first_unexpected}")
        measured = login_vs_argon2(client, account, good, n, args.max_seconds)
        logins = measured["login"]
        login_server = server_ms(host, logins)

        failures = fail_until_throttled(client, bad)
        throttled = send_logins(client, bad, m, 429, args.max_seconds)
        throttled_server = server_ms(host, throttled)
    check_s = check_in_process(account, ip, min(m, 200), args.max_seconds)

    argon2_s, shared_s = measured["argon2"].latencies, measured["shared"].latencies
    base = percentile(argon2_s, 50) * 1000
    client_ratio = logins.p(50) / base
    server_ratio = percentile(login_server, 50) / base
    table = Table(["measurement", "n", "p50 ms", "p99 ms", "p50 x argon2"],
                  title=f"Login vs bare Argon2 verify of the same hash (interleaved, one client, from {ip})")
    table.add("argon2 PasswordHasher().verify, in process (baseline)", len(argon2_s), base, percentile(argon2_s, 99) * 1000, 1.0)
    table.add("shared.identity.passwords.verify_password, in process", len(shared_s), percentile(shared_s, 50) * 1000,
              percentile(shared_s, 99) * 1000, percentile(shared_s, 50) * 1000 / base)
    table.add("POST /api/auth/login, client-observed", len(logins.latencies), logins.p(50), logins.p(99), client_ratio)
    table.add("POST /api/auth/login, server (access log duration_ms)", len(login_server), percentile(login_server, 50),
              percentile(login_server, 99), server_ratio)
    table.print()
    print(f"aim: login p50 < {LOGIN_AIM} x argon2 p50 (client-observed): {client_ratio:.2f} x -> {verdict(client_ratio < LOGIN_AIM)}"
          f" (server side: {server_ratio:.2f} x -> {verdict(server_ratio < LOGIN_AIM)})\n", flush=True)

    t50 = percentile(throttled_server, 50)
    table2 = Table(["measurement", "n", "p50 ms", "p99 ms"],
                   title=f"Throttled login (429, no Argon2): {failures} wrong passwords from {ip}, then {m} more")
    table2.add("429 login, server (access log duration_ms)", len(throttled_server), t50, percentile(throttled_server, 99))
    table2.add("429 login, client-observed", len(throttled.latencies), throttled.p(50), throttled.p(99))
    table2.add("throttle().attempt on the blocked keys, in process (lower bound)", len(check_s),
               percentile(check_s, 50) * 1000, percentile(check_s, 99) * 1000)
    table2.print()
    print(f"aim: throttled login server time p50 < {THROTTLED_AIM_MS:g} ms: {t50:.2f} ms -> {verdict(t50 < THROTTLED_AIM_MS)}\n",
          flush=True)

    problems = [f"{name}: {t.unexpected} unexpected answers, first {t.first_unexpected}"
                for name, t in (("login", logins), ("throttled", throttled)) if t.unexpected]
    if problems:
        print("errors: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
