-- SCIM 2.0 provisioning (issue 15, item 5; docs/scim.md).
--
-- scim_tokens: bearer tokens an ADMIN creates for one tenant's identity provider. Only the
-- SHA-256 of a token is stored; a token is listed by its id, name and dates, and revoked
-- (never deleted: the audit trail names it as the actor of every change it made).
CREATE TABLE scim_tokens (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL DEFAULT gen_random_uuid(),
    name         text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    token_hash   text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   uuid NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    revoked_by   uuid,
    PRIMARY KEY (tenant_id, id)
);
SELECT custos_isolate_tenant_table('scim_tokens');
GRANT SELECT, INSERT ON scim_tokens TO custos_app_rw;
GRANT UPDATE (last_used_at, revoked_at, revoked_by) ON scim_tokens TO custos_app_rw;

-- scim_users: what SCIM says about a Custos user beyond the users row (users holds email,
-- display name and status). A user created in Custos has no row until SCIM first writes it;
-- its userName then reads as its email. deleted_at: a SCIM DELETE deactivates the user (records
-- are never hard-deleted) and hides it from SCIM. deactivated_by_scim: SCIM may reactivate only
-- a user it deactivated itself, never one an ADMIN deactivated.
CREATE TABLE scim_users (
    tenant_id           uuid NOT NULL,
    user_id             uuid NOT NULL,
    user_name           text NOT NULL CHECK (length(user_name) BETWEEN 1 AND 254),
    external_id         text CHECK (length(external_id) <= 254),
    name                jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(name) = 'object'),
    emails              jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(emails) = 'array'),
    deactivated_by_scim boolean NOT NULL DEFAULT false,
    deleted_at          timestamptz,
    PRIMARY KEY (tenant_id, user_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);
-- userName is unique per tenant, case-insensitively (RFC 7643 4.1.1: caseExact false)
CREATE UNIQUE INDEX scim_users_user_name ON scim_users (tenant_id, lower(user_name)) WHERE deleted_at IS NULL;
CREATE INDEX scim_users_external_id ON scim_users (tenant_id, external_id);
SELECT custos_isolate_tenant_table('scim_users');
GRANT SELECT, INSERT ON scim_users TO custos_app_rw;
GRANT UPDATE (user_name, external_id, name, emails, deactivated_by_scim, deleted_at) ON scim_users TO custos_app_rw;

-- scim_groups: a SCIM Group is a designation; this holds its SCIM externalId.
CREATE TABLE scim_groups (
    tenant_id      uuid NOT NULL,
    designation_id uuid NOT NULL,
    external_id    text CHECK (length(external_id) <= 254),
    PRIMARY KEY (tenant_id, designation_id),
    FOREIGN KEY (tenant_id, designation_id) REFERENCES designations (tenant_id, id)
);
SELECT custos_isolate_tenant_table('scim_groups');
GRANT SELECT, INSERT ON scim_groups TO custos_app_rw;
GRANT UPDATE (external_id) ON scim_groups TO custos_app_rw;

-- A SCIM token acts in the audit trail as itself: actor type scim_token, id = the token's id.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_actor_type_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_actor_type_check
    CHECK (actor_type IN ('user', 'operator', 'system', 'timer', 'scim_token'));
