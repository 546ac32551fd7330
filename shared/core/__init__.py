"""The foundation every other package stands on: settings, PostgreSQL (pool, tenant
transactions, migrations), Azure Storage clients, the error root, signing keys, cursors,
NCRONTAB schedules, the mail outbox, health checks, the app's Entra identity (entra) and
OpenTelemetry (telemetry).

May import: the standard library and third-party packages only; nothing else in `shared`.
"""
