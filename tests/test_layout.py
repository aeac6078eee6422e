"""The package's shape: no import cycle between loopwatch's modules.

Module-level imports count, those under ``if TYPE_CHECKING:`` too (a cycle
through type-only imports is still two modules that cannot be read apart);
imports inside functions are deliberate lazy ones and do not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import loopwatch

PACKAGE = Path(loopwatch.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in body:
        if isinstance(node, ast.If):  # if TYPE_CHECKING:, version checks
            yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_level_imports(node.body)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _module_level_imports(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # "from pkg import module" depends on that module, not on pkg's __init__
                modules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in paths]
                targets = modules if len(modules) == len(node.names) else [base, *modules]
            graph[name].update(t for t in targets if t in paths and t != name)
    return graph


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules() -> None:
    """Every module can be read (and imported) without the ones that import it."""
    graph = _import_graph()
    assert graph.get("loopwatch.watchdog")  # the graph is real
    cycle = _a_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check can fail: a made-up graph with a cycle through three modules."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _a_cycle(graph) == ["a", "b", "c", "a"]
