"""The audit trail: the per-tenant SHA-256 chain (append, read, verify), Ed25519-signed
checkpoints outside the database, the JSON Lines export, and the retention cut behind a
signed retention checkpoint.

May import: `shared.core` and `shared.web.jsonio`; `shared.web.endpoint` only for types.
"""
