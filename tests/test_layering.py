"""The package is layered like Detectron2, from the foundations up to the command-line tools: ``LAYERS`` lists
every top-level module and package of d2_maskext with the others it may import, and no two of the package's
modules import each other, directly or through others.

Imports are read from the source (``ast``), function-level ones included, so an import hidden inside a
function to dodge a cycle at load time still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "d2_maskext"
PACKAGE = PACKAGE_ROOT.name  # the package's own __init__: the public names, imported lazily from every layer
COMPILED_MODULES = frozenset({"d2_maskext._C"})  # built by setup.py; imports nothing of the package

_FOUNDATION = frozenset({"_compat", "config", "utils"})
_LIBRARY = _FOUNDATION | {"layers", "modeling", "data", "visualization", "checkpoint", "evaluation"}
# Top-level module or package -> the top-level ones it may import. Lower layers never import higher ones:
# nothing but the tools' helpers (cli) imports the engine, and nothing imports cli.
LAYERS: dict[str, frozenset[str]] = {
    "_compat": frozenset(),  # the Detectron2 check, run before anything else is imported
    "config": frozenset(),  # every config key, with its default
    "utils": frozenset({"_compat"}),  # image reading, atomic files, RLE
    "layers": frozenset({"_compat", "utils"}),  # RoIAlign, fused pooler and convolutions, mask pasting
    "visualization": frozenset({"_compat", "utils"}),
    "checkpoint": frozenset({"_compat", "utils"}),
    "data": _FOUNDATION,  # dataset formats, registration, validation, mappers
    "modeling": _FOUNDATION | {"layers"},  # meta-architecture, ROI heads, precision, tiling
    "export": _FOUNDATION | {"layers", "modeling"},
    "evaluation": _FOUNDATION | {"data", "visualization"},  # COCO evaluator, Boundary AP, the report
    "predict": _LIBRARY,
    "engine": _LIBRARY | {"predict", "export"},  # training
    "cli": _LIBRARY | {"predict", "export", "engine"},  # what the command-line tools share
    PACKAGE: _LIBRARY | {"predict", "export", "engine", "cli"},
}


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


def _layer(module: str) -> str:
    """The top-level module or package of d2_maskext that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def _top_level_layers() -> set[str]:
    """Every top-level module and package in the source tree, and the package itself."""
    children = {p.stem for p in PACKAGE_ROOT.glob("*.py") if p.name != "__init__.py"}
    children |= {p.parent.name for p in PACKAGE_ROOT.glob("*/__init__.py")}
    return children | {PACKAGE}


def _layer_violations(graph: dict[str, set[str]], layers: dict[str, frozenset[str]]) -> list[str]:
    """Imports the layer table does not allow, and modules of layers it does not list."""
    problems = []
    for module in sorted(graph):
        layer = _layer(module)
        if layer not in layers:
            problems.append(
                f"{module}: top-level '{layer}' is not in the layer table; add it to LAYERS in "
                "tests/test_layering.py with the layers it may import"
            )
            continue
        problems.extend(
            f"{module} -> {target}: '{layer}' may not import '{_layer(target)}'"
            for target in sorted(graph[module])
            if _layer(target) != layer and _layer(target) not in layers[layer]
        )
    return problems


def test_the_graph_sees_the_package(import_graph: dict[str, set[str]]) -> None:
    assert "d2_maskext.engine.trainer" in import_graph
    assert "d2_maskext.checkpoint" in import_graph["d2_maskext.engine.trainer"]


def test_the_table_lists_every_top_level_module() -> None:
    on_disk = _top_level_layers()
    missing = sorted(on_disk - LAYERS.keys())
    assert not missing, f"{missing}: add each to LAYERS in tests/test_layering.py with the layers it may import"
    assert not LAYERS.keys() - on_disk, f"LAYERS lists modules that no longer exist: {sorted(LAYERS.keys() - on_disk)}"


def test_imports_follow_the_layer_table(import_graph: dict[str, set[str]]) -> None:
    problems = _layer_violations(import_graph, LAYERS)
    assert not problems, "\n".join(problems)


def test_the_layer_table_has_no_cycle() -> None:
    table = {layer: set(allowed) for layer, allowed in LAYERS.items()}
    cycle = _find_cycle(table)
    assert cycle is None, "layers allowed to import each other: " + " -> ".join(cycle or [])


def test_a_module_outside_the_table_is_named() -> None:
    graph = {"d2_maskext.newpart.x": {"d2_maskext.utils"}, "d2_maskext.utils": {"d2_maskext.engine.trainer"}}
    problems = _layer_violations(graph, {"utils": frozenset(), "engine": frozenset({"utils"})})
    assert problems == [
        "d2_maskext.newpart.x: top-level 'newpart' is not in the layer table; add it to LAYERS in "
        "tests/test_layering.py with the layers it may import",
        "d2_maskext.utils -> d2_maskext.engine.trainer: 'utils' may not import 'engine'",
    ]


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


@pytest.mark.slow
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
