-- Second factors (docs/mfa.md): TOTP secrets (AES-GCM ciphertext), recovery codes (hashed),
-- passkeys (WebAuthn public keys), single-use sign-in tickets between password and second
-- factor, and how each session was authenticated.

CREATE TABLE mfa_totp (
    tenant_id         uuid NOT NULL,
    id                uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id           uuid NOT NULL,
    secret_ciphertext bytea NOT NULL CHECK (length(secret_ciphertext) BETWEEN 17 AND 256),
    secret_nonce      bytea NOT NULL CHECK (length(secret_nonce) = 12),
    key_id            text NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    confirmed_at      timestamptz,                 -- NULL: enrolment started, not yet confirmed
    last_used_step    bigint CHECK (last_used_step >= 0),  -- RFC 6238 time step last accepted
    last_used_at      timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);
-- at most one active and one pending secret per user
CREATE UNIQUE INDEX mfa_totp_active ON mfa_totp (tenant_id, user_id) WHERE confirmed_at IS NOT NULL;
CREATE UNIQUE INDEX mfa_totp_pending ON mfa_totp (tenant_id, user_id) WHERE confirmed_at IS NULL;

CREATE TABLE mfa_recovery_codes (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL,
    set_id     uuid NOT NULL,
    code_hash  text NOT NULL CHECK (code_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, user_id, code_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);

CREATE TABLE webauthn_credentials (
    tenant_id     uuid NOT NULL,
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id       uuid NOT NULL,
    credential_id bytea NOT NULL CHECK (length(credential_id) BETWEEN 1 AND 1023),
    public_key    bytea NOT NULL CHECK (length(public_key) BETWEEN 1 AND 4096),  -- COSE_Key
    sign_count    bigint NOT NULL DEFAULT 0 CHECK (sign_count >= 0),
    transports    text[] NOT NULL DEFAULT '{}',
    name          text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    aaguid        text,
    discoverable  boolean,                         -- credProps.rk when the client reported it
    backed_up     boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    PRIMARY KEY (tenant_id, id),
    -- unique per tenant, not globally: a global index would tell one tenant's users which
    -- credential ids exist in another tenant
    UNIQUE (tenant_id, credential_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (tenant_id, user_id);

CREATE TABLE mfa_tickets (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL,
    ticket_hash text NOT NULL CHECK (ticket_hash ~ '^[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    remember_me boolean NOT NULL DEFAULT false,
    ip          text,
    user_agent  text,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, ticket_hash),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id),
    CHECK (expires_at > created_at)
);
CREATE INDEX mfa_tickets_user ON mfa_tickets (tenant_id, user_id);

-- How a session's second factor was proved, and when (step-up checks read it).
ALTER TABLE sessions ADD COLUMN mfa_verified_at timestamptz;
ALTER TABLE sessions ADD COLUMN mfa_method text CHECK (mfa_method IN ('totp', 'recovery_code', 'passkey'));

SELECT custos_isolate_tenant_table('mfa_totp');
SELECT custos_isolate_tenant_table('mfa_recovery_codes');
SELECT custos_isolate_tenant_table('webauthn_credentials');
SELECT custos_isolate_tenant_table('mfa_tickets');

-- Factors are credentials, not regulated records: removing one deletes it (the audit trail
-- keeps the history). Used and expired tickets are deleted when the user next signs in.
GRANT SELECT, INSERT, UPDATE, DELETE ON mfa_totp, mfa_recovery_codes, webauthn_credentials, mfa_tickets
    TO custos_app_rw;
