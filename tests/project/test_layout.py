"""The package's layout holds: rooms in order, no import circles, one registry per extension.

Every `import` in egoqa is read (those inside functions too: a lazy import is still a
dependency), so a circle cannot hide behind a deferred import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "egoqa"

# Each room and the rooms it may import (besides itself, `egoqa.errors` and the package's own
# `__init__`, which holds the version alone). Listed in the order data flows through a run.
MAY_IMPORT = {
    "store": set(),
    "answers": {"store"},
    "plan": {"store", "answers"},
    "backends": {"store", "answers", "plan"},
    "media": {"store", "answers", "plan", "backends"},
    "work": {"store", "answers", "plan", "backends", "media"},
    "report": {"store", "answers", "plan", "backends", "media"},
    "dev": {"store", "answers", "plan", "backends", "media", "work", "report"},
    "cli": {"store", "answers", "plan", "backends", "media", "work", "report", "dev"},
}
# The one import against the order, and why: a run config names its engine, and validating the
# name reads the registry of engines, which is names alone (it imports no engine).
ALLOWED_UPWARD = {("egoqa.plan.config", "egoqa.backends.registry")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The egoqa modules `name` imports, wherever in the file the import is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "egoqa"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "egoqa":
                continue
            for alias in node.names:  # `from egoqa.plan import config` imports a module
                child = f"{source}.{alias.name}"
                found.add(child if child in known else source)
    return found - {name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def room(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circles():
    assert circles(graph()) == []


def test_the_circle_finder_finds_a_circle_through_a_lazy_import(tmp_path):
    """The check above can fail: a circle made of a function-level import is found."""
    edges = {
        "egoqa.a": {"egoqa.b"},
        "egoqa.b": {"egoqa.c"},
        "egoqa.c": {"egoqa.a"},
        "egoqa.d": set(),
    }
    assert circles(edges) == [["egoqa.a", "egoqa.b", "egoqa.c"]]
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from egoqa.plan.config import RunConfig\n")
    assert imports_of("egoqa.x", lazy, {"egoqa.plan.config"}) == {"egoqa.plan.config"}


def test_every_module_lives_in_a_room():
    loose = {
        n
        for n in modules()
        if room(n) is None and n not in {"egoqa", "egoqa.__main__", "egoqa.errors"}
    }
    assert loose == set()


def test_rooms_import_only_the_rooms_before_them():
    wrong = []
    for name, deps in graph().items():
        here = room(name)
        for dep in deps:
            there = room(dep)
            if here is None or there is None or there == here:
                continue
            if there not in MAY_IMPORT[here] and (name, dep) not in ALLOWED_UPWARD:
                wrong.append(f"{name} -> {dep}")
    assert wrong == []


def test_store_reads_nothing_of_egoqa_but_errors_and_itself():
    outside = {
        f"{name} -> {dep}"
        for name, deps in graph().items()
        if room(name) == "store"
        for dep in deps
        if room(dep) != "store" and dep not in {"egoqa", "egoqa.errors"}
    }
    assert outside == set()


def test_nothing_imports_the_command_line():
    users = {
        name
        for name, deps in graph().items()
        if room(name) != "cli" and any(room(d) == "cli" for d in deps)
    }
    assert users == {"egoqa.__main__"}  # `python -m egoqa`


def test_the_engine_registry_imports_no_engine():
    deps = graph()["egoqa.backends.registry"]
    assert deps <= {"egoqa.errors"}


@pytest.mark.parametrize("folder", sorted(MAY_IMPORT))
def test_each_room_says_what_it_is_for_and_what_it_may_touch(folder):
    doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
    assert doc and "May import" in doc
