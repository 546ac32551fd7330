-- Housekeeping (issue 17, item 2; docs/security.md "Housekeeping"): the timer deletes
-- short-lived rows once they can no longer be used, as the app role.
--
-- DELETE is granted on exactly these tables and no other, for these reasons:
-- - password_resets, invitations: one-time tokens (only a SHA-256 is stored). Once used,
--   revoked or expired a row can never be redeemed again, and every redemption refuses an
--   unknown token exactly as it refuses a used or expired one, so deleting it changes no
--   answer. The audit trail (user.invited, invitation.accepted, password.reset ...) is the
--   record of what happened; these rows are not.
-- - outbox: mail is a delivery queue, not a record; a sent row already has its body
--   blanked. Only sent rows older than OUTBOX_SENT_RETENTION_DAYS are deleted; unsent and
--   given-up mail stays for ops to see.
-- mfa_tickets and operator_mfa_tickets already allow DELETE (0008, 0012); sessions are ended
-- (revoked, audited), never deleted. audit_events, records and signatures are untouched.
GRANT DELETE ON outbox, password_resets, invitations TO custos_app_rw;

-- The housekeeping deletes look rows up by these columns within a tenant.
CREATE INDEX outbox_sent ON outbox (tenant_id, sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX password_resets_expires ON password_resets (tenant_id, expires_at);
CREATE INDEX invitations_expires ON invitations (tenant_id, expires_at);
CREATE INDEX sessions_live_last_seen ON sessions (tenant_id, last_seen_at) WHERE revoked_at IS NULL;
