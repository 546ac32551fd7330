"""``python -m devhost``: load local settings, import the FunctionApp, serve it with uvicorn.

Usage: ``python -m devhost [--host 127.0.0.1] [--port 7071] [--app function_app:app]
[--settings local.settings.json] [--route-prefix PREFIX] [--host-json host.json] [--banner]``. The port may also come from
``DEVHOST_PORT`` or ``Host.LocalHttpPort`` in the settings file.

Logs go to stderr, one JSON object per line (``shared.web.logs``): the app's lines with their
fields as keys, devhost's and uvicorn's too; the Azure SDK only from WARNING. uvicorn's own
access line is off: the wrapper's ``custos.access`` line says more about each request.
``--banner`` prints a few plain lines to stdout once the server accepts connections (URL,
first steps with the ops CLI, where the logs go), for ``make run``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import azure.functions as func
import uvicorn

from devhost.queues import read_options as read_queue_options
from devhost.server import create_asgi_app
from shared.core.settings import SettingsError, load_local_settings
from shared.web.logs import configure_logging

log = logging.getLogger("devhost")

DEFAULT_PORT = 7071
#: The Functions host's route prefix when host.json does not set one.
DEFAULT_ROUTE_PREFIX = "api"


def read_route_prefix(host_json: Path) -> str:
    """``extensions.http.routePrefix`` from host.json, or the host's default ``api``."""
    if not host_json.is_file():
        return DEFAULT_ROUTE_PREFIX
    config = json.loads(host_json.read_text(encoding="utf-8"))
    prefix = config.get("extensions", {}).get("http", {}).get("routePrefix")
    return DEFAULT_ROUTE_PREFIX if prefix is None else str(prefix)


def import_app(spec: str) -> func.FunctionApp:
    """Import ``module:attribute`` (attribute defaults to ``app``) from the working directory."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    app = getattr(importlib.import_module(module_name), attribute or "app")
    if not isinstance(app, func.FunctionApp):
        raise SystemExit(f"{spec} is a {type(app).__name__}, not an azure.functions.FunctionApp")
    return app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=None, help="default: $DEVHOST_PORT or 7071")
    parser.add_argument("--app", default="function_app:app", help="module:attribute")
    parser.add_argument("--settings", default="local.settings.json", type=Path)
    parser.add_argument("--route-prefix", default=None, help="default: host.json extensions.http.routePrefix")
    parser.add_argument("--host-json", default=Path("host.json"), type=Path,
                        help="host.json to read (route prefix, queue options); default: ./host.json")
    parser.add_argument("--banner", action="store_true", help="print a short how-to to stdout when ready")
    return parser.parse_args(argv)


def banner(url: str) -> str:
    """What `make run` shows once the host is ready."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd() + os.sep) else sys.executable
    cli = f"{python} -m shared.cli"
    return "\n".join([
        "",
        f"  Custos is running at {url}   (Ctrl-C stops it and the services)",
        f"    health      curl {url}/api/health",
        f"    API docs    {url}/api/openapi.json",
        "  First steps (in another shell: . .local/run/services.sh):",
        f"    an operator {cli} create-operator --email you@example.com   (prints a setup token)",
        f"    a tenant    {cli} create-tenant --slug acme --name 'Acme' --admin-email admin@example.com",
        "  Logs: below, on stderr, one JSON object per line (custos.access: one per request);",
        "        the Azure SDK logs only warnings. Services' logs: .local/run/",
        "",
    ])


class _Server(uvicorn.Server):
    """A uvicorn server that calls `on_ready` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Any = None) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m devhost``."""
    args = parse_args(argv)
    configure_logging()
    # uvicorn's start-up chatter: "devhost ready" (and the banner) say the same in one line.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        settings = load_local_settings(args.settings)
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    port = (
        args.port
        or int(os.environ.get("DEVHOST_PORT") or 0)
        or int((settings.get("Host") or {}).get("LocalHttpPort") or 0)
        or DEFAULT_PORT
    )
    route_prefix = args.route_prefix
    if route_prefix is None:
        route_prefix = read_route_prefix(args.host_json)
    try:
        queue_options = read_queue_options(args.host_json)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    asgi_app = create_asgi_app(import_app(args.app), route_prefix=route_prefix, queue_options=queue_options)
    config = uvicorn.Config(
        asgi_app,
        host=args.host,
        port=port,
        lifespan="on",
        proxy_headers=False,  # never let X-Forwarded-For rewrite the peer address
        server_header=False,
        log_config=None,  # keep the JSON handler configure_logging installed
        access_log=False,
    )
    url = f"http://{args.host}:{port}"

    def ready() -> None:
        log.info("devhost ready", extra={"url": url})
        if args.banner:
            print(banner(url), flush=True)

    _Server(config, on_ready=ready).run()


if __name__ == "__main__":
    main()
