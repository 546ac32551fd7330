-- One row per run of the blob snapshot timer (shared/lifecycle/snapshots.py): a platform
-- table, like job_heartbeats. It holds counts and an error text, no tenant data, so it needs
-- no tenant_id and no row-level security. `watermark` is the database time the run started;
-- the next run treats blobs modified after the newest ok run's watermark (less an overlap
-- for clock skew between PostgreSQL and Storage) as changed.
CREATE TABLE snapshot_runs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    watermark         timestamptz NOT NULL,
    since             timestamptz,
    ok                boolean,
    blobs_listed      integer NOT NULL DEFAULT 0 CHECK (blobs_listed >= 0),
    blobs_changed     integer NOT NULL DEFAULT 0 CHECK (blobs_changed >= 0),
    snapshots_taken   integer NOT NULL DEFAULT 0 CHECK (snapshots_taken >= 0),
    snapshots_deleted integer NOT NULL DEFAULT 0 CHECK (snapshots_deleted >= 0),
    mismatched        integer NOT NULL DEFAULT 0 CHECK (mismatched >= 0),
    error             text CHECK (length(error) <= 2000),
    CHECK (finished_at IS NULL OR finished_at >= started_at)
);
CREATE INDEX snapshot_runs_ok_started ON snapshot_runs (started_at DESC) WHERE ok;
GRANT SELECT, INSERT, UPDATE ON snapshot_runs TO custos_app_rw;
