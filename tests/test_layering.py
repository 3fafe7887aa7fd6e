"""The package is layered like Detectron2: ``engine`` may import everything else, nothing imports ``engine``,
and no two of the package's modules import each other, directly or through others.

Imports are read from the source (``ast``), function-level ones included, so an import hidden inside a
function to dodge a cycle at load time still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "d2_maskext"
LOWER_LAYERS = ("layers", "modeling", "data", "evaluation", "checkpoint", "utils", "visualization", "predict")
COMPILED_MODULES = frozenset({"d2_maskext._C"})  # built by setup.py; imports nothing of the package


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Absolute name of the module a ``from ... import`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``module`` imports anywhere in its source.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``;
    a package's own ``__init__`` is not counted as imported by its submodules' names.
    """
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules or submodule in COMPILED_MODULES else source)
    return {name for name in found if name in modules and name != module}


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
    modules = _package_modules()
    return {name: _imported_modules(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_graph_sees_the_package(import_graph: dict[str, set[str]]) -> None:
    assert "d2_maskext.engine.trainer" in import_graph
    assert "d2_maskext.checkpoint" in import_graph["d2_maskext.engine.trainer"]


def test_nothing_below_the_engine_imports_it(import_graph: dict[str, set[str]]) -> None:
    offending = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph.items()
        if _layer(module) in LOWER_LAYERS
        for target in targets
        if _layer(target) == "engine"
    )
    assert not offending, f"lower layers import d2_maskext.engine: {offending}"


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None; iterative depth-first search."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_no_import_cycles(import_graph: dict[str, set[str]]) -> None:
    cycle = _find_cycle(import_graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_engine_import_stays_light() -> None:
    """Importing the trainer must not load the report and its plotting libraries."""
    import subprocess
    import sys

    code = (
        "import sys, d2_maskext.engine; "
        "print(sorted(m for m in ('matplotlib', 'd2_maskext.evaluation.report') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
