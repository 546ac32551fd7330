"""Azure Storage Queues: the job queue and its poison queue.

Like `shared.core.storage`: locally the client comes from the storage connection string
(Azurite); in Azure from the account name with the app's managed identity. One client per
worker, made lazily; the queues are created if missing the first time. Timeouts and retries
are the bounded ones of `storage` (settings `STORAGE_*`).

Messages are base64-encoded text, the Functions host's default (host.json
`extensions.queues.messageEncoding` is `base64`): a queue trigger decodes the base64 and
hands the function the text. A job message carries only ids (see `shared.lifecycle.jobs`).
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

from shared.core import storage
from shared.core.errors import ServiceUnavailable
from shared.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

POISON_SUFFIX = "-poison"
"""The Functions host moves a message that failed maxDequeueCount times to `<queue>-poison`."""

_ensured: set[str] = set()
_lock = threading.Lock()


def _make(settings: Settings, name: str) -> QueueClient:
    from azure.core.pipeline.policies import RetryMode
    from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy, QueueClient

    options: dict[str, Any] = {
        **storage.client_options(settings),
        "retry_total": settings.storage_retries,
        "retry_mode": RetryMode.Fixed,
        "retry_backoff_factor": storage.RETRY_BACKOFF_S,
        "message_encode_policy": BinaryBase64EncodePolicy(),
        "message_decode_policy": BinaryBase64DecodePolicy(),
    }
    if settings.storage_connection_string:
        return QueueClient.from_connection_string(settings.storage_connection_string, name, **options)
    from shared.core import entra

    url = f"https://{settings.storage_account_name}.queue.core.windows.net"
    return QueueClient(url, name, credential=entra.credential(), **options)  # type: ignore[arg-type]


@functools.cache
def _client(name: str) -> QueueClient:
    return _make(get_settings(), name)


def queue(name: str) -> QueueClient:
    """The client of queue `name`, created (with its poison queue) if missing, once per worker.

    Raises:
        ServiceUnavailable: the queue service could not be reached.
    """
    from azure.core.exceptions import AzureError, ResourceExistsError

    if name in _ensured:
        return _client(name)
    with _lock:
        try:
            for each in (name, name + POISON_SUFFIX):
                try:
                    _client(each).create_queue()
                except ResourceExistsError:
                    pass
        except AzureError as exc:
            raise ServiceUnavailable("the queue service is unavailable", component="queues") from exc
        _ensured.add(name)
    return _client(name)


def send(name: str, text: str, *, delay_s: int = 0) -> str:
    """Put `text` on queue `name` (base64, as the Functions host reads it), invisible for
    `delay_s` seconds (at most 7 days, the service's limit); returns the message id.

    Raises:
        ServiceUnavailable: the queue service could not be reached.
    """
    from azure.core.exceptions import AzureError

    try:
        message = queue(name).send_message(text.encode("utf-8"), visibility_timeout=max(0, min(delay_s, 604_800)))
    except AzureError as exc:
        raise ServiceUnavailable("the queue service is unavailable", component="queues") from exc
    return str(message.id)


def jobs_queue() -> str:
    """The name of the job queue (setting JOBS_QUEUE)."""
    return get_settings().jobs_queue


def owner_jobs_queue() -> str:
    """The name of the owner jobs' queue (setting OWNER_JOBS_QUEUE), read by the owner-jobs app."""
    return get_settings().owner_jobs_queue
