"""SAML 2.0 through the real host against an IdP nobody here wrote (pysaml2, signing with
xmlsec1): SP metadata, SP-initiated sign-in end to end into a Custos session, and the attacks of
the literature, each refused with problem+json and a security audit event, leaving no session."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from shared.core import db
from shared.tenancy.tenants import Tenant, create_tenant
from tests.conftest import auth
from tests.identity.sso.helpers import events, insert_provider, links, session_count
from tests.identity.sso.idp import ASSERTION, MFA_CLASS, NS, PeerIdP, b64, first

DEF = "urn:mace:dir:attribute-def:"
"""pysaml2 names attributes in the "basic" name format by these URIs, as real IdPs name theirs by URI."""


def der_b64(pem: str) -> str:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@dataclass
class Sp:
    """One tenant's SAML set-up: the tenant, its provider, and the peer IdP behind it."""

    tenant: Tenant
    provider_id: str
    idp: PeerIdP
    entity_id: str
    acs_url: str


def make_sp(client: httpx.Client, tenant: Tenant, folder: Path, idp: PeerIdP | None = None,
            **flags: Any) -> Sp:
    metadata = client.get(f"/api/sso/saml/{tenant.slug}/metadata")
    assert metadata.status_code == 200, metadata.text
    if idp is None:
        idp = PeerIdP(folder, [metadata.text])
    else:
        idp.server.metadata.load("inline", metadata.text)  # the IdP now also serves this SP
    config = {"idp_entity_id": idp.entity_id, "idp_sso_url": idp.sso_url, "idp_certificates": [der_b64(idp.cert_pem)],
              "attributes": {"email": f"{DEF}mail", "display_name": f"{DEF}displayName", "groups": f"{DEF}isMemberOf"},
              "mfa_authn_contexts": [MFA_CLASS], **flags.pop("config", {})}
    provider_id = insert_provider(tenant.id, config=config, **{"jit": True, **flags})
    root = etree.fromstring(metadata.content)
    acs = root.xpath("//md:AssertionConsumerService/@Location",
                     namespaces={"md": "urn:oasis:names:tc:SAML:2.0:metadata"})[0]
    return Sp(tenant, provider_id, idp, root.get("entityID"), acs)


@pytest.fixture
def sp(client: httpx.Client, tenant: Tenant, tmp_path: Path) -> Sp:
    return make_sp(client, tenant, tmp_path / "idp")


COOKIE = re.compile(r"custos_sso=([A-Za-z0-9_-]+)")


def start(client: httpx.Client, sp: Sp) -> tuple[dict[str, str], str]:
    r = client.get(f"/api/sso/saml/{sp.tenant.slug}/login", params={"provider": sp.provider_id},
                   follow_redirects=False)
    assert r.status_code == 302, r.text
    cookie = r.headers["set-cookie"]
    assert all(flag in cookie for flag in ("HttpOnly", "Secure", "SameSite=None")), cookie
    return sp.idp.read_request(r.headers["location"]), COOKIE.search(cookie).group(1)  # type: ignore[union-attr]


def post_acs(client: httpx.Client, sp: Sp, response: str, relay: str | None, cookie: str | None) -> httpx.Response:
    form = {"SAMLResponse": response, **({"RelayState": relay} if relay is not None else {})}
    return client.post(f"/api/sso/saml/{sp.tenant.slug}/acs", data=form, follow_redirects=False,
                       headers={"Cookie": f"custos_sso={cookie}"} if cookie else {})


def exchange(client: httpx.Client, location: str, cookie: str) -> httpx.Response:
    fragment = urlsplit(location).fragment
    code = parse_qs(fragment.split("?", 1)[1])["code"][0]
    return client.post("/api/auth/sso/exchange", json={"code": code}, headers={"Cookie": f"custos_sso={cookie}"})


def issue(sp: Sp, request: dict[str, str], name_id: str = "subject-alice", **kw: Any) -> bytes:
    attributes = kw.pop("attributes", {"mail": ["alice@example.test"], "displayName": ["Alice"], "isMemberOf": ["qa"]})
    return sp.idp.response_xml(sp_entity_id=kw.pop("sp_entity_id", request["issuer"]),
                               acs_url=kw.pop("acs_url", request["acs_url"]),
                               in_response_to=kw.pop("in_response_to", request["id"]), name_id=name_id,
                               attributes=attributes, **kw)


def sign_in(client: httpx.Client, sp: Sp, name_id: str = "subject-alice", **kw: Any) -> httpx.Response:
    request, cookie = start(client, sp)
    r = post_acs(client, sp, b64(issue(sp, request, name_id, **kw)), request["relay_state"], cookie)
    assert r.status_code == 303, r.text
    return exchange(client, r.headers["location"], cookie)


def test_the_sp_metadata_names_the_tenants_entity_acs_and_signing_key(client: httpx.Client, tenant: Tenant) -> None:
    r = client.get(f"/api/sso/saml/{tenant.slug}/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/samlmetadata+xml")
    root = etree.fromstring(r.content)
    md = {"md": "urn:oasis:names:tc:SAML:2.0:metadata"}
    assert root.get("entityID").endswith(f"/api/sso/saml/{tenant.slug}/metadata")
    [descriptor] = root.xpath("md:SPSSODescriptor", namespaces=md)
    assert descriptor.get("AuthnRequestsSigned") == "true" and descriptor.get("WantAssertionsSigned") == "true"
    assert root.xpath("//md:AssertionConsumerService/@Location", namespaces=md)[0].endswith(
        f"/api/sso/saml/{tenant.slug}/acs")
    assert root.xpath("//md:NameIDFormat/text()", namespaces=md) == [
        "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"]
    assert client.get("/api/sso/saml/no-such-tenant-x/metadata").status_code == 404


def test_a_saml_sign_in_ends_in_a_working_session_with_its_events_audited(client: httpx.Client, sp: Sp) -> None:
    request, cookie = start(client, sp)
    assert request["sig_alg"] == "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    r = post_acs(client, sp, b64(issue(sp, request)), request["relay_state"], cookie)
    assert r.status_code == 303, r.text
    assert "#/sso-complete?code=" in r.headers["location"]
    assert "access_token" not in r.headers["location"] and session_count(sp.tenant.id) == 0
    tokens = exchange(client, r.headers["location"], cookie)
    assert tokens.status_code == 200, tokens.text
    me = client.get("/api/me", headers=auth(tokens.json()["access_token"]))
    assert me.status_code == 200, me.text
    assert (me.json()["user"]["email"], me.json()["role"]) == ("alice@example.test", "VIEWER")
    assert [ln["subject"] for ln in links(sp.tenant.id)] == ["subject-alice"]
    assert [e["after"]["issuer"] for e in events(sp.tenant.id, "auth.sso_verified")] == [sp.idp.entity_id]
    [login] = events(sp.tenant.id, "auth.sso_login")
    assert login["target_id"] == tokens.json()["session_id"] and login["after"]["provider_id"] == sp.provider_id
    assert events(sp.tenant.id, "user.provisioned") and events(sp.tenant.id, "sso.account_linked")
    refreshed = client.post("/api/auth/refresh", json={"refresh_token": tokens.json()["refresh_token"]})
    assert refreshed.status_code == 200


def test_the_idps_mfa_counts_only_where_the_provider_trusts_it(client: httpx.Client, tenant: Tenant,
                                                                tmp_path: Path) -> None:
    trusting = make_sp(client, tenant, tmp_path / "a", trust_idp_mfa=True,
                       role_mapping={"rules": [{"value": "ops", "role": "ADMIN"}]}, allow_admin_mapping=True)
    r = sign_in(client, trusting, "boss", authn_class=MFA_CLASS, attributes={"mail": ["boss@example.test"],
                                                                             "isMemberOf": ["ops"]})
    assert r.status_code == 200 and "mfa_enrolment_required" not in r.json(), r.text
    me = client.get("/api/me", headers=auth(r.json()["access_token"]))
    assert me.status_code == 200 and me.json()["role"] == "ADMIN"
    # Without the MFA context the same ADMIN must enrol a Custos factor first.
    r = sign_in(client, trusting, "boss", attributes={"mail": ["boss@example.test"]})
    assert r.json()["mfa_enrolment_required"] is True


# --- attacks --------------------------------------------------------------------------------------------


def refused(r: httpx.Response, sp: Sp, reason: str | None = None, code: str = "sso-assertion-rejected") -> None:
    assert r.status_code in (401, 403), r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == f"urn:custos:problem:{code}", body
    if reason is not None:
        assert body["reason"] == reason, body
    assert "Traceback" not in r.text and "<" not in r.text
    assert session_count(sp.tenant.id) == 0
    failures = events(sp.tenant.id, "auth.sso_login_failed")
    assert failures and failures[-1]["after"]["reason"] == body["reason"], failures


def victim(sp: Sp) -> str:
    """A user linked to subject "victim" (the account an attacker wants)."""
    from tests.conftest import create_user

    user = create_user(sp.tenant.id, "ADMIN", mfa=False)
    with db.tenant_tx(sp.tenant.id) as conn:
        conn.execute("insert into sso_links (tenant_id, provider_id, subject, user_id) values (%s, %s, 'victim', %s)",
                     (sp.tenant.id, sp.provider_id, user["id"]))
    return str(user["id"])


def test_an_unsigned_assertion_is_refused(client: httpx.Client, sp: Sp) -> None:
    request, cookie = start(client, sp)
    xml = issue(sp, request, "victim", sign_assertion=False)
    refused(post_acs(client, sp, b64(xml), request["relay_state"], cookie), sp)


def test_an_assertion_signed_with_sha1_is_refused(client: httpx.Client, sp: Sp) -> None:
    request, cookie = start(client, sp)
    refused(post_acs(client, sp, b64(issue(sp, request, sha1=True)), request["relay_state"], cookie), sp,
            "deprecated_signature_method")


def test_a_signed_response_around_an_unsigned_assertion_is_refused(client: httpx.Client, sp: Sp) -> None:
    request, cookie = start(client, sp)
    xml = issue(sp, request, "victim", sign_assertion=False, sign_response=True)
    refused(post_acs(client, sp, b64(xml), request["relay_state"], cookie), sp)


def test_an_assertion_signed_by_a_key_the_provider_does_not_hold_is_refused(client: httpx.Client, sp: Sp,
                                                                             tmp_path: Path) -> None:
    request, cookie = start(client, sp)
    impostor = PeerIdP(tmp_path / "impostor", [client.get(f"/api/sso/saml/{sp.tenant.slug}/metadata").text])
    impostor.server.config.entityid = sp.idp.entity_id  # claims to be the tenant's IdP, signs with its own key
    xml = impostor.response_xml(sp_entity_id=request["issuer"], acs_url=request["acs_url"],
                                in_response_to=request["id"], name_id="victim")
    refused(post_acs(client, sp, b64(xml), request["relay_state"], cookie), sp, "invalid_signature")


def test_a_value_changed_after_signing_is_refused(client: httpx.Client, sp: Sp) -> None:
    victim(sp)
    request, cookie = start(client, sp)
    doc = etree.fromstring(issue(sp, request, "attacker"))
    first(doc, "//saml:Subject/saml:NameID").text = "victim"
    refused(post_acs(client, sp, b64(etree.tostring(doc)), request["relay_state"], cookie), sp, "invalid_signature")


def _evil_assertion(assertion: etree._Element) -> etree._Element:
    evil = copy.deepcopy(assertion)
    for sig in evil.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
        evil.remove(sig)
    evil.set("ID", "_evil" + uuid.uuid4().hex)
    first(evil, "saml:Subject/saml:NameID").text = "victim"
    return evil


def xsw1(doc: etree._Element) -> etree._Element:
    """XSW1: a new unsigned Response (claiming the victim) whose Signature carries the original signed Response."""
    evil = copy.deepcopy(doc)
    evil.set("ID", "_evil" + uuid.uuid4().hex)
    for a in evil.findall(ASSERTION):
        evil.replace(a, _evil_assertion(a))
    first(evil, "ds:Signature").append(doc)
    return evil


def xsw2(doc: etree._Element) -> etree._Element:
    """XSW2: as XSW1, the original signed Response placed before the Signature instead."""
    evil = copy.deepcopy(doc)
    evil.set("ID", "_evil" + uuid.uuid4().hex)
    for a in evil.findall(ASSERTION):
        evil.replace(a, _evil_assertion(a))
    first(evil, "ds:Signature").addprevious(doc)
    return evil


def xsw3(doc: etree._Element) -> etree._Element:
    """XSW3: an unsigned evil Assertion inserted before the signed one."""
    original = doc.find(ASSERTION)
    original.addprevious(_evil_assertion(original))
    return doc


def xsw4(doc: etree._Element) -> etree._Element:
    """XSW4: the signed Assertion moved inside an unsigned evil Assertion."""
    original = doc.find(ASSERTION)
    evil = _evil_assertion(original)
    doc.replace(original, evil)
    evil.append(original)
    return doc


def xsw5(doc: etree._Element) -> etree._Element:
    """XSW5: the signed Assertion altered in place, an unsigned copy of the original appended to the Response."""
    original = doc.find(ASSERTION)
    pristine = copy.deepcopy(original)
    for sig in pristine.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
        pristine.remove(sig)
    first(original, "saml:Subject/saml:NameID").text = "victim"
    doc.append(pristine)
    return doc


def xsw6(doc: etree._Element) -> etree._Element:
    """XSW6: the signed Assertion altered in place, an unsigned copy of the original inside its Signature."""
    original = doc.find(ASSERTION)
    pristine = copy.deepcopy(original)
    for sig in pristine.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
        pristine.remove(sig)
    first(original, "saml:Subject/saml:NameID").text = "victim"
    first(original, "ds:Signature").append(pristine)
    return doc


def xsw7(doc: etree._Element) -> etree._Element:
    """XSW7: an Extensions block holding an unsigned evil Assertion, before the signed one."""
    original = doc.find(ASSERTION)
    extensions = etree.Element("{urn:oasis:names:tc:SAML:2.0:protocol}Extensions")
    extensions.append(_evil_assertion(original))
    first(doc, "saml:Issuer").addnext(extensions)
    return doc


def xsw8(doc: etree._Element) -> etree._Element:
    """XSW8: an evil Assertion carrying the original Signature, whose ds:Object holds the original (unsigned) Assertion."""
    original = doc.find(ASSERTION)
    evil = copy.deepcopy(original)
    evil.set("ID", original.get("ID"))
    first(evil, "saml:Subject/saml:NameID").text = "victim"
    signature = first(evil, "ds:Signature")
    pristine = copy.deepcopy(original)
    for sig in pristine.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
        pristine.remove(sig)
    obj = etree.SubElement(signature, "{http://www.w3.org/2000/09/xmldsig#}Object")
    obj.append(pristine)
    doc.replace(original, evil)
    return doc


XSW: dict[str, tuple[Callable[[etree._Element], etree._Element], bool]] = {
    "XSW1": (xsw1, True), "XSW2": (xsw2, True), "XSW3": (xsw3, False), "XSW4": (xsw4, False),
    "XSW5": (xsw5, False), "XSW6": (xsw6, False), "XSW7": (xsw7, False), "XSW8": (xsw8, False),
}


@pytest.mark.parametrize("variant", sorted(XSW))
def test_signature_wrapping_is_refused(client: httpx.Client, sp: Sp, variant: str) -> None:
    victim_id = victim(sp)
    wrap, response_signed = XSW[variant]
    request, cookie = start(client, sp)
    doc = etree.fromstring(issue(sp, request, "attacker", sign_response=response_signed))
    wrapped = wrap(doc)
    assert "victim" in etree.tostring(wrapped).decode()
    refused(post_acs(client, sp, b64(etree.tostring(wrapped)), request["relay_state"], cookie), sp)
    with db.tenant_tx(sp.tenant.id) as conn:
        assert conn.execute("select count(*) as n from sessions where user_id = %s", (victim_id,)).fetchone()["n"] == 0


def test_a_comment_in_the_nameid_does_not_truncate_the_subject(client: httpx.Client, sp: Sp) -> None:
    """CVE-2017-11427 class: "victim<!---->.evil" must not be read as "victim"."""
    victim(sp)
    request, cookie = start(client, sp)

    def inject(doc: etree._Element) -> None:
        nameid = first(doc, "//saml:Subject/saml:NameID")
        nameid.text = "victim"
        nameid.append(etree.Comment(""))
        nameid[-1].tail = ".attacker.example"

    r = post_acs(client, sp, b64(issue(sp, request, "placeholder", tamper=inject)), request["relay_state"], cookie)
    if r.status_code == 303:  # accepted as the whole value, never as the victim
        tokens = exchange(client, r.headers["location"], cookie)
        assert tokens.status_code == 200
        assert [ln["subject"] for ln in links(sp.tenant.id) if ln["subject"] != "victim"] == [
            "victim.attacker.example"]
        me = client.get("/api/me", headers=auth(tokens.json()["access_token"])).json()
        assert me["user"]["email"] == "alice@example.test"
    else:
        refused(r, sp)


def test_a_replayed_response_is_refused(client: httpx.Client, sp: Sp) -> None:
    request, cookie = start(client, sp)
    saml_response = b64(issue(sp, request))
    assert post_acs(client, sp, saml_response, request["relay_state"], cookie).status_code == 303
    again = post_acs(client, sp, saml_response, request["relay_state"], cookie)
    assert again.status_code == 401 and again.json()["reason"] == "unknown_relay_state"
    # A fresh request cannot adopt the old response either (its InResponseTo names the old request).
    request2, cookie2 = start(client, sp)
    refused_again = post_acs(client, sp, saml_response, request2["relay_state"], cookie2)
    assert refused_again.status_code == 401 and refused_again.json()["type"].endswith("sso-assertion-rejected")
    assert session_count(sp.tenant.id) == 0


def test_an_unsolicited_response_is_refused_unless_enabled_and_then_only_once(client: httpx.Client, tenant: Tenant,
                                                                              tmp_path: Path) -> None:
    off = make_sp(client, tenant, tmp_path / "off")
    request = {"issuer": off.entity_id, "acs_url": off.acs_url, "id": None}
    refused(post_acs(client, off, b64(issue(off, request)), None, None), off, "unsolicited_response")
    on = make_sp(client, tenant, tmp_path / "on", config={"idp_initiated": True})
    saml_response = b64(issue(on, {**request, "id": None}))
    first_post = post_acs(client, on, saml_response, None, None)
    assert first_post.status_code == 303, first_post.text
    cookie = COOKIE.search(first_post.headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    assert exchange(client, first_post.headers["location"], cookie).status_code == 200
    replay = post_acs(client, on, saml_response, None, None)
    assert replay.status_code == 401 and replay.json()["type"] == "urn:custos:problem:sso-assertion-replayed"
    assert events(tenant.id, "auth.sso_login_failed")[-1]["after"]["reason"] == "assertion_replayed"
    assert session_count(tenant.id) == 1


def _set(path: str, attribute: str | None, value: str) -> Callable[[etree._Element], None]:
    def tamper(doc: etree._Element) -> None:
        for el in doc.xpath(path, namespaces=NS):
            if attribute is None:
                el.text = value
            else:
                el.set(attribute, value)
    return tamper


def _minutes(delta: int) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(("reason", "tamper"), [
    ("wrong_audience", _set("//saml:AudienceRestriction/saml:Audience", None, "https://other-sp.example.test/")),
    ("wrong_subjectconfirmation", _set("//saml:SubjectConfirmationData", "Recipient",
                                       "https://other-sp.example.test/acs")),
    ("wrong_destination", _set("/samlp:Response", "Destination", "https://other-sp.example.test/acs")),
    ("assertion_expired", _set("//saml:Conditions", "NotOnOrAfter", _minutes(-30))),
    ("wrong_subjectconfirmation", _set("//saml:SubjectConfirmationData", "NotOnOrAfter", _minutes(-30))),
    ("assertion_too_early", _set("//saml:Conditions", "NotBefore", _minutes(30))),
    ("wrong_inresponseto", _set("//saml:SubjectConfirmationData|/samlp:Response", "InResponseTo", "_other")),
    ("nameid_not_persistent", _set("//saml:Subject/saml:NameID", "Format",
                                   "urn:oasis:names:tc:SAML:2.0:nameid-format:transient")),
], ids=["audience", "recipient", "destination", "expired", "confirmation-expired", "not-yet-valid",
        "in-response-to", "transient-nameid"])
def test_an_assertion_the_idp_signed_for_something_else_is_refused(client: httpx.Client, sp: Sp, reason: str,
                                                                   tamper: Callable[[etree._Element], None]) -> None:
    request, cookie = start(client, sp)
    xml = issue(sp, request, tamper=tamper, sign_response=True)
    refused(post_acs(client, sp, b64(xml), request["relay_state"], cookie), sp, reason)


def test_a_response_from_another_browser_is_refused(client: httpx.Client, sp: Sp) -> None:
    """Login CSRF: an attacker's own finished sign-in posted from the victim's browser."""
    request, _ = start(client, sp)
    refused(post_acs(client, sp, b64(issue(sp, request)), request["relay_state"], "not-the-cookie"), sp, "other_browser")


def test_another_tenants_idp_cannot_sign_in_here(client: httpx.Client, sp: Sp, tmp_path: Path) -> None:
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    # The other tenant configures the same IdP (e.g. one shared Okta org): its genuine assertion,
    # addressed to the other tenant's SP, posted here.
    theirs = make_sp(client, other, tmp_path / "theirs", idp=sp.idp)
    their_request, _ = start(client, theirs)
    request, cookie = start(client, sp)
    xml = issue(theirs, their_request, "victim", in_response_to=request["id"])
    refused(post_acs(client, sp, b64(xml), request["relay_state"], cookie), sp)
    # An IdP only the other tenant trusts, answering this tenant's request.
    rogue = make_sp(client, other, tmp_path / "rogue")
    rogue.idp.server.metadata.load("inline", client.get(f"/api/sso/saml/{sp.tenant.slug}/metadata").text)
    request, cookie = start(client, sp)
    xml = rogue.idp.response_xml(sp_entity_id=request["issuer"], acs_url=request["acs_url"],
                                 in_response_to=request["id"], name_id="victim")
    refused(post_acs(client, sp, b64(xml), request["relay_state"], cookie), sp)
    # The other tenant's relay state is unknown here.
    refused(post_acs(client, sp, b64(issue(theirs, their_request)), their_request["relay_state"], cookie), sp,
            "unknown_relay_state")


@pytest.mark.parametrize("body", ["", "SAMLResponse=%%%", "SAMLResponse=PGZvbz4=", "RelayState=x",
                                  "SAMLResponse=" + "A" * 60000])
def test_garbage_at_the_acs_is_a_problem_not_a_500(client: httpx.Client, sp: Sp, body: str) -> None:
    r = client.post(f"/api/sso/saml/{sp.tenant.slug}/acs", content=body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code in (400, 401, 413) and r.headers["content-type"] == "application/problem+json", r.text
    assert session_count(sp.tenant.id) == 0


# --- IdP metadata, fetched once by an ADMIN ------------------------------------------------------------


class _MetadataServer:
    """A loopback HTTP server answering one path with a body (and the others with 404 or a redirect)."""

    def __init__(self, body: bytes) -> None:
        import http.server
        import threading

        outer = self
        self.body = body
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                outer.hits += 1
                if self.path == "/metadata.xml":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/samlmetadata+xml")
                    self.end_headers()
                    self.wfile.write(outer.body)
                elif self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                    self.end_headers()
                else:
                    self.send_response(404)
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _provider_with_metadata_url(client: httpx.Client, token: str, url: str) -> str:
    r = client.post("/api/sso/providers", headers=auth(token), json={
        "kind": "saml", "name": f"Okta {uuid.uuid4().hex[:6]}", "reason": "metadata", "config": {"metadata_url": url}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_an_admin_fetches_idp_metadata_once_and_it_configures_the_provider(
        client: httpx.Client, tenant: Tenant, tmp_path: Path, make_person: Any) -> None:
    idp = PeerIdP(tmp_path / "idp", [client.get(f"/api/sso/saml/{tenant.slug}/metadata").text])
    server = _MetadataServer(idp.metadata().encode())
    try:
        admin = make_person(tenant.id, "ADMIN")
        pid = _provider_with_metadata_url(client, admin.token, server.url + "/metadata.xml")
        r = client.post(f"/api/sso/providers/{pid}/metadata", json={"reason": "initial set-up"},
                        headers=auth(admin.token))
        assert r.status_code == 200, r.text
        config = r.json()["config"]
        assert (config["idp_entity_id"], config["idp_sso_url"]) == (idp.entity_id, idp.sso_url)
        assert config["idp_certificates"] == [der_b64(idp.cert_pem)]
        assert server.hits == 1
        [changed] = events(tenant.id, "sso.provider_updated")
        assert changed["after"]["config"]["idp_entity_id"] == idp.entity_id and changed["reason"] == "initial set-up"
        # Enabled with what the metadata said, it signs people in; sign-in never fetches metadata.
        assert client.patch(f"/api/sso/providers/{pid}", json={"enabled": True, "jit": True, "reason": "go live"},
                            headers=auth(admin.token)).status_code == 200
        sp = Sp(tenant, pid, idp, *[etree.fromstring(client.get(f"/api/sso/saml/{tenant.slug}/metadata").content)
                                    .get("entityID")] * 2)
        request, cookie = start(client, sp)
        r = post_acs(client, sp, b64(idp.response_xml(sp_entity_id=request["issuer"], acs_url=request["acs_url"],
                                                      in_response_to=request["id"], name_id="okta-1",
                                                      attributes={"mail": ["o@example.test"]})),
                     request["relay_state"], cookie)
        assert r.status_code == 403 and r.json()["reason"] == "no_email"  # no attribute mapping configured yet
        assert server.hits == 1
    finally:
        server.close()


@pytest.mark.parametrize(("url", "status", "code"), [
    ("https://10.0.0.8/metadata.xml", 422, "sso-metadata-url-refused"),
    ("https://169.254.169.254/latest/meta-data/", 422, "sso-metadata-url-refused"),
    ("https://[fd00::1]/metadata.xml", 422, "sso-metadata-url-refused"),
    ("http://203.0.113.9/metadata.xml", 422, "sso-provider-invalid"),
    ("https://192.168.1.1/metadata.xml", 422, "sso-metadata-url-refused"),
    ("https://metadata.invalid/metadata.xml", 502, "sso-metadata-unavailable"),
])
def test_metadata_urls_to_private_addresses_are_refused(client: httpx.Client, tenant: Tenant, make_person: Any,
                                                        url: str, status: int, code: str) -> None:
    admin = make_person(tenant.id, "ADMIN")
    if code == "sso-provider-invalid":  # plain http is refused when the URL is saved
        r = client.post("/api/sso/providers", headers=auth(admin.token), json={
            "kind": "saml", "name": "Plain", "reason": "metadata", "config": {"metadata_url": url}})
        assert r.status_code == status and r.json()["type"] == f"urn:custos:problem:{code}", r.text
        return
    pid = _provider_with_metadata_url(client, admin.token, url)
    r = client.post(f"/api/sso/providers/{pid}/metadata", json={"reason": "fetch"}, headers=auth(admin.token))
    assert r.status_code == status and r.json()["type"] == f"urn:custos:problem:{code}", r.text
    assert events(tenant.id, "sso.provider_updated") == []


@pytest.mark.parametrize(("path", "body"), [("/moved", b""), ("/missing", b""), ("/metadata.xml", b"<not-metadata/>"),
                                            ("/metadata.xml", b"<x>" + b"A" * 1_100_000 + b"</x>")])
def test_bad_metadata_answers_are_refused_and_change_nothing(client: httpx.Client, tenant: Tenant, make_person: Any,
                                                             path: str, body: bytes) -> None:
    server = _MetadataServer(body)
    try:
        admin = make_person(tenant.id, "ADMIN")
        pid = _provider_with_metadata_url(client, admin.token, server.url + path)
        r = client.post(f"/api/sso/providers/{pid}/metadata", json={"reason": "fetch"}, headers=auth(admin.token))
        assert r.status_code == 502 and r.json()["type"] == "urn:custos:problem:sso-metadata-unavailable", r.text
        assert events(tenant.id, "sso.provider_updated") == []
    finally:
        server.close()


def test_a_sign_in_cannot_start_at_a_disabled_or_foreign_provider(client: httpx.Client, sp: Sp) -> None:
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    foreign = insert_provider(other.id, config={"idp_sso_url": "https://idp.example.test/"})
    disabled = insert_provider(sp.tenant.id, enabled=False)
    for pid in (foreign, disabled, str(uuid.uuid4())):
        r = client.get(f"/api/sso/saml/{sp.tenant.slug}/login", params={"provider": pid}, follow_redirects=False)
        assert r.status_code == 404 and r.json()["type"] == "urn:custos:problem:sso-provider-unavailable", r.text
    with db.tenant_tx(sp.tenant.id) as conn:
        assert conn.execute("select count(*) as n from sso_requests").fetchone()["n"] == 0


def test_the_housekeeping_timer_purges_only_what_has_expired(client: httpx.Client, sp: Sp, host: Any) -> None:
    import time

    from shared.core import storage
    from shared.identity.sso.saml import REPLAY_TABLE

    table = storage.table_service().get_table_client(REPLAY_TABLE)
    old, live = uuid.uuid4().hex, uuid.uuid4().hex
    table.create_entity({"PartitionKey": sp.tenant.id, "RowKey": old, "expires_at": time.time() - 3600})
    table.create_entity({"PartitionKey": sp.tenant.id, "RowKey": live, "expires_at": time.time() + 3600})
    used_request, _ = start(client, sp)
    waiting_request, _ = start(client, sp)
    with db.tenant_tx(sp.tenant.id) as conn:
        conn.execute("update sso_requests set used_at = now() where request_id = %s", (used_request["id"],))
    r = client.post("/admin/functions/purge_sso_state")
    assert r.status_code == 202, r.text
    keys = {e["RowKey"] for e in table.query_entities("PartitionKey eq @p", parameters={"p": sp.tenant.id})}
    assert old not in keys and live in keys
    with db.tenant_tx(sp.tenant.id) as conn:
        assert [r["request_id"] for r in conn.execute("select request_id from sso_requests")] == [
            waiting_request["id"]]
    with db.platform_tx() as conn:
        beat = conn.execute("select ok, detail from job_heartbeats where name = 'purge_sso_state'").fetchone()
    assert beat["ok"] is True and "replay" in beat["detail"]


@pytest.mark.parametrize("provider", ["x" * 36, "' OR 1=1 --", ""])
def test_a_malformed_provider_id_is_a_validation_problem(client: httpx.Client, sp: Sp, provider: str) -> None:
    r = client.get(f"/api/sso/saml/{sp.tenant.slug}/login", params={"provider": provider}, follow_redirects=False)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text


def test_a_linked_user_with_a_factor_proves_it_after_the_idp(client: httpx.Client, sp: Sp) -> None:
    import pyotp

    from tests.conftest import create_user

    user = create_user(sp.tenant.id, "REVIEWER")  # with a confirmed TOTP
    with db.tenant_tx(sp.tenant.id) as conn:
        conn.execute("insert into sso_links (tenant_id, provider_id, subject, user_id) values (%s, %s, 'rev-1', %s)",
                     (sp.tenant.id, sp.provider_id, user["id"]))
    step = sign_in(client, sp, "rev-1", authn_class=MFA_CLASS)  # MFA at the IdP, but not trusted here
    assert step.status_code == 200 and step.json()["mfa_required"] is True, step.text
    assert session_count(sp.tenant.id) == 0
    r = client.post("/api/auth/mfa/verify", json={"mfa_ticket": step.json()["mfa_ticket"],
                                                  "code": pyotp.TOTP(user["totp_secret"]).now()})
    assert r.status_code == 200, r.text
    assert client.get("/api/me", headers=auth(r.json()["access_token"])).json()["user"]["id"] == user["id"]


def test_the_acs_names_an_unknown_tenant_before_reading_the_body_and_wants_a_form(client: httpx.Client,
                                                                                 sp: Sp) -> None:
    r = client.post("/api/sso/saml/no-such-tenant-y/acs", json={"SAMLResponse": "x"})
    assert r.status_code == 404 and r.json()["type"] == "urn:custos:problem:not-found"
    r = client.post(f"/api/sso/saml/{sp.tenant.slug}/acs", json={"SAMLResponse": "x"})
    assert r.status_code == 415 and r.json()["type"] == "urn:custos:problem:unsupported-media-type"
    r = client.post(f"/api/sso/saml/{sp.tenant.slug}/acs", content="&".join(f"f{i}=1" for i in range(20)),
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and r.json()["type"] == "urn:custos:problem:malformed-request"


def test_lxml_and_xmlsec_share_one_libxml2() -> None:
    """xmlsec signs and verifies on lxml's trees: with two different libxml2s it refuses to load
    or, worse, misreads them; the pinned wheels must keep bundling the same one."""
    import xmlsec

    assert xmlsec.get_libxml_version() == etree.LIBXML_VERSION, (xmlsec.get_libxml_version(), etree.LIBXML_VERSION)
    assert xmlsec.get_libxml_compiled_version() == etree.LIBXML_COMPILED_VERSION
