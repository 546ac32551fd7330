-- Tenants (a platform table) and the row-level-security pattern every tenant table follows.

-- The app's privileges are granted to this group role; the login role the app connects
-- as (DATABASE_APP_ROLE) is made a member by the migration runner. NOLOGIN, owns nothing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'custos_app_rw') THEN
        CREATE ROLE custos_app_rw NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO custos_app_rw;

CREATE TABLE tenants (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug         text NOT NULL UNIQUE
                 CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    name         text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    status       text NOT NULL DEFAULT 'ACTIVE'
                 CHECK (status IN ('ACTIVE', 'CANCELLED', 'PURGED')),
    data_region  text NOT NULL CHECK (data_region ~ '^[a-z0-9]{2,32}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    cancelled_at timestamptz,
    CHECK ((status = 'ACTIVE') = (cancelled_at IS NULL))
);

-- Tenants are never deleted by the app: only the purge changes status to PURGED.
GRANT SELECT, INSERT ON tenants TO custos_app_rw;
GRANT UPDATE (name, status, cancelled_at) ON tenants TO custos_app_rw;

-- The pattern of every tenant table: tenant_id first in every index, ENABLE + FORCE
-- row-level security, one policy on app.tenant_id. A transaction with no tenant set sees and
-- writes nothing (nullif: once a connection has set the variable, the unset value reads as ''
-- rather than NULL). Every migration applies it with this one function, so no table can get a
-- weaker variant.
CREATE FUNCTION custos_isolate_tenant_table(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
    EXECUTE format($p$CREATE POLICY tenant_isolation ON %s
        USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)$p$, target);
END
$$;
REVOKE ALL ON FUNCTION custos_isolate_tenant_table(regclass) FROM PUBLIC;

-- The first tenant-scoped table.
CREATE TABLE tenant_settings (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    key        text NOT NULL CHECK (key ~ '^[a-z][a-z0-9_.]{0,63}$'),
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid,
    PRIMARY KEY (tenant_id, key)
);

SELECT custos_isolate_tenant_table('tenant_settings');

GRANT SELECT, INSERT, UPDATE ON tenant_settings TO custos_app_rw;
