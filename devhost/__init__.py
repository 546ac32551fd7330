"""devhost: a local stand-in for the Azure Functions host, for machines without Core Tools.

Run ``python -m devhost`` in the project root. It serves the real ``function_app.app``
(an ``azure.functions.FunctionApp``, v2 programming model) over HTTP with uvicorn and
Starlette; ``function_app.py`` never imports devhost. What it reproduces:

* Settings: ``local.settings.json`` ``Values`` are put into the environment before the
  app is imported (variables already set win); the route prefix comes from ``host.json``
  (``extensions.http.routePrefix``, default ``api``).
* HTTP routing for the template forms the app uses (``{name}``, ``{name:int}``, a last
  ``{*name}``), compiled by Starlette, with the host's literal-first precedence; see
  ``devhost.routing``. A route whose methods exclude the request's is skipped and the next
  one tried (so an OPTIONS ``{*path}`` catch-all still answers preflights under more
  specific routes). No route for the path gives 404; if routes match the path but none the
  method, 405 with ``Allow`` (routes serving only OPTIONS do not count, or a preflight
  catch-all would turn every 404 into a 405). Devhost's own errors are rendered by the
  app's wrapper (``shared.web.endpoint.problem_response``), so they carry the app's stable
  problem ``type`` (``not-found``, ``method-not-allowed``, ...) and a ``request_id``.
* Each request becomes an ``azure.functions.HttpRequest``; sync functions run in a
  thread, ``async def`` ones on the event loop. A function gets its trigger argument only
  (the app's never take ``context`` or other bindings); one that wants more stops start-up. An exception is logged and answered
  with a 500 that holds no detail, as the host does.
* **X-Forwarded-For**: like Azure's front end, devhost appends the TCP peer address to
  ``X-Forwarded-For`` (``"<existing>, <peer>"`` or just ``"<peer>"``), so the right-most
  entry is always the address that actually connected and the app can trust it as the
  client IP. (Azure's front end may add ``ip:port``; devhost adds the bare ip.)
  uvicorn's own proxy-header handling is switched off so it cannot rewrite the peer.
* Timer triggers on their NCRONTAB schedules (UTC), including ``run_on_startup`` and
  ``%SETTING%`` schedules; ``DEVHOST_DISABLE_TIMERS=1`` turns scheduled runs off.
* Queue triggers (``devhost.queues``): each queue function's queue is polled in the
  background with host.json ``extensions.queues`` options (polling back-off up to
  ``maxPollingInterval``, ``batchSize``, ``visibilityTimeout`` after a failure, base64
  ``messageEncoding``, and after ``maxDequeueCount`` failed tries the message moves to
  ``<queue>-poison``); ``DEVHOST_DISABLE_QUEUES=1`` turns polling off.
* ``POST /admin/functions/{name}`` runs a non-HTTP function now (loopback peers only).
  Unlike the host, which answers 202 at once, devhost answers 202 after the run
  finishes, or a 500 problem if it raised.
"""

from devhost.server import create_asgi_app

__all__ = ["create_asgi_app"]
