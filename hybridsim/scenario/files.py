"""Where a scenario's files come from: meshes and robots (paths, or assets shipped with Genesis) and
textures (image files, or scikit-image photographs by name).
"""

from __future__ import annotations

from pathlib import Path

from hybridsim.scenario.errors import SpecError


def resolve_file(name: str, path: str = "", base_dir=None) -> Path:
    """Find a mesh/robot file: absolute, relative to the YAML or CWD, or 'genesis:' assets."""
    candidates: list[Path] = []
    if name.startswith("genesis:"):
        candidates.append(_genesis_assets() / name.split(":", 1)[1])
    else:
        p = Path(name).expanduser()
        candidates += [p] if p.is_absolute() else [Path(base_dir or ".") / p, Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise SpecError(path, f"file not found: '{name}' (looked at {[str(c) for c in candidates]}); "
                    "give an existing path or 'genesis:<path inside Genesis assets>'")


def resolve_texture(name: str, path: str = "", base_dir=None) -> Path | str:
    if name.startswith("skimage:"):
        from hybridsim.scenario.textures import skimage_names

        key = name.split(":", 1)[1]
        if key not in skimage_names():
            raise SpecError(path, f"unknown scikit-image texture '{key}'; choose from {skimage_names()}")
        return name
    return resolve_file(name, path, base_dir)


def _genesis_assets() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("genesis")
    if spec is None or spec.origin is None:
        raise SpecError("", "genesis is not installed; pip install genesis-world")
    return Path(spec.origin).parent / "assets"
