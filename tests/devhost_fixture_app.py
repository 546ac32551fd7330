"""A small FunctionApp for tests/test_devhost.py: exercises devhost, not Custos."""

from __future__ import annotations

import json
import os
from pathlib import Path

import azure.functions as func

bp = func.Blueprint()


def _json(data: object, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(data), status_code=status, mimetype="application/json")


@bp.route(route="api/items/{id}", methods=["GET"])
def get_item(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"fn": "get_item", "route": dict(req.route_params)})


@bp.route(route="api/items/{n:int}/count", methods=["GET"])
def count_items(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"fn": "count_items", "route": dict(req.route_params)})


@bp.route(route="api/items/export", methods=["GET"])
def export_items(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"fn": "export_items", "route": dict(req.route_params)})


# Registered before the literal route on purpose: precedence, not order, must decide.
@bp.route(route="api/records/{id}", methods=["GET"])
def get_record(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"fn": "get_record", "route": dict(req.route_params)})


@bp.route(route="api/records/export", methods=["GET"])
def export_records(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"fn": "export_records", "route": dict(req.route_params)})


@bp.route(route="api/files/{*rest}", methods=["GET"])
def files(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"fn": "files", "route": dict(req.route_params)})


@bp.route(route="api/echo", methods=["POST"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    headers = {
        "Content-Type": req.headers.get("content-type", "application/octet-stream"),
        "X-Echo-Query": json.dumps(dict(req.params), sort_keys=True),
        "X-Echo-Header": req.headers.get("x-test", ""),
        "X-Echo-Forwarded-For": req.headers.get("x-forwarded-for", ""),
        "X-Echo-Url": req.url,
        "X-Echo-Method": req.method,
    }
    return func.HttpResponse(req.get_body(), status_code=200, headers=headers)


@bp.route(route="api/async", methods=["GET"])
async def async_route(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("async ok")


@bp.route(route="api/cookies", methods=["GET"])
def cookies(req: func.HttpRequest) -> func.HttpResponse:
    response = func.HttpResponse("two cookies", mimetype="text/html")
    response.headers.add_header("Set-Cookie", "a=1; Path=/")
    response.headers.add_header("Set-Cookie", "b=2; Path=/")
    return response


@bp.route(route="api/boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret detail that must not leak")


@bp.route(route="{*path}", methods=["OPTIONS"])
def preflight(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        status_code=204,
        headers={"Access-Control-Allow-Origin": "*", "X-Preflight-Path": req.route_params["path"]},
    )


@bp.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=False)
def yearly(timer: func.TimerRequest) -> None:
    with Path(os.environ["DEVHOST_TEST_TIMER_FILE"]).open("a", encoding="utf-8") as out:
        out.write(f"ran past_due={timer.past_due}\n")


@bp.timer_trigger(schedule="%DEVHOST_TEST_SCHEDULE%", arg_name="timer", run_on_startup=False)
def failing_timer(timer: func.TimerRequest) -> None:
    raise RuntimeError("timer failed on purpose")


@bp.queue_trigger(arg_name="msg", queue_name="%DEVHOST_TEST_QUEUE%", connection="DEVHOST_TEST_QUEUE_CONNECTION")
def queued(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode()
    with Path(os.environ["DEVHOST_TEST_QUEUE_FILE"]).open("a", encoding="utf-8") as out:
        out.write(f"{body} dequeue_count={msg.dequeue_count}\n")
    if body.startswith("fail"):
        raise RuntimeError("queue function failed on purpose")


app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(bp)
