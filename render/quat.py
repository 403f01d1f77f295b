"""Quaternion helpers (wxyz, Hamilton product, as Genesis and gsplat use)."""

from __future__ import annotations

import torch
from torch import Tensor


def quat_mul(a: Tensor, b: Tensor) -> Tensor:  # [..., 4] x [..., 4] -> [..., 4]
    """Hamilton product a * b: rotating by b first, then by a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def quat_to_rotmat(q: Tensor) -> Tensor:  # [..., 4] -> [..., 3, 3]
    """Rotation matrix of a (not necessarily unit) quaternion."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(m: Tensor) -> Tensor:  # [..., 3, 3] -> [..., 4] unit, w >= 0
    """Quaternion of a rotation matrix; picks the best-conditioned of the four formulas per row."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Four candidates, each accurate when its leading component is large (Shepperd's method).
    cands = torch.stack(
        (
            torch.stack((1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01), -1),
            torch.stack((m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20), -1),
            torch.stack((m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21), -1),
            torch.stack((m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22), -1),
        ),
        dim=-2,
    )  # [..., 4 candidates, 4]
    diag = torch.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1)
    best = diag.argmax(dim=-1, keepdim=True)  # [..., 1]
    q = torch.gather(cands, -2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_rotate(q: Tensor, v: Tensor) -> Tensor:  # [..., 4], [..., 3] -> [..., 3]
    """Rotate vectors v by unit quaternions q."""
    w, xyz = q[..., :1], q[..., 1:]
    t = 2.0 * torch.cross(xyz, v, dim=-1)
    return v + w * t + torch.cross(xyz, t, dim=-1)
