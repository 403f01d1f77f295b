"""Pinhole camera matrices in the OpenCV convention (x right, y down, z forward).

Used where Genesis' raster camera is not attached (reference render off) and to check that the
matrices Genesis reports agree with the spec.
"""

from __future__ import annotations

import math

import numpy as np


def look_at(pos, lookat, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World->camera [4, 4] for a camera at `pos` looking at `lookat`."""
    pos, lookat, up = (np.asarray(v, dtype=np.float64) for v in (pos, lookat, up))
    z = lookat - pos
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:  # looking along `up`: any perpendicular right vector will do
        x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    view = np.eye(4)
    view[:3, :3] = np.stack([x, y, z])
    view[:3, 3] = -view[:3, :3] @ pos
    return view


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """K [3, 3] for a vertical field of view in degrees (Genesis' convention)."""
    f = 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
