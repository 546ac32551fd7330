-- 21 CFR Part 11 electronic signatures: controlled vocabulary, policies, signatures bound
-- to one record version and its content checksum.

CREATE TABLE signature_meanings (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    code        text NOT NULL CHECK (code ~ '^[A-Z][A-Z_]{1,39}$'),
    description text NOT NULL CHECK (length(btrim(description)) BETWEEN 1 AND 200),
    builtin     boolean NOT NULL DEFAULT false,
    retired_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, code)
);

CREATE TABLE signature_reasons (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    code       text NOT NULL CHECK (code ~ '^[a-z][a-z0-9_]{1,39}$'),
    text       text NOT NULL CHECK (length(btrim(text)) BETWEEN 3 AND 200),
    retired_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, code)
);

CREATE TABLE signature_policies (
    tenant_id          uuid NOT NULL,
    type_id            uuid NOT NULL,
    required_reviews   integer NOT NULL DEFAULT 1 CHECK (required_reviews BETWEEN 0 AND 10),
    required_approvals integer NOT NULL DEFAULT 1 CHECK (required_approvals BETWEEN 1 AND 10),
    review_permission  text NOT NULL DEFAULT 'signatures.review',
    approve_permission text NOT NULL DEFAULT 'signatures.approve',
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, type_id),
    FOREIGN KEY (tenant_id, type_id) REFERENCES record_types (tenant_id, id)
);

CREATE TABLE signatures (
    tenant_id        uuid NOT NULL,
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    record_id        uuid NOT NULL,
    version          integer NOT NULL,
    content_checksum text NOT NULL CHECK (content_checksum ~ '^[0-9a-f]{64}$'),
    signer_id        uuid NOT NULL,
    signer_name      text NOT NULL,
    signer_tz        text NOT NULL,
    meaning          text NOT NULL,
    reason_code      text NOT NULL,
    reason_text      text NOT NULL,
    comment          text CHECK (length(comment) <= 1000),
    signed_at        timestamptz NOT NULL,
    binding          text NOT NULL CHECK (binding ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, record_id, version, signer_id, meaning),
    FOREIGN KEY (tenant_id, record_id, version) REFERENCES record_versions (tenant_id, record_id, version)
);
CREATE INDEX signatures_record ON signatures (tenant_id, record_id, version);

CREATE TRIGGER signatures_immutable BEFORE UPDATE OR DELETE ON signatures
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER signatures_no_truncate BEFORE TRUNCATE ON signatures
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

SELECT custos_isolate_tenant_table('signature_meanings');
SELECT custos_isolate_tenant_table('signature_reasons');
SELECT custos_isolate_tenant_table('signature_policies');
SELECT custos_isolate_tenant_table('signatures');

GRANT SELECT, INSERT, UPDATE ON signature_meanings, signature_reasons, signature_policies TO custos_app_rw;
GRANT SELECT, INSERT ON signatures TO custos_app_rw;
