"""Queue triggers: poll Azure Storage Queues (Azurite) like the Functions host does.

From host.json ``extensions.queues`` (the host's defaults where unset):

* ``maxPollingInterval`` (default 1 min): an empty poll doubles the wait, from 100 ms up to
  this; a message resets it to 100 ms.
* ``batchSize`` (16): messages fetched per poll; they run one after another here.
* ``visibilityTimeout`` (0): after a failed run the message becomes visible again this
  much later; while a run lasts, the message stays invisible (devhost fetches it with a
  10-minute visibility, the host renews it instead).
* ``maxDequeueCount`` (5): a message that failed on its last allowed dequeue moves to
  ``<queue>-poison`` (same body), as the host does.
* ``messageEncoding`` (``base64``): a body that is not base64 under that encoding is moved
  straight to the poison queue (the host cannot bind it either).

The queue name may be ``%SETTING%``; the connection names an app setting holding a
connection string (locally; ``<name>__queueServiceUri`` identity connections are Azure's).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import azure.functions as func

__all__ = ["DevQueueMessage", "QueueOptions", "decode_body", "poll_once", "read_options", "resolve_name",
           "run_queue_loop"]

log = logging.getLogger("devhost.queues")

MIN_POLL_S = 0.1
RUN_VISIBILITY_S = 600
_SETTING_REF = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)$")


@dataclass(frozen=True)
class QueueOptions:
    """host.json ``extensions.queues``, with the Functions host's defaults."""

    max_polling_interval_s: float = 60.0
    visibility_timeout_s: float = 0.0
    batch_size: int = 16
    max_dequeue_count: int = 5
    message_encoding: str = "base64"


def _timespan(text: Any, setting: str) -> float:
    found = _TIMESPAN.match(str(text))
    if not found:
        raise ValueError(f"host.json extensions.queues.{setting}: {text!r} is not a time span like 00:00:30")
    days, hours, minutes, seconds = found.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def read_options(host_json: Path) -> QueueOptions:
    """The queue options of a host.json (defaults when it or the section is missing).

    Raises:
        ValueError: an option is malformed.
    """
    if not host_json.is_file():
        return QueueOptions()
    section = json.loads(host_json.read_text(encoding="utf-8")).get("extensions", {}).get("queues", {})
    default = QueueOptions()
    encoding = str(section.get("messageEncoding", default.message_encoding)).lower()
    if encoding not in ("base64", "none"):
        raise ValueError(f"host.json extensions.queues.messageEncoding: {encoding!r} is not base64 or none")
    options = QueueOptions(
        max_polling_interval_s=_timespan(section["maxPollingInterval"], "maxPollingInterval")
        if "maxPollingInterval" in section else default.max_polling_interval_s,
        visibility_timeout_s=_timespan(section["visibilityTimeout"], "visibilityTimeout")
        if "visibilityTimeout" in section else default.visibility_timeout_s,
        batch_size=int(section.get("batchSize", default.batch_size)),
        max_dequeue_count=int(section.get("maxDequeueCount", default.max_dequeue_count)),
        message_encoding=encoding,
    )
    if not 1 <= options.batch_size <= 32 or options.max_dequeue_count < 1:
        raise ValueError("host.json extensions.queues: batchSize must be 1..32 and maxDequeueCount at least 1")
    return options


def resolve_name(name: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``%NAME%`` with the app setting; raise ValueError if it is unset."""
    env = os.environ if environ is None else environ

    def lookup(found: re.Match[str]) -> str:
        if found.group(1) not in env:
            raise ValueError(f"queue name setting {found.group(1)!r} is not set")
        return env[found.group(1)]

    return _SETTING_REF.sub(lookup, name).strip()


def connection_string(connection: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The connection string a trigger's ``connection`` names (empty: AzureWebJobsStorage)."""
    env = os.environ if environ is None else environ
    name = connection or "AzureWebJobsStorage"
    value = env.get(name, "")
    if not value:
        raise ValueError(f"connection setting {name!r} is not set (devhost needs a connection string)")
    return value


def decode_body(content: Any, encoding: str) -> bytes:
    """The body the function gets, from the stored message text.

    Raises:
        ValueError: not valid base64 under ``base64`` encoding.
    """
    raw = content if isinstance(content, bytes) else str(content).encode("utf-8")
    if encoding == "none":
        return raw
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("message is not base64") from exc


class DevQueueMessage(func.QueueMessage):
    """A ``QueueMessage`` with the dequeue count and times the host fills in."""

    def __init__(self, *, id: str | None, body: bytes, pop_receipt: str | None, dequeue_count: int,
                 insertion_time: datetime | None = None, expiration_time: datetime | None = None,
                 time_next_visible: datetime | None = None) -> None:
        super().__init__(id=id, body=body, pop_receipt=pop_receipt)
        self._dequeue_count = dequeue_count
        self._insertion_time = insertion_time
        self._expiration_time = expiration_time
        self._time_next_visible = time_next_visible

    @property
    def dequeue_count(self) -> int:
        return self._dequeue_count

    @property
    def insertion_time(self) -> datetime | None:
        return self._insertion_time

    @property
    def expiration_time(self) -> datetime | None:
        return self._expiration_time

    @property
    def time_next_visible(self) -> datetime | None:
        return self._time_next_visible


def make_clients(connection: str | None, queue_name: str) -> tuple[Any, Any]:
    """(queue, poison queue) clients, both created if missing. The raw text is read and
    written: devhost decodes, as the host does, by host.json's messageEncoding."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.queue import QueueClient

    conn = connection_string(connection)
    clients = []
    for name in (queue_name, f"{queue_name}-poison"):
        client = QueueClient.from_connection_string(conn, name, connection_timeout=5, read_timeout=20)
        try:
            client.create_queue()
        except ResourceExistsError:
            pass
        clients.append(client)
    return clients[0], clients[1]


Run = Callable[[func.QueueMessage], Awaitable[bool]]


async def poll_once(queue: Any, poison: Any, options: QueueOptions, run: Run, name: str) -> int:
    """Fetch one batch and run each message; returns how many were fetched.

    ``run`` returns True when the function succeeded. Success deletes the message; failure
    makes it visible again after ``visibility_timeout_s``, or, on its last allowed dequeue,
    moves it to the poison queue.
    """
    batch = await asyncio.to_thread(
        lambda: list(queue.receive_messages(messages_per_page=options.batch_size, max_messages=options.batch_size,
                                            visibility_timeout=RUN_VISIBILITY_S))
    )
    for stored in batch:
        try:
            body = decode_body(stored.content, options.message_encoding)
        except ValueError:
            log.error("Queue function %r: message %s is not %s: moved to the poison queue",
                      name, stored.id, options.message_encoding)
            await asyncio.to_thread(_to_poison, queue, poison, stored)
            continue
        message = DevQueueMessage(
            id=stored.id, body=body, pop_receipt=stored.pop_receipt, dequeue_count=int(stored.dequeue_count or 1),
            insertion_time=stored.inserted_on, expiration_time=stored.expires_on, time_next_visible=stored.next_visible_on,
        )
        if await run(message):
            await asyncio.to_thread(queue.delete_message, stored)
        elif message.dequeue_count >= options.max_dequeue_count:
            log.error("Queue function %r: message %s failed %d times: moved to %s-poison",
                      name, stored.id, message.dequeue_count, queue.queue_name)
            await asyncio.to_thread(_to_poison, queue, poison, stored)
        else:
            await asyncio.to_thread(queue.update_message, stored, pop_receipt=stored.pop_receipt,
                                    visibility_timeout=int(options.visibility_timeout_s))
    return len(batch)


def _to_poison(queue: Any, poison: Any, stored: Any) -> None:
    poison.send_message(stored.content)
    queue.delete_message(stored)


async def run_queue_loop(name: str, queue: Any, poison: Any, options: QueueOptions, run: Run) -> None:
    """Poll until cancelled, backing off from 100 ms to maxPollingInterval while the queue is empty."""
    wait = MIN_POLL_S
    while True:
        try:
            fetched = await poll_once(queue, poison, options, run, name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Queue function %r: polling failed", name)
            fetched = 0
        if fetched:
            wait = MIN_POLL_S
            continue
        await asyncio.sleep(wait)
        wait = min(wait * 2, max(options.max_polling_interval_s, MIN_POLL_S))
