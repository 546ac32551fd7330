"""Who is calling: passwords, sign-in, access and refresh tokens, sessions, throttling,
platform operators, and (in `mfa/`) second factors.

May import: `shared.core`, `shared.web.models`/`shared.web.jsonio`, `shared.audit`, and the
public functions of `shared.tenancy` (users, roles).
"""
