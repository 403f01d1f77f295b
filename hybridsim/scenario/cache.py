"""Where the project keeps files it makes once and reuses."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """$HYBRIDSIM_CACHE (default ~/.cache/hybridsim)/<kind>: textured box meshes, texture PNGs,
    procedural environment maps. Not created here."""
    return Path(os.environ.get("HYBRIDSIM_CACHE", Path.home() / ".cache" / "hybridsim")) / kind
