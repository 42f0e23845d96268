"""The package's layers stay one-way and free of import circles (read from the source with ``ast``).

Layers, top to bottom: ``calibration/`` (the engineer's commands) -> ``appliance/`` (the device and the
station) -> ``models/`` (networks and their inputs). Every import counts, at module level or inside a
function (a lazy import is still a dependency). The one thing not seen here is ``appliance/cli.py``'s
table of command modules, which are names in strings loaded on demand: the command line is the program's
front door above every layer, and ``test_cli.py`` checks each row.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("calibration", "appliance", "models")  # top to bottom
LAYER = {name: rank for rank, name in enumerate(PACKAGES)}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``name`` imports (``from a import b`` counts ``a.b`` when it is a module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in known:
                found.add(target)
            elif target.split(".")[0] in LAYER and "." in target:
                parent = target.rsplit(".", 1)[0]
                if parent in known and target not in known and parent != name:
                    found.add(parent)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None. Package ``__init__`` edges to their
    own submodules are left out: importing ``a.b`` runs ``a/__init__`` first by Python's rules, not by ours."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {n: WHITE for n in graph}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue
            if colour[nxt] == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    for n in sorted(graph):
        if colour[n] == WHITE:
            found = visit(n)
            if found:
                return found
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a imports b`` lines where b's package is above a's (models -> appliance, appliance -> calibration...)."""
    bad = []
    for module, targets in graph.items():
        for target in targets:
            if LAYER[target.split(".")[0]] < LAYER[module.split(".")[0]]:
                bad.append(f"{module} imports {target}")
    return sorted(bad)


def test_the_checker_sees_a_circle_and_an_upward_import() -> None:
    """The rules themselves can fail: a made-up graph with both faults is caught."""
    graph = {"appliance.a": {"appliance.b"}, "appliance.b": {"appliance.a"}, "models.m": {"appliance.a"},
             "calibration.c": {"models.m"}}
    assert find_cycle(graph) in (["appliance.a", "appliance.b", "appliance.a"],
                                 ["appliance.b", "appliance.a", "appliance.b"])
    assert upward_imports(graph) == ["models.m imports appliance.a"]


def test_the_graph_reads_lazy_and_relative_imports() -> None:
    graph = import_graph()
    assert "appliance.scoring.ratings" in graph["appliance.wiring"]  # inside a function
    assert "appliance.sources.monitor.masimo" in graph["appliance.sources.monitor.reader"]  # "from . import masimo"
    assert "models.vocabulary" in graph["appliance.mqtt.messages"]


def test_no_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_layers_are_one_way() -> None:
    assert upward_imports(import_graph()) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_in_a_package(package: str) -> None:
    """A folder without ``__init__.py`` would be a namespace package that setup.py's find_packages skips."""
    for folder in {p.parent for p in (ROOT / package).rglob("*.py")}:
        assert (folder / "__init__.py").is_file(), f"{folder.relative_to(ROOT)} has no __init__.py"
