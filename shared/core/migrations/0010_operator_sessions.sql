-- Platform operators sign in: a password set through a one-time setup token, and sessions of
-- their own (platform tables: tenant admins can neither see nor revoke them).

ALTER TABLE platform_operators ADD COLUMN password_hash text;
ALTER TABLE platform_operators ADD COLUMN setup_token_hash text CHECK (setup_token_hash ~ '^[0-9a-f]{64}$');
ALTER TABLE platform_operators ADD COLUMN setup_expires_at timestamptz;
GRANT UPDATE (password_hash, setup_token_hash, setup_expires_at) ON platform_operators TO custos_app_rw;

CREATE TABLE operator_sessions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    operator_id uuid NOT NULL REFERENCES platform_operators (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    ip          text,
    user_agent  text,
    revoked_at  timestamptz
);
CREATE INDEX operator_sessions_operator ON operator_sessions (operator_id, created_at);
GRANT SELECT, INSERT ON operator_sessions TO custos_app_rw;
GRANT UPDATE (revoked_at) ON operator_sessions TO custos_app_rw;
