"""Telemetry: off and not even imported without its setting; with it, a request's span, its
SQL and its access log reach the ingestion endpoint, sent with the identity's Entra token.

The ingestion endpoint is a local HTTPS server (the Azure SDK sends bearer tokens over TLS
only) with a certificate made here and trusted through REQUESTS_CA_BUNDLE; the identity
endpoint is the stand-in of test_entra. The distro itself is real and runs in a real devhost.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import ROOT, Host, PersonFactory, Tenant, auth
from tests.core.identity_endpoint import identity_endpoint

MONITOR = "https://monitor.azure.com"


def test_without_the_setting_nothing_is_configured_or_imported() -> None:
    env = {k: v for k, v in os.environ.items() if k != "APPLICATIONINSIGHTS_CONNECTION_STRING"}
    probe = ("import json, sys\nimport function_app\nfrom shared.core import telemetry\n"
             "print(json.dumps([telemetry.enabled(), sorted(sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    enabled, modules = json.loads(done.stdout.splitlines()[-1])
    assert enabled is False
    assert [m for m in modules if m.startswith(("azure.monitor", "opentelemetry"))] == []


@dataclass
class Ingestion:
    url: str
    ca_file: Path
    batches: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)

    def envelopes(self) -> list[dict[str, Any]]:
        return [e for _, batch in self.batches for e in batch]


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, its own trust anchor."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "custos test ingestion")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "ingestion.pem", directory / "ingestion.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def ingestion(tmp_path: Path) -> Iterator[Ingestion]:
    """A stand-in Application Insights ingestion endpoint (`POST /v2.1/track`) over HTTPS."""
    cert_file, key_file = _certificate(tmp_path)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            text = body.decode()
            items = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()]
            state.batches.append((self.headers.get("Authorization", ""), items))
            reply = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state = Ingestion(url=f"https://127.0.0.1:{server.server_port}/", ca_file=cert_file)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _of_kind(envelopes: list[dict[str, Any]], base_type: str) -> list[dict[str, Any]]:
    return [e["data"]["baseData"] | {"tags": e.get("tags", {})} for e in envelopes
            if e.get("data", {}).get("baseType") == base_type]


def test_a_request_is_traced_to_the_ingestion_endpoint_with_the_identitys_token(
    ingestion: Ingestion, tenant: Tenant, make_person: PersonFactory
) -> None:
    person = make_person(tenant.id, "VIEWER")
    with identity_endpoint() as identity:
        host = Host(env={
            **identity.env(),
            "APPLICATIONINSIGHTS_CONNECTION_STRING":
                f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint={ingestion.url}",
            "REQUESTS_CA_BUNDLE": str(ingestion.ca_file),
            "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_BLRP_SCHEDULE_DELAY": "200",
            # The distro's default samples 5 traces a second, and each export here fetches a token
            # (the stand-in's tokens are short-lived), itself a traced call.
            "OTEL_TRACES_SAMPLER": "always_on",
        })
        try:
            with httpx.Client(base_url=host.url, timeout=30) as client:
                response = client.get("/api/me", headers=auth(person.token))
            assert response.status_code == 200, response.text
            request_id = response.headers["X-Request-Id"]

            def arrived() -> bool:
                # The request span, its SQL and its access log line: batches may come in any order
                # (the exporter retries a failed one later).
                envelopes = ingestion.envelopes()
                operations = {r["tags"].get("ai.operation.id") for r in _of_kind(envelopes, "RequestData")
                              if r.get("properties", {}).get("custos.request_id") == request_id}
                return bool(operations) and any(
                    d["tags"].get("ai.operation.id") in operations for d in _of_kind(envelopes, "RemoteDependencyData")
                ) and any(m.get("properties", {}).get("request_id") == request_id
                          for m in _of_kind(envelopes, "MessageData"))

            deadline = time.monotonic() + 60  # a bound on the wait, not an assertion about speed
            while not arrived() and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            host.stop()
        monitor_tokens = [i.token for i in identity.issued if i.resource.rstrip("/") == MONITOR]

    envelopes = ingestion.envelopes()
    [request] = [r for r in _of_kind(envelopes, "RequestData")
                 if r.get("properties", {}).get("custos.request_id") == request_id]
    assert request["name"] == "GET me" and request["responseCode"] == "200"
    assert request["properties"]["custos.tenant_id"] == tenant.id
    operation = request["tags"]["ai.operation.id"]
    sql = [d for d in _of_kind(envelopes, "RemoteDependencyData") if d["tags"].get("ai.operation.id") == operation]
    assert sql and all(d["type"] == "postgresql" for d in sql), [
        (d["name"], d.get("type"), d["tags"].get("ai.operation.id")) for d in _of_kind(envelopes, "RemoteDependencyData")]
    logs = [m for m in _of_kind(envelopes, "MessageData") if m.get("properties", {}).get("request_id") == request_id]
    assert logs and logs[0]["properties"]["tenant"] == tenant.id and logs[0]["properties"]["user"] == person.id
    # Sent with the identity's token for Azure Monitor, never an instrumentation key alone.
    assert monitor_tokens and {a for a, _ in ingestion.batches} <= {f"Bearer {t}" for t in monitor_tokens}
    # The caller's bearer token is in no span, attribute or log record.
    assert person.token not in json.dumps(envelopes)
