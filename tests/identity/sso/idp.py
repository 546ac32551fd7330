"""An independent SAML 2.0 identity provider for the tests: pysaml2's `Server`, configured in
process with its own key and certificate, signing with the xmlsec1 command (Debian `xmlsec1`).

It reads the SP's real metadata and AuthnRequests, and issues real signed responses. `tamper`
edits a response before it is signed (a wrong audience, recipient or time the IdP itself
vouches for); `unsigned` / `wrap` helpers edit it after signing (the attacks).
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

NS = {"samlp": "urn:oasis:names:tc:SAML:2.0:protocol", "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
      "ds": "http://www.w3.org/2000/09/xmldsig#"}
ASSERTION = "{urn:oasis:names:tc:SAML:2.0:assertion}Assertion"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
PASSWORD_CLASS = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"  # pragma: allowlist secret
MFA_CLASS = "http://schemas.microsoft.com/claims/multipleauthn"


def key_and_cert(folder: Path, cn: str) -> tuple[Path, Path, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    key_path, cert_path = folder / f"{cn}.key", folder / f"{cn}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_path.write_text(pem)
    return key_path, cert_path, pem


class PeerIdP:
    """pysaml2 as the IdP of one or more SPs (their metadata given inline)."""

    def __init__(self, folder: Path, sp_metadata: list[str], name: str = "idp") -> None:
        from saml2 import BINDING_HTTP_REDIRECT
        from saml2.config import IdPConfig
        from saml2.saml import NAME_FORMAT_BASIC
        from saml2.server import Server

        folder.mkdir(parents=True, exist_ok=True)
        self.entity_id = f"https://{name}.example.test/{uuid.uuid4()}"
        self.sso_url = f"https://{name}.example.test/sso/redirect"
        self.key_file, self.cert_file, self.cert_pem = key_and_cert(folder, f"{name}-{uuid.uuid4().hex[:6]}")
        config = IdPConfig()
        config.load({
            "entityid": self.entity_id,
            "service": {"idp": {
                "endpoints": {"single_sign_on_service": [(self.sso_url, BINDING_HTTP_REDIRECT)]},
                "policy": {"default": {"lifetime": {"minutes": 5}, "attribute_restrictions": None,
                                       "name_form": NAME_FORMAT_BASIC}},
                "name_id_format": [PERSISTENT],
            }},
            "metadata": {"inline": sp_metadata},
            "key_file": str(self.key_file),
            "cert_file": str(self.cert_file),
            "xmlsec_binary": "/usr/bin/xmlsec1",
        })
        self.server = Server(config=config)

    def metadata(self) -> str:
        from saml2.metadata import create_metadata_string

        return create_metadata_string(None, config=self.server.config, sign=False).decode()

    def read_request(self, location: str) -> dict[str, str]:
        """The AuthnRequest behind an SP's redirect: its id, ACS URL, issuer, and the RelayState."""
        from saml2 import BINDING_HTTP_REDIRECT

        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert urlsplit(location).geturl().startswith(self.sso_url), location
        assert {"SAMLRequest", "RelayState", "SigAlg", "Signature"} <= query.keys(), query.keys()
        request = self.server.parse_authn_request(query["SAMLRequest"], BINDING_HTTP_REDIRECT).message
        return {"id": request.id, "acs_url": request.assertion_consumer_service_url,
                "issuer": request.issuer.text, "relay_state": query["RelayState"], "sig_alg": query["SigAlg"]}

    def response_xml(self, *, sp_entity_id: str, acs_url: str, in_response_to: str | None, name_id: str,
                     attributes: dict[str, list[str]] | None = None, authn_class: str = PASSWORD_CLASS,
                     sign_assertion: bool = True, sign_response: bool = False, sha1: bool = False,
                     tamper: Callable[[etree._Element], None] | None = None) -> bytes:
        """A response as this IdP issues it (signed after `tamper` edited it)."""
        from saml2.saml import NameID

        response = self.server.create_authn_response(
            identity=attributes or {}, in_response_to=in_response_to, destination=acs_url, sp_entity_id=sp_entity_id,
            name_id=NameID(format=PERSISTENT, text=name_id), authn={"class_ref": authn_class},
            sign_response=False, sign_assertion=False)
        doc = etree.fromstring(str(response).encode())
        if tamper is not None:
            tamper(doc)
        if sign_assertion:
            for assertion in doc.findall(ASSERTION):
                doc = self.sign(doc, assertion, sha1=sha1)
        if sign_response:
            doc = self.sign(doc, doc, sha1=sha1)
        return etree.tostring(doc)

    def sign(self, doc: etree._Element, element: etree._Element, *, sha1: bool = False) -> etree._Element:
        """Sign `element` of `doc` (enveloped signature after its Issuer) with xmlsec1:
        RSA-SHA256, or the deprecated RSA-SHA1 when `sha1`."""
        from saml2 import xmldsig
        from saml2.sigver import pre_signature_part

        ident = element.get("ID")
        algs = ((xmldsig.SIG_RSA_SHA1, xmldsig.DIGEST_SHA1) if sha1 else (xmldsig.SIG_RSA_SHA256, xmldsig.DIGEST_SHA256))
        part = pre_signature_part(ident, self.server.sec.my_cert, None, sign_alg=algs[0], digest_alg=algs[1])
        template = etree.fromstring(str(part).encode())
        element.insert(1, template)
        node = ("urn:oasis:names:tc:SAML:2.0:protocol:Response" if element is doc
                else "urn:oasis:names:tc:SAML:2.0:assertion:Assertion")
        signed = self.server.sec.sign_statement(etree.tostring(doc).decode(), node_name=node, node_id=ident)
        return etree.fromstring(signed.encode() if isinstance(signed, str) else signed)


def b64(xml: bytes) -> str:
    return base64.b64encode(xml).decode()


def parse(xml: bytes) -> etree._Element:
    return etree.fromstring(xml)


def first(doc: etree._Element, path: str) -> Any:
    found = doc.xpath(path, namespaces=NS)
    assert found, path
    return found[0]
