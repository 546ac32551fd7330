"""Custos: the Azure Functions app. Creates the app and registers one Blueprint per domain,
those of the function groups CUSTOS_FUNCTION_GROUPS names (`api`, `owner`: docs/purge.md)."""

from collections.abc import Iterable

import azure.functions as func

from functions import (
    audit,
    auth,
    console,
    designations,
    exports,
    incidents,
    jobs,
    mfa,
    owner,
    platform,
    records,
    scim,
    sessions,
    signatures,
    sso,
    support,
    system,
    tenants,
    timers,
    users,
    wellknown,
)
from shared.core import telemetry
from shared.core.settings import get_settings, load_settings
from shared.web.card_data import install_log_redaction
from shared.web.logs import quiet_azure_sdk
from shared.web.openapi import describe_app

BLUEPRINTS = (
    system.bp, wellknown.bp, auth.bp, sessions.bp, tenants.bp, users.bp, designations.bp, support.bp, platform.bp,
    records.bp, signatures.bp, audit.bp, timers.bp, mfa.bp, jobs.bp, exports.bp,
    scim.bp, console.bp, sso.bp, incidents.bp,
)
OWNER_BLUEPRINTS = (owner.bp,)
"""The owner jobs: only the owner-jobs app (its identity is the schema owner) registers them."""
GROUPS = {"api": BLUEPRINTS, "owner": OWNER_BLUEPRINTS}


def create_app(groups: Iterable[str] | None = None) -> func.FunctionApp:
    """A FunctionApp with the Blueprints of `groups` registered (None: CUSTOS_FUNCTION_GROUPS).

    `FunctionApp.get_functions()` may be called once per app object (it records the names
    it has seen), and the worker makes that call when it indexes. Code that needs the
    function list again (the OpenAPI document, tests) builds a fresh app with this.
    """
    chosen = get_settings().function_groups if groups is None else frozenset(groups)
    new = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    for group in sorted(chosen):
        for blueprint in GROUPS[group]:
            new.register_functions(blueprint)
    return new


install_log_redaction()  # before anything logs: no record, whoever writes it, carries a card number
quiet_azure_sdk()  # Storage request dumps would be most of the log (and of Application Insights' bill)
settings = load_settings()  # a missing or malformed setting stops start-up here, naming the setting
telemetry.configure(settings)  # only with APPLICATIONINSIGHTS_CONNECTION_STRING; imports nothing otherwise

# Authentication is the endpoint wrapper's job (shared/web/endpoint.py), so no function keys.
app = create_app()
describe_app(create_app)  # the OpenAPI trigger serves this app's document; it cannot import this module
