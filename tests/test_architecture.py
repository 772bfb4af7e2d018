"""The package's shape, checked from its source (DESIGN §2): no import cycle between files, dependencies
along the data flow, argparse only in ``cli/``, no file over 400 lines, and a light ``import edge_seg``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edge_seg"
MAX_LINES = 400
# (importer prefix, imported prefix): dependencies that would run against the data flow
FORBIDDEN = [
    ("edge_seg.postprocess", "edge_seg.backends"),
    ("edge_seg.sources", "edge_seg.publish"),
    ("edge_seg.backends", "edge_seg.loop"),
    ("edge_seg.tensors", "edge_seg.backends"),
    ("edge_seg.manifest", "edge_seg.backends"),
    ("edge_seg.manifest", "edge_seg.postprocess"),
    ("edge_seg", "converters"),
]


def _walk(package: Path):
    """(dotted module name, file) for every .py file under ``package`` (a package is its __init__.py)."""
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _modules() -> dict[str, Path]:
    return dict(_walk(PACKAGE))


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Every name an import statement may load as a module: ``from a import b`` is ``a.b`` or ``a``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    modules = _modules() if modules is None else modules
    graph = {}
    for module, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = _imported(module, path, node)
            if isinstance(node, ast.ImportFrom):  # `from a import b`: the module a.b if it is one, else a
                names = [n for n in names[:-1] if n in modules] or names[-1:]
            for name in names:
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in modules and name != module:
                    deps.add(name)
            for name in _imported(module, path, node):
                if name == "converters" or name.startswith("converters."):
                    deps.add("converters")
        graph[module] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph.get(node, ()):
            if dep not in graph:
                continue
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_walker_finds_a_cycle_and_a_lazy_import(tmp_path):
    pkg = tmp_path / "edge_seg"
    (pkg / "publish").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "publish" / "__init__.py").write_text("")
    (pkg / "publish" / "a.py").write_text("from edge_seg.publish import b\n")
    (pkg / "publish" / "b.py").write_text("def f():\n    from .c import x\n")
    (pkg / "publish" / "c.py").write_text("from edge_seg.publish.a import y\nimport converters.cli\n")
    graph = import_graph(dict(_walk(pkg)))
    assert graph["edge_seg.publish.b"] == {"edge_seg.publish.c"}
    assert "converters" in graph["edge_seg.publish.c"]
    assert cycles(graph) == [["edge_seg.publish.a", "edge_seg.publish.b", "edge_seg.publish.c"]]



def test_no_file_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN)
def test_dependencies_point_along_the_data_flow(importer, imported):
    bad = sorted(f"{module} -> {dep}" for module, deps in import_graph().items()
                 if module == importer or module.startswith(importer + ".")
                 for dep in deps if dep == imported or dep.startswith(imported + "."))
    assert bad == []


def test_only_cli_imports_cli():
    bad = sorted(f"{module} -> {dep}" for module, deps in import_graph().items()
                 if not (module == "edge_seg.cli" or module.startswith("edge_seg.cli."))
                 for dep in deps if dep == "edge_seg.cli" or dep.startswith("edge_seg.cli."))
    assert bad == []


def test_only_cli_defines_argument_parsers():
    bad = []
    for module, path in _modules().items():
        if module == "edge_seg.cli" or module.startswith("edge_seg.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in ("ArgumentParser", "add_argument", "add_parser", "add_subparsers"):
                    bad.append(f"{module}:{node.lineno} {name}")
    assert bad == []


def test_no_file_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_importing_the_package_loads_no_tensorflow_and_no_stage():
    code = ("import sys, edge_seg; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tf_keras', 'cv2', 'numpy') or m.startswith('edge_seg.')); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
