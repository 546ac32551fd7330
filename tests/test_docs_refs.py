"""The threat model and the ASVS mapping name code and tests that exist.

docs/threat-model.md and docs/asvs.md point at `tests/<file>.py::<test>` and
`shared/<file>.py:<name>` (or a bare path). A rename or a deleted test would leave them
claiming evidence that is gone; these tests make that a failure instead.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("docs/threat-model.md", "docs/asvs.md")

TEST_REF = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
CODE_REF = re.compile(r"\b((?:shared|functions|tools|devhost)/[\w/]+\.py)(?::(\w+))?")
PATH_REF = re.compile(r"`((?:infra|docs|tests|shared|functions|tools|console)/[\w./-]+\.(?:bicep|md|sql|py|ts))`")
THREAT_ROW = re.compile(r"^\|\s*(T-[A-Z0-9]+-\d+)\s*\|")
ASVS_ROW = re.compile(r"^\|\s*(\d+\.\d+\.\d+)\s*\|([^|]*)\|\s*(met|partly|gap|n/a)\s*\|")


@cache
def defined_names(path: Path) -> frozenset[str]:
    """Every function, class and module-level assignment name in a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(names)


def broken_references(text: str, root: Path = ROOT) -> list[str]:
    """The references in `text` that name no file, test or definition under `root`."""
    broken: list[str] = []
    for file, name in TEST_REF.findall(text):
        path = root / file
        if not path.is_file():
            broken.append(f"{file}::{name} (no such file)")
        elif name not in defined_names(path):
            broken.append(f"{file}::{name} (no such test)")
    for file, name in CODE_REF.findall(text):
        path = root / file
        if not path.is_file():
            broken.append(f"{file} (no such file)")
        elif name and name not in defined_names(path):
            broken.append(f"{file}:{name} (not defined there)")
    for file in PATH_REF.findall(text):
        if not (root / file).exists():
            broken.append(f"{file} (no such file)")
    return broken


def read(doc: str) -> str:
    return (ROOT / doc).read_text(encoding="utf-8")


def test_every_test_and_code_reference_in_the_threat_model_and_asvs_exists() -> None:
    broken = {doc: broken_references(read(doc)) for doc in DOCS}
    assert broken == {doc: [] for doc in DOCS}


def test_a_made_up_test_a_renamed_function_and_a_missing_file_are_caught() -> None:
    real_test = "tests/test_isolation.py::test_tenant_a_admin_gets_nothing_of_tenant_b"
    text = "\n".join([
        real_test,
        "tests/test_isolation.py::test_that_was_never_written",
        "shared/core/db.py:tenant_tx and shared/core/db.py:no_such_helper",
        "tests/no_such_file.py::test_x and `infra/bicep/modules/nothing.bicep`",
    ])
    assert broken_references(text) == [
        "tests/test_isolation.py::test_that_was_never_written (no such test)",
        "tests/no_such_file.py::test_x (no such file)",
        "shared/core/db.py:no_such_helper (not defined there)",
        "infra/bicep/modules/nothing.bicep (no such file)",
    ]


def test_every_threat_row_names_a_mitigation_in_code_and_a_test_or_says_it_is_residual() -> None:
    text = read("docs/threat-model.md")
    rows = [line for line in text.splitlines() if THREAT_ROW.match(line)]
    assert len(rows) >= 40, "the STRIDE tables lost their rows"
    ids = [THREAT_ROW.match(line).group(1) for line in rows]  # type: ignore[union-attr]
    assert len(ids) == len(set(ids)), "threat ids must be unique"
    weak = [
        line[:60] for line in rows
        if not CODE_REF.search(line) or not (TEST_REF.search(line) or "residual" in line.lower())
    ]
    assert weak == []


def test_every_asvs_row_has_a_status_and_every_met_row_names_its_evidence() -> None:
    text = read("docs/asvs.md")
    rows = [(m.group(1), m.group(3), line) for line in text.splitlines() if (m := ASVS_ROW.match(line))]
    assert len(rows) >= 60, "the ASVS tables lost their rows"
    chapters = {req.split(".")[0] for req, _, _ in rows}
    assert {"1", "2", "6", "7", "8", "9", "10", "11", "16"} <= chapters
    unproven = [req for req, status, line in rows
                if status == "met" and not TEST_REF.search(line) and "absence" not in line]
    assert unproven == [], "a requirement marked met must name the test that shows it (or be met by absence)"
    gaps = [req for req, status, _ in rows if status in {"gap", "partly"}]
    listed = text.split("## Honest gaps", 1)[-1] if "## Honest gaps" in text else ""
    unlisted = [req for req in gaps if req not in listed]
    assert unlisted == [], "every gap or partly row must be listed under 'Honest gaps'"
