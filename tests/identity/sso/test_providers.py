"""Identity provider administration through the real host: ADMIN only, audited with old and
new values (secrets never shown), validated, tenant-isolated; break-glass accounts; the public
sign-in buttons."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from shared.core import db
from shared.identity.mfa import SecretUnreadable
from shared.identity.sso.providers import open_client_secret
from shared.tenancy.tenants import Tenant, create_tenant
from tests.conftest import PersonFactory, auth
from tests.identity.sso.helpers import events


def self_signed(cn: str = "idp.example.test") -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CERT = self_signed()


def saml_body(**over: Any) -> dict[str, Any]:
    body = {"kind": "saml", "name": f"Entra {uuid.uuid4().hex[:6]}", "enabled": True, "reason": "set up SSO",
            "config": {"idp_entity_id": f"https://sts.example.test/{uuid.uuid4()}/",
                       "idp_sso_url": "https://login.example.test/saml2", "idp_certificates": [CERT],
                       "attributes": {"email": "email", "groups": "groups"}},
            "role_mapping": {"rules": [{"value": "qa", "role": "REVIEWER"}], "default_role": "VIEWER"}, "jit": True}
    body.update(over)
    return body


def create(client: httpx.Client, token: str, **over: Any) -> httpx.Response:
    return client.post("/api/sso/providers", json=saml_body(**over), headers=auth(token))


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == f"urn:custos:problem:{code}", body
    return body


def test_an_admin_creates_changes_and_retires_a_provider_every_step_audited(
        client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    r = create(client, admin.token)
    assert r.status_code == 201, r.text
    provider = r.json()
    der = base64.b64encode(x509.load_pem_x509_certificate(CERT.encode()).public_bytes(serialization.Encoding.DER))
    assert provider["config"]["idp_certificates"] == [der.decode()]
    pid = provider["id"]
    r = client.patch(f"/api/sso/providers/{pid}", json={"required": True, "reason": "SSO only from now"},
                     headers=auth(admin.token))
    assert r.status_code == 200 and r.json()["required"] is True
    [changed] = events(tenant.id, "sso.provider_updated")
    assert (changed["before"], changed["after"]) == ({"required": False}, {"required": True})
    assert changed["reason"] == "SSO only from now" and changed["actor_id"] == admin.id
    assert client.get("/api/sso/tenants/" + tenant.slug + "/providers").json()["providers"] == [
        {"id": pid, "name": provider["name"], "kind": "saml", "required": True}]
    r = client.delete(f"/api/sso/providers/{pid}", params={"reason": "moving to OIDC"}, headers=auth(admin.token))
    assert r.status_code == 204, r.text
    assert client.get(f"/api/sso/providers/{pid}", headers=auth(admin.token)).status_code == 404
    assert client.get("/api/sso/tenants/" + tenant.slug + "/providers").json() == {"providers": []}
    assert [e["target_id"] for e in events(tenant.id, "sso.provider_deleted")] == [pid]
    assert [e["target_id"] for e in events(tenant.id, "sso.provider_created")] == [pid]


@pytest.mark.parametrize("role", ["MANAGER", "REVIEWER", "OPERATOR", "VIEWER"])
def test_only_an_admin_may_manage_providers(client: httpx.Client, tenant: Tenant, make_person: PersonFactory,
                                            role: str) -> None:
    token = make_person(tenant.id, role).token
    problem(create(client, token), 403, "forbidden")
    problem(client.get("/api/sso/providers", headers=auth(token)), 403, "forbidden")


def test_another_tenants_provider_is_not_found(client: httpx.Client, tenant: Tenant,
                                               make_person: PersonFactory) -> None:
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    theirs = create(client, make_person(other.id, "ADMIN").token).json()["id"]
    mine = make_person(tenant.id, "ADMIN").token
    for r in (client.get(f"/api/sso/providers/{theirs}", headers=auth(mine)),
              client.patch(f"/api/sso/providers/{theirs}", json={"enabled": False, "reason": "hostile"},
                           headers=auth(mine)),
              client.delete(f"/api/sso/providers/{theirs}", params={"reason": "hostile"}, headers=auth(mine))):
        problem(r, 404, "not-found")
    with db.tenant_tx(other.id) as conn:
        assert conn.execute("select enabled, deleted_at from sso_providers").fetchone() == {"enabled": True,
                                                                                           "deleted_at": None}


@pytest.mark.parametrize(("over", "where"), [
    ({"role_mapping": {"rules": [{"value": "it", "role": "ADMIN"}]}}, ["body", "role_mapping", "rules", "0", "role"]),
    ({"role_mapping": {"default_role": "ADMIN"}}, ["body", "role_mapping", "default_role"]),
    ({"config": {"idp_entity_id": "x", "idp_sso_url": "https://idp.example.test/", "idp_certificates": []}},
     ["body", "config", "idp_certificates"]),
    ({"config": {"idp_entity_id": "x", "idp_sso_url": "https://idp.example.test/",
                 "idp_certificates": ["not a certificate"]}}, ["body", "config", "idp_certificates", "0"]),
    ({"config": {"idp_entity_id": "x", "idp_sso_url": "http://idp.example.test/", "idp_certificates": [CERT]}},
     ["body", "config", "idp_sso_url"]),
    ({"config": {"idp_entity_id": "x", "unknown": 1}}, ["body", "config", "unknown"]),
    ({"enabled": False, "required": True}, ["body", "required"]),
])
def test_invalid_configurations_are_refused_and_nothing_is_stored(
        client: httpx.Client, tenant: Tenant, make_person: PersonFactory, over: dict[str, Any], where: list[str]) -> None:
    body = problem(create(client, make_person(tenant.id, "ADMIN").token, **over), 422, "sso-provider-invalid")
    assert body["errors"][0]["location"] == where, body
    with db.tenant_tx(tenant.id) as conn:
        assert conn.execute("select count(*) as n from sso_providers").fetchone()["n"] == 0


def test_admin_mapping_is_accepted_when_the_provider_allows_it(client: httpx.Client, tenant: Tenant,
                                                               make_person: PersonFactory) -> None:
    r = create(client, make_person(tenant.id, "ADMIN").token, allow_admin_mapping=True,
               role_mapping={"rules": [{"value": "it", "role": "ADMIN"}]})
    assert r.status_code == 201, r.text


def test_two_providers_may_not_share_an_entity_id(client: httpx.Client, tenant: Tenant,
                                                  make_person: PersonFactory) -> None:
    token = make_person(tenant.id, "ADMIN").token
    first = saml_body()
    assert client.post("/api/sso/providers", json=first, headers=auth(token)).status_code == 201
    problem(create(client, token, config=first["config"]), 409, "conflict")


def test_an_oidc_client_secret_is_sealed_never_shown_and_bound_to_its_provider(
        client: httpx.Client, tenant: Tenant, make_person: PersonFactory) -> None:
    token = make_person(tenant.id, "ADMIN").token
    secret = "s3cr3t-" + uuid.uuid4().hex
    body = {"kind": "oidc", "name": "Google", "enabled": True, "client_secret": secret, "reason": "Google sign-in",
            "config": {"issuer": "https://accounts.google.com", "client_id": "abc.apps.googleusercontent.com",
                       "google_hosted_domains": ["example.test"]}}
    r = client.post("/api/sso/providers", json=body, headers=auth(token))
    assert r.status_code == 201, r.text
    assert r.json()["has_client_secret"] is True and secret not in r.text
    second = client.post("/api/sso/providers", json={**body, "name": "Google 2",
                                                     "config": {**body["config"], "issuer": "https://g2.example.test"}},
                         headers=auth(token)).json()
    r = client.patch(f"/api/sso/providers/{second['id']}", json={"client_secret": secret + "-new", "reason": "rotate"},
                     headers=auth(token))
    assert r.status_code == 200 and secret not in r.text
    with db.tenant_tx(tenant.id) as conn:
        rows = {r["id"]: r for r in conn.execute("select *, id::text as id from sso_providers").fetchall()}
        trail = json.dumps([e for e in conn.execute("select before, after from audit_events").fetchall()])
    assert secret not in trail and '"client_secret": "replaced"' in trail
    first = next(row for i, row in rows.items() if i != second["id"])
    assert secret.encode() not in bytes(first["secret_ciphertext"])
    assert open_client_secret(first, tenant_id=tenant.id) == secret
    # The first provider's ciphertext copied onto the second does not decrypt there.
    copied = {**rows[second["id"]], **{k: first[k] for k in ("secret_ciphertext", "secret_nonce", "secret_key_id")}}
    with pytest.raises(SecretUnreadable):
        open_client_secret(copied, tenant_id=tenant.id)


def test_a_saml_provider_takes_no_client_secret(client: httpx.Client, tenant: Tenant,
                                               make_person: PersonFactory) -> None:
    problem(create(client, make_person(tenant.id, "ADMIN").token, client_secret="x"), 422, "sso-provider-invalid")


def test_break_glass_accounts_are_active_admins_only_and_audited(client: httpx.Client, tenant: Tenant,
                                                                 make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")
    manager = make_person(tenant.id, "MANAGER")
    problem(client.put(f"/api/sso/break-glass/{manager.id}", json={"reason": "emergency"}, headers=auth(admin.token)),
            422, "sso-provider-invalid")
    problem(client.put(f"/api/sso/break-glass/{uuid.uuid4()}", json={"reason": "emergency"},
                       headers=auth(admin.token)), 404, "not-found")
    r = client.put(f"/api/sso/break-glass/{admin.id}", json={"reason": "emergency"}, headers=auth(admin.token))
    assert r.status_code == 200 and r.json() == {"user_id": admin.id, "break_glass": True}
    listed = client.get("/api/sso/break-glass", headers=auth(admin.token)).json()["accounts"]
    assert [a["user_id"] for a in listed] == [admin.id]
    r = client.delete(f"/api/sso/break-glass/{admin.id}", params={"reason": "rotated"}, headers=auth(admin.token))
    assert r.status_code == 204
    assert [e["action"] for e in events(tenant.id, "sso.break_glass_added") + events(tenant.id, "sso.break_glass_removed")] \
        == ["sso.break_glass_added", "sso.break_glass_removed"]


def test_the_public_list_shows_enabled_providers_without_configuration(client: httpx.Client, tenant: Tenant,
                                                                      make_person: PersonFactory) -> None:
    token = make_person(tenant.id, "ADMIN").token
    on = create(client, token).json()
    create(client, token, enabled=False, config={})
    r = client.get(f"/api/sso/tenants/{tenant.slug}/providers")
    assert r.status_code == 200 and r.json() == {"providers": [{"id": on["id"], "name": on["name"], "kind": "saml",
                                                               "required": False}]}
    problem(client.get("/api/sso/tenants/no-such-tenant-here/providers"), 404, "not-found")


def test_loopback_metadata_urls_are_never_allowed_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.core import settings as settings_module
    from shared.identity.sso import providers

    test_settings = settings_module.get_settings()
    assert test_settings.sso_metadata_allow_loopback and providers.loopback_allowed()
    production = test_settings.model_copy(update={"custos_env": "production"})
    monkeypatch.setattr(providers, "get_settings", lambda: production)
    assert providers.loopback_allowed() is False
