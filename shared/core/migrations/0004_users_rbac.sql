-- Platform operators, tenant users, designations, per-user overrides, support access, outbox.

CREATE TABLE platform_operators (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email        text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    display_name text NOT NULL CHECK (length(btrim(display_name)) BETWEEN 1 AND 200),
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deactivated')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (email)
);
GRANT SELECT ON platform_operators TO custos_app_rw;

CREATE TABLE users (
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    email          text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    display_name   text NOT NULL CHECK (length(display_name) <= 200),
    time_zone      text NOT NULL DEFAULT 'UTC' CHECK (length(time_zone) BETWEEN 1 AND 64),
    role           text NOT NULL CHECK (role IN ('ADMIN', 'MANAGER', 'REVIEWER', 'OPERATOR', 'VIEWER')),
    status         text NOT NULL DEFAULT 'invited' CHECK (status IN ('invited', 'active', 'deactivated')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deactivated_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, email),
    CHECK ((status = 'deactivated') = (deactivated_at IS NOT NULL))
);
-- user ids are never reused: ids are random and rows are never deleted
CREATE UNIQUE INDEX users_id_unique ON users (id);
CREATE INDEX users_tenant_role ON users (tenant_id, role, status);

CREATE TABLE designations (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 1000),
    permissions text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    PRIMARY KEY (tenant_id, id)
);
-- a name is unique among a tenant's live designations
CREATE UNIQUE INDEX designations_live_name ON designations (tenant_id, lower(name)) WHERE deleted_at IS NULL;

CREATE TABLE user_designations (
    tenant_id      uuid NOT NULL,
    user_id        uuid NOT NULL,
    designation_id uuid NOT NULL,
    assigned_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id, designation_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id),
    FOREIGN KEY (tenant_id, designation_id) REFERENCES designations (tenant_id, id)
);

CREATE TABLE user_permission_overrides (
    tenant_id  uuid NOT NULL,
    user_id    uuid NOT NULL,
    permission text NOT NULL CHECK (permission ~ '^[a-z_]+(\.[a-z_]+)+$'),
    effect     text NOT NULL CHECK (effect IN ('grant', 'deny')),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by uuid,
    PRIMARY KEY (tenant_id, user_id, permission),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);

CREATE TABLE invitations (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL,
    token_hash text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz,
    created_by uuid,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);

CREATE TABLE support_access_grants (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    operator_id uuid NOT NULL REFERENCES platform_operators (id),
    granted_by  uuid NOT NULL,
    reason      text NOT NULL CHECK (length(btrim(reason)) BETWEEN 3 AND 500),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    revoked_by  uuid,
    PRIMARY KEY (tenant_id, id),
    CHECK (expires_at > created_at)
);
CREATE UNIQUE INDEX support_access_grants_id ON support_access_grants (id);

-- Mail waits here until the delivery job sends it (same transaction as the change).
CREATE TABLE outbox (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    to_address text NOT NULL,
    subject    text NOT NULL,
    body       text NOT NULL,
    kind       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz,
    attempts   integer NOT NULL DEFAULT 0,
    last_error text,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX outbox_pending ON outbox (tenant_id, created_at) WHERE sent_at IS NULL;

SELECT custos_isolate_tenant_table('users');
SELECT custos_isolate_tenant_table('designations');
SELECT custos_isolate_tenant_table('user_designations');
SELECT custos_isolate_tenant_table('user_permission_overrides');
SELECT custos_isolate_tenant_table('invitations');
SELECT custos_isolate_tenant_table('support_access_grants');
SELECT custos_isolate_tenant_table('outbox');

-- Users and designations are never deleted (deactivated / soft-deleted); assignments and
-- overrides are replaced, with the change in the audit trail.
GRANT SELECT, INSERT, UPDATE ON users, designations, invitations, support_access_grants, outbox TO custos_app_rw;
GRANT SELECT, INSERT, DELETE ON user_designations, user_permission_overrides TO custos_app_rw;
