"""Second factors: TOTP (secrets sealed at rest), recovery codes, passkeys (WebAuthn),
enrolment, the sign-in second step, step-up, and admin resets.

May import: `shared.core`, `shared.audit`, and the other modules of `shared.identity`.
"""
