-- Second factors of platform operators (docs/mfa.md): the tenant users' factor tables again,
-- keyed by operator. Platform tables: no tenant_id, no row-level security; tenant users can
-- reach none of them (no tenant query joins them), and the app role gets exactly what the
-- recipes in shared/mfa.py need.

CREATE TABLE operator_mfa_totp (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    operator_id       uuid NOT NULL REFERENCES platform_operators (id),
    secret_ciphertext bytea NOT NULL CHECK (length(secret_ciphertext) BETWEEN 17 AND 256),
    secret_nonce      bytea NOT NULL CHECK (length(secret_nonce) = 12),
    key_id            text NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    confirmed_at      timestamptz,
    last_used_step    bigint CHECK (last_used_step >= 0),
    last_used_at      timestamptz
);
CREATE UNIQUE INDEX operator_mfa_totp_active ON operator_mfa_totp (operator_id) WHERE confirmed_at IS NOT NULL;
CREATE UNIQUE INDEX operator_mfa_totp_pending ON operator_mfa_totp (operator_id) WHERE confirmed_at IS NULL;

CREATE TABLE operator_mfa_recovery_codes (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    operator_id uuid NOT NULL REFERENCES platform_operators (id),
    set_id      uuid NOT NULL,
    code_hash   text NOT NULL CHECK (code_hash ~ '^[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    used_at     timestamptz,
    UNIQUE (operator_id, code_hash)
);

CREATE TABLE operator_webauthn_credentials (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    operator_id   uuid NOT NULL REFERENCES platform_operators (id),
    credential_id bytea NOT NULL UNIQUE CHECK (length(credential_id) BETWEEN 1 AND 1023),
    public_key    bytea NOT NULL CHECK (length(public_key) BETWEEN 1 AND 4096),
    sign_count    bigint NOT NULL DEFAULT 0 CHECK (sign_count >= 0),
    transports    text[] NOT NULL DEFAULT '{}',
    name          text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    aaguid        text,
    discoverable  boolean,
    backed_up     boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz
);
CREATE INDEX operator_webauthn_credentials_operator ON operator_webauthn_credentials (operator_id);

CREATE TABLE operator_mfa_tickets (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    operator_id uuid NOT NULL REFERENCES platform_operators (id),
    ticket_hash text NOT NULL UNIQUE CHECK (ticket_hash ~ '^[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    remember_me boolean NOT NULL DEFAULT false,
    ip          text,
    user_agent  text,
    CHECK (expires_at > created_at)
);
CREATE INDEX operator_mfa_tickets_operator ON operator_mfa_tickets (operator_id);

-- How and when an operator session proved its second factor (step-up reads it).
ALTER TABLE operator_sessions ADD COLUMN mfa_verified_at timestamptz;
ALTER TABLE operator_sessions ADD COLUMN mfa_method text CHECK (mfa_method IN ('totp', 'recovery_code', 'passkey'));
GRANT UPDATE (mfa_verified_at, mfa_method) ON operator_sessions TO custos_app_rw;

GRANT SELECT, INSERT, UPDATE, DELETE
    ON operator_mfa_totp, operator_mfa_recovery_codes, operator_webauthn_credentials, operator_mfa_tickets
    TO custos_app_rw;
