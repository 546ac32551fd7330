-- Cancellation to purge (issue 14, item 3; docs/purge.md).
--
-- A cancelled tenant carries the moment it may be purged; a platform operator can reinstate
-- it before then. The purge moves it CANCELLED -> PURGING -> PURGED and keeps its progress in
-- `tenant_purges`, a platform table (no tenant_id column on purpose: the purge deletes from
-- every table that has one, and this row must outlive the tenant's data).

ALTER TABLE tenants ADD COLUMN purge_after timestamptz;
ALTER TABLE tenants ADD COLUMN purged_at timestamptz;
ALTER TABLE tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_status_check
    CHECK (status IN ('ACTIVE', 'CANCELLED', 'PURGING', 'PURGED'));
-- Cancelled tenants of before this migration get the default 30 days from their cancellation.
UPDATE tenants SET purge_after = cancelled_at + interval '30 days'
 WHERE status = 'CANCELLED' AND purge_after IS NULL;
ALTER TABLE tenants ADD CONSTRAINT tenants_purge_after_check
    CHECK ((status = 'ACTIVE') = (purge_after IS NULL) AND (purge_after IS NULL OR purge_after >= cancelled_at));
ALTER TABLE tenants ADD CONSTRAINT tenants_purged_at_check
    CHECK ((status = 'PURGED') = (purged_at IS NOT NULL));
CREATE INDEX tenants_purge_due ON tenants (purge_after) WHERE status IN ('CANCELLED', 'PURGING');

-- The app cancels and reinstates (as before, plus purge_after); only the purge, as the
-- owner, moves a tenant to PURGING and PURGED.
GRANT UPDATE (purge_after) ON tenants TO custos_app_rw;
-- The app may not move a tenant into or out of the purge states, whatever its grants say.
CREATE FUNCTION tenants_guard_purge_states() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.status IN ('PURGING', 'PURGED') OR NEW.status IN ('PURGING', 'PURGED'))
       AND OLD.status IS DISTINCT FROM NEW.status
       AND NOT pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE') THEN
        RAISE EXCEPTION 'tenant status % -> % is the purge''s alone', OLD.status, NEW.status
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.status = 'PURGED' AND NEW IS DISTINCT FROM OLD THEN
        RAISE EXCEPTION 'a purged tenant does not change' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER tenants_purge_states BEFORE UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tenants_guard_purge_states();

-- One row per purge: what was read before anything was deleted (chain head, newest signed
-- checkpoint, the blob listing's count and hash, the ADMINs' addresses for the mail) and the
-- rows deleted so far per table, so a run that dies half way resumes with the right totals.
CREATE TABLE tenant_purges (
    tenant            uuid PRIMARY KEY REFERENCES tenants (id),
    slug              text NOT NULL,
    cancelled_at      timestamptz NOT NULL,
    purge_after       timestamptz NOT NULL,
    started_at        timestamptz NOT NULL,
    phase             text NOT NULL DEFAULT 'started'
                      CHECK (phase IN ('started', 'checkpointed', 'listed', 'storage_deleted', 'rows_deleted', 'finished')),
    finished_at       timestamptz,
    chain_head        jsonb NOT NULL,
    newest_checkpoint jsonb,
    chain_verified    jsonb,
    admin_addresses   text[] NOT NULL DEFAULT '{}',
    blobs             jsonb,
    table_entities    jsonb,
    rows_deleted      jsonb NOT NULL DEFAULT '{}',
    attestation_blob  text,
    CHECK ((phase = 'finished') = (finished_at IS NOT NULL)),
    CHECK (finished_at IS NULL OR (attestation_blob IS NOT NULL AND admin_addresses = '{}'))
);
-- Platform table, owner only: the app role neither reads nor writes it.

-- Versions, schema versions and signatures are immutable (migrations 0007, 0009); the purge
-- of a tenant in PURGING is the one deletion allowed, by the owner, of that tenant's rows
-- only, in a transaction that names it: select set_config('custos.purge_tenant', <id>, true).
CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE')
       AND (to_jsonb(OLD) ->> 'tenant_id') = nullif(current_setting('custos.purge_tenant', true), '')
       AND EXISTS (SELECT 1 FROM tenants t
                    WHERE t.id::text = (to_jsonb(OLD) ->> 'tenant_id') AND t.status = 'PURGING') THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is immutable: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
