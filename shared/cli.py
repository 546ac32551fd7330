"""Ops command line: `python -m shared.cli COMMAND`.

Commands print JSON on stdout so scripts can read them; errors go to stderr with exit 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from shared.audit import chain as audit
from shared.core import db, health, mail, storage
from shared.core.errors import AppError, CheckFailed, Conflict, NotFound
from shared.core.migrate import MigrationError, ensure_app_role, ensure_owner_role, migrate
from shared.core.settings import Settings, SettingsError, get_settings, load_local_settings
from shared.identity.opaque import new_token
from shared.identity.operators import SETUP_TTL
from shared.tenancy.tenants import create_tenant, create_tenant_with_admin
from shared.tenancy.users import normalize_email


def _owner_settings(purpose: str) -> tuple[str, str]:
    """DATABASE_OWNER_URL and DATABASE_APP_ROLE alone, for deploy steps that hold no app secret.

    Raises:
        SettingsError: the owner URL is missing or not a postgresql:// URL.
    """
    url = os.environ.get("DATABASE_OWNER_URL", "")
    if not url:
        raise SettingsError(f"DATABASE_OWNER_URL: required to {purpose}")
    if not url.startswith(("postgresql://", "postgres://")):
        raise SettingsError("DATABASE_OWNER_URL: must be a postgresql:// URL")
    role = os.environ.get("DATABASE_APP_ROLE") or str(Settings.model_fields["database_app_role"].default)
    return url, role


def cmd_migrate(args: argparse.Namespace) -> dict[str, Any]:
    """Apply database migrations as the owner role and create storage containers/tables."""
    if args.skip_storage:
        # The deployment runs this with the owner's token only: the app's keys and Storage
        # settings live in Key Vault and the Function App, not on the deploying machine.
        return {"applied": migrate(*_owner_settings("migrate"))}
    s = get_settings()
    if not s.database_owner_url:
        raise SettingsError("DATABASE_OWNER_URL: required to migrate")
    applied = migrate(s.database_owner_url, s.database_app_role)
    storage.ensure_storage()
    return {"applied": applied}


def cmd_create_app_role(args: argparse.Namespace) -> dict[str, Any]:
    """Create the app's login role (DATABASE_APP_ROLE) as the owner if missing and grant it
    custos_app_rw; safe to re-run. With --entra-object-id (Azure) the role is the Entra
    principal of the app's managed identity. Run it before `migrate` on a new server."""
    url, app_role = _owner_settings("create the app role")
    role = ensure_app_role(url, args.role or app_role, entra_object_id=args.entra_object_id)
    return {"role": role.__dict__, "audit": _audit_role(url, "platform.app_role_ensured", role.name, role.__dict__)}


def _audit_role(owner_url: str, action: str, name: str, after: dict[str, Any]) -> dict[str, Any] | None:
    """The platform chain's record of a database role the ops CLI created or granted (as the
    owner, like `create-operator`): the event's seq, or None before the first `migrate` (no audit
    table yet: `create-app-role` runs first on a new server, and `migrate` records nothing of it)."""
    try:
        with psycopg.connect(owner_url, row_factory=dict_row) as conn:
            appended = _append_platform(conn, action, target_type="database_role", target_id=name, after=after)
    except psycopg.errors.UndefinedTable:
        return None
    return {"seq": appended.seq}


def _append_platform(conn: Any, action: str, *, target_type: str, target_id: str, after: dict[str, Any]) -> Any:
    """An ops CLI event in the platform chain, appended in `conn`'s transaction (the owner's
    connection: row-level security is forced on the owner too, hence the tenant setting)."""
    conn.execute("select set_config('app.tenant_id', %s, true)", (audit.PLATFORM_CHAIN,))
    return audit.append(conn, tenant_id=audit.PLATFORM_CHAIN, actor=_cli_actor(), action=action,
                        target_type=target_type, target_id=target_id, after=after)


def _cli_actor() -> audit.Actor:
    return audit.Actor(id=None, name=f"ops CLI ({getpass.getuser()})", type="operator")


def cmd_create_tenant(args: argparse.Namespace) -> dict[str, Any]:
    """Create a tenant; with --admin-email also invite its first ADMIN (token printed once)."""
    with db.platform_tx() as conn:
        if not args.admin_email:
            return {"tenant": create_tenant(conn, slug=args.slug, name=args.name, region=args.region,
                                            actor=_cli_actor()).__dict__}
        tenant, invitation = create_tenant_with_admin(
            conn, slug=args.slug, name=args.name, region=args.region, admin_email=args.admin_email,
            admin_name=args.admin_name, actor=_cli_actor(), meta=None, reason="tenant onboarding (CLI)",
        )
    return {
        "tenant": tenant.__dict__,
        "admin": invitation.user,
        "invitation": {"token": invitation.token, "expires_at": invitation.expires_at},
    }


def cmd_create_operator(args: argparse.Namespace) -> dict[str, Any]:
    """Create a platform operator (as the owner role: the app itself cannot make operators);
    prints a one-time setup token, valid 24 hours, for POST /api/platform/auth/setup."""
    s = get_settings()
    if not s.database_owner_url:
        raise SettingsError("DATABASE_OWNER_URL: required to create operators")
    email = normalize_email(args.email)
    token, hashed = new_token("ops", audit.PLATFORM_CHAIN)
    try:
        with psycopg.connect(s.database_owner_url, row_factory=dict_row) as conn:
            row = conn.execute(
                """insert into platform_operators (email, display_name, setup_token_hash, setup_expires_at)
                   values (%s, %s, %s, now() + %s) returning id, email, display_name, status, created_at, setup_expires_at""",
                (email, args.name or email, hashed, SETUP_TTL),
            ).fetchone()
            assert row is not None
            _append_platform(conn, "platform.operator_created", target_type="operator", target_id=str(row["id"]),
                             after={"email": email})
    except psycopg.errors.UniqueViolation:
        raise Conflict("an operator with that email exists") from None
    return {"operator": {**row, "id": str(row["id"])}, "setup": {"token": token, "expires_at": row["setup_expires_at"]}}


def cmd_check(args: argparse.Namespace) -> dict[str, Any]:
    """Validate settings and probe the database and storage."""
    get_settings()
    result = health.check()
    if not result["ok"]:
        raise CheckFailed("unavailable: " + ", ".join(
            name for name, state in result["components"].items() if state != "ok"
        ))
    return result


def cmd_outbox(args: argparse.Namespace) -> dict[str, Any]:
    """Print pending outbox mail as JSON with bodies: how to read invitation/reset mail without SMTP.

    With no SMTP_HOST (local development) mail is never sent and waits in the outbox; this
    shows it, bodies included. --all adds sent mail, whose bodies have been blanked.
    """
    tenant_ids = None
    if args.tenant:
        with db.platform_tx() as conn:
            row = conn.cursor(row_factory=dict_row).execute(
                "select id::text as id from tenants where slug = %s or id::text = %s", (args.tenant, args.tenant)
            ).fetchone()
        if row is None:
            raise NotFound(f"no tenant {args.tenant!r}")
        tenant_ids = [row["id"]]
    return {"mail": mail.list_outbox(tenant_ids, include_sent=args.all)}


def cmd_snapshots(args: argparse.Namespace) -> dict[str, Any]:
    """List a tenant's attachment snapshots, or restore one over its attachment blob (the
    snapshot must hash to the attachment's name; audited in the tenant's chain with --reason)."""
    from shared.lifecycle import snapshots

    if args.action == "list":
        return {"snapshots": snapshots.list_snapshots(args.tenant, blob=args.blob, limit=args.limit)}
    if not args.blob or not args.snapshot:
        raise snapshots.InvalidValue("restore needs --blob and --snapshot",
                                     errors=[{"location": ["blob", "snapshot"], "message": "required"}])
    return {"restore": snapshots.restore(args.tenant, args.blob, args.snapshot, reason=args.reason or "",
                                         actor=_cli_actor(), dry_run=args.dry_run)}


def cmd_restore_drill(args: argparse.Namespace) -> dict[str, Any]:
    """Back up (pg_dump, blob containers), restore into a scratch database and containers,
    verify every audit chain and attachment hash there; print RPO and RTO as a table. Needs
    DATABASE_ADMIN_URL: a role that reads every row and creates databases (docs/dr.md)."""
    from shared.lifecycle import drill

    admin_url = os.environ.get("DATABASE_ADMIN_URL", "")
    if not admin_url.startswith(("postgresql://", "postgres://")):
        raise SettingsError("DATABASE_ADMIN_URL: required (a postgresql:// URL) to run the restore drill")
    app_role = os.environ.get("DATABASE_APP_ROLE") or str(Settings.model_fields["database_app_role"].default)
    report = drill.run_drill(admin_url=admin_url, app_role=app_role, tenants=args.tenant or None, keep=args.keep)
    if args.format == "table":
        print(report.table(), flush=True)
    if not report.ok:
        raise drill.DrillFailed(f"{len(report.failures)} failure(s): {report.failures[0]}", report=report.as_dict())
    return {"drill": report.as_dict()} if args.format == "json" else {}


def cmd_purge_due(args: argparse.Namespace) -> dict[str, Any]:
    """List cancelled tenants due for purge (and purges that stopped half way), with their purge
    dates; --within-days N adds those due in the next N days. A tenant listed may still be
    reinstated by an operator until its purge date (POST /api/platform/tenants/{id}/reinstate)."""
    from shared.tenancy import tenants

    return {"tenants": tenants.purge_schedule(within_days=args.within_days)}


def cmd_validation_report(args: argparse.Namespace) -> dict[str, Any]:
    """Run the tests that carry a requirement marker (every test with --all) and write
    docs/validation/report.json and index.html: per requirement its tests, their outcome and
    duration, the commit, the date and the environment. Exits 2 if a Part 11 clause is red."""
    from shared.core.errors import ValidationReportRed
    from tools.validation import report as validation

    written = validation.generate(all_tests=args.all, out_dir=Path(args.out))
    summary = {"summary": written["summary"], "commit": written["commit"], "out": args.out}
    if written["summary"]["part11_red"]:
        raise ValidationReportRed(f"Part 11 clauses without a passing test or with a failing one: {', '.join(written['summary']['part11_red'])}",
                                  report=summary)
    return summary


def _uuid_arg(value: str) -> str:
    import uuid as _uuid

    try:
        return str(_uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError("not a tenant id (UUID)") from None


def cmd_incidents(args: argparse.Namespace) -> dict[str, Any]:
    """List security incidents, show one, notify the affected tenants' ADMINs (the fixed notice
    through the outbox) or resolve one; notify and resolve need --reason (docs/incidents.md)."""
    import uuid as _uuid

    from shared.lifecycle import incidents

    if args.action == "list":
        return {"incidents": incidents.list_incidents(state=args.state, tenant_id=args.tenant)}
    if not args.id:
        raise incidents.BlankValue(f"{args.action} needs --id", errors=[{"location": ["id"], "message": "required"}])
    try:
        incident_id = _uuid.UUID(args.id)
    except ValueError:
        raise NotFound("no such incident") from None
    if args.action == "show":
        return {"incident": incidents.get_incident(incident_id)}
    step = incidents.notify if args.action == "notify" else incidents.resolve
    return {"incident": step(incident_id, reason=args.reason or "", actor=_cli_actor())}


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "migrate": cmd_migrate,
    "create-app-role": cmd_create_app_role,
    "create-tenant": cmd_create_tenant,
    "check": cmd_check,
    "create-operator": cmd_create_operator,
    "outbox": cmd_outbox,
    "snapshots": cmd_snapshots,
    "restore-drill": cmd_restore_drill,
    "purge-due": cmd_purge_due,
    "validation-report": cmd_validation_report,
    "incidents": cmd_incidents,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shared.cli", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    mg = sub.add_parser("migrate", help=cmd_migrate.__doc__)
    mg.add_argument("--skip-storage", action="store_true",
                    help="database only, needing DATABASE_OWNER_URL (and DATABASE_APP_ROLE) alone: the deploy step")
    ar = sub.add_parser("create-app-role", help=cmd_create_app_role.__doc__)
    ar.add_argument("--role", default="", help="role name (default: DATABASE_APP_ROLE)")
    ar.add_argument("--entra-object-id", metavar="OBJECT_ID",
                    help="Azure only: the managed identity's object (principal) id the role maps to")
    ct = sub.add_parser("create-tenant", help=cmd_create_tenant.__doc__)
    ct.add_argument("--slug", required=True)
    ct.add_argument("--name", required=True)
    ct.add_argument("--region", default="uksouth")
    ct.add_argument("--admin-email", help="invite this address as the tenant's first ADMIN")
    ct.add_argument("--admin-name", default="")
    co = sub.add_parser("create-operator", help=cmd_create_operator.__doc__)
    co.add_argument("--email", required=True)
    co.add_argument("--name", default="")
    sub.add_parser("check", help=cmd_check.__doc__)
    ob = sub.add_parser("outbox", help=(cmd_outbox.__doc__ or "").split("\n\n")[0],
                        description=cmd_outbox.__doc__)
    ob.add_argument("--tenant", metavar="SLUG_OR_ID", help="only this tenant (default: every tenant)")
    ob.add_argument("--all", action="store_true", help="sent mail too, not only pending")
    sn = sub.add_parser("snapshots", help=(cmd_snapshots.__doc__ or "").split("\n")[0], description=cmd_snapshots.__doc__)
    sn.add_argument("action", choices=["list", "restore"])
    sn.add_argument("--tenant", required=True, metavar="TENANT_ID")
    sn.add_argument("--blob", metavar="SHA256", help="the attachment's sha256 (or tenants/<tenant>/sha256/<hex>)")
    sn.add_argument("--snapshot", metavar="SNAPSHOT_ID", help="restore: the snapshot id (from list)")
    sn.add_argument("--reason", help="restore: why (written to the tenant's audit trail)")
    sn.add_argument("--dry-run", action="store_true", help="restore: check everything, change nothing")
    sn.add_argument("--limit", type=int, default=1000, help="list: at most this many snapshots")
    rd = sub.add_parser("restore-drill", help=(cmd_restore_drill.__doc__ or "").split("\n")[0],
                        description=cmd_restore_drill.__doc__)
    rd.add_argument("--keep", action="store_true", help="keep the scratch database and containers")
    rd.add_argument("--tenant", action="append", metavar="TENANT_ID", help="verify only these tenants (repeatable)")
    rd.add_argument("--format", choices=["table", "json"], default="table")
    pd = sub.add_parser("purge-due", help=(cmd_purge_due.__doc__ or "").split("\n")[0], description=cmd_purge_due.__doc__)
    pd.add_argument("--within-days", type=int, default=0, metavar="N",
                    help="also tenants whose purge date is in the next N days (default 0: due now)")
    vr = sub.add_parser("validation-report", help=(cmd_validation_report.__doc__ or "").split("\n")[0],
                        description=cmd_validation_report.__doc__)
    vr.add_argument("--all", action="store_true", help="run the whole suite, not only the marked tests")
    vr.add_argument("--out", default="docs/validation", help="directory for report.json and index.html")
    ic = sub.add_parser("incidents", help=(cmd_incidents.__doc__ or "").split("\n")[0], description=cmd_incidents.__doc__)
    ic.add_argument("action", choices=["list", "show", "notify", "resolve"])
    ic.add_argument("--id", metavar="INCIDENT_ID", help="show, notify, resolve: the incident")
    ic.add_argument("--state", choices=["OPEN", "NOTIFIED", "RESOLVED"], help="list: only this state")
    ic.add_argument("--tenant", metavar="TENANT_ID", type=_uuid_arg, help="list: only incidents affecting this tenant")
    ic.add_argument("--reason", help="notify, resolve: why (written to the audit trails)")
    orl = sub.add_parser("create-owner-role", help=(cmd_create_owner_role.__doc__ or "").split("\n")[0],
                         description=cmd_create_owner_role.__doc__)
    orl.add_argument("--principal-name", required=True, metavar="NAME",
                     help="the owner-jobs app's managed identity name (its database role)")
    orl.add_argument("--principal-id", metavar="OBJECT_ID",
                     help="Azure only: the managed identity's object (principal) id the role maps to")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command != "validation-report":  # the tests bring their own settings (tests/conftest.py)
            load_local_settings(Path("local.settings.json"))
        result = COMMANDS[args.command](args)
    except (SettingsError, MigrationError) as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2
    except AppError as exc:
        print(json.dumps({"error": exc.to_problem()}, default=str), file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        # libpq's own words (host, TLS, authentication), never the connection string or password.
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        print(json.dumps({"error": f"database unavailable: {lines[0]}"}), file=sys.stderr)
        return 2
    finally:
        db.close_pool()
    if result or args.command != "restore-drill":  # the drill's table is already printed
        print(json.dumps(result, default=str, indent=2))
    return 0


def cmd_create_owner_role(args: argparse.Namespace) -> dict[str, Any]:
    """Create the owner-jobs app's login role (its managed identity) as the owner if missing and
    grant it the schema owner role; safe to re-run; refuses the app's own role. Run it after
    `migrate` (docs/deploy.md)."""
    url, app_role = _owner_settings("create the owner role")
    role = ensure_owner_role(url, args.principal_name, app_role=app_role, entra_object_id=args.principal_id)
    return {"role": role.__dict__, "audit": _audit_role(url, "platform.owner_role_ensured", role.name, role.__dict__)}


COMMANDS["create-owner-role"] = cmd_create_owner_role


if __name__ == "__main__":
    sys.exit(main())
