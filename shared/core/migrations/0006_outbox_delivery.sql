-- Outbox delivery (shared/mail.py): when a row was last tried. Retries back off from the
-- last attempt rather than from created_at, so mail that waited through a long relay or
-- job outage is not retried back to back until it gives up.
ALTER TABLE outbox ADD COLUMN last_attempt_at timestamptz;
