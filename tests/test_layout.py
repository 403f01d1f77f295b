"""The stage packages stay independent, and the imported modules are this distribution's."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hybridsim", "physics", "render", "refine")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


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
