"""The shape of the code: no import cycles, packages that say what they own and may import, no
reaching into another package's private modules, and tests that mirror the tree.

Read from the source with `ast`, so nothing here depends on what happens to be imported already.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

ROOT_TESTS = {
    # cross-cutting: they test the app as a whole, or a tool outside shared/
    "test_bench.py", "test_bicep.py", "test_deploy_files.py", "test_devhost.py", "test_devservices.py",
    "test_funcignore.py", "test_fuzz.py",
    "test_isolation.py", "test_layout.py", "test_ops.py", "test_schemathesis.py", "test_startup.py",
    "test_worker_indexing.py", "test_console_day.py", "test_docs_refs.py", "test_validation.py",
    "test_supply_chain.py",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def app_modules() -> dict[str, Path]:
    files = [*sorted((ROOT / "shared").rglob("*.py")), *sorted((ROOT / "functions").rglob("*.py")),
             ROOT / "function_app.py"]
    return {module_name(p): p for p in files}


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """Every module name an import statement of the file names, with its line: at module level
    and inside functions (a late import still has to succeed at run time), but not under
    `if TYPE_CHECKING:`, which never runs. `from a import b` names `a.b` (when b is a module)
    or `a`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node: ast.AST) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                for other in child.orelse:
                    yield from walk_one(other)
                continue
            yield from walk_one(child)

    def walk_one(node: ast.AST) -> Iterator[tuple[str, int]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno
        yield from walk(node)

    yield from walk(ast.parse(path.read_text(), filename=str(path)))


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: line}, for the app's own modules.

    An import of `a.b.c` is an edge to `a.b.c` only, not to the packages `a` and `a.b` that
    Python runs first: a package's `__init__` that re-exports its own modules (the front door of
    `shared.identity.mfa`) is always entered before them, so that is not a cycle; a module that
    imports its own package's `__init__` by name is, and is caught.
    """
    modules = app_modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imported_names(path, name):
            parts = target.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in modules:
                    if candidate != name:
                        edges.setdefault(candidate, line)
                    break
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a closed path) through each strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    found = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        while True:  # walk inside the component until a module repeats: that closes a cycle
            step = min(w for w in graph[path[-1]] if w in component)
            if step in seen:
                found.append([*path[path.index(step):], step])
                break
            path.append(step)
            seen.add(step)
    return found


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)) + f" -> {cycle[-1]}"


def test_no_import_cycles_among_the_apps_modules() -> None:
    graph = import_graph()
    found = [describe(c, graph) for c in cycles(graph)]
    assert found == [], "import cycles:\n" + "\n".join(found)


def test_the_cycle_finder_finds_a_late_import_and_ignores_type_checking(tmp_path: Path) -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(["a", "b", "a"], {"a": {"b": 7}, "b": {"a": 9}}) == "a (line 7) -> b (line 9) -> a"
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import hidden\n"
                      "def f():\n    from pkg import late\nimport top\n")
    names = [n for n, _ in imported_names(source, "m")]
    assert "pkg.late" in names and "top" in names and "hidden" not in names


def sub_packages() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "shared").rglob("__init__.py") if p.parent != ROOT / "shared")


def test_each_sub_package_says_what_it_owns_and_may_import() -> None:
    silent = []
    for package in sub_packages():
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
        if len(doc.split("May import:")[0].split()) < 5 or "May import:" not in doc:
            silent.append(str(package.relative_to(ROOT)))
    assert silent == [], f"sub-packages whose __init__ docstring does not say what it owns and 'May import:': {silent}"


def test_no_module_imports_another_packages_private_module() -> None:
    modules = app_modules()
    graph = import_graph()
    reaching = []
    for name, edges in graph.items():
        own_package = name if modules[name].name == "__init__.py" else name.rpartition(".")[0]
        for target, line in edges.items():
            parent, _, last = target.rpartition(".")
            if last.startswith("_") and last != "__init__" and parent != own_package:
                reaching.append(f"{name} (line {line}) imports {target}")
    assert reaching == [], "private modules used outside their package:\n" + "\n".join(reaching)


def test_every_test_module_mirrors_a_module_of_shared() -> None:
    strays = []
    for test in sorted((ROOT / "tests").rglob("test_*.py")):
        relative = test.relative_to(ROOT / "tests")
        if len(relative.parts) == 1:
            if relative.name not in ROOT_TESTS:
                strays.append(f"tests/{relative} (a root test not in the cross-cutting list)")
            continue
        mirrored = ROOT / "shared" / relative.parent / relative.name.removeprefix("test_")
        if not mirrored.is_file():
            strays.append(f"tests/{relative} (no {mirrored.relative_to(ROOT)})")
    assert strays == [], "test modules that mirror no module:\n" + "\n".join(strays)
