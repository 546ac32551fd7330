"""The admin console: its page and its hashed assets under /console/ (shared.web.console)."""

from __future__ import annotations

import azure.functions as func

from shared.web import console
from shared.web.endpoint import Reply, RequestContext, endpoint

bp = func.Blueprint()


@bp.route(route="console", methods=["GET"])
@endpoint(auth=False, media_type="text/html", security_headers=console.CONSOLE_HEADERS, tags=("console",))
def console_root(ctx: RequestContext) -> Reply:
    """The admin console's page."""
    return _reply(console.serve(""))


@bp.route(route="console/{*path}", methods=["GET"])
@endpoint(auth=False, media_type="*/*", security_headers=console.CONSOLE_HEADERS, cacheable=True, tags=("console",))
def console_file(ctx: RequestContext) -> Reply:
    """The admin console's page for a client-side route, or one of its hashed assets."""
    return _reply(console.serve(ctx.route.get("path", "")))


def _reply(served: console.Served) -> Reply:
    return Reply(body=served.body, media_type=served.media_type, headers={"Cache-Control": served.cache_control})
