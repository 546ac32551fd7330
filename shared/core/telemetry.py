"""OpenTelemetry to Application Insights, on only when APPLICATIONINSIGHTS_CONNECTION_STRING is set.

`configure()` runs once per worker at start-up. With the setting empty (locally, in tests) it
returns at once and nothing of OpenTelemetry or the Azure Monitor distro is imported: they
are a large share of a cold start (tests/core/test_telemetry.py checks). With it set, the
`azure-monitor-opentelemetry` distro sends traces and logs with the app's Entra credential,
psycopg statements and Azure SDK calls become spans, and the endpoint wrapper opens one
server span per HTTP request (`server_span`) and puts the access log's fields on it
(`annotate_request`). What is kept out and why: docs/security.md, "Telemetry".
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from shared.core.settings import Settings

_configured = False
_lock = threading.Lock()

#: Set before the distro reads them; an app setting of the same name wins.
DISTRO_ENVIRONMENT = {
    # The VM detector probes the instance metadata service, which Functions does not have.
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service",
    # The SDK's own usage telemetry goes to Microsoft's endpoints, not the tenant's workspace.
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    # Nor may the SDK fetch its configuration from Microsoft's control plane at run time.
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
}


def enabled() -> bool:
    """Whether `configure()` has switched telemetry on in this worker."""
    return _configured


def configure(settings: Settings) -> bool:
    """Switch OpenTelemetry on when the connection string is set; once per worker.

    Returns whether telemetry is on.

    Raises:
        ValueError: the connection string is malformed (the distro's message names no secret).
    """
    global _configured
    if not settings.applicationinsights_connection_string:
        return False
    with _lock:
        if _configured:
            return True
        for name, value in DISTRO_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        from azure.monitor.opentelemetry import configure_azure_monitor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        from shared.core import entra

        configure_azure_monitor(
            connection_string=settings.applicationinsights_connection_string,
            credential=entra.credential(),  # Application Insights has local (key) auth off
            enable_live_metrics=False,
        )
        # The distro instruments psycopg2, not psycopg 3. Parameters are never captured.
        PsycopgInstrumentor().instrument(capture_parameters=False)
        _configured = True
        return True


@contextmanager
def server_span(name: str, method: str) -> Iterator[None]:
    """A server span around one HTTP request, named `METHOD function`, when telemetry is on."""
    if not _configured:
        yield
        return
    from opentelemetry import trace

    tracer = trace.get_tracer("custos.http")
    with tracer.start_as_current_span(f"{method} {name}", kind=trace.SpanKind.SERVER,
                                      attributes={"http.request.method": method, "faas.name": name}):
        yield


def annotate_request(fields: Mapping[str, object]) -> None:
    """Put the access log's identifying fields on the current request span (no payload, no
    header, no query: the access log's redacted path only)."""
    if not _configured:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    span = trace.get_current_span()
    status = fields.get("status")
    attributes = {
        "http.response.status_code": status,
        "url.path": fields.get("path"),
        "custos.request_id": fields.get("request_id"),
        "custos.tenant_id": fields.get("tenant"),
        "enduser.id": fields.get("user"),
    }
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(key, str(value) if not isinstance(value, int) else value)
    if isinstance(status, int) and status >= 500:
        span.set_status(Status(StatusCode.ERROR))
