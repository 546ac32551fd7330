"""The SSRF guard of every fetch to a URL a tenant ADMIN configured (SAML metadata, OIDC
discovery, JWKS, token endpoint): the name is resolved once, the connection goes to the address
that was checked, and a name server that answers differently the second time (DNS rebinding)
reaches nothing.

A real HTTP server on 127.0.0.1 answers; the name server is the outside edge, so a test resolver
stands in for it (`socket.getaddrinfo`, which the HTTP client would also call to connect)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.identity.sso import oidc, outbound, saml
from shared.identity.sso.errors import MetadataUnavailable, MetadataUrlRefused

NAME = "idp.rebind.test"


class _Server(ThreadingHTTPServer):
    hosts: list[str]


@pytest.fixture
def server() -> Iterator[_Server]:
    """An HTTP server on 127.0.0.1 that answers every GET with a small JSON document and notes
    the Host header of each request."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self.server.hosts.append(self.headers.get("Host") or "")  # type: ignore[attr-defined]
            body = json.dumps({"issuer": "x", "ok": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = _Server(("127.0.0.1", 0), Handler)
    httpd.hosts = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def rebinding_resolver(first: list[str], then: list[str], lookups: list[str]) -> Callable[..., Any]:
    """A name server for NAME that answers `first` once and `then` ever after (other names as the
    system resolves them)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != NAME:
            return real(host, port, *args, **kwargs)
        answer = first if not lookups else then
        lookups.append(host)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, int(port)) if ":" not in a else (a, int(port), 0, 0)) for a in answer]

    return getaddrinfo


def test_the_connection_goes_to_the_address_that_was_checked(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.server_address[1]
    lookups: list[str] = []
    # Checked: loopback (allowed in tests). Any later lookup: 127.0.0.2, where nothing listens.
    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver(["127.0.0.1"], ["127.0.0.2"], lookups))

    doc = oidc.fetch_json(f"http://{NAME}:{port}/.well-known/openid-configuration", "discovery document")
    assert doc == {"issuer": "x", "ok": True}
    assert lookups == [NAME]  # resolved once, by the guard; the client connected to 127.0.0.1
    assert server.hosts == [f"{NAME}:{port}"]  # the Host header still names the host

    lookups.clear()  # the SAML metadata fetch goes through the same guard
    body = saml.fetch_metadata_document(f"http://{NAME}:{port}/metadata")
    assert json.loads(body)["ok"] is True
    assert lookups == [NAME] and len(server.hosts) == 2


def test_a_rebound_name_would_have_reached_another_address(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the test above: a second lookup answers 127.0.0.2, and a client that
    resolved again by itself would have connected there (and found nothing)."""
    import httpx

    port = server.server_address[1]
    lookups: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver(["127.0.0.1"], ["127.0.0.2"], lookups))
    target = outbound.resolve(f"http://{NAME}:{port}/x", "the provider URL")
    assert target.address == "127.0.0.1" and target.url == f"http://127.0.0.1:{port}/x"
    with pytest.raises(httpx.ConnectError), httpx.Client(trust_env=False, timeout=5) as client:
        client.get(f"http://{NAME}:{port}/x")
    assert lookups == [NAME, NAME]
    assert server.hosts == []


@pytest.mark.parametrize("answer", [["127.0.0.1", "10.0.0.7"], ["93.184.216.34", "169.254.169.254"],
                                    ["93.184.216.34", "fd00::1"], ["93.184.216.34", "::ffff:10.0.0.1"],
                                    ["100.64.0.1"], ["224.0.0.1"]])
def test_a_name_with_any_address_that_is_not_public_is_refused_before_connecting(
        answer: list[str], server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.server_address[1]
    lookups: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver(answer, ["127.0.0.1"], lookups))
    with pytest.raises(MetadataUrlRefused):
        outbound.get(f"https://{NAME}:{port}/x", what="the metadata URL", accept="*/*", user_agent="t")
    assert server.hosts == [] and lookups == [NAME]


def test_a_name_that_does_not_resolve_is_a_502_not_a_500(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver([], [], lookups))
    with pytest.raises(MetadataUnavailable):
        outbound.resolve(f"https://{NAME}/x", "the metadata URL")


def test_plain_http_to_a_public_address_is_refused_even_where_loopback_http_is_allowed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver(["93.184.216.34"], [], lookups))
    with pytest.raises(MetadataUrlRefused):
        outbound.resolve(f"http://{NAME}/x", "the provider URL")
