"""Held-out evaluation: refine whole clips with the streaming sampler and compare with targets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from refine.config import SamplerConfig


@dataclass(frozen=True)
class EvalResult:
    mse: float  # refined vs target, mean over pixels and clips
    psnr: float  # dB, from mse (images in [0, 1])
    coarse_mse: float  # coarse render (first 3 condition channels) vs target
    coarse_psnr: float
    frames: int


def _psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


@torch.no_grad()
def evaluate(model, clips: Sequence, sampler: SamplerConfig | None = None, seed: int = 0,
             device: str = "cpu") -> EvalResult:
    """clips: (cond [T, C, H, W], target [T, 3, H, W]) pairs, refined one clip at a time (B = 1)."""
    from refine.refiner import Refiner

    cond0 = clips[0][0]
    refiner = Refiner(model, sampler, device=device, height=cond0.shape[-2], width=cond0.shape[-1])
    se = coarse_se = 0.0
    frames = 0
    for i in range(len(clips)):
        cond, target = clips[i]
        out = refiner.refine_video(cond[None].float(), seed=seed + i)[0].cpu()  # [T, 3, H, W]
        se += float(((out - target) ** 2).mean()) * cond.shape[0]
        coarse_se += float(((cond[:, :3].clamp(0, 1) - target) ** 2).mean()) * cond.shape[0]
        frames += cond.shape[0]
    mse, coarse = se / frames, coarse_se / frames
    return EvalResult(mse, _psnr(mse), coarse, _psnr(coarse), frames)
