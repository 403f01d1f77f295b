"""Small camera helpers in the OpenCV convention (x right, y down, z forward), world z-up."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from render.errors import RenderError


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)) -> Tensor:
    """World -> camera viewmat [4, 4] for a camera at `eye` looking at `target`."""
    eye_t, target_t, up_t = (torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up))
    fwd = target_t - eye_t
    if fwd.norm() < 1e-12:
        raise RenderError(f"look_at: eye {tuple(eye)} and target {tuple(target)} coincide; move the target")
    fwd = fwd / fwd.norm()
    right = torch.linalg.cross(fwd, up_t)
    if right.norm() < 1e-9:
        raise RenderError(f"look_at: view direction {fwd.tolist()} is parallel to up {tuple(up)}; pass another up")
    right = right / right.norm()
    down = torch.linalg.cross(fwd, right)
    rot = torch.stack((right, down, fwd))  # rows: camera axes in world coordinates
    view = torch.eye(4, dtype=torch.float64)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye_t
    return view.float()


def intrinsics(fov_y_deg: float, width: int, height: int) -> Tensor:
    """Pinhole K [3, 3] in pixels for a vertical field of view, principal point at the centre."""
    if not 0 < fov_y_deg < 180:
        raise RenderError(f"fov_y_deg={fov_y_deg} must be in (0, 180) degrees")
    f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
    return torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
