"""The import graph of src/pixelwise: no cycles, and arrows only run down the floors of
shared/DESIGN.md. Every import counts, at module level and inside functions (a lazy import
hides a cycle from Python, not from this test); ``if TYPE_CHECKING`` imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "pixelwise"

# Lowest first. A module may import from its own floor or below.
FLOORS: list[tuple[str, ...]] = [
    ("errors", "registry", "optional", "config", "runtime", "bf16_guard", "remote"),
    ("layers", "encoders", "models", "losses", "metrics", "data", "postprocess", "compat", "hub"),
    ("tasks", "convert"),
    ("train", "infer"),
    ("export",),
    ("serve", "annotate", "recipes", "demo"),
    ("cli", "__main__", ""),  # "" is the package itself (pixelwise/__init__.py: the public API)
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The pixelwise modules ``name`` imports (a package's __init__ only when the import names it)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        candidates: list[str] = []
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod.
            candidates = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        for target in candidates:
            while target and target not in MODULES:  # `import pixelwise.data.io as io` names a module
                target = target.rpartition(".")[0]
            if target.startswith("pixelwise") and target != name:
                targets.add(target)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def floor_of(module: str) -> int:
    """Floor index of a module by its top-level part below ``pixelwise``."""
    top = module.split(".")[1] if "." in module else ""
    for index, names in enumerate(FLOORS):
        if top in names:
            return index
    raise AssertionError(f"{module} is on no floor; add {top!r} to FLOORS in tests/test_architecture.py "
                         f"(and to the layout in shared/DESIGN.md)")


def test_every_module_is_on_a_floor():
    for module in MODULES:
        floor_of(module)


def test_no_upward_imports():
    upward = sorted(f"{m} (floor {floor_of(m)}) imports {t} (floor {floor_of(t)})"
                    for m, targets in GRAPH.items() for t in targets if floor_of(t) > floor_of(m))
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_no_import_cycles():
    # Tarjan's strongly connected components; any component with two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, expected", [
    ("from .b import x\n", {"pixelwise.data.b"}),
    ("def f():\n    from ..hub import load_model\n", {"pixelwise.hub"}),
    ("from . import b\n", {"pixelwise.data.b"}),
    ("import pixelwise.data.b as b\n", {"pixelwise.data.b"}),
])
def test_the_walker_sees_module_and_function_level_imports(tmp_path, source, expected, monkeypatch):
    path = tmp_path / "a.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "pixelwise.data.b", tmp_path / "b.py")
    monkeypatch.setitem(MODULES, "pixelwise.data.a", path)
    assert _imports("pixelwise.data.a", path) == expected


def test_a_cycle_and_an_upward_import_would_be_caught():
    """The checks fail on the layout this redesign removed (engine/infer <-> segmenter, data/check
    <-> check_report, hub-level code reaching into the trainer)."""
    assert floor_of("pixelwise.train.loop") > floor_of("pixelwise.hub")
    assert floor_of("pixelwise.export.onnx") > floor_of("pixelwise.infer.segmenter")
    assert floor_of("pixelwise.cli") == len(FLOORS) - 1
