"""The foundation every other package stands on: settings, PostgreSQL (pool, tenant
transactions, migrations), Azure Storage clients, the error root, signing keys, cursors,
NCRONTAB schedules, the mail outbox and health checks.

May import: the standard library and third-party packages only; nothing else in `shared`.
"""
