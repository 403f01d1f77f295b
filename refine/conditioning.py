"""Encode G-buffer planes into the refiner's condition channels (torch only; no render import).

Two layouts, picked by the model's `cond_channels`:

- 7 (`COND_CHANNELS`): coarse RGB (3) | 1/(1+depth) (1) | alpha (1) | flow/16 (2);
- 21 (`LIT_CHANNELS`, `encode_lit_condition`): the lit splat render (render.lighting) first, so a
  residual-space model corrects it, then depth, alpha and flow as above, the unlit albedo, the
  camera-space normal, the sun's visibility and its cosine, the material (roughness, metallic,
  transmission) and the environment seen in a mirror at each pixel: the physical inputs of the
  shading the path tracer computes, so the network corrects light transport instead of inventing it;
- 14 (`COND_CHANNELS + SHADING_CHANNELS`): the same, then deferred-shading cues for the lights
  the target renderer uses: camera-space normal from depth (3) | light colour * intensity / 5 *
  max(0, n . l) (3) | mean ambient * 5 (1). The splat render is unlit, so without these the
  refiner would have to guess where the light comes from; with them shading is a local function
  of its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from refine.config import COND_CHANNELS, LIT_CHANNELS, SHADING_CHANNELS  # noqa: F401  (re-exported; stdlib-only home)
from refine.errors import RefineError

FLOW_SCALE = 16.0  # pixels per frame that map to 1.0
INTENSITY_SCALE = 5.0  # light intensity that maps to 1.0 (the scenario default)


@dataclass(frozen=True)
class Lights:
    """One directional light + ambient, as the target renderer was given them (world frame)."""

    direction: tuple[float, float, float] = (-1.0, -1.0, -1.0)  # the way the light travels
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    intensity: float = 5.0
    ambient: tuple[float, float, float] = (0.1, 0.1, 0.1)

    def __post_init__(self) -> None:
        if sum(float(v) ** 2 for v in self.direction) <= 0:
            raise RefineError(f"light direction {self.direction} is the zero vector; give a direction")


def encode_condition(rgb: Tensor, depth: Tensor, alpha: Tensor, flow: Tensor, *, K: Tensor | None = None,
                     viewmat: Tensor | None = None, lights: Lights | None = None) -> Tensor:
    """Stack G-buffer planes into condition channels.

    rgb   [B, T, H, W, 3] in [0, 1] (channel-last, as render writes it)
    depth [B, T, H, W] metres along +z (0 or inf where empty)
    alpha [B, T, H, W] in [0, 1]
    flow  [B, T, H, W, 2] pixels per frame (x, y)
    K [B, 3, 3] pixels, viewmat [B, 4, 4] world -> camera (OpenCV), lights: give all three for
    the 14-channel layout (shading cues), none for the 7-channel one.
    -> cond [B, T, 7 or 14, H, W] float32
    """
    if rgb.ndim != 5 or rgb.shape[-1] != 3:
        raise RefineError(f"rgb {tuple(rgb.shape)} must be [B, T, H, W, 3]")
    lead = rgb.shape[:-1]  # [B, T, H, W]
    if tuple(depth.shape) != tuple(lead) or tuple(alpha.shape) != tuple(lead) \
            or tuple(flow.shape) != (*lead, 2):
        raise RefineError(f"depth {tuple(depth.shape)}, alpha {tuple(alpha.shape)}, flow {tuple(flow.shape)} "
                          f"must be [B, T, H, W] = {tuple(lead)} (flow with a trailing 2)")
    given = [x is not None for x in (K, viewmat, lights)]
    if any(given) and not all(given):
        raise RefineError("shading cues need K, viewmat and lights together; pass all three or none")
    d = depth.float()
    valid = torch.isfinite(d) & (d > 0)
    inv_depth = torch.where(valid, 1.0 / (1.0 + d.clamp(min=0)), torch.zeros_like(d))
    planes = [rgb.float().clamp(0, 1).movedim(-1, 2),  # [B, T, 3, H, W]
              inv_depth[:, :, None], alpha.float()[:, :, None],
              (flow.float() / FLOW_SCALE).movedim(-1, 2)]
    if all(given):
        planes.append(shading_cues(d, valid, K, viewmat, lights))
    return torch.cat(planes, dim=2).contiguous()


def normals_from_depth(depth: Tensor, valid: Tensor, K: Tensor) -> Tensor:
    """Camera-space unit normals (facing the camera) from a depth map.

    depth, valid [B, T, H, W]; K [B, 3, 3] -> [B, T, 3, H, W], zero where the depth is empty.
    Tangents use the one-sided difference with the smaller depth step on each axis, so normals do
    not bend across silhouettes.
    """
    b, t, h, w = depth.shape
    K = K.to(depth)
    z = torch.where(valid, depth, torch.zeros_like(depth))
    u = torch.arange(w, dtype=depth.dtype, device=depth.device) + 0.5
    v = torch.arange(h, dtype=depth.dtype, device=depth.device) + 0.5
    fx, fy = K[:, 0, 0].view(b, 1, 1, 1), K[:, 1, 1].view(b, 1, 1, 1)
    cx, cy = K[:, 0, 2].view(b, 1, 1, 1), K[:, 1, 2].view(b, 1, 1, 1)
    pts = torch.stack([(u.view(1, 1, 1, w) - cx) / fx * z, (v.view(1, 1, h, 1) - cy) / fy * z, z], 2)  # [B,T,3,H,W]

    def tangent(dim: int) -> Tensor:
        n = pts.shape[dim]
        fwd = torch.cat([pts.narrow(dim, 1, n - 1) - pts.narrow(dim, 0, n - 1), pts.narrow(dim, 0, 1) * 0], dim)
        bwd = torch.cat([pts.narrow(dim, 0, 1) * 0, pts.narrow(dim, 1, n - 1) - pts.narrow(dim, 0, n - 1)], dim)
        fwd_ok = torch.cat([valid.narrow(dim - 1, 1, n - 1) & valid.narrow(dim - 1, 0, n - 1),
                            torch.zeros_like(valid.narrow(dim - 1, 0, 1))], dim - 1)[:, :, None]
        bwd_ok = torch.cat([torch.zeros_like(valid.narrow(dim - 1, 0, 1)),
                            valid.narrow(dim - 1, 1, n - 1) & valid.narrow(dim - 1, 0, n - 1)], dim - 1)[:, :, None]
        big = torch.full_like(fwd[:, :, 2:3], float("inf"))
        fz = torch.where(fwd_ok, fwd[:, :, 2:3].abs(), big)
        bz = torch.where(bwd_ok, bwd[:, :, 2:3].abs(), big)
        return torch.where(fz <= bz, torch.where(fwd_ok, fwd, 0 * fwd), torch.where(bwd_ok, bwd, 0 * bwd))

    n = torch.cross(tangent(4), tangent(3), dim=2)  # d/du x d/dv
    n = n * torch.where((n * pts).sum(2, keepdim=True) > 0, -1.0, 1.0)  # face the camera
    n = n / n.norm(dim=2, keepdim=True).clamp(min=1e-12)
    # splat depth is slightly bumpy: average unit normals over 3x3 (empty pixels count as zero)
    n = torch.nn.functional.avg_pool2d(n.flatten(0, 1), 3, stride=1, padding=1).unflatten(0, (b, t))
    norm = n.norm(dim=2, keepdim=True)
    return torch.where((norm > 1e-12) & valid[:, :, None], n / norm.clamp(min=1e-12), torch.zeros_like(n))


def shading_cues(depth: Tensor, valid: Tensor, K: Tensor, viewmat: Tensor, lights: Lights) -> Tensor:
    """[B, T, H, W] depth -> [B, T, 7, H, W]: normal (3), diffuse light (3), ambient (1)."""
    if tuple(K.shape) != (depth.shape[0], 3, 3) or tuple(viewmat.shape) != (depth.shape[0], 4, 4):
        raise RefineError(f"K {tuple(K.shape)} / viewmat {tuple(viewmat.shape)} must be [B, 3, 3] / [B, 4, 4] "
                          f"with B = {depth.shape[0]}")
    normal = normals_from_depth(depth, valid, K)
    to_light = -torch.tensor(lights.direction, dtype=depth.dtype, device=depth.device)
    to_light = to_light / to_light.norm()
    l_cam = viewmat.to(depth)[:, :3, :3] @ to_light  # [B, 3]
    lambert = (normal * l_cam[:, None, :, None, None]).sum(2, keepdim=True).clamp(min=0)  # [B, T, 1, H, W]
    color = torch.tensor(lights.color, dtype=depth.dtype, device=depth.device).view(1, 1, 3, 1, 1)
    diffuse = lambert * color * (float(lights.intensity) / INTENSITY_SCALE)
    amb = torch.full_like(lambert, sum(float(a) for a in lights.ambient) / 3 * 5.0)
    return torch.cat([normal, diffuse, amb], 2)


def encode_lit_condition(lit: Tensor, depth: Tensor, alpha: Tensor, flow: Tensor, albedo: Tensor,
                         normal_cam: Tensor, sun_visibility: Tensor, sun_cos: Tensor, material: Tensor,
                         reflection: Tensor) -> Tensor:
    """The 21-channel lit layout (LIT_CHANNELS).

    lit, albedo, reflection [B, T, H, W, 3] sRGB-encoded in [0, 1]; depth, alpha, sun_visibility,
    sun_cos [B, T, H, W]; flow [B, T, H, W, 2] pixels; normal_cam [B, T, H, W, 3] unit, camera
    frame (OpenCV), zero where nothing is drawn; material [B, T, H, W, 3] roughness, metallic,
    transmission in [0, 1]. -> [B, T, 21, H, W] float32
    """
    base = encode_condition(lit, depth, alpha, flow)  # [B, T, 7, H, W]
    lead = tuple(lit.shape[:-1])
    parts = (("albedo", albedo, 3), ("normal_cam", normal_cam, 3), ("sun_visibility", sun_visibility, 0),
             ("sun_cos", sun_cos, 0), ("material", material, 3), ("reflection", reflection, 3))
    extra = []
    for name, t, ch in parts:
        want = (*lead, ch) if ch else lead
        if tuple(t.shape) != want:
            raise RefineError(f"{name} {tuple(t.shape)} must be {want}")
        extra.append(t.float().movedim(-1, 2) if ch else t.float()[:, :, None])
    out = torch.cat([base, *extra], dim=2)
    assert out.shape[2] == LIT_CHANNELS
    return out.contiguous()
