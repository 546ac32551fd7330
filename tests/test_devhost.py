"""devhost: routing rules, NCRONTAB schedules, and a real devhost subprocess over HTTP.

The HTTP tests start ``python -m devhost`` on tests/devhost_fixture_app.py (not the
Custos app) and talk to it with httpx, so uvicorn, Starlette and the CLI are all real.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import azure.functions as func
import httpx
import pytest

from devhost import create_asgi_app
from devhost.__main__ import load_local_settings, read_route_prefix
from devhost.routing import decode_path, join_route, parse_template, sort_by_precedence
from devhost.timers import DevTimerRequest, next_fire, resolve_schedule, run_timer_loop

ROOT = Path(__file__).resolve().parent.parent
GUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"

# ---------------------------------------------------------------------------
# routing.py


def test_parse_template_segments_and_params() -> None:
    template = parse_template("/api/items/{id:guid}/{*rest}")
    assert template.param_names == ["id", "rest"]
    assert template.precedence == (1, 1, 2, 5)
    param = parse_template("api/{n:int:min(1)}").segments[1].param
    assert param is not None and param.constraints == ("int", "min(1)")
    assert parse_template("").match("/") == {}


@pytest.mark.parametrize(
    "bad",
    ["api/{id", "api/{*rest}/x", "api/{a}/{a}", "api/{id:nope}", "api/{x?}/y", "a//b"],
)
def test_parse_template_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_template(bad)


def test_literals_case_insensitive_and_trailing_slash() -> None:
    template = parse_template("api/items/export")
    assert template.match("/API/Items/EXPORT") == {}
    assert template.match("/api/items/export/") == {}
    assert template.match("/api/items/export/x") is None
    assert template.match("/api/items") is None


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("a/{id:guid}", f"/a/{GUID}", {"id": GUID}),
        ("a/{id:guid}", f"/a/{GUID.replace('-', '')}", {"id": GUID.replace("-", "")}),
        ("a/{id:guid}", "/a/not-a-guid", None),
        ("a/{n:int}", "/a/-42", {"n": "-42"}),
        ("a/{n:int}", "/a/2147483648", None),
        ("a/{n:long}", "/a/2147483648", {"n": "2147483648"}),
        ("a/{n:alpha}", "/a/abcXYZ", {"n": "abcXYZ"}),
        ("a/{n:alpha}", "/a/abc1", None),
        ("a/{x:bool}", "/a/TRUE", {"x": "TRUE"}),
        ("a/{x:bool}", "/a/yes", None),
        ("a/{x:double}", "/a/1.5e3", {"x": "1.5e3"}),
        ("a/{x:double}", "/a/nan", None),
        ("a/{n:int:range(1,5)}", "/a/6", None),
        ("a/{s:minlength(3)}", "/a/ab", None),
        ("a/{s:regex(^[a-z]{{2}}$)}", "/a/Ok", {"s": "Ok"}),
        ("a/{*rest}", "/a/b/c/d.txt", {"rest": "b/c/d.txt"}),
        ("a/{*rest}", "/a", {"rest": ""}),
        ("a/{page?}", "/a", {}),
        ("a/{page?}", "/a/2", {"page": "2"}),
        ("a/{page=1}", "/a", {"page": "1"}),
        ("{name}.{ext?}", "/a.b.c", {"name": "a.b", "ext": "c"}),
        ("{name}.{ext?}", "/readme", {"name": "readme"}),
    ],
)
def test_template_match(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert parse_template(template).match(path) == expected


def test_precedence_literal_then_constrained_then_plain_then_catch_all() -> None:
    texts = ["{*path}", "api/records/{*rest}", "api/records/{id}", "api/records/{id:int}", "api/records/export"]
    ordered = sort_by_precedence([parse_template(t) for t in texts], key=lambda t: t)
    assert [t.text for t in ordered] == [
        "api/records/export",
        "api/records/{id:int}",
        "api/records/{id}",
        "api/records/{*rest}",
        "{*path}",
    ]


def test_join_route_and_decode_path() -> None:
    assert join_route("api", "items/{id}") == "api/items/{id}"
    assert join_route("", "/api/items") == "api/items"
    assert join_route("api", "") == "api"
    assert decode_path("/a%20b/c%2Fd/%E2%82%AC") == "/a b/c%2Fd/\u20ac"


# ---------------------------------------------------------------------------
# timers.py and settings


def test_next_fire_ncrontab_seconds_first() -> None:
    start = datetime(2024, 3, 1, 10, 2, 7, tzinfo=UTC)
    assert next_fire("0 */5 * * * *", start) == datetime(2024, 3, 1, 10, 5, 0, tzinfo=UTC)
    assert next_fire("30 * * * * *", start) == datetime(2024, 3, 1, 10, 2, 30, tzinfo=UTC)
    assert next_fire("*/10 * * * * *", start) == datetime(2024, 3, 1, 10, 2, 10, tzinfo=UTC)
    assert next_fire("0 0 0 1 1 *", start) == datetime(2025, 1, 1, tzinfo=UTC)
    # Five fields (no seconds) are accepted, as by the host.
    assert next_fire("*/5 * * * *", start) == datetime(2024, 3, 1, 10, 5, tzinfo=UTC)
    # Strictly after: a fire time is not returned for itself.
    assert next_fire("0 */5 * * * *", datetime(2024, 3, 1, 10, 5, tzinfo=UTC)).minute == 10


@pytest.mark.parametrize("bad", ["* * * *", "61 * * * * *", "0 0 0 1 1 * 2024 x", "every minute"])
def test_next_fire_rejects_bad_schedules(bad: str) -> None:
    with pytest.raises(ValueError):
        next_fire(bad, datetime(2024, 1, 1, tzinfo=UTC))


def test_resolve_schedule_from_setting() -> None:
    assert resolve_schedule("%HEARTBEAT%", {"HEARTBEAT": "0 */5 * * * *"}) == "0 */5 * * * *"
    assert resolve_schedule("0 0 * * * *", {}) == "0 0 * * * *"
    with pytest.raises(ValueError, match="MISSING"):
        resolve_schedule("%MISSING%", {})


def test_timer_loop_survives_failures() -> None:
    calls: list[bool] = []

    async def run(request: DevTimerRequest) -> None:
        calls.append(request.past_due)
        if len(calls) == 1:
            raise RuntimeError("first run fails")

    async def scenario() -> None:
        task = asyncio.create_task(run_timer_loop("t", "* * * * * *", run, run_on_startup=True))
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert len(calls) >= 2  # the startup run raised; the scheduled one still happened


def test_load_local_settings(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": {"A": "from-file", "B": "from-file", "C": True}, "Host": {}}))
    env = {"A": "from-env"}
    settings = load_local_settings(path, env)
    assert env == {"A": "from-env", "B": "from-file", "C": "true"}
    assert settings["Host"] == {}
    assert load_local_settings(tmp_path / "absent.json", env) == {}


def test_read_route_prefix(tmp_path: Path) -> None:
    assert read_route_prefix(tmp_path / "absent.json") == "api"
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"version": "2.0"}))
    assert read_route_prefix(host_json) == "api"
    host_json.write_text(json.dumps({"extensions": {"http": {"routePrefix": ""}}}))
    assert read_route_prefix(host_json) == ""


# ---------------------------------------------------------------------------
# In-process ASGI app (lifespan and peer checks that a loopback client cannot show)


def _startup_app(marker: list[str]) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="tick", run_on_startup=True)
    def on_start(tick: func.TimerRequest) -> None:
        marker.append(f"past_due={tick.past_due}")

    @app.route(route="api/ping", methods=["GET"])
    def ping(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("pong")

    return app


async def _call(
    app: func.FunctionApp,
    method: str,
    path: str,
    *,
    enable_timers: bool = False,
    peer: tuple[str, int] = ("127.0.0.1", 5000),
    wait_for: list[str] | None = None,
) -> httpx.Response:
    """One request to an in-process devhost app, inside its lifespan."""
    asgi = create_asgi_app(app, enable_timers=enable_timers)
    async with asgi.router.lifespan_context(asgi):
        deadline = time.monotonic() + 5
        while wait_for is not None and not wait_for and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        transport = httpx.ASGITransport(app=asgi, client=peer)
        async with httpx.AsyncClient(transport=transport, base_url="http://devhost") as client:
            return await client.request(method, path)


def test_run_on_startup_timer_and_disable_switch() -> None:
    marker: list[str] = []
    response = asyncio.run(_call(_startup_app(marker), "GET", "/api/ping", enable_timers=True, wait_for=marker))
    assert response.text == "pong"
    assert marker == ["past_due=False"]

    marker.clear()
    response = asyncio.run(_call(_startup_app(marker), "GET", "/api/ping", enable_timers=False))
    assert response.text == "pong"
    assert marker == []


def test_admin_rejects_non_loopback_peer() -> None:
    marker: list[str] = []
    # A fresh FunctionApp each time: azure-functions' get_functions() works once per app.
    response = asyncio.run(_call(_startup_app(marker), "POST", "/admin/functions/on_start", peer=("203.0.113.7", 5000)))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    response = asyncio.run(_call(_startup_app(marker), "POST", "/admin/functions/ON_START", peer=("::1", 5000)))
    assert response.status_code == 202
    assert marker == ["past_due=False"]


# ---------------------------------------------------------------------------
# A real devhost subprocess


@dataclass
class Server:
    url: str
    timer_file: Path
    log_file: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("devhost")
    port = _free_port()
    settings = tmp / "local.settings.json"
    # The failing timer's "%DEVHOST_TEST_SCHEDULE%" comes from the settings file.
    settings.write_text(json.dumps({"Values": {"DEVHOST_TEST_SCHEDULE": "0 0 0 1 1 *"}}))
    env = {
        **os.environ,
        "DEVHOST_DISABLE_TIMERS": "1",
        "DEVHOST_TEST_TIMER_FILE": str(tmp / "timer.txt"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DEVHOST_TEST_SCHEDULE", None)
    log_file = tmp / "devhost.log"
    command = [
        sys.executable,
        "-m",
        "devhost",
        "--app",
        "tests.devhost_fixture_app:app",
        "--port",
        str(port),
        "--settings",
        str(settings),
        "--route-prefix",
        "",
    ]
    with log_file.open("wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"devhost exited:\n{log_file.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"devhost did not start:\n{log_file.read_text(errors='replace')}")
                time.sleep(0.05)
        yield Server(f"http://127.0.0.1:{port}", tmp / "timer.txt", log_file)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"]
    return dict(body)


def test_startup_log_lists_functions(server: Server, client: httpx.Client) -> None:
    line = next(ln for ln in server.log_file.read_text().splitlines() if "Functions (" in ln)
    assert "get_item: [GET] /api/items/{id:guid}" in line
    assert "yearly: timerTrigger '0 0 0 1 1 *' (timers disabled)" in line
    assert "failing_timer: timerTrigger '%DEVHOST_TEST_SCHEDULE%' = '0 0 0 1 1 *'" in line


def test_guid_constraint(client: httpx.Client) -> None:
    response = client.get(f"/api/items/{GUID}")
    assert response.status_code == 200
    assert response.json() == {"fn": "get_item", "route": {"id": GUID}}
    _problem(client.get("/api/items/not-a-guid"), 404)


def test_int_constraint(client: httpx.Client) -> None:
    assert client.get("/api/items/12/count").json() == {"fn": "count_items", "route": {"n": "12"}}
    _problem(client.get("/api/items/twelve/count"), 404)


def test_literal_beats_parameter(client: httpx.Client) -> None:
    assert client.get("/api/records/export").json()["fn"] == "export_records"
    assert client.get("/API/Records/EXPORT").json()["fn"] == "export_records"
    assert client.get("/api/records/r-1").json() == {"fn": "get_record", "route": {"id": "r-1"}}


def test_catch_all_with_slashes(client: httpx.Client) -> None:
    assert client.get("/api/files/a/b/c.txt").json()["route"] == {"rest": "a/b/c.txt"}
    assert client.get("/api/files/a%20b/c").json()["route"] == {"rest": "a b/c"}
    assert client.get("/api/files").json()["route"] == {"rest": ""}


def test_optional_parameter(client: httpx.Client) -> None:
    assert client.get("/api/opt").json()["route"] == {}
    assert client.get("/api/opt/3").json()["route"] == {"page": "3"}


def test_unknown_path_is_404_problem(client: httpx.Client) -> None:
    _problem(client.get("/no/such/route"), 404)


def test_wrong_method_is_405_with_allow(client: httpx.Client) -> None:
    response = client.delete("/api/records/export")
    _problem(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"GET", "OPTIONS"}


def test_options_reaches_catch_all_despite_specific_route(client: httpx.Client) -> None:
    response = client.options(f"/api/items/{GUID}")
    assert response.status_code == 204
    assert response.headers["x-preflight-path"] == f"api/items/{GUID}"
    assert response.headers["access-control-allow-origin"] == "*"


def test_binary_body_query_and_headers(client: httpx.Client) -> None:
    body = bytes(range(256)) * 4
    response = client.post(
        "/api/echo?a=1&a=2&b=%20x",
        content=body,
        headers={"Content-Type": "application/x-custom", "X-Test": "hello"},
    )
    assert response.status_code == 200
    assert response.content == body
    assert response.headers["content-type"] == "application/x-custom"
    assert json.loads(response.headers["x-echo-query"]) == {"a": "1,2", "b": " x"}
    assert response.headers["x-echo-header"] == "hello"
    assert response.headers["x-echo-method"] == "POST"
    assert response.headers["x-echo-url"].endswith("/api/echo?a=1&a=2&b=%20x")


def test_x_forwarded_for_gets_peer_appended(client: httpx.Client) -> None:
    plain = client.post("/api/echo", content=b"")
    assert plain.headers["x-echo-forwarded-for"] == "127.0.0.1"
    forwarded = client.post("/api/echo", content=b"", headers={"X-Forwarded-For": "203.0.113.9"})
    assert forwarded.headers["x-echo-forwarded-for"] == "203.0.113.9, 127.0.0.1"


def test_async_function_and_default_content_type(client: httpx.Client) -> None:
    response = client.get("/api/async")
    assert response.text == "async ok"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_repeated_response_headers_kept(client: httpx.Client) -> None:
    response = client.get("/api/cookies")
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_function_exception_is_bare_500(client: httpx.Client) -> None:
    response = client.get("/api/boom")
    body = _problem(response, 500)
    assert "secret" not in response.text and "detail" not in body


def test_admin_runs_timer(server: Server, client: httpx.Client) -> None:
    response = client.post("/admin/functions/Yearly", json={"input": ""})
    assert response.status_code == 202
    assert response.content == b""
    assert server.timer_file.read_text() == "ran past_due=False\n"


def test_admin_failing_timer_is_500(client: httpx.Client) -> None:
    _problem(client.post("/admin/functions/failing_timer"), 500)


def test_admin_unknown_or_http_function_is_404(client: httpx.Client) -> None:
    _problem(client.post("/admin/functions/nope"), 404)
    _problem(client.post("/admin/functions/get_item"), 404)
    _problem(client.get("/admin/functions/yearly"), 405)
