"""Encode G-buffer planes into the refiner's condition channels (torch only; no render import)."""

from __future__ import annotations

import torch
from torch import Tensor

from refine.errors import RefineError

COND_CHANNELS = 7  # coarse RGB (3) | 1/(1+depth) (1) | alpha (1) | flow/16 (2)
FLOW_SCALE = 16.0  # pixels per frame that map to 1.0


def encode_condition(rgb: Tensor, depth: Tensor, alpha: Tensor, flow: Tensor) -> Tensor:
    """Stack G-buffer planes into condition channels.

    rgb   [B, T, H, W, 3] in [0, 1] (channel-last, as render writes it)
    depth [B, T, H, W] metres along +z (0 or inf where empty)
    alpha [B, T, H, W] in [0, 1]
    flow  [B, T, H, W, 2] pixels per frame (x, y)
    -> cond [B, T, 7, H, W] float32: rgb, 1/(1+depth) (0 where empty), alpha, flow/16
    """
    if rgb.ndim != 5 or rgb.shape[-1] != 3:
        raise RefineError(f"rgb {tuple(rgb.shape)} must be [B, T, H, W, 3]")
    lead = rgb.shape[:-1]  # [B, T, H, W]
    if tuple(depth.shape) != tuple(lead) or tuple(alpha.shape) != tuple(lead) \
            or tuple(flow.shape) != (*lead, 2):
        raise RefineError(f"depth {tuple(depth.shape)}, alpha {tuple(alpha.shape)}, flow {tuple(flow.shape)} "
                          f"must be [B, T, H, W] = {tuple(lead)} (flow with a trailing 2)")
    d = depth.float()
    inv_depth = torch.where(torch.isfinite(d) & (d > 0), 1.0 / (1.0 + d.clamp(min=0)), torch.zeros_like(d))
    planes = [rgb.float().clamp(0, 1).movedim(-1, 2),  # [B, T, 3, H, W]
              inv_depth[:, :, None], alpha.float()[:, :, None],
              (flow.float() / FLOW_SCALE).movedim(-1, 2)]
    return torch.cat(planes, dim=2).contiguous()
