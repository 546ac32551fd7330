-- The two deletions the design allows in the audit trail: the purge of a cancelled tenant
-- after its retention window (with a signed deletion attestation) and the retention cut of a
-- tenant's oldest events (up to a signed retention checkpoint). Both run as the schema owner
-- and say which one they are in a transaction-local setting:
--     select set_config('custos.audit_delete', 'purge' | 'retention', true)
-- Anything else is still refused, for every role; TRUNCATE stays refused outright, and
-- UPDATE too. The app role has no DELETE grant, so this opens nothing to the app: the
-- check on the table's owner below keeps it that way even if a grant were added by mistake.
CREATE OR REPLACE FUNCTION audit_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND coalesce(current_setting('custos.audit_delete', true), '') IN ('purge', 'retention')
       AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE') THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
