"""devhost: routing rules, NCRONTAB schedules, and a real devhost subprocess over HTTP.

The HTTP tests start ``python -m devhost`` on tests/devhost_fixture_app.py (not the
Custos app) and talk to it with httpx, so uvicorn, Starlette and the CLI are all real.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import azure.functions as func
import httpx
import pytest

from devhost import create_asgi_app
from devhost.__main__ import load_local_settings, read_route_prefix
from devhost.queues import QueueOptions, decode_body, read_options
from devhost.routing import decode_path, join_route, parse_template
from devhost.server import MethodNotAllowed, Routes, collect_functions, route_request
from devhost.timers import DevTimerRequest, next_fire, resolve_schedule, run_timer_loop
from shared.core.errors import NotFound

ROOT = Path(__file__).resolve().parent.parent
GUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"

# ---------------------------------------------------------------------------
# routing.py and route_request


def test_parse_template_compiles_the_forms_the_app_uses() -> None:
    template = parse_template("api/items/{id}/{n:int}/{*rest}")
    assert template.precedence == (1, 1, 3, 2, 5)
    assert template.match("/API/Items/AbC/7/x/y.txt") == {"id": "AbC", "n": "7", "rest": "x/y.txt"}
    assert parse_template("").match("/") == {}
    assert parse_template("{*path}").match("/") == {"path": ""}


@pytest.mark.parametrize(
    "bad",
    [
        "api/{id",
        "api/{*rest}/x",
        "api/{a}/{a}",
        "api/{id:guid}",
        "api/{n:int:min(1)}",
        "api/{x?}",
        "api/{x=1}",
        "{name}.{ext}",
        "a//b",
        "api/{*rest:int}",
        "api/{sha-256}",
        "api/x}",
    ],
)
def test_parse_template_refuses_forms_devhost_does_not_serve(bad: str) -> None:
    with pytest.raises(ValueError, match="route|Duplicated"):
        parse_template(bad)


def test_a_function_with_an_unserved_template_stops_start_up_naming_it() -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="api/items/{id:guid}", methods=["GET"])
    def by_guid(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("never")

    with pytest.raises(ValueError, match=r"function 'by_guid'.*\{id:guid\}"):
        create_asgi_app(app)


def test_a_function_wanting_more_than_its_trigger_stops_start_up_naming_it() -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="tick")
    def with_context(tick: func.TimerRequest, context: func.Context) -> None:
        pass

    with pytest.raises(ValueError, match=r"function 'with_context'.*'context'"):
        create_asgi_app(app)


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("a/{n:int}", "/a/42", {"n": "42"}),
        ("a/{n:int}", "/a/007", {"n": "007"}),
        ("a/{n:int}", "/a/-42", None),
        ("a/{n:int}", "/a/4x", None),
        ("a/{id}", "/a/b/c", None),
        ("a/{id}", "/a/", None),
        ("a/{id}", "/a/b%2Fc", {"id": "b%2Fc"}),
        ("a/{id}", "/a/line\nbreak", {"id": "line\nbreak"}),
        ("a/{*rest}", "/a/b/c/d.txt", {"rest": "b/c/d.txt"}),
        ("a/{*rest}", "/a/", {"rest": ""}),
        ("a/{*rest}", "/a/line\nbreak", {"rest": "line\nbreak"}),
        ("api/items/export", "/API/Items/EXPORT", {}),
        ("api/items/export", "/api/items/export/", {}),
        ("api/items/export", "/api/items/export//", None),
        ("api/items/export", "/api/items/export/x", None),
        ("api/items/export", "/api/items", None),
    ],
)
def test_template_match(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert parse_template(template).match(path) == expected


def _app_with_routes(*routes: tuple[str, str, list[str]]) -> func.FunctionApp:
    """A FunctionApp whose functions, named as given, answer nothing (routing is what is tested)."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    for name, route, methods in routes:

        def handler(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse("")

        handler.__name__ = name
        app.route(route=route, methods=methods)(handler)
    return app


def test_most_specific_route_wins_whatever_the_registration_order() -> None:
    app = _app_with_routes(
        ("anything", "{*path}", ["GET"]),
        ("records_rest", "api/records/{*rest}", ["GET"]),
        ("record", "api/records/{id}", ["GET"]),
        ("record_number", "api/records/{id:int}", ["GET"]),
        ("export", "api/records/export", ["GET"]),
    )
    http, _ = collect_functions(app)

    def picked(path: str) -> str:
        return route_request(http, "GET", path)[0].name

    assert picked("/api/records/export") == "export"
    assert picked("/api/records/7") == "record_number"
    assert picked("/api/records/r-1") == "record"
    assert picked("/api/records/r-1/x") == "records_rest"
    assert picked("/elsewhere") == "anything"


def test_wrong_method_is_405_unless_only_a_preflight_route_serves_the_path() -> None:
    app = _app_with_routes(
        ("preflight", "{*path}", ["OPTIONS"]),
        ("read", "api/things/{id}", ["GET"]),
        ("change", "api/things/{id}", ["PATCH", "PUT"]),
    )
    http, _ = collect_functions(app)
    assert route_request(http, "OPTIONS", "/api/things/1")[0].name == "preflight"
    assert route_request(http, "PUT", "/api/things/1")[0].name == "change"
    with pytest.raises(MethodNotAllowed) as refused:
        route_request(http, "DELETE", "/api/things/1")
    assert refused.value.headers() == {"Allow": "GET, OPTIONS, PATCH, PUT"}
    with pytest.raises(NotFound):
        route_request(http, "DELETE", "/api/others/1")


def _more_literal(winner: str, loser: str) -> bool:
    """Whether, at the first segment where one template has a literal and the other a
    parameter, ``winner`` has the literal."""
    for mine, theirs in zip(winner.split("/"), loser.split("/"), strict=False):
        if ("{" in mine) != ("{" in theirs):
            return "{" not in mine
    return False


def test_every_app_route_is_reached_by_its_paths_and_literals_beat_parameters() -> None:
    from function_app import create_app

    http, _ = collect_functions(create_app())
    preflight = [h for h in http if h.methods == {"OPTIONS"}]
    assert [h.template.text for h in preflight] == ["{*path}"]
    # An adversary fills each parameter with a literal some route has at that position
    # (`/api/record-types/schema/...`, `/api/mfa/passkeys/registration`): a literal route
    # may take such a path from a parameter route, never the other way round.
    literals_at: dict[int, set[str]] = {}
    for h in http:
        for index, segment in enumerate(h.template.text.split("/")):
            if "{" not in segment:
                literals_at.setdefault(index, set()).add(segment)
    checked = 0
    for h in http:
        if h in preflight:
            continue
        choices = [
            [segment]
            if "{" not in segment
            else ["7"]
            if segment.endswith(":int}")
            else sorted(literals_at.get(index, set())) + ["7"]
            for index, segment in enumerate(h.template.text.split("/"))
        ]
        assert h.methods
        for parts in itertools.product(*choices):
            path = "/" + "/".join(parts)
            for method in h.methods:
                got, _ = route_request(http, method, path)
                assert got is h or _more_literal(got.template.text, h.template.text), (method, path, got.name)
                checked += 1
            assert route_request(http, "OPTIONS", path)[0] is preflight[0]
            with pytest.raises(MethodNotAllowed) as refused:
                route_request(http, "TRACE", path)
            assert set(h.methods) | {"OPTIONS"} <= set(refused.value.allowed)
    assert checked > 1000


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
    assert response.json()["type"] == "urn:custos:problem:forbidden"
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
    queue_file: Path
    queue: str


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
    # Quick polling and two tries, so retry and poison show within a test.
    host_json = tmp / "host.json"
    host_json.write_text(json.dumps({"version": "2.0", "extensions": {"queues": {
        "maxPollingInterval": "00:00:00.200", "visibilityTimeout": "00:00:00", "batchSize": 4, "maxDequeueCount": 2}}}))
    queue_name = f"devhost-test-{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "DEVHOST_DISABLE_TIMERS": "1",
        "DEVHOST_TEST_TIMER_FILE": str(tmp / "timer.txt"),
        "DEVHOST_TEST_QUEUE": queue_name,
        "DEVHOST_TEST_QUEUE_CONNECTION": os.environ["STORAGE_CONNECTION_STRING"],
        "DEVHOST_TEST_QUEUE_FILE": str(tmp / "queue.txt"),
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
        "--host-json",
        str(host_json),
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
        yield Server(f"http://127.0.0.1:{port}", tmp / "timer.txt", log_file, tmp / "queue.txt", queue_name)
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


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    """Devhost's own errors speak like the app: its problem ``type`` and a request id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:custos:problem:{code}"
    assert body["title"]
    assert body["request_id"] == response.headers["x-request-id"]
    return dict(body)


def test_startup_log_lists_functions(server: Server, client: httpx.Client) -> None:
    line = next(ln for ln in server.log_file.read_text().splitlines() if "Functions (" in ln)
    assert "get_item: [GET] /api/items/{id}" in line
    assert "yearly: timerTrigger '0 0 0 1 1 *' (timers disabled)" in line
    assert "failing_timer: timerTrigger '%DEVHOST_TEST_SCHEDULE%' = '0 0 0 1 1 *'" in line


def test_parameter_takes_one_segment_as_sent(client: httpx.Client) -> None:
    response = client.get(f"/api/items/{GUID.upper()}")
    assert response.json() == {"fn": "get_item", "route": {"id": GUID.upper()}}
    # %2F stays encoded, as in Kestrel: it cannot split the id and reach another route.
    assert client.get("/api/items/7%2Fcount").json() == {"fn": "get_item", "route": {"id": "7%2Fcount"}}
    _problem(client.get(f"/api/items/{GUID}/x"), 404, "not-found")


def test_int_constraint(client: httpx.Client) -> None:
    assert client.get("/api/items/12/count").json() == {"fn": "count_items", "route": {"n": "12"}}
    _problem(client.get("/api/items/twelve/count"), 404, "not-found")


def test_literal_beats_parameter(client: httpx.Client) -> None:
    assert client.get("/api/records/export").json()["fn"] == "export_records"
    assert client.get("/API/Records/EXPORT").json()["fn"] == "export_records"
    assert client.get("/api/records/export/").json()["fn"] == "export_records"
    assert client.get("/api/items/export").json()["fn"] == "export_items"
    assert client.get("/api/records/r-1").json() == {"fn": "get_record", "route": {"id": "r-1"}}


def test_catch_all_with_slashes(client: httpx.Client) -> None:
    assert client.get("/api/files/a/b/c.txt").json()["route"] == {"rest": "a/b/c.txt"}
    assert client.get("/api/files/a%20b/c").json()["route"] == {"rest": "a b/c"}
    assert client.get("/api/files/").json()["route"] == {"rest": ""}


def test_unknown_path_is_404_problem(client: httpx.Client) -> None:
    body = _problem(client.get("/no/such/route"), 404, "not-found")
    assert "/no/such/route" not in json.dumps(body)


def test_wrong_method_is_405_with_allow(client: httpx.Client) -> None:
    response = client.delete("/api/records/export")
    _problem(response, 405, "method-not-allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "OPTIONS"}


def test_head_is_not_get(client: httpx.Client) -> None:
    response = client.head("/api/records/export")
    assert response.status_code == 405
    assert response.content == b""


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
    body = _problem(response, 500, "internal")
    assert "secret" not in response.text and "detail" not in body


def test_admin_runs_timer(server: Server, client: httpx.Client) -> None:
    response = client.post("/admin/functions/Yearly", json={"input": ""})
    assert response.status_code == 202
    assert response.content == b""
    assert server.timer_file.read_text() == "ran past_due=False\n"


def test_admin_failing_timer_is_500(client: httpx.Client) -> None:
    _problem(client.post("/admin/functions/failing_timer"), 500, "internal")


def test_admin_unknown_or_http_function_is_404(client: httpx.Client) -> None:
    _problem(client.post("/admin/functions/nope"), 404, "not-found")
    _problem(client.post("/admin/functions/get_item"), 404, "not-found")
    response = client.get("/admin/functions/yearly")
    _problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "POST"
    _problem(client.post("/admin/functions/yearly", content=b"{not json"), 400, "malformed-request")


# ---------------------------------------------------------------------------
# Queue triggers


def test_read_queue_options_from_host_json(tmp_path: Path) -> None:
    assert read_options(tmp_path / "missing.json") == QueueOptions()
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"extensions": {"queues": {
        "maxPollingInterval": "00:00:02", "visibilityTimeout": "00:01:30.5", "batchSize": 3, "maxDequeueCount": 4}}}))
    assert read_options(host_json) == QueueOptions(max_polling_interval_s=2, visibility_timeout_s=90.5, batch_size=3,
                                                   max_dequeue_count=4)
    project = read_options(ROOT / "host.json")
    assert project.message_encoding == "base64" and project.max_dequeue_count >= 2
    host_json.write_text(json.dumps({"extensions": {"queues": {"visibilityTimeout": "30 seconds"}}}))
    with pytest.raises(ValueError, match="visibilityTimeout"):
        read_options(host_json)
    host_json.write_text(json.dumps({"extensions": {"queues": {"batchSize": 64}}}))
    with pytest.raises(ValueError, match="batchSize"):
        read_options(host_json)


def test_queue_bodies_are_base64_as_the_host_reads_them() -> None:
    assert decode_body("aGVsbG8=", "base64") == b"hello"
    assert decode_body("hello", "none") == b"hello"
    with pytest.raises(ValueError, match="base64"):
        decode_body("not base64!", "base64")


def _queues(server: Server) -> tuple[object, object]:
    from azure.storage.queue import QueueClient

    conn = os.environ["STORAGE_CONNECTION_STRING"]
    return (QueueClient.from_connection_string(conn, server.queue),
            QueueClient.from_connection_string(conn, server.queue + "-poison"))


def _send(server: Server, text: str, *, raw: bool = False) -> None:
    import base64

    queue, _ = _queues(server)
    queue.send_message(text if raw else base64.b64encode(text.encode()).decode())  # type: ignore[attr-defined]


def _wait_for(condition: Callable[[], bool], what: str, server: Server) -> None:
    """Wait for the background poller (an event, not time) with a generous deadline."""
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen:\n{server.log_file.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def _lines(server: Server) -> list[str]:
    return server.queue_file.read_text().splitlines() if server.queue_file.exists() else []


def _poison_bodies(server: Server) -> list[str]:
    _, poison = _queues(server)
    return [m.content for m in poison.peek_messages(max_messages=32)]  # type: ignore[attr-defined]


def test_queue_message_is_polled_run_and_deleted(server: Server) -> None:
    tag = f"hello-{uuid.uuid4().hex[:8]}"
    _send(server, tag)
    _wait_for(lambda: f"{tag} dequeue_count=1" in _lines(server), "the queue function run", server)
    queue, _ = _queues(server)
    _wait_for(lambda: not queue.peek_messages(max_messages=32), "the message deletion", server)  # type: ignore[attr-defined]


def test_failing_message_is_retried_then_moved_to_the_poison_queue(server: Server) -> None:
    import base64

    tag = f"fail-{uuid.uuid4().hex[:8]}"
    _send(server, tag)
    encoded = base64.b64encode(tag.encode()).decode()
    _wait_for(lambda: encoded in _poison_bodies(server), "the move to the poison queue", server)
    runs = [line for line in _lines(server) if line.startswith(tag)]
    assert runs == [f"{tag} dequeue_count=1", f"{tag} dequeue_count=2"]  # maxDequeueCount 2, then poison
    assert "moved to" in server.log_file.read_text(errors="replace")


def test_a_message_that_is_not_base64_goes_to_poison_unrun(server: Server) -> None:
    tag = f"raw text {uuid.uuid4().hex[:8]}!"
    _send(server, tag, raw=True)
    _wait_for(lambda: tag in _poison_bodies(server), "the move to the poison queue", server)
    assert not any(line.startswith(tag) for line in _lines(server))


def test_admin_runs_queue_function_with_input(server: Server, client: httpx.Client) -> None:
    tag = f"admin-{uuid.uuid4().hex[:8]}"
    assert client.post("/admin/functions/queued", json={"input": tag}).status_code == 202
    assert f"{tag} dequeue_count=1" in _lines(server)
    _problem(client.post("/admin/functions/queued", json={"input": "fail-now"}), 500, "internal")


def test_the_route_index_picks_what_a_scan_of_every_route_picks() -> None:
    """`Routes` matches a path against the routes sharing its first two literal segments (and
    those without such a key); that must pick what trying every route in order picks, whatever
    the case, a trailing slash, or a path no route serves."""
    from function_app import create_app

    http, _ = collect_functions(create_app())
    assert isinstance(http, Routes) and max(len(c) for c in http._by_key.values()) < len(http) / 3
    scan = list(http)
    paths = {"/", "/api", "/api/", "/api/nothing", "/API/Records", "/api/records/", "//api/records", "/x/y/z"}
    for h in http:
        for value in ("7", "r-1", "export", "schema"):
            path = "/" + "/".join(value if "{" in s else s for s in h.template.text.split("/"))
            paths |= {path, path.upper(), path + "/", path + "/extra"}

    def outcome(routes: list, method: str, path: str) -> object:
        try:
            function, values = route_request(routes, method, path)
        except (MethodNotAllowed, NotFound) as exc:
            return type(exc).__name__, sorted(getattr(exc, "allowed", ()))
        return function.name, values

    for path in sorted(paths):
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            assert outcome(http, method, path) == outcome(scan, method, path), (method, path)
