-- The read that authenticates a request inside the request's own tenant transaction
-- (shared.identity.guards.principal_in_tenant_tx): what custos_principal (0017, 0023) returns,
-- plus whether the session's activity is due to be recorded (`touch_due`), and nothing else.
--
-- It writes nothing (no touch: the caller releases the transaction and lets custos_principal
-- touch when `touch_due`), so the request's transaction never holds a session row lock, and it
-- sets no tenant: the message that opens the transaction has set app.tenant_id already, and
-- row-level security applies to every statement here as to the app's own (SECURITY INVOKER).
-- A plpgsql function, so its query is planned once per connection and reused: the same read as
-- an ad-hoc statement cost about as much database time in planning as in running.
CREATE FUNCTION custos_principal_tx(p_user uuid, p_session uuid, p_touch_s integer, p_mfa_key text)
RETURNS TABLE (
    role text, status text, display_name text, time_zone text, tenant_status text,
    designation_permissions text[], grants text[], denies text[], session_state text,
    mfa_enrolled boolean, mfa_all_roles boolean, touch_due boolean
)
LANGUAGE plpgsql STABLE SECURITY INVOKER
AS $$
BEGIN
    RETURN QUERY
    WITH idle AS (
        SELECT make_interval(mins => (ts.value)::int) AS max_idle
          FROM tenant_settings ts WHERE ts.key = 'sessions.max_idle_minutes'
    )
    SELECT u.role::text, u.status::text, u.display_name::text, u.time_zone::text, t.status::text,
           array(SELECT DISTINCT p FROM user_designations ud
                   JOIN designations d ON d.tenant_id = ud.tenant_id AND d.id = ud.designation_id
                   CROSS JOIN unnest(d.permissions) p
                  WHERE ud.user_id = u.id AND d.deleted_at IS NULL)::text[],
           array(SELECT o.permission FROM user_permission_overrides o
                  WHERE o.user_id = u.id AND o.effect = 'grant')::text[],
           array(SELECT o.permission FROM user_permission_overrides o
                  WHERE o.user_id = u.id AND o.effect = 'deny')::text[],
           CASE WHEN s.id IS NULL OR s.revoked_at IS NOT NULL OR s.expires_at <= now() THEN 'ended'
                WHEN s.last_seen_at < now() - (SELECT max_idle FROM idle) THEN 'idle' ELSE 'live' END,
           exists(SELECT 1 FROM mfa_totp m WHERE m.user_id = u.id AND m.confirmed_at IS NOT NULL)
             OR exists(SELECT 1 FROM webauthn_credentials w WHERE w.user_id = u.id)
             OR coalesce(s.mfa_method = 'idp', false),
           coalesce((SELECT ts.value = 'true'::jsonb FROM tenant_settings ts WHERE ts.key = p_mfa_key), false),
           coalesce(s.last_seen_at < now() - make_interval(secs => p_touch_s), false)
      FROM users u JOIN tenants t ON t.id = u.tenant_id
      LEFT JOIN sessions s ON s.id = p_session AND s.user_id = u.id
     WHERE u.id = p_user;
END
$$;
REVOKE ALL ON FUNCTION custos_principal_tx(uuid, uuid, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION custos_principal_tx(uuid, uuid, integer, text) TO custos_app_rw;
