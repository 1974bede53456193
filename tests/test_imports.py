"""
The package's modules import each other without a cycle, counting the
imports made only for the type checker (under C{TYPE_CHECKING}) too: a
module that needs a few members of one that imports it says so with a
small typing Protocol instead.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "twisted_chat"


def module_names(package: Path) -> dict[str, Path]:
    """Each module's dotted name, and its file."""
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The package's modules that C{tree} imports, anywhere in it (for a
    C{from m import name}: the submodule C{m.name} if it is one, else C{m})."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            candidates = [f"{node.module}.{alias.name}" for alias in node.names]
            candidates = [name for name in candidates if name in modules] or [node.module]
        else:
            continue
        for name in candidates:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    modules = module_names(package)
    return {name: imported(ast.parse(path.read_text()), modules) - {name}
            for name, path in modules.items()}


def test_the_graph_sees_type_only_imports() -> None:
    """An import under TYPE_CHECKING is an edge (the test would miss the
    cycles it is for otherwise)."""
    graph = import_graph(PACKAGE)
    assert "twisted_chat.server.config" in graph["twisted_chat.server.context"]


def test_no_import_cycle_even_for_the_type_checker() -> None:
    try:
        order = tuple(TopologicalSorter(import_graph(PACKAGE)).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(reversed(e.args[1]))}") from None
    assert "twisted_chat.server.factory" in order
