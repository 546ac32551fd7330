"""Azure Storage clients: Blob for content, Table for short-lived high-churn state.

Locally the clients come from a connection string (Azurite); in Azure from the account
name with `DefaultAzureCredential` (the app's managed identity; shared keys are disabled
on the account). Clients are created once per worker, lazily, and the containers and
tables Custos needs are created if missing the first time.
"""

from __future__ import annotations

import functools
import threading

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from shared.core.errors import ServiceUnavailable
from shared.core.settings import Settings, get_settings

CONTAINERS = ("attachments", "exports", "snapshots", "audit-checkpoints", "attestations")
TABLES = ("ratelimits", "webauthnchallenges", "samlreplay")

_ensured = False
_ensure_lock = threading.Lock()


def _credential() -> object:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _make_blob(settings: Settings) -> BlobServiceClient:
    if settings.storage_connection_string:
        return BlobServiceClient.from_connection_string(settings.storage_connection_string)
    url = f"https://{settings.storage_account_name}.blob.core.windows.net"
    return BlobServiceClient(url, credential=_credential())  # type: ignore[arg-type]


def _make_table(settings: Settings) -> TableServiceClient:
    if settings.storage_connection_string:
        return TableServiceClient.from_connection_string(settings.storage_connection_string)
    url = f"https://{settings.storage_account_name}.table.core.windows.net"
    return TableServiceClient(url, credential=_credential())  # type: ignore[arg-type]


@functools.cache
def _blob_service() -> BlobServiceClient:
    return _make_blob(get_settings())


@functools.cache
def _table_service() -> TableServiceClient:
    return _make_table(get_settings())


def ensure_storage() -> None:
    """Create the containers and tables if missing; once per worker.

    Raises:
        ServiceUnavailable: storage could not be reached.
    """
    global _ensured
    if _ensured:
        return
    with _ensure_lock:
        if _ensured:
            return
        try:
            for name in CONTAINERS:
                try:
                    _blob_service().create_container(name)
                except ResourceExistsError:
                    pass
            for name in TABLES:
                _table_service().create_table_if_not_exists(name)
        except AzureError as exc:
            raise ServiceUnavailable("storage is unavailable", component="storage") from exc
        _ensured = True


def blob_service() -> BlobServiceClient:
    ensure_storage()
    return _blob_service()


def table_service() -> TableServiceClient:
    ensure_storage()
    return _table_service()


def ping() -> None:
    """Raises ServiceUnavailable when the blob and table services do not answer."""
    try:
        ensure_storage()
        _blob_service().get_container_client(CONTAINERS[0]).get_container_properties(timeout=3)
        next(iter(_table_service().list_tables(results_per_page=1).by_page()), None)
    except AzureError as exc:
        raise ServiceUnavailable("storage is unavailable", component="storage") from exc
