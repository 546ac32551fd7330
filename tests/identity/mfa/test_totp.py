"""TOTP (RFC 6238): the Appendix B known answers, drift, single use, secret size."""

from __future__ import annotations

import base64

import pyotp
import pytest

from shared.identity import mfa
from tests.identity.mfa.helpers import RFC_SECRET


@pytest.mark.requirement("21CFR11.300(e)")
@pytest.mark.parametrize(("now", "code"), [
    (59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"),
    (1234567890, "89005924"), (2000000000, "69279037"), (20000000000, "65353130"),
])
def test_rfc6238_appendix_b_sha1_vectors(now: int, code: str) -> None:
    match = mfa.verify_totp(code, secret=RFC_SECRET, now=now, digits=8)
    assert (match.step, match.drift) == (now // 30, 0)


def test_drift_of_one_step_is_accepted_and_two_refused() -> None:
    secret, now = mfa.new_totp_secret(), 1_700_000_015.0
    totp = pyotp.TOTP(secret)
    for drift in (-1, 0, 1):
        match = mfa.verify_totp(totp.at(now + 30 * drift), secret=secret, now=now)
        assert (match.step, match.drift) == (int(now // 30) + drift, drift)
    for drift in (-2, 2):
        with pytest.raises(mfa.TotpCodeInvalid, match="wrong or too old"):
            mfa.verify_totp(totp.at(now + 30 * drift), secret=secret, now=now)


@pytest.mark.requirement("21CFR11.300(e)")
def test_a_code_is_accepted_once() -> None:
    secret, now = mfa.new_totp_secret(), 1_700_000_015.0
    totp = pyotp.TOTP(secret)
    first = mfa.verify_totp(totp.at(now), secret=secret, now=now)
    with pytest.raises(mfa.TotpCodeReused, match="already used"):
        mfa.verify_totp(totp.at(now), secret=secret, now=now, last_used_step=first.step)
    with pytest.raises(mfa.TotpCodeReused):  # an older step, still within the window, is no better
        mfa.verify_totp(totp.at(now - 30), secret=secret, now=now, last_used_step=first.step)
    assert mfa.verify_totp(totp.at(now + 30), secret=secret, now=now, last_used_step=first.step).drift == 1
    for bad in ("12345", "1234567", "12a456", "١٢٣٤٥٦"):
        with pytest.raises(mfa.TotpCodeMalformed):
            mfa.verify_totp(bad, secret=secret, now=now)


def test_new_secrets_have_160_bits() -> None:
    secret = mfa.new_totp_secret()
    assert len(base64.b32decode(secret)) == 20
