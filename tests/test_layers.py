"""The package's import graph: layers point one way, runtime and exporters stay apart, no cycles.

Every module's imports of the package's own modules are parsed (with :mod:`ast`, top-level and
function-local alike) and checked against :data:`LAYERS`: a module may import modules of its own layer
or of a lower one (lower index).  The version lives in ``acmix_deploy._version`` (the base layer), so no
module imports the package root.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "acmix_deploy"

# Lowest first.  A module belongs to the first entry that names it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("acmix_deploy._version", "acmix_deploy.errors", "acmix_deploy.util")),
    ("folds", ("acmix_deploy.fold", "acmix_deploy.fold_swin", "acmix_deploy.outputs", "acmix_deploy.kernels")),
    ("modules", ("acmix_deploy.modules",)),
    ("models", ("acmix_deploy.models", "acmix_deploy.testing")),
    ("model files", ("acmix_deploy.foreign", "acmix_deploy.graph_fold", "acmix_deploy.reparam",
                     "acmix_deploy.checkpoint", "acmix_deploy.user_model", "acmix_deploy.analysis",
                     "acmix_deploy.pipeline")),
    ("artifacts", ("acmix_deploy.artifacts",)),
    ("exporters, runtime", ("acmix_deploy.exporters", "acmix_deploy.runtime")),
    ("verify", ("acmix_deploy.compare", "acmix_deploy.verify")),
    ("profiling, serving", ("acmix_deploy.profiling", "acmix_deploy.serving", "acmix_deploy.demo")),
    ("cli", ("acmix_deploy.cli", "acmix_deploy.__main__")),
]

# Imports that break the rules today, each with the work that removes it (empty: none left).
PENDING: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, function-local) for every import of the package's own modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, local) for a in child.names if a.name.split(".")[0] == "acmix_deploy")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != "acmix_deploy":
                    continue
                for alias in child.names:  # ``from . import fold`` imports the module acmix_deploy.fold
                    sub = f"{target}.{alias.name}"
                    if sub in MODULES:
                        found.append((sub, child.lineno, local))
                    else:
                        found.append((target, child.lineno, local))
            visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py's LAYERS; add it to one")


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _edges():
    for src, imports in GRAPH.items():
        for dst, line, local in sorted(set(imports)):
            yield src, dst, line, local


def _where(src: str, line: int, local: bool) -> str:
    return f"{MODULES[src].relative_to(PACKAGE.parent)}:{line}{' (in a function)' if local else ''}"


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "acmix_deploy":
            _layer(name)


def test_imports_point_down():
    bad = []
    for src, dst, line, local in _edges():
        if src == "acmix_deploy" or (src, dst) in PENDING:
            continue
        if _layer(dst) > _layer(src):
            bad.append(f"{_where(src, line, local)}: {src} [{LAYERS[_layer(src)][0]}] imports {dst} "
                       f"[{LAYERS[_layer(dst)][0]}], a higher layer")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


@pytest.mark.parametrize("src_pkg, dst_pkg", [("acmix_deploy.runtime", "acmix_deploy.exporters"),
                                              ("acmix_deploy.exporters", "acmix_deploy.runtime")])
def test_runtime_and_exporters_stay_apart(src_pkg, dst_pkg):
    bad = [f"{_where(src, line, local)}: {src} imports {dst}" for src, dst, line, local in _edges()
           if (src == src_pkg or src.startswith(src_pkg + ".")) and (dst == dst_pkg or dst.startswith(dst_pkg + "."))
           and (src, dst) not in PENDING]
    assert not bad, f"{src_pkg} must not import {dst_pkg}:\n" + "\n".join(bad)


def _in_cli(module: str) -> bool:
    return module == "acmix_deploy.cli" or module.startswith("acmix_deploy.cli.")


def test_nothing_imports_the_cli():
    bad = [f"{_where(src, line, local)}: {src} imports {dst}" for src, dst, line, local in _edges()
           if _in_cli(dst) and not _in_cli(src) and src != "acmix_deploy.__main__"]
    assert not bad, "the CLI is the top; nothing imports it:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {src: sorted({d for d, _, _ in imports if d in MODULES and d != src and (src, d) not in PENDING})
             for src, imports in GRAPH.items() if src != "acmix_deploy"}
    graph = {src: [d for d in dsts if d != "acmix_deploy"] for src, dsts in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            cycle = visit(node)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_pending_entries_still_exist():
    """An entry of PENDING whose import is gone must be removed (the list only shrinks)."""
    present = {(src, dst) for src, dst, _, _ in _edges()}
    stale = [f"{src} -> {dst}" for src, dst in PENDING if (src, dst) not in present]
    assert not stale, "remove from PENDING (fixed): " + ", ".join(stale)
