"""The stage packages stay independent, no module imports another in a circle, and the imported
modules are this distribution's.

Imports are read with ast, module-level and function-level (lazy) alike, `if TYPE_CHECKING:` ones
too; relative imports are resolved. `import a.b` and `from a.b import c` are edges to the module
a.b, and to a.b.c where c is a submodule. Importing a module runs its parent packages' __init__
too, but that is containment, not an edge (every import tool reads it so).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hybridsim", "physics", "render", "refine")


def _modules(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(name: str, path: Path) -> list[str]:
    """Every module name an import statement of module `name` (file `path`) names, resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                assert len(base) >= 1, f"{path}: relative import beyond the top-level package"
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            out += [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
    return out


def _imports(path: Path) -> set[str]:
    """Top-level names of everything a file imports (relative imports resolved)."""
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    return {t.split(".")[0] for t in _targets(name, path)}


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in mods.items():
        graph[name] = {t for t in _targets(name, path)
                       if t in mods and t != name and not name.startswith(t + ".")}  # a parent: containment
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                scc = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    scc.append(m)
                    if m == node:
                        break
                if len(scc) > 1:
                    out.append(sorted(scc))
    return out


def test_no_import_circles():
    mods = _modules()
    graph = _graph(mods)
    assert sum(len(v) for v in graph.values()) > 100, "the import walk found almost no imports"
    circles = _circles(graph)
    report = []
    for scc in circles:
        files = [str(mods[m].relative_to(ROOT)) for m in scc]
        edges = [f"{a} -> {b}" for a in scc for b in sorted(graph[a]) if b in scc]
        report.append(f"circle of {len(scc)} files: {', '.join(files)}\n    " + "\n    ".join(edges))
    assert not circles, "import circles (module-level or lazy):\n" + "\n".join(report)


def test_circle_check_sees_lazy_relative_and_type_checking_imports(tmp_path):
    """The walk itself: a circle closed by a lazy relative import, or by a TYPE_CHECKING one, is found;
    a submodule importing its own package is not a circle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("import pkg\nfrom pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n")
    (pkg / "d.py").write_text("from . import c\n")
    circles = _circles(_graph(_modules(tmp_path, ("pkg",))))
    assert sorted(circles) == [["pkg.a", "pkg.sub.b"], ["pkg.c", "pkg.d"]]


@pytest.mark.parametrize("stage", ["physics", "render", "refine"])
def test_stages_never_import_each_other_or_hybridsim(stage):
    forbidden = set(PACKAGES) - {stage}
    files = sorted((ROOT / stage).rglob("*.py"))
    assert files, f"{stage}/ has no modules"
    for f in files:
        bad = _imports(f) & forbidden
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("name", PACKAGES)
def test_modules_resolve_inside_this_distribution(name):
    import importlib

    mod = importlib.import_module(name)
    path = Path(mod.__file__).resolve()
    assert path.parent.name == name
    # Either the source tree (editable install) or site-packages of this distribution.
    from importlib.metadata import files

    if ROOT in path.parents:
        return
    dist_files = {str(p) for p in files("hybridsim") or []}
    assert f"{name}/__init__.py" in dist_files, f"{name} resolved to {path}, not to the hybridsim distribution"


def test_configs_ship_inside_the_package():
    from hybridsim.config import config_dir

    assert (config_dir() / "run.yaml").is_file()
    assert (config_dir() / "scenario" / "default.yaml").is_file()
