"""The shape of the tree: no import cycle in `worker/` (counting imports inside functions
and under TYPE_CHECKING), a handful of top-level modules, a docstring on every package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import worker

ROOT = Path(worker.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    # Migration scripts are data run by Alembic, not modules of the package.
    return {module_name(p): p for p in ROOT.rglob("*.py") if "migrations" not in p.parts}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every `worker` module that `path` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in known and name.startswith("worker"):
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    names = set(known)
    return {name: imports_of(path, names) - {name} for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_import_graph_of_worker_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_worker_holds_at_most_eight_modules_beside_its_packages() -> None:
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 8, top


@pytest.mark.parametrize("package", sorted(p.parent for p in ROOT.rglob("__init__.py")))
def test_every_package_says_what_it_holds(package: Path) -> None:
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    assert docstring and len(docstring) > 40, package


def test_the_engine_depends_on_no_pipeline_spec_and_no_job() -> None:
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("worker.llm"):
            outside = {t for t in targets if not t.startswith(("worker.llm", "worker.errors"))}
            assert outside <= {"worker.config", "worker.logs", "worker.liveness"}, (name, outside)


def test_only_the_job_kinds_look_at_the_source_column() -> None:
    # What a job does is chosen by JobKind in the runner's registry, nowhere else.
    for name, path in modules().items():
        if name.startswith("worker.run") or name == "worker.queue.models":
            continue
        text = path.read_text()
        assert "source ==" not in text and ".source in" not in text, name
