"""Typed results of the render stage: splat assets, posed Gaussians and the G-buffer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from render.errors import RenderError


def _check(name: str, t: Tensor | None, shape: tuple, hint: str = "") -> None:
    """Raise RenderError unless `t` is a tensor of `shape` (None entries match any size)."""
    if not isinstance(t, Tensor):
        raise RenderError(f"{name} must be a torch.Tensor of shape {_fmt(shape)}, got {type(t).__name__}{hint}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        raise RenderError(f"{name} has shape {tuple(t.shape)}, expected {_fmt(shape)}{hint}")


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


@dataclass
class SplatAsset:
    """Gaussians in a body (link) frame; one per rigid body, particle set or static background."""

    means: Tensor  # [N, 3] metres, body frame
    quats: Tensor  # [N, 4] wxyz, body frame (need not be normalised)
    scales: Tensor  # [N, 3] metres, linear (not log)
    opacities: Tensor  # [N] in (0, 1)
    colors: Tensor  # [N, 3] linear RGB in [0, 1] (what SH degree 0 evaluates to)
    sh: Tensor | None = None  # [N, S, 3] full SH coefficients (S = (deg+1)^2) as stored in a PLY
    # Exact PLY parameters (logit opacity, log scales) of the file this asset was read from, so
    # that read -> write reproduces the file bit for bit; ignored once the tensors are edited.
    ply_raw: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check("SplatAsset.means", self.means, (None, 3))
        n = self.means.shape[0]
        _check("SplatAsset.quats", self.quats, (n, 4), " (wxyz, one per Gaussian)")
        _check("SplatAsset.scales", self.scales, (n, 3), " (linear metres, one per Gaussian)")
        _check("SplatAsset.opacities", self.opacities, (n,))
        _check("SplatAsset.colors", self.colors, (n, 3))
        if self.sh is not None:
            _check("SplatAsset.sh", self.sh, (n, None, 3))
            s = self.sh.shape[1]
            if int(round(s**0.5)) ** 2 != s:
                raise RenderError(f"SplatAsset.sh has {s} coefficients per channel; "
                                  "it must be (degree+1)^2 (1, 4, 9, 16, 25)")

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def to(self, device: torch.device | str) -> SplatAsset:
        sh = None if self.sh is None else self.sh.to(device)
        out = SplatAsset(self.means.to(device), self.quats.to(device), self.scales.to(device),
                         self.opacities.to(device), self.colors.to(device), sh)
        out.ply_raw = self.ply_raw
        return out


@dataclass
class Gaussians:
    """Gaussians posed in the world frame, batched over B environments."""

    means: Tensor  # [B, N, 3] metres, world frame
    quats: Tensor  # [B, N, 4] wxyz, world frame
    scales: Tensor  # [N, 3] or [B, N, 3] metres
    opacities: Tensor  # [N] or [B, N]
    colors: Tensor  # [N, 3] or [B, N, 3] linear RGB (ignored where `sh` is given)
    instance_id: Tensor  # [N] int32, 0 = background / unlabelled
    sh: Tensor | None = None  # [N, S, 3] or [B, N, S, 3]; view directions taken in the world frame

    def __post_init__(self) -> None:
        _check("Gaussians.means", self.means, (None, None, 3), " ([B, N, 3]; a single environment is B = 1)")
        b, n = self.means.shape[:2]
        _check("Gaussians.quats", self.quats, (b, n, 4))
        for name, t, tail in (("scales", self.scales, (3,)), ("opacities", self.opacities, ()),
                              ("colors", self.colors, (3,))):
            if not isinstance(t, Tensor) or t.shape not in (torch.Size((n, *tail)), torch.Size((b, n, *tail))):
                raise RenderError(f"Gaussians.{name} has shape {tuple(getattr(t, 'shape', ()))}, expected "
                                  f"{_fmt((n, *tail))} or {_fmt((b, n, *tail))}")
        _check("Gaussians.instance_id", self.instance_id, (n,))
        if self.sh is not None and (self.sh.dim() not in (3, 4) or self.sh.shape[-1] != 3
                                    or self.sh.shape[:-2] not in (torch.Size((n,)), torch.Size((b, n)))):
            raise RenderError(f"Gaussians.sh has shape {tuple(self.sh.shape)}, expected [N, S, 3] or [B, N, S, 3]")

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    def batched(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """(scales [B,N,3], opacities [B,N], colors [B,N,3], sh [B,N,S,3] | None) as expanded views."""
        b, n = self.means.shape[:2]
        sh = None if self.sh is None else self.sh.expand(b, n, *self.sh.shape[-2:])
        return (self.scales.expand(b, n, 3), self.opacities.expand(b, n), self.colors.expand(b, n, 3), sh)


@dataclass
class GBuffer:
    """Per-pixel render outputs for B environments x C cameras."""

    rgb: Tensor  # [B, C, H, W, 3] float32 in [0, 1], linear, composited over the background colour
    depth: Tensor  # [B, C, H, W] metres along camera +z (alpha-normalised expected depth; 0 where alpha < alpha_min)
    alpha: Tensor  # [B, C, H, W] accumulated opacity
    instance_id: Tensor  # [B, C, H, W] int32; 0 where alpha < 0.5 (see rasterize's instance_mode)
    flow: Tensor  # [B, C, H, W, 2] pixels (dx, dy): frame_t(x) ~ frame_{t-1}(x - flow(x)); zeros without prev_means
    extra: Tensor | None = None  # [B, C, H, W, E] alpha-normalised per-Gaussian extra channels (rasterize's `extra`)
