"""The app's Microsoft Entra identity: one credential for Storage, PostgreSQL and telemetry.

In Azure the app holds no password or shared key. Storage and Application Insights take the
credential itself; PostgreSQL takes an Entra access token as the password of each new
connection (`DATABASE_AUTH=entra`). A token is valid for an hour or more and PostgreSQL checks
it only when a connection signs in, so connections already open outlive their token; a new
connection gets the cached token until it is within `REFRESH_MARGIN_S` of expiry, then a
fresh one (docs/security.md, "Entra ID only in Azure").

azure-identity is imported when a credential is first made, not when this module is imported
(tests/test_startup.py).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.core.settings import get_settings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
"""The audience of Entra tokens for Azure Database for PostgreSQL."""

REFRESH_MARGIN_S = 300
"""A token this close to expiry is not handed to a new connection: the sign-in must not race
the expiry, and clocks drift."""


def make_credential(client_id: str = "") -> TokenCredential:
    """The managed identity with `client_id` (user-assigned), or with none `DefaultAzureCredential`
    (the system-assigned identity in Azure, the developer's `az login` on a workstation)."""
    if client_id:
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=client_id)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


@functools.cache
def credential() -> TokenCredential:
    """The worker's credential, made once from AZURE_CLIENT_ID (the SDK caches tokens in it)."""
    return make_credential(get_settings().azure_client_id)


class TokenPassword:
    """A thread-safe cache of the Entra token that new PostgreSQL connections sign in with.

    `clock` (seconds since the epoch, as the token's `expires_on`) is injectable for tests.
    """

    def __init__(self, source: TokenCredential, *, margin_s: float = REFRESH_MARGIN_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.margin_s = margin_s
        self.clock = clock
        self._token = ""
        self._expires_on = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        """The current token, fetched anew when it is within the margin of expiry.

        Raises:
            azure.core.exceptions.ClientAuthenticationError: the identity endpoint refused or
                could not be reached (the pool keeps trying; callers see a 503).
        """
        # One fetch at a time: the threads that wait get the token the first one fetched.
        with self._lock:
            if not self._token or self._expires_on - self.clock() <= self.margin_s:
                token = self.source.get_token(POSTGRES_SCOPE)
                self._token, self._expires_on = token.token, float(token.expires_on)
            return self._token


@functools.cache
def database_password() -> TokenPassword:
    """The worker's token cache for PostgreSQL, on `credential()`."""
    return TokenPassword(credential())


def connect_params(database_url: str, auth: str) -> dict[str, Any]:
    """libpq parameters that sign a new connection in: none for `password` auth (the URL has
    them), the current token and TLS with the server's name verified for `entra`.

    `sslrootcert=system` trusts the operating system's CA store (libpq 16+), which holds the
    roots Azure's PostgreSQL certificates chain to. A URL that sets `sslmode` itself keeps it
    (production settings allow only verify-full).

    Raises:
        azure.core.exceptions.ClientAuthenticationError: no token could be had.
    """
    if auth != "entra":
        return {}
    params: dict[str, Any] = {"password": database_password()()}
    from psycopg.conninfo import conninfo_to_dict

    if "sslmode" not in conninfo_to_dict(database_url):
        params.update(sslmode="verify-full", sslrootcert="system")
    return params


def reset() -> None:
    """Forget the worker's credential and token (tests, after changing settings)."""
    credential.cache_clear()
    database_password.cache_clear()
