"""Procedural environment maps by name: `lighting.environment.hdri` may be `sky:<seed>` (a random
sky with a skyline and a ground, render.skies.procedural_sky) or `graded:<map>:<seed>` (a shipped
map mirrored, white-balanced and re-graded, render.skies.graded_map), besides a shipped name or an
.exr file. The map is made on first use (~1 s) and cached under $HYBRIDSIM_CACHE/environments as
`sky<V>_<seed>.exr` / `graded<V>_<map>_<seed>.exr` (V = render.skies.SKY_VERSION), so both
renderers read one file and a missing file is rebuilt from its name (the same pixels with the
same numpy and, for graded maps, the same bpy wheel's HDRIs).

A seed distribution gives a new world per episode, e.g. `hdri: {choice: [sky:1, sky:2, graded:city:7]}`.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from hybridsim.scenario.errors import SpecError
from hybridsim.scenario.cache import cache_dir
from hybridsim.scenario.parts import HDRI_NAMES
from hybridsim.scenario.seeding import derive_seed

NAME = re.compile(r"sky:(\d{1,19})|graded:([a-z]+):(\d{1,19})")
FILE = re.compile(r"sky(\d+)_(\d{1,19})|graded(\d+)_([a-z]+)_(\d{1,19})")


def is_procedural(name) -> bool:
    return isinstance(name, str) and name.startswith(("sky:", "graded:"))


def name_problem(name: str) -> str | None:
    """Why `name` is no valid procedural environment name (None if it is one)."""
    m = NAME.fullmatch(name)
    if m is None:
        return (f"{name!r} is no procedural environment name: use sky:<seed> or graded:<map>:<seed> "
                "(seeds are non-negative integers)")
    if m[2] is not None and m[2] not in HDRI_NAMES:
        return f"{name!r} grades an unknown map {m[2]!r}; use one of {', '.join(HDRI_NAMES)}"
    return None


def procedural_file(name: str) -> Path:
    """The cached .exr of a procedural environment name, made if missing (SpecError for a bad name)."""
    from render.skies import SKY_VERSION

    problem = name_problem(name)
    if problem:
        raise SpecError("lighting.environment.hdri", problem)
    m = NAME.fullmatch(name)
    stem = f"sky{SKY_VERSION}_{int(m[1])}" if m[1] is not None else f"graded{SKY_VERSION}_{m[2]}_{int(m[3])}"
    return _ensure(cache_dir("environments") / f"{stem}.exr")


def rebuild(path: str | Path) -> Path | None:
    """A missing procedural map named by its cached path (as stored in the scenarios of clips made
    on another machine), made again under this machine's cache; None if the file name is not one."""
    from render.skies import SKY_VERSION

    m = FILE.fullmatch(Path(path).stem)
    if m is None or int(m[1] or m[3]) != SKY_VERSION or (m[4] is not None and m[4] not in HDRI_NAMES):
        return None
    return _ensure(cache_dir("environments") / Path(path).name)


def _finite(path: Path) -> bool:
    """Whether the cached map holds only finite radiance; read once per file version (size, mtime),
    not on every Simulation build that names the map."""
    st = path.stat()
    return _finite_file(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _finite_file(path: str, size: int, mtime_ns: int) -> bool:
    from render.environment import read_exr

    return all(bool(np.isfinite(c).all()) for c in read_exr(path).values())


def _ensure(path: Path) -> Path:
    from render.environment import load_hdri
    from render.skies import graded_map, procedural_sky, save_environment

    if path.exists():
        if _finite(path):
            return path
        path.unlink()  # our own cache file, written before save_environment clipped bright suns (inf)
    m = FILE.fullmatch(path.stem)
    if m[2] is not None:
        img = procedural_sky(derive_seed(int(m[2]), "sky"))
    else:
        img = graded_map(load_hdri(m[4], max_width=1024), derive_seed(int(m[5]), "graded"))
    return save_environment(path, img)
