"""CUDA path: gsplat.rasterization with depth from render_mode "RGB+ED" and flow / instance
weights as extra colour channels, rearranged into the shared feature layout of render.project.
"""

from __future__ import annotations

import torch
from torch import Tensor

from render.project import camera_centers, project_points, sh_colors


def gsplat_sums(
    means: Tensor,  # [B, N, 3]
    quats: Tensor,  # [B, N, 4]
    scales: Tensor,  # [B, N, 3]
    opacities: Tensor,  # [B, N]
    colors: Tensor,  # [B, N, 3]
    sh: Tensor | None,  # [B, N, S, 3]
    viewmats: Tensor,  # [B, C, 4, 4]
    Ks: Tensor,  # [B, C, 3, 3]
    width: int,
    height: int,
    *,
    near: float,
    far: float,
    prev_means: Tensor | None,  # [B, N, 3]
    prev_viewmats: Tensor | None,  # [B, C, 4, 4]
    ranks: Tensor | None,  # [N] int64 compact labels (one-hot weight channels), or None
    num_labels: int,
    eps2d: float,
    tile_size: int = 16,
    extra: Tensor | None = None,  # [B, N, E]
) -> Tensor:
    """[B*C, H, W, D] weighted feature sums, the same layout the CPU paths produce."""
    from gsplat import rasterization  # lazy: pulls in gsplat's CUDA extension

    B, N = means.shape[:2]
    C = viewmats.shape[1]
    if sh is None:
        rgb = colors[:, None].expand(B, C, N, 3)
    else:
        dirs = means[:, None] - camera_centers(viewmats)[:, :, None]  # [B, C, N, 3]
        rgb = sh_colors(sh[:, None].expand(B, C, *sh.shape[1:]), dirs)
    if prev_means is None:
        flow = means.new_zeros(B, C, N, 2)
    else:
        pv = viewmats if prev_viewmats is None else prev_viewmats
        flow = project_points(means, viewmats, Ks, near) - project_points(prev_means, pv, Ks, near)
    onehot = [] if ranks is None else [torch.nn.functional.one_hot(ranks, num_labels).to(rgb.dtype).expand(B, C, N, -1)]
    parts = [rgb, flow] + onehot + ([] if extra is None else [extra[:, None].expand(B, C, N, extra.shape[-1])])
    feats = torch.cat(parts, dim=-1).contiguous()  # [B, C, N, 5 + U]
    render, alpha, _ = rasterization(
        means.contiguous(), quats.contiguous(), scales.contiguous(), opacities.contiguous(), feats,
        viewmats.contiguous(), Ks.contiguous(), width, height, near_plane=near, far_plane=far, eps2d=eps2d,
        render_mode="RGB+ED", packed=False, tile_size=tile_size)  # [B, C, H, W, 5 + U + 1], [B, C, H, W, 1]
    depth_sum = render[..., -1:] * alpha  # "ED" divided by alpha; undo it to match the other paths
    out = torch.cat((render[..., 0:3], depth_sum, render[..., 3:5], alpha, render[..., 5:-1]), dim=-1)
    return out.reshape(B * C, height, width, out.shape[-1])
