"""Infinite planes drawn exactly, per pixel, behind the splats.

A ground plane sampled as Gaussians has to stop somewhere, while the reference renderer's plane
runs on until its camera's far clip (Genesis: 20 m); the pixels in between would be background in the splat G-buffer and ground in
the reference. `composite_planes` intersects every pixel's ray with each plane (one-sided: seen
from the side its normal points to) and composites the nearest hit closer than `far` behind the splat layer: RGB
(flat colour, linear), depth along +z, alpha, instance id. Flow of plane pixels is zero: the
planes and the cameras are static between frames (a moved camera's plane flow is not modelled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from render.errors import RenderError
from render.types import GBuffer


@dataclass(frozen=True)
class Plane:
    point: tuple[float, float, float]  # any point on the plane, world frame, metres
    normal: tuple[float, float, float]  # the visible side, world frame
    color: tuple[float, float, float]  # linear RGB in [0, 1]
    instance_id: int  # written where the plane is the visible surface
    extra: tuple[float, ...] | None = None  # its GBuffer.extra channels (zeros when None)


def plane_hits(planes: list[Plane], viewmats: Tensor, Ks: Tensor, width: int, height: int,
               far: float = math.inf, extra_dim: int = 0) -> tuple[Tensor, ...]:
    """Nearest plane per pixel, up to depth `far` (a raster camera's far clip; inf = to the horizon).

    viewmats [B, C, 4, 4] world->camera (OpenCV), Ks [B, C, 3, 3]
    -> depth [B, C, H, W] (inf where no plane), color [B, C, H, W, 3], instance [B, C, H, W] int32,
    and with extra_dim > 0 also the planes' extra channels [B, C, H, W, extra_dim]
    """
    if viewmats.ndim != 4 or Ks.ndim != 4:
        raise RenderError(f"viewmats {tuple(viewmats.shape)} / Ks {tuple(Ks.shape)} must be [B, C, 4, 4] / [B, C, 3, 3]")
    dev = viewmats.device
    ys, xs = torch.meshgrid(torch.arange(height, device=dev, dtype=torch.float32) + 0.5,
                            torch.arange(width, device=dev, dtype=torch.float32) + 0.5, indexing="ij")
    fx, fy = Ks[..., 0, 0, None, None], Ks[..., 1, 1, None, None]  # [B, C, 1, 1]
    cx, cy = Ks[..., 0, 2, None, None], Ks[..., 1, 2, None, None]
    d_cam = torch.stack([(xs - cx) / fx, (ys - cy) / fy, torch.ones_like(xs - cx)], -1)  # [B, C, H, W, 3], z = 1
    R, t = viewmats[..., :3, :3], viewmats[..., :3, 3]  # world->camera
    d_world = torch.einsum("bcji,bchwj->bchwi", R, d_cam)  # R^T d
    origin = -torch.einsum("bcji,bcj->bci", R, t)  # camera centre, world [B, C, 3]
    best = torch.full(d_cam.shape[:-1], float("inf"), device=dev)
    color = torch.zeros(*best.shape, 3, device=dev)
    inst = torch.zeros(best.shape, dtype=torch.int32, device=dev)
    extra = torch.zeros(*best.shape, extra_dim, device=dev)
    for p in planes:
        n = torch.tensor(p.normal, dtype=torch.float32, device=dev)
        n = n / n.norm().clamp(min=1e-12)
        p0 = torch.tensor(p.point, dtype=torch.float32, device=dev)
        height_above = ((origin - p0) * n).sum(-1)[..., None, None]  # [B, C, 1, 1]
        facing = (d_world * n).sum(-1)  # [B, C, H, W]
        s = height_above / (-facing).clamp(min=1e-12)  # ray parameter = depth along +z (d_cam.z = 1)
        hit = (height_above > 0) & (facing < -1e-9) & (s < best) & (s <= far)
        best = torch.where(hit, s, best)
        color = torch.where(hit[..., None], torch.tensor(p.color, dtype=torch.float32, device=dev), color)
        inst = torch.where(hit, torch.tensor(p.instance_id, dtype=torch.int32, device=dev), inst)
        if extra_dim:
            value = torch.zeros(extra_dim) if p.extra is None else torch.tensor(p.extra, dtype=torch.float32)
            if value.numel() != extra_dim:
                raise RenderError(f"plane extra has {value.numel()} channels, the G-buffer {extra_dim}")
            extra = torch.where(hit[..., None], value.to(dev), extra)
    return (best, color, inst, extra) if extra_dim else (best, color, inst)


def composite_planes(g: GBuffer, planes: list[Plane], viewmats: Tensor, Ks: Tensor,
                     instance_threshold: float = 0.5, far: float = math.inf) -> GBuffer:
    """The G-buffer with `planes` composited behind its splats (see the module docstring), planes
    drawn up to depth `far`."""
    if not planes:
        return g
    H, W = g.alpha.shape[-2:]
    e = 0 if g.extra is None else g.extra.shape[-1]
    depth_p, color_p, inst_p, *extra_p = plane_hits(planes, viewmats, Ks, W, H, far, extra_dim=e)
    hit = torch.isfinite(depth_p)
    behind = (1.0 - g.alpha) * hit  # weight of the plane layer, [B, C, H, W]
    alpha = g.alpha + behind
    rgb = g.rgb + behind[..., None] * color_p
    safe_depth = torch.where(hit, depth_p, torch.zeros_like(depth_p))
    depth = torch.where(alpha > 0, (g.alpha * g.depth + behind * safe_depth) / alpha.clamp(min=1e-12), g.depth)
    uncovered = g.alpha < instance_threshold
    instance = torch.where(uncovered & hit, inst_p, g.instance_id)
    extra = g.extra
    if e:  # alpha-normalised like depth
        extra = torch.where(alpha[..., None] > 0, (g.alpha[..., None] * g.extra + behind[..., None] * extra_p[0])
                            / alpha.clamp(min=1e-12)[..., None], g.extra)
    return replace(g, rgb=rgb, depth=depth, alpha=alpha, instance_id=instance, extra=extra)
