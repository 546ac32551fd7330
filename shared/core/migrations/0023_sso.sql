-- Single sign-on (docs/sso.md): per-tenant identity providers (SAML 2.0 and OpenID Connect),
-- links from a provider's stable subject to a user, the break-glass ADMINs who keep password
-- sign-in when a provider is required, SP-initiated requests waiting for their answer, and the
-- one-time codes that hand a finished sign-in to the browser.

CREATE TABLE sso_providers (
    tenant_id             uuid NOT NULL REFERENCES tenants (id),
    id                    uuid NOT NULL DEFAULT gen_random_uuid(),
    kind                  text NOT NULL CHECK (kind IN ('saml', 'oidc')),
    name                  text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 100),
    enabled               boolean NOT NULL DEFAULT false,
    required              boolean NOT NULL DEFAULT false,
    -- non-secret configuration (SAML: IdP entity id, SSO URL, certificates, metadata URL;
    -- OIDC: issuer, client id, discovery document); validated by shared.identity.sso.providers
    config                jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    -- an OIDC client secret, AES-256-GCM under the MFA key ring (never returned by the API)
    secret_ciphertext     bytea CHECK (length(secret_ciphertext) BETWEEN 17 AND 4096),
    secret_nonce          bytea CHECK (length(secret_nonce) = 12),
    secret_key_id         text CHECK (secret_key_id ~ '^[0-9a-f]{16}$'),
    -- {"attribute": "...", "rules": [{"value": "...", "role": "..."}], "default_role": "VIEWER"}
    role_mapping          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(role_mapping) = 'object'),
    jit                   boolean NOT NULL DEFAULT false,
    allow_admin_mapping   boolean NOT NULL DEFAULT false,
    trust_idp_mfa         boolean NOT NULL DEFAULT false,
    link_by_verified_email boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    created_by            uuid,
    updated_by            uuid,
    deleted_at            timestamptz,
    PRIMARY KEY (tenant_id, id),
    CHECK (NOT required OR enabled),
    CHECK (deleted_at IS NULL OR NOT enabled),
    CHECK ((secret_ciphertext IS NULL) = (secret_nonce IS NULL) AND (secret_nonce IS NULL) = (secret_key_id IS NULL))
);
CREATE UNIQUE INDEX sso_providers_live_name ON sso_providers (tenant_id, lower(name)) WHERE deleted_at IS NULL;

CREATE TABLE sso_links (
    tenant_id     uuid NOT NULL,
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    provider_id   uuid NOT NULL,
    subject       text NOT NULL CHECK (length(subject) BETWEEN 1 AND 512),
    user_id       uuid NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, provider_id, subject),
    -- one account per user per provider: a second subject never silently joins a linked user
    UNIQUE (tenant_id, provider_id, user_id),
    FOREIGN KEY (tenant_id, provider_id) REFERENCES sso_providers (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);

CREATE TABLE sso_break_glass (
    tenant_id  uuid NOT NULL,
    user_id    uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by uuid,
    PRIMARY KEY (tenant_id, user_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
);

-- An SP-initiated sign-in waiting for the IdP: the RelayState names it (stored hashed), it
-- remembers the request id (InResponseTo) and the browser that started it (hash of a cookie).
CREATE TABLE sso_requests (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL DEFAULT gen_random_uuid(),
    provider_id  uuid NOT NULL,
    relay_hash   text NOT NULL CHECK (relay_hash ~ '^[0-9a-f]{64}$'),
    request_id   text NOT NULL CHECK (length(request_id) BETWEEN 1 AND 256),
    binding_hash text NOT NULL CHECK (binding_hash ~ '^[0-9a-f]{64}$'),
    remember_me  boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, relay_hash),
    FOREIGN KEY (tenant_id, provider_id) REFERENCES sso_providers (tenant_id, id),
    CHECK (expires_at > created_at)
);

-- A verified sign-in waiting for the browser to collect it: a one-time code (stored hashed),
-- bound to the browser's cookie, traded at POST /api/auth/sso/exchange for tokens.
CREATE TABLE sso_handoffs (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL DEFAULT gen_random_uuid(),
    provider_id  uuid NOT NULL,
    user_id      uuid NOT NULL,
    code_hash    text NOT NULL CHECK (code_hash ~ '^[0-9a-f]{64}$'),
    binding_hash text NOT NULL CHECK (binding_hash ~ '^[0-9a-f]{64}$'),
    idp_mfa      boolean NOT NULL DEFAULT false,
    remember_me  boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, code_hash),
    FOREIGN KEY (tenant_id, provider_id) REFERENCES sso_providers (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id),
    CHECK (expires_at > created_at)
);

SELECT custos_isolate_tenant_table('sso_providers');
SELECT custos_isolate_tenant_table('sso_links');
SELECT custos_isolate_tenant_table('sso_break_glass');
SELECT custos_isolate_tenant_table('sso_requests');
SELECT custos_isolate_tenant_table('sso_handoffs');

-- Providers are configuration, never deleted by the app (deleted_at retires one; links keep
-- pointing at it). Break-glass entries are a list an ADMIN edits (the audit trail keeps the
-- history). Requests and hand-offs are short-lived and cleared when used or expired.
GRANT SELECT, INSERT, UPDATE ON sso_providers, sso_links TO custos_app_rw;
GRANT SELECT, INSERT, DELETE ON sso_break_glass TO custos_app_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON sso_requests, sso_handoffs TO custos_app_rw;

-- A session whose second factor the IdP proved (the provider trusts the IdP's MFA).
ALTER TABLE sessions DROP CONSTRAINT sessions_mfa_method_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_mfa_method_check
    CHECK (mfa_method IN ('totp', 'recovery_code', 'passkey', 'idp'));

-- custos_principal (0017) with one change: a session whose second factor the IdP proved
-- counts as enrolled, so a user of a provider that trusts the IdP's MFA need not also enrol
-- a Custos factor.
CREATE OR REPLACE FUNCTION custos_principal(p_tenant uuid, p_user uuid, p_session uuid, p_touch_s integer, p_mfa_key text)
RETURNS TABLE (
    role text, status text, display_name text, time_zone text, tenant_status text,
    designation_permissions text[], grants text[], denies text[], session_state text,
    mfa_enrolled boolean, mfa_all_roles boolean
)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    max_idle interval;
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    SELECT make_interval(mins => (ts.value)::int) INTO max_idle
      FROM tenant_settings ts WHERE ts.key = 'sessions.max_idle_minutes';
    UPDATE sessions s SET last_seen_at = now()
     WHERE s.id = p_session AND s.user_id = p_user AND s.revoked_at IS NULL AND s.expires_at > now()
       AND s.last_seen_at < now() - make_interval(secs => p_touch_s)
       AND NOT coalesce(s.last_seen_at < now() - max_idle, false);
    RETURN QUERY
    SELECT u.role::text, u.status::text, u.display_name::text, u.time_zone::text, t.status::text,
           array(SELECT DISTINCT p FROM user_designations ud
                   JOIN designations d ON d.tenant_id = ud.tenant_id AND d.id = ud.designation_id
                   CROSS JOIN unnest(d.permissions) p
                  WHERE ud.user_id = u.id AND d.deleted_at IS NULL)::text[],
           array(SELECT o.permission FROM user_permission_overrides o
                  WHERE o.user_id = u.id AND o.effect = 'grant')::text[],
           array(SELECT o.permission FROM user_permission_overrides o
                  WHERE o.user_id = u.id AND o.effect = 'deny')::text[],
           (SELECT CASE WHEN s.revoked_at IS NOT NULL OR s.expires_at <= now() THEN 'ended'
                        WHEN s.last_seen_at < now() - max_idle THEN 'idle' ELSE 'live' END
              FROM sessions s WHERE s.id = p_session AND s.user_id = u.id),
           exists(SELECT 1 FROM mfa_totp m WHERE m.user_id = u.id AND m.confirmed_at IS NOT NULL)
             OR exists(SELECT 1 FROM webauthn_credentials w WHERE w.user_id = u.id)
             OR exists(SELECT 1 FROM sessions s WHERE s.id = p_session AND s.user_id = u.id AND s.mfa_method = 'idp'),
           coalesce((SELECT ts.value = 'true'::jsonb FROM tenant_settings ts WHERE ts.key = p_mfa_key), false)
      FROM users u JOIN tenants t ON t.id = u.tenant_id
     WHERE u.id = p_user;
END
$$;
