-- Records (ALCOA+): typed, versioned, immutable versions, frozen references, attachments.

CREATE TABLE record_types (
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    name           text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    display_name   text NOT NULL CHECK (length(btrim(display_name)) BETWEEN 1 AND 200),
    builtin        boolean NOT NULL DEFAULT false,
    schema_version integer NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

CREATE TABLE record_type_schemas (
    tenant_id  uuid NOT NULL,
    type_id    uuid NOT NULL,
    version    integer NOT NULL CHECK (version >= 1),
    schema     json NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by uuid,
    reason     text,
    PRIMARY KEY (tenant_id, type_id, version),
    FOREIGN KEY (tenant_id, type_id) REFERENCES record_types (tenant_id, id)
);

CREATE TABLE records (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    type_id         uuid NOT NULL,
    status          text NOT NULL DEFAULT 'DRAFT'
                    CHECK (status IN ('DRAFT', 'IN_REVIEW', 'APPROVED', 'REJECTED', 'RETIRED')),
    current_version integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      uuid NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz,
    retired_by      uuid,
    retire_reason   text,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, type_id) REFERENCES record_types (tenant_id, id)
);
CREATE INDEX records_type ON records (tenant_id, type_id, created_at, id);
CREATE INDEX records_created ON records (tenant_id, created_at, id);

CREATE TABLE record_versions (
    tenant_id        uuid NOT NULL,
    record_id        uuid NOT NULL,
    version          integer NOT NULL CHECK (version >= 1),
    schema_version   integer NOT NULL,
    payload          json NOT NULL,          -- canonical JSON (RFC 8785) text, byte for byte
    checksum         text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    refs             json NOT NULL DEFAULT '[]',
    frozen_context   json NOT NULL DEFAULT '{}',
    attachments      json NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       uuid NOT NULL,
    created_by_name  text NOT NULL,
    created_tz       text NOT NULL,
    reason           text,
    previous_version integer,
    PRIMARY KEY (tenant_id, record_id, version),
    FOREIGN KEY (tenant_id, record_id) REFERENCES records (tenant_id, id),
    CHECK ((version = 1) = (previous_version IS NULL)),
    CHECK (version = 1 OR reason IS NOT NULL)
);

CREATE TABLE payment_methods (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    gateway       text NOT NULL CHECK (gateway ~ '^[a-z][a-z0-9_]{0,31}$'),
    gateway_token text NOT NULL CHECK (length(gateway_token) BETWEEN 4 AND 200),
    brand         text NOT NULL CHECK (brand IN ('visa', 'mastercard', 'amex', 'discover', 'diners', 'jcb', 'unionpay', 'other')),
    last4         text NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month     integer NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year      integer NOT NULL CHECK (exp_year BETWEEN 2000 AND 2100),
    label         text NOT NULL DEFAULT '' CHECK (length(label) <= 100),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    uuid NOT NULL,
    retired_at    timestamptz,
    PRIMARY KEY (tenant_id, id)
);

-- Versions and schema versions are immutable: original, never silently changed.
CREATE FUNCTION refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is immutable: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER record_versions_immutable BEFORE UPDATE OR DELETE ON record_versions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER record_versions_no_truncate BEFORE TRUNCATE ON record_versions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER record_type_schemas_immutable BEFORE UPDATE OR DELETE ON record_type_schemas
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

SELECT custos_isolate_tenant_table('record_types');
SELECT custos_isolate_tenant_table('record_type_schemas');
SELECT custos_isolate_tenant_table('records');
SELECT custos_isolate_tenant_table('record_versions');
SELECT custos_isolate_tenant_table('payment_methods');

GRANT SELECT, INSERT, UPDATE ON record_types, records, payment_methods TO custos_app_rw;
GRANT SELECT, INSERT ON record_type_schemas, record_versions TO custos_app_rw;
