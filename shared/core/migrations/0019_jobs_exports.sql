-- Long work as jobs on a queue (shared/lifecycle/jobs.py). A queue message carries only a
-- job's id and tenant: the row below is the job. Deleting a tenant's rows makes its pending
-- messages no-ops (the handler finds no row and drops the message).
CREATE TABLE jobs (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL DEFAULT gen_random_uuid(),
    kind         text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_.]{0,63}$'),
    state        text NOT NULL DEFAULT 'QUEUED' CHECK (state IN ('QUEUED', 'RUNNING', 'DONE', 'FAILED')),
    params       jsonb NOT NULL DEFAULT '{}'::jsonb,
    progress_done  bigint NOT NULL DEFAULT 0 CHECK (progress_done >= 0),
    progress_total bigint CHECK (progress_total >= 0),
    -- A problem type and a safe detail, never a stack trace.
    error_type   text,
    error_detail text CHECK (length(error_detail) <= 1000),
    attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_until  timestamptz,
    created_by   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    result       jsonb,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (id)
);

CREATE INDEX jobs_tenant_kind_created ON jobs (tenant_id, kind, created_at DESC);

SELECT custos_isolate_tenant_table('jobs');

GRANT SELECT, INSERT, UPDATE ON jobs TO custos_app_rw;
