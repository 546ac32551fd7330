-- Append-only audit trail: one SHA-256 hash chain per tenant (docs/audit.md).
-- Platform-level events (operators, alerts) form their own chain under the nil UUID.

CREATE TABLE audit_chain_heads (
    tenant_id uuid PRIMARY KEY,
    seq       bigint NOT NULL CHECK (seq >= 0),
    checksum  text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$')
);

CREATE TABLE audit_events (
    tenant_id         uuid NOT NULL,
    seq               bigint NOT NULL CHECK (seq >= 1),
    occurred_at       timestamptz NOT NULL,
    actor_id          text,
    actor_name        text NOT NULL,
    actor_type        text NOT NULL CHECK (actor_type IN ('user', 'operator', 'system', 'timer')),
    action            text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
    target_type       text,
    target_id         text,
    before            json,          -- canonical JSON text (RFC 8785), kept byte for byte
    after             json,
    reason            text,
    ip                text,
    user_agent        text,
    session_id        text,
    request_id        text,
    app_version       text NOT NULL,
    previous_checksum text NOT NULL CHECK (previous_checksum ~ '^[0-9a-f]{64}$'),
    checksum          text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_events_action ON audit_events (tenant_id, action, seq);
CREATE INDEX audit_events_actor ON audit_events (tenant_id, actor_id, seq);
CREATE INDEX audit_events_target ON audit_events (tenant_id, target_type, target_id, seq);
CREATE INDEX audit_events_time ON audit_events (tenant_id, occurred_at);

SELECT custos_isolate_tenant_table('audit_chain_heads');

SELECT custos_isolate_tenant_table('audit_events');

-- Refuse UPDATE, DELETE and TRUNCATE for everyone, the owner included. (A superuser or the
-- owner can disable triggers: that is what the hash chain and the signed checkpoints
-- outside the database are for.)
CREATE FUNCTION audit_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

GRANT SELECT, INSERT ON audit_events TO custos_app_rw;
GRANT SELECT, INSERT, UPDATE ON audit_chain_heads TO custos_app_rw;

-- Which chain heads have been checkpointed (to skip unchanged chains). The checkpoints
-- themselves live in blob storage; verification never trusts this table.
CREATE TABLE audit_checkpoint_log (
    tenant_id  uuid NOT NULL,
    seq        bigint NOT NULL,
    checksum   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, seq)
);
SELECT custos_isolate_tenant_table('audit_checkpoint_log');
GRANT SELECT, INSERT ON audit_checkpoint_log TO custos_app_rw;
