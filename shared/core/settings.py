"""Every setting Custos reads, in one validated class.

Settings come from environment variables: Azure Functions turns `local.settings.json`
Values and App Service settings into environment variables, and in Azure secret settings
are Key Vault references. `load_settings()` validates them all at once and raises
`SettingsError` naming each missing or malformed setting, so a misconfigured worker stops
at start-up instead of failing on some later request.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.core.ncrontab import longest_gap_s


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names it."""


class Settings(BaseSettings):
    """All settings. Field names are the environment variable names (case-insensitive)."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    # --- runtime -----------------------------------------------------------------------
    custos_env: Literal["local", "test", "production"] = Field(
        "production", description="Deployment kind. Only local/test may generate dev keys."
    )
    app_version: str = Field("0.1.0", description="Version written into audit events and logs.")
    custos_local_dir: Path = Field(
        Path(".local"), description="Where local/test dev keys are generated (git-ignored)."
    )

    # --- database --------------------------------------------------------------------
    database_url: str = Field(
        ..., description="PostgreSQL URL of the app role (NOSUPERUSER NOBYPASSRLS, owns nothing)."
    )
    database_owner_url: str = Field(
        "", description="PostgreSQL URL of the schema owner; the migration runner and the tenant purge (docs/purge.md) use it."
    )
    database_app_role: str = Field(
        "custos_app", description="Login role the app connects as; migrations grant it membership."
    )
    db_pool_min: int = Field(1, ge=0, le=50, description="Pool connections kept open per worker.")
    db_pool_max: int = Field(10, ge=1, le=200, description="Pool connections at most per worker.")
    db_connect_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Seconds to wait for a pooled connection."
    )
    db_statement_timeout_s: float = Field(
        60.0, ge=0, le=3600,
        description="Seconds a single statement of the app role may run before the server cancels it (0: no limit).",
    )

    # --- storage ---------------------------------------------------------------------
    storage_connection_string: str = Field(
        "", description="Storage connection string (Azurite locally). Empty in Azure."
    )
    storage_account_name: str = Field(
        "", description="Storage account name for managed-identity access when no connection string."
    )
    storage_connect_timeout_s: float = Field(
        2.0, gt=0, le=60, description="Seconds to wait for a Storage connection (each try)."
    )
    storage_read_timeout_s: float = Field(
        20.0, gt=0, le=300, description="Seconds to wait for Storage to send data (each socket read, each try)."
    )
    storage_retries: int = Field(2, ge=0, le=10, description="Retries of a failed Storage call (0.5 s apart).")
    health_timeout_s: float = Field(
        4.0, gt=0, le=30, description="`GET /api/health` answers within this: a probe still waiting is unavailable."
    )

    # --- Azure identity and telemetry (docs/security.md, "Entra ID only in Azure") --------
    database_auth: Literal["password", "entra"] = Field(
        "password",
        description="How the app role signs in to PostgreSQL: `password` (in DATABASE_URL; local only) or `entra` (an Entra access token of the managed identity, refreshed before expiry; required in production).",
    )
    azure_client_id: str = Field(
        "", description="Client id of the app's user-assigned managed identity (PostgreSQL, Storage, telemetry); empty: DefaultAzureCredential."
    )
    applicationinsights_connection_string: str = Field(
        "", description="Application Insights connection string; when set, OpenTelemetry traces and logs go there with Entra authentication. Empty: telemetry off."
    )

    # --- HTTP --------------------------------------------------------------------------
    max_body_bytes: int = Field(
        1_048_576, ge=1024, le=104_857_600, description="Largest JSON request body accepted."
    )
    cors_allowed_origins: str = Field(
        "", description="Comma-separated exact origins allowed for CORS; empty allows none."
    )
    cors_max_age_s: int = Field(600, ge=0, le=86_400, description="Preflight cache lifetime.")

    # --- tokens ------------------------------------------------------------------------
    jwt_issuer: str = Field("https://custos.local", description="`iss` of access tokens.")
    jwt_audience: str = Field("custos-api", description="`aud` of access tokens.")
    jwt_access_ttl_s: int = Field(900, ge=60, le=3600, description="Access token lifetime.")
    jwt_leeway_s: int = Field(30, ge=0, le=120, description="Clock skew tolerated on exp/nbf/iat.")
    jwt_signing_key: str = Field(
        "", description="PEM EC P-256 private key that signs access tokens (Key Vault in Azure)."
    )
    jwt_verify_keys: str = Field(
        "", description="PEM public keys of retired signing keys that still verify, concatenated."
    )

    # --- audit trail -------------------------------------------------------------------
    audit_signing_key: str = Field(
        "", description="PEM Ed25519 private key that signs audit checkpoints (Key Vault in Azure)."
    )
    audit_verify_keys: str = Field(
        "", description="PEM public keys of retired checkpoint keys that still verify, concatenated."
    )
    audit_export_max_events: int = Field(
        1_000_000, ge=1000, description="Most events one audit export returns."
    )
    audit_retention_min_days: int = Field(
        2555, ge=1, le=36_500,
        description="Shortest audit retention window a tenant may set (days; 2555 = 7 years, docs/audit.md).",
    )

    # --- records --------------------------------------------------------------------------
    attachment_max_bytes: int = Field(
        26_214_400, ge=1024, le=104_857_600, description="Largest attachment accepted (bytes)."
    )
    attachment_content_types: str = Field(
        "application/pdf,image/png,image/jpeg,text/plain,text/csv,application/json,application/xml",
        description="Comma-separated content types accepted as attachments.",
    )

    # --- timers (NCRONTAB: six fields, seconds first) -----------------------------------
    heartbeat_schedule: str = Field(
        ..., description="When the heartbeat job probes the database and storage."
    )
    audit_checkpoint_schedule: str = Field(
        ..., description="When signed checkpoints of moved audit chain heads are written."
    )
    audit_verify_schedule: str = Field(..., description="When every audit chain is verified.")
    blob_snapshot_schedule: str = Field(
        ..., description="When attachment blobs changed since the last run are snapshotted (daily; NCRONTAB)."
    )
    blob_snapshot_retention_days: int = Field(
        35, ge=7, le=365,
        description="Days an attachment snapshot is kept (the newest verified one of each blob is always kept).",
    )
    audit_retention_schedule: str = Field(
        ..., description="When tenants' audit events older than their retention window are archived and cut."
    )
    housekeeping_schedule: str = Field(
        ..., description="When expired throttle rows, tickets, challenges, one-time tokens, old sent mail and idle sessions are cleared (NCRONTAB)."
    )
    outbox_sent_retention_days: int = Field(
        30, ge=1, le=3650, description="Days sent mail stays in the outbox (body already blanked) before housekeeping deletes it."
    )

    # --- passwords (docs/security.md) -------------------------------------------------------
    password_hash_concurrency: int = Field(
        2, ge=1, le=32, description="Argon2id hashes run at once per worker (64 MiB each)."
    )
    hibp_api_url: str = Field(
        "", description="Have I Been Pwned range API base URL; empty uses the shipped offline list only."
    )
    hibp_timeout_s: float = Field(2.0, gt=0, le=30, description="Timeout of one range API call.")
    hibp_fail_open: bool = Field(
        True, description="If the range API fails: true accepts (offline list still applies), false refuses."
    )

    # --- sign-in ---------------------------------------------------------------------------
    refresh_ttl_days: int = Field(7, ge=1, le=90, description="Refresh token lifetime.")
    refresh_remember_ttl_days: int = Field(30, ge=1, le=365, description="Refresh lifetime with remember_me.")
    refresh_grace_s: int = Field(
        5, ge=0, le=60, description="Window in which a just-rotated refresh token may be reused (racing tabs)."
    )
    operator_session_max_idle_minutes: int = Field(
        30, ge=5, le=1440, description="Minutes of inactivity after which a platform operator's session ends."
    )
    login_threshold_email_ip: int = Field(5, ge=1, le=1000, description="Failures per email+IP before delays.")
    login_threshold_ip: int = Field(30, ge=1, le=10000, description="Failures per IP before delays.")
    login_threshold_email: int = Field(50, ge=1, le=10000, description="Failures per email (any IP) before delays.")
    login_window_s: int = Field(900, ge=60, le=86400, description="Failures older than this are forgotten.")
    login_delay_base_s: int = Field(2, ge=1, le=60, description="First delay once a threshold is crossed; doubles.")
    login_delay_max_s: int = Field(900, ge=1, le=86400, description="Longest delay: throttles expire by themselves.")
    api_rate_per_minute: int = Field(600, ge=10, le=100000, description="General API requests per IP per minute per worker.")
    rate_limit_key: str = Field(
        "", description="Base64 of 32 random bytes: HMAC-SHA-256 key that names throttle rows (Key Vault in Azure)."
    )
    rate_limit_previous_keys: str = Field(
        "", description="Comma-separated base64 retired rate-limit keys whose live throttles still count (Key Vault in Azure)."
    )

    # --- mail ------------------------------------------------------------------------------
    smtp_host: str = Field("", description="SMTP relay host; empty leaves mail in the outbox.")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port.")
    smtp_username: str = Field("", description="SMTP user (Key Vault in Azure).")
    smtp_password: str = Field("", description="SMTP password (Key Vault in Azure).")
    smtp_starttls: bool = Field(True, description="Require STARTTLS (off only for a local test server).")
    smtp_from: str = Field("Custos <no-reply@custos.invalid>", description="From address of Custos mail.")
    mail_delivery_schedule: str = Field(..., description="When the outbox is delivered (NCRONTAB).")
    public_app_url: str = Field(
        "http://localhost:3000", description="Client app URL used in mail links (invitation, reset)."
    )

    # --- security.txt (RFC 9116) -----------------------------------------------------------
    security_contact: str = Field(
        "mailto:security@custos.invalid", description="security.txt Contact."
    )
    security_policy_url: str = Field(
        "https://custos.invalid/security/policy", description="security.txt Policy."
    )
    security_txt_expires: str = Field(
        "2027-11-01T00:00:00Z", description="security.txt Expires (ISO 8601, under a year ahead)."
    )
    security_preferred_languages: str = Field("en", description="security.txt Preferred-Languages.")
    security_canonical_url: str = Field(
        "https://custos.invalid/.well-known/security.txt", description="security.txt Canonical."
    )

    # --- second factors (docs/mfa.md) ----------------------------------------------------
    mfa_encryption_key: str = Field(
        "", description="Base64 of 32 random bytes: AES-256-GCM key that encrypts TOTP secrets (Key Vault in Azure)."
    )
    mfa_decryption_keys: str = Field(
        "", description="Comma-separated base64 keys of retired MFA encryption keys that still decrypt."
    )
    mfa_totp_issuer: str = Field(
        "Custos", min_length=1, max_length=64, description="Issuer shown by authenticator apps for TOTP."
    )
    mfa_ticket_ttl_s: int = Field(
        300, ge=60, le=900, description="Lifetime of the sign-in ticket between password and second factor."
    )
    mfa_recent_auth_s: int = Field(
        900, ge=60, le=86400, description="How recently a session must have proved a second factor to change factors, or to regenerate recovery codes without a code."
    )
    webauthn_rp_id: str = Field(
        "localhost", min_length=1, max_length=253, description="WebAuthn relying-party id: the domain passkeys are bound to."
    )
    webauthn_rp_name: str = Field(
        "Custos", min_length=1, max_length=64, description="WebAuthn relying-party name shown by authenticators."
    )
    webauthn_origins: str = Field(
        "http://localhost:3000", description="Comma-separated exact origins where passkey ceremonies may run."
    )
    webauthn_challenge_ttl_s: int = Field(
        300, ge=30, le=900, description="Lifetime of a single-use WebAuthn challenge."
    )

    # --- tenant purge (docs/purge.md) ----------------------------------------------------
    tenant_purge_after_days: int = Field(
        30, ge=7, le=365,
        description="Days from a tenant's cancellation to its purge; an operator can reinstate it until then.",
    )
    tenant_purge_schedule: str = Field(
        "0 30 3 * * *", description="When cancelled tenants whose purge date has passed are purged (NCRONTAB)."
    )
    tenant_purge_batch_rows: int = Field(
        1000, ge=1, le=100_000, description="Rows the purge deletes per transaction (one table batch)."
    )

    # --- lifecycle: jobs on queues, tenant exports --------------------------------------
    jobs_queue: str = Field(
        "custos-jobs", pattern=r"^[a-z0-9][a-z0-9-]{1,53}[a-z0-9]$",
        description="Storage queue of job messages (its poison queue is <name>-poison); the trigger reads %JOBS_QUEUE%.",
    )
    job_lease_s: int = Field(
        900, ge=60, le=86_400,
        description="Seconds a RUNNING job is held by its worker; past it (the worker died) a redelivered message may claim it again.",
    )
    export_link_ttl_s: int = Field(
        300, ge=30, le=3600, description="Lifetime of a tenant export's download links (signed URL or SAS)."
    )
    owner_jobs_queue: str = Field(
        "custos-owner-jobs", pattern=r"^[a-z0-9][a-z0-9-]{1,53}[a-z0-9]$",
        description="Storage queue of the owner jobs (audit retention), run only by the owner-jobs app (its poison queue is <name>-poison); the trigger reads %OWNER_JOBS_QUEUE%.",
    )


    # --- single sign-on (docs/sso.md) ------------------------------------------------------
    sso_public_url: str = Field(
        "http://localhost:7071", description="Public base URL of this app (https://host, no path): SAML entity ids and ACS URLs derive from it."
    )
    sso_console_url: str = Field(
        "http://localhost:7071/console/", description="Console URL a finished SSO sign-in redirects to, with a one-time code in the fragment."
    )
    saml_sp_private_key: str = Field(
        "", description="PEM RSA private key that signs SAML AuthnRequests (Key Vault in Azure)."
    )
    saml_sp_certificate: str = Field(
        "", description="PEM certificate of saml_sp_private_key, published in the SP metadata (Key Vault in Azure, beside its key)."
    )
    sso_clock_skew_s: int = Field(
        120, ge=0, le=300, description="Clock skew tolerated on SAML NotBefore/NotOnOrAfter and OIDC iat/exp."
    )
    sso_request_ttl_s: int = Field(
        600, ge=60, le=1800, description="How long an SP-initiated sign-in waits for the IdP's answer."
    )
    sso_handoff_ttl_s: int = Field(
        60, ge=10, le=300, description="Lifetime of the one-time code that hands a finished SSO sign-in to the browser."
    )
    sso_metadata_max_bytes: int = Field(
        1_048_576, ge=4096, le=10_485_760, description="Largest IdP metadata document fetched."
    )
    sso_metadata_timeout_s: float = Field(
        10.0, gt=0, le=30, description="Timeout of one IdP metadata fetch."
    )
    sso_metadata_allow_loopback: bool = Field(
        False, description="Let metadata URLs name loopback http addresses (tests only; ignored in production)."
    )
    sso_purge_schedule: str = Field(
        "0 */30 * * * *", description="When expired SAML replay-cache rows, SSO requests and sign-in codes are deleted (NCRONTAB)."
    )

    # --- which functions this app runs (docs/purge.md, "The owner-jobs app") ---------------
    custos_function_groups: str = Field(
        "api", pattern=r"^(api|owner)(,(api|owner))?$",
        description="Functions this app registers, comma-separated: `api` (every HTTP route and timer but the owner jobs), `owner` (only the tenant purge and the audit retention, run as the schema owner: DATABASE_OWNER_URL); `api,owner` runs both in one process (local and test only).",
    )

    # --- security incidents (docs/incidents.md) ---------------------------------------------
    incident_schedule: str = Field(
        ..., description="When security signals are swept into incidents and overdue notices escalated (NCRONTAB)."
    )
    incident_contact: str = Field(
        "security@custos.example", min_length=3, max_length=200,
        description="Contact named in every incident notice to tenant admins (an address or a phone line).",
    )
    incident_window_s: int = Field(
        600, ge=60, le=86_400, description="Window over which refresh-token reuse bursts and throttling spikes are counted."
    )
    incident_reuse_burst: int = Field(
        3, ge=1, le=1000, description="Refresh-token reuses in one tenant within the window that open an incident."
    )
    incident_throttle_spike: int = Field(
        10, ge=1, le=100_000, description="Throttle crossings in one chain within the window that open an incident."
    )
    incident_first_sweep_lookback_s: int = Field(
        7 * 86_400, ge=0, le=366 * 86_400,
        description="How far back the first sweep of a chain (after deployment, or a new tenant) looks for signals; "
                    "older events are history, not incidents.",
    )

    @field_validator("mfa_encryption_key", "mfa_decryption_keys", "rate_limit_key", "rate_limit_previous_keys")
    @classmethod
    def _aes_keys(cls, v: str) -> str:
        for key in _split(v):
            try:
                raw = base64.b64decode(key, validate=True)
            except ValueError:
                raise ValueError("must be base64 (standard alphabet)") from None
            if len(raw) != 32:
                raise ValueError("each key must be 32 bytes before base64")
        return v

    @field_validator("tenant_purge_schedule", "sso_purge_schedule", "incident_schedule")
    @classmethod
    def _tenant_purge_schedule(cls, v: str) -> str:
        if len(v.split()) != 6:
            raise ValueError("must be an NCRONTAB expression with six fields, seconds first")
        return v

    @field_validator("database_url", "database_owner_url")
    @classmethod
    def _postgres_url(cls, v: str) -> str:
        if v and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("applicationinsights_connection_string")
    @classmethod
    def _appinsights(cls, v: str) -> str:
        if not v:
            return v
        parts = dict(p.split("=", 1) for p in v.split(";") if "=" in p)
        key = parts.get("InstrumentationKey", "")
        try:
            uuid.UUID(key)
        except ValueError:
            raise ValueError("must be an Application Insights connection string with an InstrumentationKey") from None
        for name in ("IngestionEndpoint", "LiveEndpoint"):
            if name in parts and not parts[name].startswith("https://"):
                raise ValueError(f"{name} must be https (telemetry is sent with a bearer token)")
        return v

    @field_validator("heartbeat_schedule", "audit_checkpoint_schedule", "audit_verify_schedule", "mail_delivery_schedule",
                     "housekeeping_schedule")
    @classmethod
    def _ncrontab(cls, v: str) -> str:
        if len(v.split()) != 6:
            raise ValueError("must be an NCRONTAB expression with six fields, seconds first")
        return v

    @field_validator("blob_snapshot_schedule")
    @classmethod
    def _snapshot_schedule(cls, v: str) -> str:
        if len(v.split()) != 6:
            raise ValueError("must be an NCRONTAB expression with six fields, seconds first")
        return v

    @field_validator("audit_checkpoint_schedule")
    @classmethod
    def _checkpoint_schedule(cls, v: str) -> str:
        longest_gap_s(v)
        return v

    @field_validator("audit_retention_schedule")
    @classmethod
    def _retention_schedule(cls, v: str) -> str:
        if len(v.split()) != 6:
            raise ValueError("must be an NCRONTAB expression with six fields, seconds first")
        longest_gap_s(v)
        return v

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, v: str) -> str:
        for origin in _split(v):
            if origin == "*" or not origin.startswith(("https://", "http://")) or origin.endswith("/"):
                raise ValueError(f"{origin!r} is not an exact origin like https://app.example.com")
        return v

    @model_validator(mode="after")
    def _storage_and_keys(self) -> Settings:
        if not self.storage_connection_string and not self.storage_account_name:
            raise ValueError(
                "storage_connection_string or storage_account_name must be set"
            )
        if self.custos_env == "production" and not self.jwt_signing_key and "api" in self.function_groups:
            raise ValueError("jwt_signing_key must be set in production")
        if self.custos_env == "production" and not self.audit_signing_key:
            raise ValueError("audit_signing_key must be set in production")
        if self.custos_env == "production" and self.smtp_host and not self.smtp_starttls:
            raise ValueError("smtp_starttls must be on in production")
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("db_pool_min must not exceed db_pool_max")
        return self

    @model_validator(mode="after")
    def _mfa(self) -> Settings:
        if self.custos_env == "production" and not self.mfa_encryption_key and "api" in self.function_groups:
            raise ValueError("mfa_encryption_key must be set in production")
        rp_id = self.webauthn_rp_id.lower()
        origins = _split(self.webauthn_origins)
        if not origins:
            raise ValueError("webauthn_origins must name at least one origin")
        for origin in origins:
            parts = urlsplit(origin)
            host = (parts.hostname or "").lower()
            if parts.scheme not in ("https", "http") or not host or origin.endswith("/") or parts.path:
                raise ValueError(f"webauthn_origins: {origin!r} is not an exact origin like https://app.example.com")
            if host != rp_id and not host.endswith("." + rp_id):
                raise ValueError(f"webauthn_origins: {origin!r} is not on webauthn_rp_id {rp_id!r} or a subdomain of it")
            if parts.scheme == "http" and host not in ("localhost", "127.0.0.1") and self.custos_env == "production":
                raise ValueError(f"webauthn_origins: {origin!r} must be https in production")
        return self

    @model_validator(mode="after")
    def _sso(self) -> Settings:
        for name in ("sso_public_url", "sso_console_url"):
            parts = urlsplit(getattr(self, name))
            if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
                raise ValueError(f"{name} must be an http(s) URL without query or fragment")
            local = parts.hostname in ("localhost", "127.0.0.1")
            if self.custos_env == "production" and parts.scheme != "https" and not local:
                raise ValueError(f"{name} must be https in production")
        if urlsplit(self.sso_public_url).path not in ("", "/"):
            raise ValueError("sso_public_url must have no path")
        if bool(self.saml_sp_private_key) != bool(self.saml_sp_certificate):
            raise ValueError("saml_sp_private_key and saml_sp_certificate are set together")
        return self

    @model_validator(mode="after")
    def _checkpoint_cadence(self) -> Settings:
        # Events after the last checkpoint can be cut unnoticed for up to two intervals.
        if self.custos_env == "production" and self.audit_checkpoint_interval_s > 86_400:
            raise ValueError("audit_checkpoint_schedule must fire at least once a day in production")
        return self

    @model_validator(mode="after")
    def _identity_only_in_production(self) -> Settings:
        # In Azure the app holds no password or shared key: a leaked app setting then grants
        # nothing, and access ends when the identity's role assignment is removed.
        if self.custos_env != "production":
            return self
        if self.storage_connection_string:
            raise ValueError(
                "STORAGE_CONNECTION_STRING must be empty in production (shared keys and SAS are refused): "
                "set STORAGE_ACCOUNT_NAME and the app uses its managed identity"
            )
        if self.database_auth != "entra":
            raise ValueError("DATABASE_AUTH must be entra in production: the app signs in with its managed identity")
        for name, url in (("DATABASE_URL", self.database_url), ("DATABASE_OWNER_URL", self.database_owner_url)):
            if not url:
                continue
            params = _conninfo(url, name)
            if params.get("password") or params.get("passfile"):
                raise ValueError(f"{name} must carry no password in production: PostgreSQL takes Entra tokens only")
            if params.get("sslmode", "verify-full") != "verify-full":
                raise ValueError(f"{name}: sslmode must be verify-full in production (or left out)")
        return self

    @model_validator(mode="after")
    def _rate_limit_key(self) -> Settings:
        if self.custos_env == "production" and not self.rate_limit_key and "api" in self.function_groups:
            raise ValueError("rate_limit_key must be set in production (docs/security.md, Housekeeping)")
        return self

    @model_validator(mode="after")
    def _owner_jobs_app(self) -> Settings:
        # The owner-jobs app exists only to run as the schema owner; without the owner's URL its
        # every run would fail, so it must not start. Its URL obeys the Entra rule above.
        if self.custos_env != "production" or "owner" not in self.function_groups:
            return self
        if "api" in self.function_groups:
            raise ValueError("CUSTOS_FUNCTION_GROUPS must be api or owner in production, not both: "
                             "the HTTP-facing app never runs as the schema owner")
        if not self.database_owner_url:
            raise ValueError("DATABASE_OWNER_URL must be set when CUSTOS_FUNCTION_GROUPS is owner: the owner jobs run as the schema owner")
        return self

    @property
    def function_groups(self) -> frozenset[str]:
        """The groups of functions this app registers (CUSTOS_FUNCTION_GROUPS)."""
        return frozenset(_split(self.custos_function_groups))

    @property
    def cors_origins(self) -> frozenset[str]:
        return frozenset(_split(self.cors_allowed_origins))

    @property
    def attachment_types(self) -> frozenset[str]:
        return frozenset(t.lower() for t in _split(self.attachment_content_types))

    @property
    def audit_checkpoint_interval_s(self) -> int:
        """The longest gap between two checkpoint runs, from AUDIT_CHECKPOINT_SCHEDULE."""
        return longest_gap_s(self.audit_checkpoint_schedule)

    @property
    def dev_keys_allowed(self) -> bool:
        return self.custos_env in ("local", "test")


def _conninfo(url: str, name: str) -> dict[str, str]:
    """The libpq parameters of `url`, as libpq itself parses them (userinfo and query alike)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except Exception:  # psycopg.ProgrammingError: the message may echo the URL, password and all
        raise ValueError(f"{name} is not a valid PostgreSQL URL") from None


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def load_settings() -> Settings:
    """Read and validate every setting from the environment.

    Raises:
        SettingsError: naming every missing or malformed setting.
    """
    try:
        return Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]).upper() or "settings"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@functools.cache
def get_settings() -> Settings:
    """The validated settings of this worker, read once."""
    return load_settings()


def load_local_settings(path: Path, environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """Copy `Values` of a local.settings.json into the environment, as `func start` does.

    Variables already in the environment win. Returns the parsed file ({} if absent).
    """
    env = os.environ if environ is None else environ
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("IsEncrypted"):
        raise SettingsError(f"{path} is encrypted; local runs need plain values")
    for name, value in (data.get("Values") or {}).items():
        if value is None or name in env:
            continue
        env[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return dict(data)
