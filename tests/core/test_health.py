"""Health with a dependency down: a bounded answer, a 503 problem naming the failed part."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Host, free_port


def _storage_at(port: int) -> str:
    """The test storage connection string with every endpoint moved to `port` on loopback."""
    import os

    return re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", os.environ["STORAGE_CONNECTION_STRING"])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose connections complete (the kernel's backlog) but never get an answer."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def _health_with_storage_at(port: int) -> httpx.Response:
    h = Host({"STORAGE_CONNECTION_STRING": _storage_at(port)})
    try:
        # A generous client timeout: the test checks the answer, the bench measures the time.
        with httpx.Client(base_url=h.url, timeout=120) as c:
            started = time.monotonic()
            resp = c.get("/api/health")
            print(f"health answered {resp.status_code} in {time.monotonic() - started:.2f} s")
            return resp
    finally:
        h.stop()


def _assert_storage_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    problem = resp.json()
    assert problem["type"] == "urn:custos:problem:unavailable"
    assert problem["components"] == {"database": "ok", "storage": "unavailable"}
    assert problem["ok"] is False
    assert "storage" in problem["detail"] and "Traceback" not in resp.text


def test_health_is_a_503_problem_when_storage_refuses_connections() -> None:
    _assert_storage_unavailable(_health_with_storage_at(free_port()))


def test_health_is_a_503_problem_when_storage_accepts_and_never_answers(silent_port: int) -> None:
    _assert_storage_unavailable(_health_with_storage_at(silent_port))


def test_health_is_ok_when_every_dependency_answers(client: httpx.Client) -> None:
    resp = client.get("/api/health")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"ok": True, "components": {"database": "ok", "storage": "ok"}}
