"""Ops command line: `python -m shared.cli COMMAND`.

Commands print JSON on stdout so scripts can read them; errors go to stderr with exit 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from shared import audit, db, health, storage
from shared.errors import AppError
from shared.migrate import MigrationError, migrate
from shared.settings import SettingsError, get_settings
from shared.tenants import create_tenant


class CheckFailed(AppError):
    status, code, title = 503, "check-failed", "A dependency is unavailable"


def cmd_migrate(args: argparse.Namespace) -> dict[str, Any]:
    """Apply database migrations as the owner role and create storage containers/tables."""
    s = get_settings()
    if not s.database_owner_url:
        raise SettingsError("DATABASE_OWNER_URL: required to migrate")
    applied = migrate(s.database_owner_url, s.database_app_role)
    storage.ensure_storage()
    return {"applied": applied}


def cmd_create_tenant(args: argparse.Namespace) -> dict[str, Any]:
    """Create a tenant."""
    actor = audit.Actor(id=None, name=f"ops CLI ({getpass.getuser()})", type="operator")
    with db.platform_tx() as conn:
        tenant = create_tenant(conn, slug=args.slug, name=args.name, region=args.region, actor=actor)
    return {"tenant": tenant.__dict__}


def cmd_check(args: argparse.Namespace) -> dict[str, Any]:
    """Validate settings and probe the database and storage."""
    get_settings()
    result = health.check()
    if not result["ok"]:
        raise CheckFailed("unavailable: " + ", ".join(
            name for name, state in result["components"].items() if state != "ok"
        ))
    return result


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "migrate": cmd_migrate,
    "create-tenant": cmd_create_tenant,
    "check": cmd_check,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shared.cli", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help=cmd_migrate.__doc__)
    ct = sub.add_parser("create-tenant", help=cmd_create_tenant.__doc__)
    ct.add_argument("--slug", required=True)
    ct.add_argument("--name", required=True)
    ct.add_argument("--region", default="uksouth")
    sub.add_parser("check", help=cmd_check.__doc__)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except (SettingsError, MigrationError) as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2
    except AppError as exc:
        print(json.dumps({"error": exc.to_problem()}, default=str), file=sys.stderr)
        return 2
    finally:
        db.close_pool()
    print(json.dumps(result, default=str, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
