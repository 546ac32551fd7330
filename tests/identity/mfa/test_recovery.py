"""Recovery codes: single use, regeneration voids the old set and needs a proof, 79 bits."""

from __future__ import annotations

from shared.core import db
from shared.identity import mfa
from shared.tenancy.tenants import Tenant
from tests.conftest import Host, PersonFactory, auth
from tests.identity.mfa.helpers import code_at, enrolled_with_codes, problem_type, second_step, ticket_for
from tests.identity.test_signin import client_from, events


def test_recovery_code_works_once_and_tells_how_many_remain(host: Host, tenant: Tenant) -> None:
    with client_from(host) as c:
        user, _, codes = enrolled_with_codes(c, tenant)
        ticket = ticket_for(c, tenant, user["email"])["mfa_ticket"]
        ok = second_step(c, ticket, recovery_code=codes[0].upper().replace("-", " "))  # typed loosely
        assert ok.status_code == 200, ok.text
        assert ok.json()["recovery_codes_remaining"] == 9 and "9 left" in ok.json()["warning"]
        assert c.get("/api/users", headers=auth(ok.json()["access_token"])).status_code == 200
        again = second_step(c, ticket_for(c, tenant, user["email"])["mfa_ticket"], recovery_code=codes[0])
        assert again.status_code == 401 and problem_type(again) == "mfa-failed"
    used = events(tenant.id, "security.recovery_code_used")
    assert [(e["target_id"], e["after"]["remaining"]) for e in used] == [(user["id"], 9)]
    assert [e["after"]["reason"] for e in events(tenant.id, "auth.mfa_failed")] == ["code_invalid"]


def test_regeneration_voids_the_old_codes(host: Host, tenant: Tenant) -> None:
    with client_from(host) as c:
        user, _, codes = enrolled_with_codes(c, tenant)
        signed_in = second_step(c, ticket_for(c, tenant, user["email"])["mfa_ticket"], recovery_code=codes[0]).json()
        fresh = c.post("/api/mfa/recovery-codes", json={}, headers=auth(signed_in["access_token"]))
        assert fresh.status_code == 200, fresh.text  # the session proved a factor moments ago
        new_codes = fresh.json()["recovery_codes"]
        assert len(new_codes) == 10 and not set(new_codes) & set(codes)
        old = second_step(c, ticket_for(c, tenant, user["email"])["mfa_ticket"], recovery_code=codes[1])
        assert old.status_code == 401
        new = second_step(c, ticket_for(c, tenant, user["email"])["mfa_ticket"], recovery_code=new_codes[0])
        assert new.status_code == 200 and new.json()["recovery_codes_remaining"] == 9
    issued = events(tenant.id, "mfa.recovery_codes_issued")
    assert [(e["after"]["occasion"], e["after"].get("voided"), e["after"].get("proof")) for e in issued] == [
        ("enrolment", None, None), ("regenerated", 9, "recent_sign_in")]


def test_regeneration_needs_a_code_or_a_recent_second_factor(host: Host, tenant: Tenant, make_person: PersonFactory) -> None:
    admin = make_person(tenant.id, "ADMIN")  # a session that never proved a factor
    with client_from(host) as c:
        stale = c.post("/api/mfa/recovery-codes", json={}, headers=auth(admin.token))
        assert stale.status_code == 403 and problem_type(stale) == "mfa-step-up-required"
        assert admin.totp_secret is not None
        wrong = c.post("/api/mfa/recovery-codes", json={"code": "000000" if code_at(admin.totp_secret) != "000000"
                                                        else "111111"}, headers=auth(admin.token))
        assert wrong.status_code == 400 and problem_type(wrong) == "mfa-code-invalid"
        ok = c.post("/api/mfa/recovery-codes", json={"code": code_at(admin.totp_secret)}, headers=auth(admin.token))
        assert ok.status_code == 200 and len(ok.json()["recovery_codes"]) == 10
    assert [e["after"]["reason"] for e in events(tenant.id, "mfa.step_up_failed")] == ["code_invalid"]
    with db.tenant_tx(tenant.id) as conn:
        codes = conn.execute("select count(*) as n from mfa_recovery_codes where user_id = %s", (admin.id,)).fetchone()
    assert codes["n"] == 10


def test_recovery_codes_have_79_bits_and_normalize() -> None:
    code = mfa.new_recovery_code()
    assert len(code) == 19 and code.count("-") == 3
    assert mfa.normalize_recovery_code(code.upper().replace("-", " ")) == code.replace("-", "")
    assert mfa.normalize_recovery_code("0000-0000-0000-0000") is None  # 0 is not in the alphabet
    assert len(mfa.RECOVERY_ALPHABET) ** mfa.RECOVERY_CODE_LENGTH > 2**79
