-- Authentication in one round trip: one call sets the tenant for its own (implicit,
-- single-statement) transaction, records the session's activity at most once every
-- p_touch_s seconds, and returns everything the guard decides on: the user, the tenant's
-- status, the session's state (live, idle, ended), the inputs of the effective permissions
-- and the second-factor flags. SECURITY INVOKER (the default, said out loud): it runs as the
-- app role, so row-level security applies to every statement inside it exactly as it does to
-- the app's own statements; setting app.tenant_id here grants nothing the app role could not
-- already do with set_config. Nothing is cached: every request reads the rows afresh, so a
-- revocation or deactivation takes effect on the caller's next request.
--
-- The idle limit is the tenant setting sessions.max_idle_minutes, read here the same way
-- shared.identity.sessions.MAX_IDLE_SQL reads it when an idle session is revoked.

CREATE FUNCTION custos_principal(p_tenant uuid, p_user uuid, p_session uuid, p_touch_s integer, p_mfa_key text)
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
    -- plpgsql runs each statement below on its own, after this one: row-level security in
    -- them sees the tenant (inside a single SQL statement, the evaluation order of a
    -- set_config against the policies' current_setting would not be defined).
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
             OR exists(SELECT 1 FROM webauthn_credentials w WHERE w.user_id = u.id),
           coalesce((SELECT ts.value = 'true'::jsonb FROM tenant_settings ts WHERE ts.key = p_mfa_key), false)
      FROM users u JOIN tenants t ON t.id = u.tenant_id
     WHERE u.id = p_user;
END
$$;
REVOKE ALL ON FUNCTION custos_principal(uuid, uuid, uuid, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION custos_principal(uuid, uuid, uuid, integer, text) TO custos_app_rw;

-- A support token's principal: the operator's printed name while the tenant's grant is live
-- and the operator active; no row otherwise.
CREATE FUNCTION custos_support_principal(p_tenant uuid, p_operator uuid, p_grant uuid)
RETURNS TABLE (display_name text)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    RETURN QUERY
    SELECT o.display_name::text FROM support_access_grants g
      JOIN platform_operators o ON o.id = g.operator_id
     WHERE g.id = p_grant AND g.operator_id = p_operator AND g.revoked_at IS NULL
       AND g.expires_at > now() AND o.status = 'active';
END
$$;
REVOKE ALL ON FUNCTION custos_support_principal(uuid, uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION custos_support_principal(uuid, uuid, uuid) TO custos_app_rw;
