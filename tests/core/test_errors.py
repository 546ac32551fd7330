"""The problem types: docs/problems.md is generated from the `AppError` classes and must match
them; one code per meaning; every class says what it means."""

from __future__ import annotations

import pytest

from shared.core.errors import AppError, Conflict, ValidationFailed
from tests.conftest import ROOT
from tools import problem_catalogue


@pytest.mark.requirement("21CFR11.10(k)")
def test_docs_problems_md_is_the_catalogue_of_the_code() -> None:
    written = (ROOT / "docs" / "problems.md").read_text()
    assert written == problem_catalogue.render(problem_catalogue.problem_classes()), (
        "docs/problems.md is stale: run .venv/bin/python tools/problem_catalogue.py"
    )


def test_the_catalogue_covers_every_sub_package_errors_module() -> None:
    modules = {cls.__module__ for cls in problem_catalogue.problem_classes()}
    for package in ("core", "web", "identity", "identity.mfa", "tenancy", "records"):
        assert f"shared.{package}.errors" in modules
    stray = sorted(m for m in modules if not m.endswith(".errors"))
    assert stray == [], f"error classes outside an errors.py: {stray}"


def test_no_two_problem_classes_define_the_same_code() -> None:
    assert problem_catalogue.code_problems(problem_catalogue.problem_classes()) == []


def test_every_problem_class_says_what_it_means() -> None:
    silent = [f"{c.__module__}.{c.__qualname__}" for c in problem_catalogue.problem_classes()
              if not problem_catalogue.meaning(c)]
    assert silent == [], f"problem classes without a docstring: {silent}"


def test_the_code_rule_refuses_a_copied_code_a_changed_status_and_the_roots_code() -> None:
    class Taken(Conflict):
        """A copy of Conflict's type under another name."""

        code = "conflict"

    class Louder(ValidationFailed):
        """Inherits the validation type but answers another status."""

        status = 400

    class Bare(AppError):
        """Sets no code: it would render as the root's `internal`."""

    class Narrower(ValidationFailed):
        """The validation problem under a more specific name: allowed."""

    found = problem_catalogue.code_problems([Conflict, Taken, ValidationFailed, Louder, Bare, Narrower])
    assert len(found) == 3, found
    assert "code 'conflict' is defined by 2 classes" in found[0]
    assert any("Louder shares the type 'validation'" in p and "answers 400, not 422" in p for p in found)
    assert any("Bare sets no code of its own" in p for p in found)
    assert not any("Narrower" in p for p in found)
