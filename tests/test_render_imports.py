"""render/ is a leaf: it imports nothing from physics, refine or hybridsim, and imports lazily."""

import ast
import pathlib
import subprocess
import sys

import render

RENDER_DIR = pathlib.Path(render.__file__).resolve().parent
FORBIDDEN = {"physics", "refine", "hybridsim"}
# bpy (with its bundled mathutils and OpenImageIO) is the path tracer's own library, imported lazily
ALLOWED_THIRD_PARTY = {"torch", "numpy", "gsplat", "trimesh", "bpy", "mathutils", "OpenImageIO"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_render_imports_only_its_allowed_dependencies():
    files = sorted(RENDER_DIR.glob("*.py"))
    assert files
    for f in files:
        names = _imports(f)
        assert not names & FORBIDDEN, (f.name, names & FORBIDDEN)
        third_party = names - set(sys.stdlib_module_names) - {"render"}
        assert third_party <= ALLOWED_THIRD_PARTY, (f.name, third_party)


def test_render_resolves_inside_this_repository():
    # "render" is also an unrelated PyPI name: make sure tests exercise this package.
    assert (RENDER_DIR / "rasterize.py").exists() and (RENDER_DIR.parent / "tests").exists()


def test_import_render_is_lazy():
    code = ("import sys, render; heavy = [m for m in ('torch', 'gsplat', 'trimesh') if m in sys.modules]; "
            "assert not heavy, heavy; render.SplatAsset; assert 'torch' in sys.modules; "
            "assert 'gsplat' not in sys.modules and 'trimesh' not in sys.modules")
    env_path = str(RENDER_DIR.parent)
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": env_path, "PATH": ""})
