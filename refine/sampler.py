"""Few-step flow-matching sampling of one block: predict x0 = x - sigma * v, re-noise, repeat.

Flow matching convention: x_sigma = (1 - sigma) * x0 + sigma * noise, v = noise - x0, model
timestep = 1000 * sigma. The clean pass that writes the block's K/V at t = 0 is the caller's
(the Refiner's), because only a cached model needs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from refine.config import SamplerConfig
from refine.errors import RefineError

# denoise(x [B, F, C, H, W], sigma, first_step) -> velocity [B, F, C, H, W]
Denoiser = Callable[[Tensor, float, bool], Tensor]
# noise(k) -> [B, F, C, H, W]: the noise injected at step k (k = 0 noises the start)
Noise = Callable[[int], Tensor]


def sigma_schedule(cfg: SamplerConfig) -> list[float]:
    """The per-block sigma list (decreasing, in (0, 1]).

    sigma_k = sigma_max * shift(1 - k / n), shift(s) = shift * s / (1 + (shift - 1) * s), built
    with diffusers' FlowMatchEulerDiscreteScheduler. n = 4, shift = 5, sigma_max = 1 gives
    Self-Forcing's 1000, 937.5, 833.3, 625; n = 3, shift = 1, sigma_max = 0.75 gives
    RealWonder's 750, 500, 250.
    """
    if cfg.sigmas is not None:
        return list(cfg.sigmas)
    from diffusers import FlowMatchEulerDiscreteScheduler

    n = cfg.num_steps
    base = np.linspace(1.0, 1.0 / n, n)  # [n]
    scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg.shift)
    scheduler.set_timesteps(sigmas=base.tolist())
    shifted = scheduler.sigmas[:n].double() * cfg.sigma_max  # scheduler appends a terminal 0
    return [float(s) for s in shifted]


def env_seeds(seed: int | Sequence[int], batch_size: int) -> list[int]:
    """One seed per environment: a sequence is used as given; an int is hashed with the env index
    so that env b's noise does not depend on the batch it runs in."""
    if isinstance(seed, (int, np.integer)):
        return [int.from_bytes(hashlib.sha256(f"refine:{int(seed)}:{b}".encode()).digest()[:8], "little")
                for b in range(batch_size)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch_size:
        raise RefineError(f"got {len(seeds)} seeds for batch_size={batch_size}; pass one per env or an int")
    return seeds


def make_generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def draw_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device | str) -> Tensor:
    """Standard normal noise [B, *shape], env b drawn from generators[b]."""
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])


def block_noise(kind: str, block: tuple[int, ...], draw: Callable[[], Tensor],
                static_fields: Tensor | None = None, device: torch.device | str = "cpu") -> Noise:
    """The `noise(k)` closure that FewStepSampler.sample reads for one block [B, F, C, H, W].

    kind (SamplerConfig.noise): "fresh" calls `draw()` at every step; "static" returns step k's
    field of `static_fields` [B, steps, 1, C, H, W], the same for every frame and every block;
    "zero" returns zeros (the deterministic sampler). The refiner and the self-rollout loss
    both draw through this, so training sees exactly the noise inference does.
    """
    if kind == "static" and static_fields is None:
        raise RefineError("noise='static' needs the per-step fields drawn at reset")

    def noise(k: int) -> Tensor:
        if kind == "zero":
            return torch.zeros(block, device=device)
        if kind == "static":
            return static_fields[:, k].expand(block).to(device)
        return draw()

    return noise


class FewStepSampler:
    """Runs the sigma list on one block given a denoiser closure (cached or recompute)."""

    def __init__(self, cfg: SamplerConfig | None = None):
        self.cfg = cfg or SamplerConfig()
        self.sigmas = sigma_schedule(self.cfg)

    def sample(self, denoise: Denoiser, start_x0: Tensor, noise: Noise) -> Tensor:
        """start_x0 [B, F, C, H, W]: the coarse render in diffusion space (used when sigma_0 < 1).

        Returns the predicted clean block x0 [B, F, C, H, W]. Forwards: len(sigmas).
        """
        sig = self.sigmas
        x = (1.0 - sig[0]) * start_x0 + sig[0] * noise(0)
        x0 = start_x0
        for k, s in enumerate(sig):
            v = denoise(x, s, k == 0)
            x0 = x - s * v
            if k + 1 < len(sig):
                x = (1.0 - sig[k + 1]) * x0 + sig[k + 1] * noise(k + 1)
        return x0
