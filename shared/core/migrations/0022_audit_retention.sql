-- Retention cuts of a tenant's oldest audit events (shared/audit/retention.py). Each cut
-- archives the events to the exports container, signs a retention checkpoint into the
-- audit-checkpoints container and then deletes the events (0018 allows exactly that to the
-- owner). This table is a quick index of those cuts for people and for the next cut's
-- starting point; verification trusts only the signed blobs, never these rows.
CREATE TABLE audit_retention_cuts (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    seq             bigint NOT NULL CHECK (seq >= 1),
    from_seq        bigint NOT NULL CHECK (from_seq >= 1 AND from_seq <= seq),
    checksum        text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    window_days     integer NOT NULL CHECK (window_days >= 1),
    cut_at          timestamptz NOT NULL,
    checkpoint_blob text NOT NULL,
    archive_blob    text NOT NULL,
    archive_sha256  text NOT NULL CHECK (archive_sha256 ~ '^[0-9a-f]{64}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, seq)
);
SELECT custos_isolate_tenant_table('audit_retention_cuts');
-- The app only reads (to show a tenant its cuts); the cut itself runs as the owner.
GRANT SELECT ON audit_retention_cuts TO custos_app_rw;
