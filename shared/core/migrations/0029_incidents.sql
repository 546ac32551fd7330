-- Security incidents (shared/lifecycle/incidents.py, docs/incidents.md): platform tables, like
-- tenant_purges. An incident may affect several tenants, so it has no tenant_id of its own and
-- no row-level security; `affected` lists the tenants (GIN-indexed for "incidents of tenant X").
-- Tenants read them only through the view tenant_incidents, which shows a tenant nothing but
-- its own id in `affected` and only the evidence from its own audit chain.
CREATE TABLE incidents (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind          text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]{0,62}$'),
    severity      text NOT NULL CHECK (severity IN ('MEDIUM', 'HIGH', 'CRITICAL')),
    affected      uuid[] NOT NULL DEFAULT '{}',
    tenant_data   boolean NOT NULL,
    state         text NOT NULL DEFAULT 'OPEN' CHECK (state IN ('OPEN', 'NOTIFIED', 'RESOLVED')),
    summary       text NOT NULL CHECK (length(summary) BETWEEN 1 AND 500),
    first_seen    timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL,
    signals       integer NOT NULL DEFAULT 1 CHECK (signals >= 1),
    -- [{"chain": uuid, "seq": n, "action": "..."}], the newest 100 (signals counts them all)
    evidence      jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(evidence) = 'array'),
    notify_due_at timestamptz,
    notified_at   timestamptz,
    escalated_at  timestamptz,
    resolved_at   timestamptz,
    CHECK (last_seen >= first_seen),
    CHECK (tenant_data = (notify_due_at IS NOT NULL))
);
CREATE INDEX incidents_affected ON incidents USING gin (affected);
CREATE INDEX incidents_state ON incidents (state, first_seen DESC);
-- One open (not RESOLVED) incident per kind and set of tenants: a second signal updates it,
-- and two sweeps racing to open the same incident meet on this index.
CREATE UNIQUE INDEX incidents_open_key ON incidents (kind, affected) WHERE state <> 'RESOLVED';
GRANT SELECT, INSERT, UPDATE ON incidents TO custos_app_rw;

-- Every change of an incident's state, with its reason and who made it.
CREATE TABLE incident_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id uuid NOT NULL REFERENCES incidents (id),
    at          timestamptz NOT NULL,
    action      text NOT NULL CHECK (action IN ('opened', 'updated', 'notified', 'escalated', 'resolved')),
    from_state  text,
    to_state    text NOT NULL,
    reason      text NOT NULL CHECK (length(btrim(reason)) BETWEEN 1 AND 1000),
    actor_id    text,
    actor_name  text NOT NULL
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, id);
GRANT SELECT, INSERT ON incident_events TO custos_app_rw;

-- How far the sweep has read: an audit chain ('chain:<uuid>', seq) or a timer's heartbeat
-- ('heartbeat:<name>', last_run_at).
CREATE TABLE incident_watermarks (
    source text PRIMARY KEY CHECK (length(source) <= 200),
    seq    bigint NOT NULL DEFAULT 0,
    at     timestamptz
);
GRANT SELECT, INSERT, UPDATE ON incident_watermarks TO custos_app_rw;

CREATE VIEW tenant_incidents WITH (security_barrier) AS
SELECT i.id, i.kind, i.severity, i.state, i.summary, i.first_seen, i.last_seen, i.notify_due_at,
       i.notified_at, i.resolved_at, i.tenant_data, ARRAY[t.tid] AS affected,
       coalesce((SELECT jsonb_agg(e) FROM jsonb_array_elements(i.evidence) e WHERE e ->> 'chain' = t.tid::text),
                '[]'::jsonb) AS evidence
  FROM incidents i,
       (SELECT nullif(current_setting('app.tenant_id', true), '')::uuid AS tid) t
 WHERE t.tid IS NOT NULL AND t.tid = ANY (i.affected);
GRANT SELECT ON tenant_incidents TO custos_app_rw;
