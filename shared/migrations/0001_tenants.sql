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

-- The first tenant-scoped table, and the pattern for all of them: tenant_id first in every
-- index, ENABLE + FORCE row-level security, one policy on app.tenant_id. A transaction with
-- no tenant set sees and writes nothing (nullif: once a connection has set the variable,
-- the unset value reads as '' rather than NULL).
CREATE TABLE tenant_settings (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    key        text NOT NULL CHECK (key ~ '^[a-z][a-z0-9_.]{0,63}$'),
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid,
    PRIMARY KEY (tenant_id, key)
);

ALTER TABLE tenant_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_settings
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

GRANT SELECT, INSERT, UPDATE ON tenant_settings TO custos_app_rw;
