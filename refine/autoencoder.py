"""FrameAutoencoder: a small latent space for the refiner, and what it costs and keeps.

The issue's choice was pixel space or the latent space of a small autoencoder the project trains,
"by measured quality per CPU second". This module holds the autoencoder and the two measurements
that decide it (`hybridsim bench sections=latent` runs them on the project's paired clips):

- quality: a latent refiner cannot be closer to the target than decode(encode(target)), so the
  autoencoder's reconstruction PSNR on held-out frames bounds a latent refiner's PSNR from above;
- cost: at 128x128 a 4x-downsampling autoencoder with 2x2 latent patches gives 256 tokens per
  frame, the pixel model's 8x8 patches give 256 too, so the transformer costs the same in both
  spaces and the latent one adds an encode of the coarse render and a decode of every output.

Deterministic (no KL term): only reconstruction matters for the bound. Frames are [N, 3, H, W]
in [0, 1]; latents [N, C, H/4, W/4].
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as Fn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from refine.errors import RefineError


def _res_block(c: int) -> nn.Module:
    return nn.Sequential(nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))


class FrameAutoencoder(ModelMixin, ConfigMixin):
    """[N, 3, H, W] -> [N, latent_channels, H/4, W/4] -> [N, 3, H, W]; two stride-2 stages each way."""

    @register_to_config
    def __init__(self, latent_channels: int = 8, hidden: int = 64):
        super().__init__()
        if latent_channels <= 0 or hidden <= 0:
            raise RefineError(f"latent_channels={latent_channels} and hidden={hidden} must be > 0")
        h = hidden
        self.enc_in = nn.Conv2d(3, h, 3, padding=1)
        self.down = nn.ModuleList([nn.Conv2d(h, h, 4, stride=2, padding=1), nn.Conv2d(h, 2 * h, 4, stride=2, padding=1)])
        self.enc_res = _res_block(2 * h)
        self.enc_out = nn.Conv2d(2 * h, latent_channels, 3, padding=1)
        self.dec_in = nn.Conv2d(latent_channels, 2 * h, 3, padding=1)
        self.dec_res = _res_block(2 * h)
        self.up = nn.ModuleList([nn.Conv2d(2 * h, h, 3, padding=1), nn.Conv2d(h, h, 3, padding=1)])
        self.dec_out = nn.Conv2d(h, 3, 3, padding=1)

    def encode(self, x: Tensor) -> Tensor:
        """x [N, 3, H, W] in [0, 1] (H, W multiples of 4) -> z [N, C, H/4, W/4]"""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % 4 or x.shape[-2] % 4:
            raise RefineError(f"frames {tuple(x.shape)} must be [N, 3, H, W] with H and W multiples of 4")
        y = self.enc_in(2 * x - 1)
        for conv in self.down:
            y = conv(Fn.silu(y))  # [N, h or 2h, H/2 then H/4, ...]
        y = y + self.enc_res(y)
        return self.enc_out(Fn.silu(y))

    def decode(self, z: Tensor) -> Tensor:
        """z [N, C, H/4, W/4] -> x [N, 3, H, W], unclamped (clamp for display)"""
        y = self.dec_in(z)
        y = y + self.dec_res(y)
        for conv in self.up:
            y = conv(Fn.silu(Fn.interpolate(y, scale_factor=2.0, mode="nearest")))  # [N, ., 2x, 2x]
        return 0.5 * (self.dec_out(Fn.silu(y)) + 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def train_autoencoder(model: FrameAutoencoder, frames: Tensor, steps: int, batch_size: int = 16, lr: float = 1e-3,
                      seed: int = 0, progress: bool = True) -> list[float]:
    """MSE training on random frames of frames [N, 3, H, W] in [0, 1]; returns the loss per step."""
    from tqdm import tqdm

    if steps <= 0 or batch_size <= 0 or frames.ndim != 4 or len(frames) == 0:
        raise RefineError(f"steps={steps} and batch_size={batch_size} must be > 0 and frames [N, 3, H, W] "
                          f"non-empty, got {tuple(frames.shape)}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in tqdm(range(steps), disable=not progress, desc="autoencoder"):
        x = frames[torch.randint(len(frames), (batch_size,), generator=gen)]
        loss = Fn.mse_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:  # linear decay: the last steps settle
            group["lr"] = lr * (1 - step / steps)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def reconstruct(model: FrameAutoencoder, frames: Tensor, batch_size: int = 32) -> Tensor:
    """decode(encode(frames)) clamped to [0, 1]: [N, 3, H, W] -> [N, 3, H, W]"""
    return torch.cat([model(frames[i:i + batch_size]).clamp(0, 1) for i in range(0, len(frames), batch_size)])


@torch.no_grad()
def codec_ms_per_frame(model: FrameAutoencoder, height: int, width: int, frames: int = 2, reps: int = 5) -> dict:
    """Median ms per frame to encode and to decode a block of `frames` frames (a refiner block)."""
    x = torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(0))
    z = model.encode(x)
    out = {}
    for name, fn, arg in (("encode", model.encode, x), ("decode", model.decode, z)):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(arg)
            times.append(time.perf_counter() - t0)
        out[name] = 1e3 * sorted(times)[len(times) // 2] / frames
    return out
