"""The package's layout holds: no import cycle, no module reaching into another's private
names, and the flow of the roles (``utils`` <- ``data`` <- ``models`` <- ``training`` <-
``sweeps`` / ``inference``) is never reversed.

Every ``import`` statement counts, those inside functions too: a cycle that only closes
at run time is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "digitpairs"
# a role may import the roles before it in this list, never those after it
ROLES = ["utils", "data", "models", "training", "sweeps", "inference"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> list[tuple[str, str]]:
    """``(module, name)`` for every import of a project module in ``path`` (``name`` is the
    imported name for ``from m import name``, else "")."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "digitpairs"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "digitpairs":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((sub, "") if sub in known else (node.module, a.name))
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for target, _ in imports_of(path, known):
            # importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer
            # lies inside them (its own packages are initialised before it runs)
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in known and step != mod and not mod.startswith(step + "."):
                    edges[mod].add(step)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_another_modules_private_names():
    mods = modules()
    bad = [
        f"{mod} imports {target}.{name}"
        for mod, path in mods.items()
        for target, name in imports_of(path, set(mods))
        if name.startswith("_") and target != mod
    ]
    assert not bad, bad


@pytest.mark.parametrize("role", ROLES)
def test_roles_import_only_the_roles_before_them(role):
    rank = {r: i for i, r in enumerate(ROLES)}
    bad = []
    for mod, targets in graph().items():
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] != role:
            continue
        for target in targets:
            other = target.split(".")[1] if target.count(".") else None
            if other in rank and rank[other] > rank[role]:
                bad.append(f"{mod} -> {target}")
    assert not bad, bad


def test_every_subpackage_is_installed():
    """pyproject.toml lists every subpackage, so that a wheel holds the whole package."""
    import tomllib

    listed = set(tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert packages <= listed, packages - listed
