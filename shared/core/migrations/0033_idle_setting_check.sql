-- sessions.max_idle_minutes is read inside SQL on every authenticated request
-- (custos_principal) and by the statements that end idle sessions: `(value)::int`. The app
-- only ever writes an integer 5..1440 (shared/tenancy/tenant_settings.py), but a row written
-- around it (a JSON boolean, a fraction, a string) made every request of its tenant fail with
-- 422 and stopped the housekeeping of idle sessions. The database now refuses such a row. A row
-- that already breaks the rule could never have been used (every read of it failed): it is
-- removed, which leaves the tenant with no idle limit, the default. Row-level security is forced
-- on the owner too (no tenant is set here, so it would see no row): it is lifted for this one
-- statement, inside the migration's transaction, and forced again before anything else runs.
ALTER TABLE tenant_settings NO FORCE ROW LEVEL SECURITY;
DELETE FROM tenant_settings
 WHERE key = 'sessions.max_idle_minutes'
   AND NOT (jsonb_typeof(value) = 'number'
            AND (value)::numeric = trunc((value)::numeric)
            AND (value)::numeric BETWEEN 5 AND 1440);
ALTER TABLE tenant_settings FORCE ROW LEVEL SECURITY;

ALTER TABLE tenant_settings ADD CONSTRAINT tenant_settings_idle_minutes_is_usable CHECK (
    key <> 'sessions.max_idle_minutes'
    OR (jsonb_typeof(value) = 'number'
        AND (value)::numeric = trunc((value)::numeric)
        AND (value)::numeric BETWEEN 5 AND 1440));
