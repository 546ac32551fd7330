-- Sign-in: password hashes, sessions with rotating refresh tokens, password resets.

ALTER TABLE users ADD COLUMN password_hash text;
ALTER TABLE users ADD COLUMN password_changed_at timestamptz;

CREATE TABLE sessions (
    tenant_id             uuid NOT NULL,
    id                    uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id               uuid NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    last_seen_at          timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz NOT NULL,
    remember_me           boolean NOT NULL DEFAULT false,
    ip                    text,
    user_agent            text,
    device_label          text NOT NULL DEFAULT 'Unknown device',
    refresh_hash          text NOT NULL CHECK (refresh_hash ~ '^[0-9a-f]{64}$'),
    previous_refresh_hash text CHECK (previous_refresh_hash ~ '^[0-9a-f]{64}$'),
    rotated_at            timestamptz,
    retired_hashes        text[] NOT NULL DEFAULT '{}',  -- tokens already rotated away: reuse evidence
    generation            integer NOT NULL DEFAULT 0,
    revoked_at            timestamptz,
    revoked_reason        text,
    revoked_by            uuid,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id, created_at);

CREATE TABLE password_resets (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL,
    token_hash text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);

SELECT custos_isolate_tenant_table('sessions');
SELECT custos_isolate_tenant_table('password_resets');

GRANT SELECT, INSERT, UPDATE ON sessions, password_resets TO custos_app_rw;
