"""Structured logs: JSON lines with the fields as keys, card numbers redacted, the Azure SDK quiet."""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from shared.web.card_data import MARKER
from shared.web.logs import JsonFormatter, configure_logging, quiet_azure_sdk
from tests.conftest import Host

CARD = "4111 1111 1111 1111"


def _lines_with(host: Host, needle: str) -> list[str]:
    deadline = time.monotonic() + 5
    while needle not in host.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [line for line in host.log().splitlines() if needle in line]


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    """The process's logging sent to a buffer through `configure_logging`, restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    configure_logging(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_a_request_logs_json_objects_with_its_fields_as_keys(host: Host, client: httpx.Client) -> None:
    rid_before = str(uuid.uuid4())
    resp = client.get("/api/health", headers={"User-Agent": f"probe-{rid_before}"})
    rid = resp.headers["x-request-id"]
    lines = _lines_with(host, rid)
    assert lines, host.log()[-2000:]
    entries = [json.loads(line) for line in lines]  # each whole line is one JSON object
    access = next(e for e in entries if e["logger"] == "custos.access")
    assert access["request_id"] == rid and access["status"] == 200 and access["path"] == "/api/health"
    assert access["user_agent"] == f"probe-{rid_before}" and isinstance(access["duration_ms"], float)
    assert access["level"] == "INFO" and access["time"].endswith("+00:00")
    assert "{" not in access["message"]  # the fields are keys, not JSON inside the message


def test_every_devhost_line_is_a_json_object(host: Host, client: httpx.Client) -> None:
    client.get("/api/health")
    client.get("/api/no-such-route")
    lines = [line for line in host.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry), line


def test_no_azure_sdk_request_dumps_after_a_request_that_uses_storage(host: Host, client: httpx.Client) -> None:
    # Health probes Blob and Table storage; a login attempt reads the throttle's table.
    client.get("/api/health")
    client.post("/api/auth/login", json={"tenant": "nope", "email": "x@example.test", "password": "wrong-password-1"})
    rid = client.get("/api/health").headers["x-request-id"]
    assert _lines_with(host, rid)
    log = host.log()
    assert "azure.core.pipeline" not in log
    assert "Request URL" not in log and "Response status" not in log


def _keeping_logger() -> tuple[logging.Logger, list[logging.LogRecord]]:
    """A fresh INFO logger of its own (not propagating) and the list of the records it emits."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(f"custos.test.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    return logger, records


def test_extra_fields_are_redacted_for_every_handler() -> None:
    logger, records = _keeping_logger()
    import function_app  # noqa: F401  (installs the redaction, as in a worker)

    logger.info("paid", extra={"user_agent": f"card {CARD}", "nested": {"k": [f"#{CARD.replace(' ', '-')}"]}})
    (record,) = records
    assert CARD not in str(record.__dict__) and "4111-1111" not in str(record.__dict__)
    assert record.__dict__["user_agent"] == f"card {MARKER}"


def test_json_formatter_redacts_what_it_writes(capture: io.StringIO) -> None:
    record = logging.LogRecord("custos.x", logging.INFO, __file__, 1, "hello", None, None)
    record.__dict__["note"] = CARD  # set after creation, as a foreign handler chain might
    line = JsonFormatter().format(record)
    assert CARD not in line and json.loads(line)["note"] == MARKER


def test_a_field_changed_after_the_record_was_made_is_scanned_again(capture: io.StringIO) -> None:
    """The formatter skips only the `extra=` fields redacted when the record was made and still
    holding that very value; one replaced, or a list added to, is redacted again."""
    logger, records = _keeping_logger()
    logger.info("paid", extra={"note": "nothing here", "items": ["a"], "kept": "0f9e4b1c-2d3a-4e5f-8a7b-1234567890ab"})
    (record,) = records
    record.__dict__["note"] = f"card {CARD}"  # replaced by a filter or handler after creation
    record.__dict__["items"].append(CARD)  # added to in place
    entry = json.loads(JsonFormatter().format(record))
    assert CARD not in json.dumps(entry)
    assert entry["note"] == f"card {MARKER}" and entry["items"] == ["a", MARKER]
    assert entry["kept"] == "0f9e4b1c-2d3a-4e5f-8a7b-1234567890ab"


def test_configured_logging_keeps_the_azure_sdk_quiet(capture: io.StringIO) -> None:
    quiet_azure_sdk()
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").info("Request URL: 'http://x'")
    logging.getLogger("custos.test").info("kept", extra={"k": 1})
    lines = [json.loads(line) for line in capture.getvalue().splitlines()]
    assert [(e["logger"], e["message"], e.get("k")) for e in lines] == [("custos.test", "kept", 1)]
