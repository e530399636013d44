"""The library's shape, and the benchmarks' (they follow the same rules): no import circle between the modules of
utils/ or of benchmarks/, and no module too long to read in one sitting. Imports are read from the source (ast),
function-level and TYPE_CHECKING ones included: a circle that only a deferred import keeps from failing is still a
circle for the reader."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

UTILS = REPO / "utils"
HOUSE = (UTILS, REPO / "benchmarks")  # the folders the rules cover
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules of ours that `path` imports (`from utils.x import y` → utils.x, or utils.x.y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
    return found - {module_name(path)}


def import_graph(root: Path = UTILS) -> dict[str, set[str]]:
    paths = {module_name(path): path for path in sorted(root.rglob("*.py"))}
    modules = set(paths)
    graph = {name: imports_of(path, modules) for name, path in paths.items()}
    # `from utils.x import y` names the package utils.x too; a package's own __init__ imports nothing of ours but
    # `utils` (the lazy Embedder), so only edges between modules proper count.
    packages = {name for name, path in paths.items() if path.name == "__init__.py"}
    return {name: {m for m in deps if m not in packages} for name, deps in graph.items() if name not in packages}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first = last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_in_utils():
    graph = import_graph()
    assert "utils.running.plan" in graph and "utils.running.worker" in graph  # the walk sees the packages
    assert "utils.running.plan" in graph["utils.running.worker"]
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


def test_no_import_circle_in_benchmarks():
    graph = import_graph(REPO / "benchmarks")
    assert "benchmarks.throughput" in graph and "benchmarks.engine_side" in graph["benchmarks.throughput"]
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


def test_no_module_in_utils_or_benchmarks_is_over_450_lines():
    long = {
        str(path.relative_to(REPO)): n
        for folder in HOUSE
        for path in folder.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines (split along a seam): {long}"
