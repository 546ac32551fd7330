-- Idle sessions end: operator sessions record activity (at most once a minute) and why they
-- ended, as tenant sessions already do (sessions.last_seen_at, sessions.revoked_reason).

ALTER TABLE operator_sessions ADD COLUMN last_seen_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE operator_sessions ADD COLUMN revoked_reason text;
GRANT UPDATE (last_seen_at, revoked_reason) ON operator_sessions TO custos_app_rw;
