"""Tenants and the people in them: tenants and their settings, users, the five roles and
the permission catalogue, designations, overrides, and time-limited support access.

May import: `shared.core`, `shared.web.models`, `shared.audit`, `shared.identity`.
"""
