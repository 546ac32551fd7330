"""Structured logs: one JSON object per line, the fields as keys; the Azure SDK kept quiet.

App code logs a short message and passes its fields as `extra=`: in Azure, Application
Insights (through the worker's OpenTelemetry handler) turns them into custom dimensions;
devhost writes them with `JsonFormatter`. A field is never JSON inside the message string.

Every record is redacted for card numbers when it is made (`card_data.install_log_redaction`:
message, arguments, traceback and `extra` fields); `JsonFormatter` redacts each value it
writes once more, so a handler that gets a record from elsewhere cannot print one either,
except the `extra` fields the record says were redacted when it was made and still hold
the redacted value (`card_data.redacted_already`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from shared.web.card_data import install_log_redaction, redact_value, redacted_already

#: Loggers of the Azure SDK held at WARNING: at INFO, `azure.core.pipeline.policies.http_logging_policy`
#: writes every Storage request and response with their headers (most of what `make run`
#: printed), and in Azure those lines would be billed as Application Insights traces.
QUIET_LOGGERS = ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity", "azure.monitor")

# The attributes every LogRecord has; anything else on a record came from `extra=`
# (uvicorn's `color_message` is its message again, with terminal escapes).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName", "color_message"}


def quiet_azure_sdk() -> None:
    """Hold the Azure SDK's loggers at WARNING (cheap: it does not import the SDK)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, then the
    record's `extra=` fields as keys, and `exception` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry = redact_value(entry)
        for key, value in fields(record).items():
            if key not in entry:
                # A field redacted when the record was made (and not replaced since) is not
                # scanned twice; anything else is.
                entry[key] = value if redacted_already(record, key, value) else redact_value(value)
        if record.exc_info:
            entry["exception"] = redact_value(record.exc_text or self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact_value(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact_value(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(stream: IO[str] | None = None, *, level: int = logging.INFO) -> logging.Handler:
    """Send every log record of the process to `stream` (stderr) as JSON lines; for devhost
    and the CLI. In Azure the worker owns the handlers: there only `quiet_azure_sdk` and
    the redaction apply (function_app does both)."""
    install_log_redaction()
    quiet_azure_sdk()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
