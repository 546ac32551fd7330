"""schemathesis against the real host, as a signed-in ADMIN: no server error, no status the
OpenAPI document does not list, no body outside its declared schema or media type.

Bounded so `make test` stays minutes long on two cores: at most 25 examples an operation,
derandomized (the same cases every run), no shrinking phase. Each operation gets its own
tenant and ADMIN (a confirmed TOTP and a live session), so one operation signing the ADMIN
out or removing its factor cannot blind the others.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

from shared.core import db
from shared.tenancy.tenants import create_tenant
from tests.conftest import Host, PersonFactory

MAX_EXAMPLES = 25

# The document as the app builds it (conftest has put the test settings in the environment);
# the served copy is the same one (test_openapi checks it is valid).
from function_app import create_app  # noqa: E402
from shared.web.openapi import build_openapi  # noqa: E402

SCHEMA = schemathesis.openapi.from_dict(build_openapi(create_app(), version="fuzz"))
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}


@pytest.fixture
def admins(make_person: PersonFactory) -> Any:
    """A fresh tenant and ADMIN per operation, so one operation signing the ADMIN out or
    removing its factor cannot blind the others."""

    def token_for() -> str:
        with db.platform_tx() as conn:
            tenant = create_tenant(conn, slug=f"st-{uuid.uuid4().hex[:12]}", name="Fuzzed Tenant", region="uksouth")
        return make_person(tenant.id, "ADMIN").token

    return token_for


# Problem types that say the request models refused the input. The document is generated from
# those models, so schema-valid input refused with one of these means the document is wrong.
# Input refused by a rule no schema can state (a token that does not exist, a cursor not issued
# here, a tenant's own record schema, a number that looks like a card) carries a type of its own.
MODEL_REFUSALS = frozenset({"urn:custos:problem:validation", "urn:custos:problem:malformed-request",
                            "urn:custos:problem:unsupported-media-type"})


@schemathesis.check
def schema_valid_input_passes_the_request_models(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's positive_data_acceptance, narrowed to what a schema can promise."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        problem_type = None
        if response.headers.get("content-type", [""])[0].startswith("application/problem+json"):
            problem_type = response.json().get("type")
        if problem_type is None or problem_type in MODEL_REFUSALS:
            raise
        return None


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api_conforms_to_its_openapi_document(label: str, host: Host, admins: Any) -> None:
    operation = OPERATIONS[label]
    headers = {"Authorization": f"Bearer {admins()}"}
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        case.call_and_validate(base_url=host.url, headers=headers, excluded_checks=[positive_data_acceptance],
                               additional_checks=[schema_valid_input_passes_the_request_models])

    run()
