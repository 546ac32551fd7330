-- Last run of each scheduled job: a platform table (no tenant data), shown by /api/health.
CREATE TABLE job_heartbeats (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,63}$'),
    last_run_at timestamptz NOT NULL,
    ok          boolean NOT NULL,
    detail      text NOT NULL DEFAULT ''
);
GRANT SELECT, INSERT, UPDATE ON job_heartbeats TO custos_app_rw;
