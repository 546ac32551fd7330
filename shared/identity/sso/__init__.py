"""Single sign-on and provisioning: per-tenant identity providers (SAML 2.0 and OpenID
Connect), account linking and just-in-time users, and SCIM 2.0 provisioning. A sign-in
through a provider ends in the same sessions, second-factor rules and audit events as a
password sign-in.

May import: `shared.core`, `shared.web.models`/`shared.web.jsonio`, `shared.audit`, the public
functions of `shared.tenancy` (users, roles) and of `shared.identity` (sessions, sign-in).
"""
