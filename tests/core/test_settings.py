"""Production settings hold no password and no shared key: identity only (docs/security.md)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from shared.core.settings import SettingsError, load_settings

ENTRA_URL = "postgresql://custos-id@custos.postgres.database.azure.com:5432/custos"


def _pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Settings as the Bicep sets them in Azure, valid as they stand."""
    for name, value in {
        "CUSTOS_ENV": "production",
        "JWT_SIGNING_KEY": _pem(ec.generate_private_key(ec.SECP256R1())),
        "AUDIT_SIGNING_KEY": _pem(ed25519.Ed25519PrivateKey.generate()),
        "MFA_ENCRYPTION_KEY": base64.b64encode(bytes(32)).decode(),
        "WEBAUTHN_RP_ID": "custos.example",
        "WEBAUTHN_ORIGINS": "https://app.custos.example",
        "STORAGE_CONNECTION_STRING": "",
        "STORAGE_ACCOUNT_NAME": "custosprod",
        "DATABASE_AUTH": "entra",
        "DATABASE_URL": ENTRA_URL,
        "DATABASE_OWNER_URL": "",
        "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
        "AUDIT_CHECKPOINT_SCHEDULE": "0 0 * * * *",
        "RATE_LIMIT_KEY": base64.b64encode(bytes(range(32))).decode(),
        "CUSTOS_FUNCTION_GROUPS": "api",
    }.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_production_accepts_identity_only_settings(production: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.database_auth == "entra" and settings.storage_connection_string == ""


@pytest.mark.parametrize("connection_string", [
    "DefaultEndpointsProtocol=https;AccountName=custosprod;AccountKey=bm90LWEta2V5;EndpointSuffix=core.windows.net",
    "BlobEndpoint=https://custosprod.blob.core.windows.net/;SharedAccessSignature=sv=2024-01-01&sig=bm90",
    "UseDevelopmentStorage=true",
])
def test_production_refuses_a_storage_connection_string(production: pytest.MonkeyPatch, connection_string: str) -> None:
    production.setenv("STORAGE_CONNECTION_STRING", connection_string)
    with pytest.raises(SettingsError, match="STORAGE_CONNECTION_STRING .*STORAGE_ACCOUNT_NAME") as info:
        load_settings()
    assert "bm90" not in str(info.value)


@pytest.mark.parametrize("name", ["DATABASE_URL", "DATABASE_OWNER_URL"])
@pytest.mark.parametrize("url", [
    "postgresql://custos-id:hunter2secret@custos.postgres.database.azure.com/custos",
    "postgresql://custos-id@custos.postgres.database.azure.com/custos?password=hunter2secret",
    "postgres://custos-id@custos.postgres.database.azure.com/custos?passfile=/home/hunter2secret",
])
def test_production_refuses_a_database_url_with_a_password(production: pytest.MonkeyPatch, name: str, url: str) -> None:
    production.setenv(name, url)
    with pytest.raises(SettingsError, match=f"{name} must carry no password") as info:
        load_settings()
    assert "hunter2secret" not in str(info.value)


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "require", "verify-ca"])
def test_production_refuses_a_database_url_that_weakens_tls(production: pytest.MonkeyPatch, sslmode: str) -> None:
    production.setenv("DATABASE_URL", f"{ENTRA_URL}?sslmode={sslmode}")
    with pytest.raises(SettingsError, match="DATABASE_URL: sslmode must be verify-full"):
        load_settings()
    production.setenv("DATABASE_URL", f"{ENTRA_URL}?sslmode=verify-full")
    load_settings()


def test_production_refuses_password_database_auth(production: pytest.MonkeyPatch) -> None:
    production.setenv("DATABASE_AUTH", "password")
    with pytest.raises(SettingsError, match="DATABASE_AUTH must be entra"):
        load_settings()


def test_production_refuses_an_unparseable_database_url_without_echoing_it(production: pytest.MonkeyPatch) -> None:
    production.setenv("DATABASE_URL", "postgresql://custos-id:hunter2secret@[::1/custos")
    with pytest.raises(SettingsError, match="DATABASE_URL") as info:
        load_settings()
    assert "hunter2secret" not in str(info.value)


def test_local_settings_keep_passwords_and_connection_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOS_ENV", "local")
    monkeypatch.setenv("DATABASE_URL", "postgresql://custos_app:local-password@127.0.0.1:5432/custos")
    settings = load_settings()
    assert settings.database_auth == "password" and settings.storage_connection_string


@pytest.mark.parametrize(("value", "message"), [
    ("not a connection string", "InstrumentationKey"),
    ("InstrumentationKey=abc;IngestionEndpoint=https://uksouth-1.in.applicationinsights.azure.com/", "InstrumentationKey"),
    ("InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint=http://uksouth-1.in.example/",
     "IngestionEndpoint must be https"),
])
def test_a_malformed_application_insights_connection_string_is_named(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", value)
    with pytest.raises(SettingsError, match=f"APPLICATIONINSIGHTS_CONNECTION_STRING: .*{message}"):
        load_settings()


def test_production_refuses_a_missing_or_short_rate_limit_key(production: pytest.MonkeyPatch) -> None:
    production.setenv("RATE_LIMIT_KEY", "")
    with pytest.raises(SettingsError, match="rate_limit_key must be set in production"):
        load_settings()
    production.setenv("RATE_LIMIT_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(SettingsError, match="RATE_LIMIT_KEY: .*each key must be 32 bytes"):
        load_settings()
    production.setenv("RATE_LIMIT_KEY", base64.b64encode(bytes(32)).decode())
    production.setenv("RATE_LIMIT_PREVIOUS_KEYS", "not base64!")
    with pytest.raises(SettingsError, match="RATE_LIMIT_PREVIOUS_KEYS: .*base64"):
        load_settings()


def test_production_refuses_plain_http_sso_urls(production: pytest.MonkeyPatch) -> None:
    production.setenv("SSO_PUBLIC_URL", "http://custos.example")
    with pytest.raises(SettingsError, match="sso_public_url must be https"):
        load_settings()


def test_an_sp_key_without_its_certificate_is_refused(production: pytest.MonkeyPatch) -> None:
    production.setenv("SAML_SP_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----")  # pragma: allowlist secret
    with pytest.raises(SettingsError, match="set together"):
        load_settings()


def test_production_owner_app_needs_the_owner_url(production: pytest.MonkeyPatch) -> None:
    production.setenv("CUSTOS_FUNCTION_GROUPS", "owner")
    with pytest.raises(SettingsError, match="DATABASE_OWNER_URL must be set when CUSTOS_FUNCTION_GROUPS is owner"):
        load_settings()
    production.setenv("DATABASE_OWNER_URL", ENTRA_URL)
    assert load_settings().function_groups == frozenset({"owner"})


def test_production_owner_app_runs_without_the_api_secrets(production: pytest.MonkeyPatch) -> None:
    # The owner-jobs identity may read only the audit signing key: the API's keys are not its to hold.
    production.setenv("CUSTOS_FUNCTION_GROUPS", "owner")
    production.setenv("DATABASE_OWNER_URL", ENTRA_URL)
    for name in ("JWT_SIGNING_KEY", "MFA_ENCRYPTION_KEY", "RATE_LIMIT_KEY"):
        production.setenv(name, "")
    assert load_settings().custos_function_groups == "owner"
    production.setenv("CUSTOS_FUNCTION_GROUPS", "api")
    with pytest.raises(SettingsError, match="jwt_signing_key must be set"):
        load_settings()


def test_production_refuses_one_app_running_both_groups(production: pytest.MonkeyPatch) -> None:
    production.setenv("CUSTOS_FUNCTION_GROUPS", "api,owner")
    production.setenv("DATABASE_OWNER_URL", ENTRA_URL)
    with pytest.raises(SettingsError, match="must be api or owner in production, not both"):
        load_settings()


def test_production_owner_url_follows_the_entra_rule(production: pytest.MonkeyPatch) -> None:
    production.setenv("CUSTOS_FUNCTION_GROUPS", "owner")
    production.setenv("DATABASE_OWNER_URL", "postgresql://owner-id:hunter2secret@custos.postgres.database.azure.com/custos")
    with pytest.raises(SettingsError, match="DATABASE_OWNER_URL must carry no password") as info:
        load_settings()
    assert "hunter2secret" not in str(info.value)


@pytest.mark.parametrize("groups", ["admin", "api,", "owner,owner,api", "API", ""])
def test_unknown_function_groups_are_refused(monkeypatch: pytest.MonkeyPatch, groups: str) -> None:
    monkeypatch.setenv("CUSTOS_FUNCTION_GROUPS", groups)
    with pytest.raises(SettingsError, match="CUSTOS_FUNCTION_GROUPS"):
        load_settings()
