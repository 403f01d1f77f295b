"""Tiny models and synthetic paired clips for tests and smoke runs (any package may use them)."""

from __future__ import annotations

import torch
from torch import Tensor


def tiny_config(**overrides) -> dict:
    """A 2-layer, dim-32, 16x16 config (patch 4 -> 16 tokens per frame)."""
    cfg = dict(patch_size=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, ffn_dim=64,
               freq_dim=32, frames_per_block=2, sink_frames=1, window_frames=4, sample_height=16,
               sample_width=16)
    cfg.update(overrides)
    return cfg


def tiny_model(seed: int = 0, **overrides):
    """A seeded, randomly initialised tiny CausalWanRefiner in eval mode."""
    from refine.model import CausalWanRefiner

    torch.manual_seed(seed)
    return CausalWanRefiner(**tiny_config(**overrides)).eval()


def synthetic_target(cond: Tensor) -> Tensor:
    """A fixed nonlinear 'realistic look' of a G-buffer. cond [..., 7, H, W] -> rgb [..., 3, H, W]."""
    rgb, inv_depth, alpha = cond[..., :3, :, :], cond[..., 3:4, :, :], cond[..., 4:5, :, :]
    graded = rgb.clamp(0, 1) ** 0.8 * (0.7 + 0.3 * alpha)  # contrast and a soft shadow under objects
    tint = torch.tensor([0.05, 0.02, -0.03], dtype=cond.dtype).view(3, 1, 1)
    return (graded + tint * inv_depth + 0.05 * torch.sin(6.0 * inv_depth)).clamp(0, 1)


def synthetic_clips(n: int, frames: int, height: int = 16, width: int = 16, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """n pairs of (cond [T, 7, H, W], target [T, 3, H, W]) with smooth moving blobs."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(height, 1)
    xs = torch.linspace(0, 1, width).view(1, width)
    clips = []
    for _ in range(n):
        colour = torch.rand(3, 1, 1, generator=g)
        bg = torch.rand(3, 1, 1, generator=g) * 0.5
        pos = torch.rand(2, generator=g)
        vel = (torch.rand(2, generator=g) - 0.5) * 0.1
        conds = []
        for t in range(frames):
            cy, cx = (pos + vel * t).tolist()
            blob = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 0.02)  # [H, W]
            alpha = (blob > 0.3).float()
            rgb = bg * (1 - blob) + colour * blob
            inv_depth = 0.3 + 0.4 * blob
            flow = torch.stack([torch.full_like(blob, vel[1] * width), torch.full_like(blob, vel[0] * height)]) / 16
            conds.append(torch.cat([rgb, inv_depth[None], alpha[None], flow * alpha], 0))
        cond = torch.stack(conds)  # [T, 7, H, W]
        clips.append((cond, synthetic_target(cond)))
    return clips
