"""A stand-in for the managed identity endpoint of App Service and Functions, the only fake
in the Entra tests: it speaks the protocol azure-identity's `ManagedIdentityCredential` uses
when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set (GET with `resource`, `client_id` and
the `X-IDENTITY-HEADER` secret; JSON with `access_token` and `expires_on`).

Each token it issues can be made a real PostgreSQL password by `on_issue`, so the
token-as-password sign-in is exercised against the real server.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

#: Under five minutes: azure-identity then never answers from its own cache, so what the app
#: caches (and when it refreshes) is what the test observes.
TOKEN_LIFETIME_S = 240


@dataclass
class Issued:
    resource: str
    client_id: str
    token: str
    expires_on: int


@dataclass
class IdentityEndpoint:
    url: str
    header: str
    client_id: str
    issued: list[Issued] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failing: bool = False
    latency_s: float = 0.0
    #: The endpoint's idea of now, for `expires_on`: the test's clock when it moves time on.
    clock: Callable[[], float] = time.time

    def env(self) -> dict[str, str]:
        """The environment App Service gives a worker with this identity assigned."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.header, "AZURE_CLIENT_ID": self.client_id}

    def tokens(self, resource: str) -> list[str]:
        return [i.token for i in self.issued if i.resource == resource]


@contextmanager
def identity_endpoint(on_issue: Callable[[str, str], None] | None = None) -> Iterator[IdentityEndpoint]:
    """Serve the stand-in on a free loopback port; `on_issue(resource, token)` runs before a
    token is handed out."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            if not secrets.compare_digest(self.headers.get("X-IDENTITY-HEADER", ""), state.header):
                state.refused.append("header")
                return self._send(401, {"error": "unauthorized"})
            if state.failing or query.get("client_id") != state.client_id:
                state.refused.append("failing" if state.failing else "client_id")
                return self._send(400, {"error": "invalid_request", "error_description": "no such identity"})
            time.sleep(state.latency_s)  # a slow endpoint widens any race between callers
            with lock:
                # Long and URL-safe, like a JWT: a real token is ~1.5 kB.
                token = "eyJ" + secrets.token_urlsafe(1100)
                expires_on = int(state.clock()) + TOKEN_LIFETIME_S
                if on_issue is not None:
                    on_issue(query["resource"], token)
                state.issued.append(Issued(query["resource"], query["client_id"], token, expires_on))
            self._send(200, {"access_token": token, "expires_on": str(expires_on), "resource": query["resource"],
                             "token_type": "Bearer", "client_id": query["client_id"]})

        def _send(self, status: int, body: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = IdentityEndpoint(url=f"http://127.0.0.1:{server.server_port}/msi/token",
                             header=secrets.token_hex(16), client_id=f"{secrets.token_hex(4)}-client")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
