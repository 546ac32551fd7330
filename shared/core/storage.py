"""Azure Storage clients: Blob for content, Table for short-lived high-churn state.

Locally the clients come from a connection string (Azurite); in Azure from the account
name with `DefaultAzureCredential` (the app's managed identity; shared keys are disabled
on the account). Clients are created once per worker, lazily, and the containers and
tables Custos needs are created if missing the first time.

Every client has explicit connect and read timeouts and a small, bounded number of
retries with a short fixed backoff (settings `STORAGE_*`; docs/security.md, "Bounded
waits"): the SDK defaults (retries with 15 s and longer backoffs, 300 s timeouts) hold a
request for over a minute when the account is unreachable. `probe_options()` is an even
tighter budget for the health probe.

The Azure SDK is imported when a client is first made, not when this module is imported
(it is most of a worker's import time, and many requests never touch storage).
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

from shared.core.errors import ServiceUnavailable
from shared.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient

CONTAINERS = ("attachments", "exports", "snapshots", "audit-checkpoints", "attestations")
TABLES = ("ratelimits", "webauthnchallenges", "samlreplay")
#: Seconds the SDK sleeps between two tries (plus up to a quarter of that as jitter on Blob).
RETRY_BACKOFF_S = 0.5

_ensured = False
_ensure_lock = threading.Lock()


def _credential() -> object:
    from shared.core import entra

    return entra.credential()


def client_options(settings: Settings) -> dict[str, Any]:
    """Transport timeouts shared by the Blob and Table clients."""
    return {
        "connection_timeout": settings.storage_connect_timeout_s,
        "read_timeout": settings.storage_read_timeout_s,
    }


def probe_options(settings: Settings) -> dict[str, Any]:
    """Per-operation options for a health probe: one try, each wait at most the health budget."""
    budget = settings.health_timeout_s
    return {
        "retry_total": 0,
        "connection_timeout": min(settings.storage_connect_timeout_s, budget),
        "read_timeout": min(settings.storage_read_timeout_s, budget),
    }


def _make_blob(settings: Settings) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient, LinearRetry

    options: dict[str, Any] = {
        **client_options(settings),
        "retry_policy": LinearRetry(backoff=RETRY_BACKOFF_S, retry_total=settings.storage_retries,  # type: ignore[arg-type]
                                    random_jitter_range=RETRY_BACKOFF_S / 4),  # type: ignore[arg-type]
    }
    if settings.storage_connection_string:
        return BlobServiceClient.from_connection_string(settings.storage_connection_string, **options)
    url = f"https://{settings.storage_account_name}.blob.core.windows.net"
    return BlobServiceClient(url, credential=_credential(), **options)  # type: ignore[arg-type]


def _make_table(settings: Settings) -> TableServiceClient:
    from azure.core.pipeline.policies import RetryMode
    from azure.data.tables import TableServiceClient

    options: dict[str, Any] = {
        **client_options(settings),
        "retry_total": settings.storage_retries,
        "retry_mode": RetryMode.Fixed,
        "retry_backoff_factor": RETRY_BACKOFF_S,
    }
    if settings.storage_connection_string:
        return TableServiceClient.from_connection_string(settings.storage_connection_string, **options)
    url = f"https://{settings.storage_account_name}.table.core.windows.net"
    return TableServiceClient(url, credential=_credential(), **options)  # type: ignore[arg-type]


@functools.cache
def _blob_service() -> BlobServiceClient:
    return _make_blob(get_settings())


@functools.cache
def _table_service() -> TableServiceClient:
    return _make_table(get_settings())


def ensure_storage(**request_options: Any) -> None:
    """Create the containers and tables if missing; once per worker.

    `request_options` go to each SDK call (e.g. `probe_options()`).

    Raises:
        ServiceUnavailable: storage could not be reached.
    """
    global _ensured
    if _ensured:
        return
    from azure.core.exceptions import AzureError, ResourceExistsError

    with _ensure_lock:
        if _ensured:
            return
        try:
            for name in CONTAINERS:
                try:
                    _blob_service().create_container(name, **request_options)
                except ResourceExistsError:
                    pass
            for name in TABLES:
                _table_service().create_table_if_not_exists(name, **request_options)
        except AzureError as exc:
            raise ServiceUnavailable("storage is unavailable", component="storage") from exc
        _ensured = True


def blob_service() -> BlobServiceClient:
    """The worker's Blob service client, containers created.

    Raises:
        ServiceUnavailable: storage could not be reached to create the containers.
    """
    ensure_storage()
    return _blob_service()


def table_service() -> TableServiceClient:
    """The worker's Table service client, tables created.

    Raises:
        ServiceUnavailable: storage could not be reached to create the tables.
    """
    ensure_storage()
    return _table_service()


def ping() -> None:
    """Check that the blob and table services answer, within the health budget.

    Raises:
        ServiceUnavailable: a service did not answer, or answered with an error.
    """
    from azure.core.exceptions import AzureError

    options = probe_options(get_settings())
    try:
        ensure_storage(**options)
        _blob_service().get_container_client(CONTAINERS[0]).get_container_properties(**options)
        next(iter(_table_service().list_tables(results_per_page=1, **options).by_page()), None)
    except AzureError as exc:
        raise ServiceUnavailable("storage is unavailable", component="storage") from exc
