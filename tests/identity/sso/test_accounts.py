"""Account linking and just-in-time users: what a verified identity may become, and the one-time
code that hands a browser sign-in over (real PostgreSQL, no HTTP needed below the protocol)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from shared.audit import chain as audit
from shared.core import db
from shared.identity import mfa
from shared.identity.sso import accounts
from shared.identity.sso.accounts import VerifiedIdentity
from shared.identity.sso.errors import AccountRefused, InvalidHandoff, ProviderUnavailable
from shared.tenancy.tenants import Tenant, create_tenant
from tests.conftest import create_user
from tests.identity.sso.helpers import events, insert_provider, links, session_count

META = audit.RequestMeta(ip="198.51.100.7", user_agent="pytest", request_id="req-sso")


def who(subject: str | None = None, **kw: Any) -> VerifiedIdentity:
    return VerifiedIdentity(subject=subject or f"sub-{uuid.uuid4().hex}", **kw)


def user_row(tenant_id: str, user_id: str) -> dict[str, Any]:
    with db.tenant_tx(tenant_id) as conn:
        return conn.execute("select id::text as id, email, role, status from users where id = %s", (user_id,)).fetchone()


def signed_in_user(result: mfa.SignedIn | mfa.SecondFactorRequired, tenant_id: str) -> str:
    assert isinstance(result, mfa.SignedIn), result
    with db.tenant_tx(tenant_id) as conn:
        return conn.execute("select user_id::text as u from sessions where id = %s",
                            (result.tokens.session_id,)).fetchone()["u"]


def test_a_first_sign_in_without_jit_is_refused_and_audited(tenant: Tenant) -> None:
    provider = insert_provider(tenant.id)
    with pytest.raises(AccountRefused) as exc:
        accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider, identity=who(email="new@example.test",
                                  email_verified=True), meta=META)
    assert exc.value.reason == "not_provisioned"
    assert session_count(tenant.id) == 0 and links(tenant.id) == []
    [event] = events(tenant.id, "auth.sso_login_failed")
    assert event["after"]["reason"] == "not_provisioned"


def test_jit_creates_a_viewer_linked_by_subject_and_signs_it_in(tenant: Tenant) -> None:
    provider = insert_provider(tenant.id, jit=True)
    identity = who(email="Ada@Example.test", email_verified=True, display_name="Ada")
    result = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider, identity=identity, meta=META)
    user_id = signed_in_user(result, tenant.id)
    user = user_row(tenant.id, user_id)
    assert (user["email"], user["role"], user["status"]) == ("ada@example.test", "VIEWER", "active")
    assert links(tenant.id) == [{"provider_id": provider, "subject": identity.subject, "user_id": user_id}]
    assert [e["target_id"] for e in events(tenant.id, "user.provisioned")] == [user_id]
    [login] = events(tenant.id, "auth.sso_login")
    assert login["target_id"] == result.tokens.session_id and login["after"]["provider_id"] == provider


def test_the_subject_not_the_email_finds_the_user_once_linked(tenant: Tenant) -> None:
    provider = insert_provider(tenant.id, jit=True)
    first = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider,
                                      identity=who("stable-1", email="one@example.test", email_verified=True), meta=META)
    other = create_user(tenant.id, "MANAGER")
    # The IdP now asserts another user's email for the same subject: still the first user.
    again = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider,
                                      identity=who("stable-1", email=other["email"], email_verified=True), meta=META)
    assert signed_in_user(again, tenant.id) == signed_in_user(first, tenant.id) != other["id"]


def test_an_unlinked_accounts_email_never_takes_it_over(tenant: Tenant) -> None:
    provider = insert_provider(tenant.id, jit=True)
    victim = create_user(tenant.id, "ADMIN")
    with pytest.raises(AccountRefused) as exc:
        accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider,
                                  identity=who(email=victim["email"], email_verified=True), meta=META)
    assert exc.value.reason == "email_belongs_to_unlinked_account"
    assert session_count(tenant.id) == 0 and links(tenant.id) == []
    assert events(tenant.id, "auth.sso_login_failed")[0]["after"]["user_id"] == victim["id"]


def test_linking_by_email_needs_the_provider_setting_and_a_verified_email(tenant: Tenant) -> None:
    provider = insert_provider(tenant.id, link_by_verified_email=True)
    user = create_user(tenant.id, "OPERATOR")
    with pytest.raises(AccountRefused):
        accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider,
                                  identity=who(email=user["email"], email_verified=False), meta=META)
    result = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider,
                                       identity=who("linked-sub", email=user["email"], email_verified=True), meta=META)
    assert signed_in_user(result, tenant.id) == user["id"]
    assert [e["after"]["how"] for e in events(tenant.id, "sso.account_linked")] == ["verified_email"]
    # A second subject claiming the same email does not join the linked user.
    with pytest.raises(AccountRefused) as exc:
        accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider,
                                  identity=who("another-sub", email=user["email"], email_verified=True), meta=META)
    assert exc.value.reason == "user_linked_to_another_subject"


def test_the_role_mapping_never_grants_admin_unless_allowed(tenant: Tenant) -> None:
    mapping = {"rules": [{"value": "admins", "role": "ADMIN"}, {"value": "qa", "role": "REVIEWER"}],
               "default_role": "ADMIN"}
    denied = insert_provider(tenant.id, jit=True, role_mapping=mapping)
    roles = []
    for groups in (("admins",), ("admins", "qa"), ()):
        result = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=denied, meta=META,
                                           identity=who(email=f"{uuid.uuid4().hex[:8]}@example.test",
                                                        email_verified=True, groups=groups))
        roles.append(user_row(tenant.id, signed_in_user(result, tenant.id))["role"])
    assert roles == ["VIEWER", "REVIEWER", "VIEWER"]
    allowed = insert_provider(tenant.id, jit=True, role_mapping=mapping, allow_admin_mapping=True)
    result = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=allowed, meta=META,
                                       identity=who(email="boss@example.test", email_verified=True, groups=("admins",)))
    assert isinstance(result, mfa.SignedIn) and result.extra == {"mfa_enrolment_required": True}


def test_a_deactivated_linked_user_is_refused(tenant: Tenant) -> None:
    provider = insert_provider(tenant.id, jit=True)
    result = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider,
                                       identity=who("gone", email="gone@example.test", email_verified=True), meta=META)
    user_id = signed_in_user(result, tenant.id)
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update users set status = 'deactivated', deactivated_at = now() where id = %s", (user_id,))
    with pytest.raises(AccountRefused) as exc:
        accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider, identity=who("gone"), meta=META)
    assert exc.value.reason == "inactive_user" and session_count(tenant.id) == 1


def test_a_disabled_or_foreign_provider_signs_nobody_in(tenant: Tenant) -> None:
    disabled = insert_provider(tenant.id, enabled=False, jit=True)
    with pytest.raises(ProviderUnavailable):
        accounts.complete_sign_in(tenant_id=tenant.id, provider_id=disabled, identity=who(email="x@example.test"),
                                  meta=META)
    with db.platform_tx() as conn:
        other = create_tenant(conn, slug=f"t-{uuid.uuid4().hex[:12]}", name="Other", region="uksouth")
    foreign = insert_provider(other.id, jit=True)
    with pytest.raises(ProviderUnavailable):
        accounts.complete_sign_in(tenant_id=tenant.id, provider_id=foreign, identity=who(email="x@example.test"),
                                  meta=META)
    assert session_count(tenant.id) == 0


def test_a_user_with_a_factor_gets_a_ticket_unless_the_idp_mfa_is_trusted(tenant: Tenant) -> None:
    user = create_user(tenant.id, "ADMIN")  # with a confirmed TOTP
    untrusting = insert_provider(tenant.id, link_by_verified_email=True)
    result = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=untrusting, meta=META,
                                       identity=who("adm", email=user["email"], email_verified=True, idp_mfa=True))
    assert isinstance(result, mfa.SecondFactorRequired) and session_count(tenant.id) == 0
    trusting = insert_provider(tenant.id, link_by_verified_email=True, trust_idp_mfa=True)
    result = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=trusting, meta=META,
                                       identity=who("adm2", email=user["email"], email_verified=True, idp_mfa=True))
    assert isinstance(result, mfa.SignedIn)
    with db.tenant_tx(tenant.id) as conn:
        row = conn.execute("select mfa_method, mfa_verified_at is not null as proved from sessions where id = %s",
                           (result.tokens.session_id,)).fetchone()
    assert row == {"mfa_method": "idp", "proved": True}
    # The same trusting provider without the IdP's MFA claim: the ticket again.
    result = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=trusting, meta=META,
                                       identity=who("adm2", idp_mfa=False))
    assert isinstance(result, mfa.SecondFactorRequired)


def test_two_first_sign_ins_of_one_subject_at_once_make_one_user(tenant: Tenant) -> None:
    provider = insert_provider(tenant.id, jit=True)
    barrier = threading.Barrier(4)
    users: list[str] = []
    errors: list[BaseException] = []

    def go() -> None:
        barrier.wait()
        try:
            result = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider, meta=META,
                                               identity=who("racer", email="racer@example.test", email_verified=True))
            users.append(signed_in_user(result, tenant.id))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(users)) == 1 and len(links(tenant.id)) == 1


# --- the browser hand-off ---------------------------------------------------------------------------


def handoff(tenant: Tenant, binding: str = "cookie-value-1") -> tuple[str, str]:
    provider = insert_provider(tenant.id, jit=True)
    code = accounts.begin_handoff(tenant_id=tenant.id, provider_id=provider, binding=binding, remember_me=False,
                                  identity=who(email=f"{uuid.uuid4().hex[:8]}@example.test", email_verified=True),
                                  meta=META)
    return code, provider


def test_a_code_is_traded_once_by_the_browser_that_holds_the_cookie(tenant: Tenant) -> None:
    code, _ = handoff(tenant)
    assert session_count(tenant.id) == 0
    with pytest.raises(InvalidHandoff):
        accounts.exchange(code=code, binding="another-browser", meta=META)
    with pytest.raises(InvalidHandoff):
        accounts.exchange(code=code, binding=None, meta=META)
    result = accounts.exchange(code=code, binding="cookie-value-1", meta=META)
    assert isinstance(result, mfa.SignedIn) and session_count(tenant.id) == 1
    with pytest.raises(InvalidHandoff):
        accounts.exchange(code=code, binding="cookie-value-1", meta=META)
    assert session_count(tenant.id) == 1
    reasons = [e["after"]["reason"] for e in events(tenant.id, "auth.sso_exchange_failed")]
    assert reasons == ["other_browser", "code_not_live"]


def test_an_expired_code_or_a_forged_one_is_refused(tenant: Tenant) -> None:
    code, _ = handoff(tenant)
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update sso_handoffs set expires_at = created_at + interval '1 microsecond'")
    with pytest.raises(InvalidHandoff):
        accounts.exchange(code=code, binding="cookie-value-1", meta=META)
    forged = code[:-4] + ("AAAA" if not code.endswith("AAAA") else "BBBB")
    with pytest.raises(InvalidHandoff):
        accounts.exchange(code=forged, binding="cookie-value-1", meta=META)
    assert session_count(tenant.id) == 0


def test_a_provider_disabled_after_the_assertion_opens_no_session(tenant: Tenant) -> None:
    code, provider = handoff(tenant)
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("update sso_providers set enabled = false where id = %s", (provider,))
    with pytest.raises(InvalidHandoff):
        accounts.exchange(code=code, binding="cookie-value-1", meta=META)
    assert session_count(tenant.id) == 0
    assert [e["after"]["reason"] for e in events(tenant.id, "auth.sso_exchange_failed")] == ["provider_disabled"]


def test_an_invited_user_is_activated_by_a_linking_sign_in_and_the_invitation_dies(tenant: Tenant) -> None:
    provider = insert_provider(tenant.id, link_by_verified_email=True)
    user = create_user(tenant.id, "OPERATOR", status="invited")
    with db.tenant_tx(tenant.id) as conn:
        conn.execute("insert into invitations (tenant_id, user_id, token_hash, expires_at) values"
                     " (%s, %s, %s, now() + interval '1 day')", (tenant.id, user["id"], uuid.uuid4().hex * 2))
    result = accounts.complete_sign_in(tenant_id=tenant.id, provider_id=provider, meta=META,
                                       identity=who("invitee", email=user["email"], email_verified=True))
    assert signed_in_user(result, tenant.id) == user["id"]
    assert user_row(tenant.id, user["id"])["status"] == "active"
    with db.tenant_tx(tenant.id) as conn:
        assert conn.execute("select revoked_at is not null as r from invitations").fetchone()["r"] is True
    [activated] = events(tenant.id, "user.activated")
    assert (activated["before"], activated["after"]["status"]) == ({"status": "invited"}, "active")


def _refuse(tenant_id: str, ip: str) -> None:
    accounts.record_refusal(tenant_id=tenant_id, provider_id=None, reason="bad_signature",
                            meta=audit.RequestMeta(ip=ip, request_id=str(uuid.uuid4())))


def test_anonymous_refusals_reach_the_audit_chain_within_a_budget_and_the_rest_are_counted(
        tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    """Junk posted to the ACS or the callback cannot grow a tenant's chain at will: per worker
    and window, 20 refusals per address and 200 per tenant are audited; the next audited
    refusal says how many were left out, and the chain stays valid."""
    budget = accounts.RefusalBudget()
    monkeypatch.setattr(accounts, "refusal_budget", budget)
    monkeypatch.setattr(accounts, "REFUSALS_AUDITED_PER_TENANT", 30)
    clock = [1000.0]
    take = budget.take
    monkeypatch.setattr(budget, "take", lambda t, a, now=None: take(t, a, now=clock[0]))

    for _ in range(25):
        _refuse(tenant.id, "203.0.113.7")
    assert len(events(tenant.id, "auth.sso_login_failed")) == accounts.REFUSALS_AUDITED_PER_ADDRESS
    for n in range(15):  # other addresses: audited until the tenant's budget (30) is spent
        _refuse(tenant.id, f"198.51.100.{n}")
    audited = sorted(events(tenant.id, "auth.sso_login_failed"), key=lambda e: e["seq"])
    assert len(audited) == 30
    # the first audited after the flood reports the first address's 5 that were left out
    assert [e["after"].get("refusals_not_audited") for e in audited[19:22]] == [None, 5, None]

    clock[0] += accounts.REFUSAL_WINDOW_S  # a new window
    _refuse(tenant.id, "203.0.113.7")
    audited = events(tenant.id, "auth.sso_login_failed")
    assert len(audited) == 31
    newest = max(audited, key=lambda e: e["seq"])
    assert newest["after"]["refusals_not_audited"] == 5  # the 5 over the tenant's budget
    _refuse(tenant.id, "203.0.113.7")
    newest = max(events(tenant.id, "auth.sso_login_failed"), key=lambda e: e["seq"])
    assert "refusals_not_audited" not in newest["after"]
    with db.tenant_tx(tenant.id) as conn:
        assert audit.verify_segment(conn, tenant_id=tenant.id, checkpoint=None).valid


def test_one_tenants_flood_leaves_another_tenants_refusals_audited(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = accounts.RefusalBudget()
    monkeypatch.setattr(accounts, "refusal_budget", budget)
    with db.platform_tx() as conn:
        flooded, other = (create_tenant(conn, slug=f"sso-flood-{uuid.uuid4().hex[:8]}", name="Flood", region="uksouth")
                          for _ in range(2))
    for _ in range(accounts.REFUSALS_AUDITED_PER_ADDRESS + 5):
        _refuse(flooded.id, "203.0.113.9")
    _refuse(other.id, "203.0.113.9")
    assert len(events(flooded.id, "auth.sso_login_failed")) == accounts.REFUSALS_AUDITED_PER_ADDRESS
    assert len(events(other.id, "auth.sso_login_failed")) == 1


def test_the_budget_memory_is_bounded() -> None:
    budget = accounts.RefusalBudget()
    tenant_id = str(uuid.uuid4())
    for n in range(accounts._REFUSAL_KEYS_MAX + 50):
        budget.take(tenant_id, f"addr-{n}", now=5.0)
    assert len(budget._per_address) <= accounts._REFUSAL_KEYS_MAX
    assert budget.take(tenant_id, "addr-new", now=5.0)[0] is False  # the tenant's budget still applies
