"""Rewrite the README's generated tables (roles, settings) from the code.

    .venv/bin/python tools/readme_tables.py

Tests compare the README with the code; run this after changing shared/tenancy/rbac.py or
shared/core/settings.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.core.settings import Settings  # noqa: E402
from shared.tenancy.rbac import PERMISSIONS, ROLE_PERMISSIONS, Role  # noqa: E402


def roles_table() -> str:
    roles = [r.value for r in Role]
    lines = ["| Permission | " + " | ".join(roles) + " | What it allows |", "|---|" + "---|" * len(roles) + "---|"]
    for permission, text in PERMISSIONS.items():
        marks = " | ".join("✓" if permission in ROLE_PERMISSIONS[Role(r)] else "" for r in roles)
        lines.append(f"| `{permission}` | {marks} | {text} |")
    return "\n".join(lines)


def settings_table() -> str:
    lines = ["| Setting | Default | What it is |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "**required**" if field.is_required() else ("(empty)" if default == "" else f"`{default}`")
        lines.append(f"| `{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(lines)


def replace(text: str, marker: str, table: str) -> str:
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(\n<!-- {marker}:end -->)", re.DOTALL)
    return pattern.sub(lambda m: m.group(1) + "\n" + table + "\n" + m.group(2), text)


def main() -> None:
    readme = ROOT / "README.md"
    text = replace(readme.read_text(), "roles", roles_table())
    readme.write_text(replace(text, "settings", settings_table()))


if __name__ == "__main__":
    main()
