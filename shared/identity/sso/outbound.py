"""Outbound HTTP to a URL a tenant ADMIN configured: IdP metadata, OIDC discovery, JWKS, token
endpoint. The one SSRF guard SAML and OIDC share.

A URL is fetched only when it is an absolute https URL without credentials whose host resolves
to public addresses only (global unicast: no private, loopback, link-local, shared or
multicast address). Plain http reaches loopback hosts only, and only where
SSO_METADATA_ALLOW_LOOPBACK allows it (tests; never in production).

The host name is resolved ONCE, here, and the connection goes to the address that was checked:
the URL's host is replaced by that address, TLS still verifies the certificate for the name
(SNI) and the Host header carries the name. Resolving again at connect time (what an HTTP
client does by itself) would let a name server that answers a public address to the check and
a private one to the connection (DNS rebinding) reach the metadata service or the database.
No redirects are followed, no proxy from the environment is used (a proxy would resolve the
name again), every fetch has SSO_METADATA_TIMEOUT_S and at most SSO_METADATA_MAX_BYTES are read.

Why no library: httpx has no resolver hook, and the SSRF-guard packages on PyPI check the name
and then let the client resolve it again (the very window this closes); docs/sso.md.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.core.settings import get_settings
from shared.identity.sso.errors import MetadataUnavailable, MetadataUrlRefused
from shared.identity.sso.providers import loopback_allowed

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class Target:
    """Where a checked URL is fetched from."""

    url: str
    """The URL with the checked address in place of the host name."""
    host: str
    """The host name: TLS verifies the certificate for it (SNI)."""
    host_header: str
    """The Host header: the name and the port as the URL gave them."""
    address: str
    """The checked address the connection goes to."""


def _allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast


def resolve(url: str, what: str) -> Target:
    """Check `url` (see the module docstring) and pin it to one of the addresses checked.
    `what` names the URL in the errors ("the metadata URL", "the provider URL").

    Raises:
        MetadataUrlRefused: not https (or loopback http where allowed), credentials, a bad
            port, or an address that is not public.
        MetadataUnavailable: the host name does not resolve.
    """
    loopback = loopback_allowed()
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password:
        raise MetadataUrlRefused(f"{what} must be an absolute https URL without credentials")
    if parts.scheme == "http" and not loopback:
        raise MetadataUrlRefused(f"{what} must be https")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise MetadataUrlRefused(f"{what} has an invalid port") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError):
        raise MetadataUnavailable(f"the host of {what} does not resolve") from None
    # Sorted, so the choice is stable (IPv4 text sorts before IPv6); a scope id is dropped.
    addresses = sorted({str(info[4][0]).split("%", 1)[0] for info in infos})
    ips = [ipaddress.ip_address(a) for a in addresses]
    if not ips:
        raise MetadataUnavailable(f"the host of {what} does not resolve")
    if not (loopback and all(ip.is_loopback for ip in ips)):
        if parts.scheme != "https":
            raise MetadataUrlRefused(f"{what} must be https")
        if not all(_allowed(ip) for ip in ips):
            raise MetadataUrlRefused(f"{what} names a private, loopback or link-local address")
    address = addresses[0]
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return Target(url=parts._replace(netloc=netloc).geturl(), host=host,
                  host_header=parts.netloc.rsplit("@", 1)[-1], address=address)


@contextmanager
def stream(method: str, url: str, *, what: str, headers: dict[str, str] | None = None,
           data: dict[str, str] | None = None, auth: tuple[str, str] | None = None) -> Iterator[httpx.Response]:
    """`method url` sent to the checked address (see `resolve`), its response still unread.

    Raises:
        MetadataUrlRefused, MetadataUnavailable: as `resolve`, or the request failed (timeout,
            refused connection, TLS) with `what` in the message.
    """
    import httpx

    target = resolve(url, what)
    settings = get_settings()
    try:
        with httpx.Client(timeout=httpx.Timeout(settings.sso_metadata_timeout_s), follow_redirects=False,
                          trust_env=False) as client:
            with client.stream(method, target.url, data=data, auth=auth,
                               headers={**(headers or {}), "Host": target.host_header},
                               extensions={"sni_hostname": target.host}) as response:
                yield response
    except httpx.HTTPError as exc:
        raise MetadataUnavailable(f"{what} could not be reached ({type(exc).__name__})") from None


def read_capped(response: httpx.Response, what: str) -> bytes:
    """The whole body, at most SSO_METADATA_MAX_BYTES.

    Raises:
        MetadataUnavailable: the body is larger.
    """
    limit = get_settings().sso_metadata_max_bytes
    body = bytearray()
    for chunk in response.iter_bytes():
        body.extend(chunk)
        if len(body) > limit:
            raise MetadataUnavailable(f"{what} is larger than {limit} bytes")
    return bytes(body)


def get(url: str, *, what: str, accept: str, user_agent: str) -> bytes:
    """GET `url` through the guard: the body of a 200 answer.

    Raises:
        MetadataUrlRefused, MetadataUnavailable: refused address, failure, another status, too large.
    """
    with stream("GET", url, what=what, headers={"Accept": accept, "User-Agent": user_agent}) as response:
        if response.status_code != 200:
            raise MetadataUnavailable(f"{what} answered HTTP {response.status_code}")
        return read_capped(response, what)


def post_form(url: str, *, what: str, data: dict[str, str], auth: tuple[str, str] | None,
              user_agent: str) -> tuple[int, bytes]:
    """POST a form to `url` through the guard: the status and the body.

    Raises:
        MetadataUrlRefused, MetadataUnavailable.
    """
    headers: dict[str, Any] = {"Accept": "application/json", "User-Agent": user_agent}
    with stream("POST", url, what=what, headers=headers, data=data, auth=auth) as response:
        return response.status_code, read_capped(response, what)
