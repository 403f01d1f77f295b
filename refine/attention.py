"""Rotary positions and the three ways the model attends: grouped (fast, dense forwards),
masked (plain reference with the same signature) and cached (through the KV cache).

Shapes: B envs, N tokens, h heads, d head dim, T' frames of a dense sequence, L tokens per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as Fn
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import Tensor, nn

from refine.cache import KVCache
from refine.errors import RefineError
from refine.layout import AttentionPlan, FrameLayout


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (Wan's convention). x [B, N, h, d]; cos, sin [N, d/2]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # [B, N, h, d/2] each
    c, s = cos[:, None, :], sin[:, None, :]  # [N, 1, d/2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)  # [B, N, h, d]


class RotaryTables(nn.Module):
    """Per-axis rotary tables; head_dim is split (frame, y, x) exactly like WanRotaryPosEmbed."""

    def __init__(self, head_dim: int, max_len: int, theta: float):
        super().__init__()
        hw = 2 * (head_dim // 6)
        self.split = (head_dim - 2 * hw, hw, hw)
        for axis, dim in zip("thw", self.split):
            cos, sin = get_1d_rotary_pos_embed(dim, max_len, theta, use_real=True,
                                               repeat_interleave_real=True, freqs_dtype=torch.float64)
            self.register_buffer(f"cos_{axis}", cos[:, 0::2].contiguous(), persistent=False)  # [max_len, dim/2]
            self.register_buffer(f"sin_{axis}", sin[:, 0::2].contiguous(), persistent=False)

    def forward(self, frame_pos: Tensor, hp: int, wp: int) -> tuple[Tensor, Tensor]:
        """frame_pos [T'] long -> (cos, sin) [T' * hp * wp, d/2], frame-major token order."""
        if int(frame_pos.max()) >= self.cos_t.shape[0] or int(frame_pos.min()) < 0:
            raise RefineError(f"frame positions {int(frame_pos.min())}..{int(frame_pos.max())} fall "
                              f"outside rope_max_seq_len={self.cos_t.shape[0]}; shorten the dense "
                              "sequence or raise rope_max_seq_len")
        t, n = frame_pos.to(self.cos_t.device), frame_pos.numel()
        y = torch.arange(hp, device=t.device)
        x = torch.arange(wp, device=t.device)
        out = []
        for name in ("cos", "sin"):
            tab_t, tab_h, tab_w = (getattr(self, f"{name}_{a}") for a in "thw")
            parts = (tab_t[t][:, None, None].expand(n, hp, wp, -1),  # [T', hp, wp, dt/2]
                     tab_h[y][None, :, None].expand(n, hp, wp, -1),
                     tab_w[x][None, None, :].expand(n, hp, wp, -1))
            out.append(torch.cat(parts, dim=-1).reshape(n * hp * wp, -1))  # [N, d/2]
        return out[0], out[1]


@dataclass
class MaskedAttention:
    """Reference: all N x N logits, a frame-derived mask, sink keys against shifted queries."""

    cos: Tensor  # [N, d/2] absolute positions
    sin: Tensor
    mask: Tensor | None  # [N, N] bool, None = all visible
    cos_shift: Tensor | None = None  # [N, d/2] query positions shifted by -off(q) (vs sink keys)
    sin_shift: Tensor | None = None
    sink_key: Tensor | None = None  # [N] bool

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, layer: int) -> Tensor:
        """q, k, v [B, N, h, d] (pre-RoPE) -> [B, N, h, d]"""
        qa, ka = apply_rope(q, self.cos, self.sin), apply_rope(k, self.cos, self.sin)
        scale = q.shape[-1] ** -0.5
        logits = torch.einsum("bqhd,bkhd->bhqk", qa, ka) * scale  # [B, h, N, N]
        if self.sink_key is not None:
            qs = apply_rope(q, self.cos_shift, self.sin_shift)
            logits_s = torch.einsum("bqhd,bkhd->bhqk", qs, ka) * scale
            logits = torch.where(self.sink_key, logits_s, logits)
        if self.mask is not None:
            logits = logits.masked_fill(~self.mask, float("-inf"))
        return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v)


@dataclass
class AttnGroup:
    """Query frames that see the same key frames at the same window offset."""

    q_runs: list[tuple[int, int]]  # token ranges [start, stop) of the queries, ascending
    k_runs: list[tuple[int, int]]  # token ranges of the visible keys, ascending
    cos_q: Tensor  # [nq, d/2] window-relative positions
    sin_q: Tensor
    cos_k: Tensor  # [nk, d/2]
    sin_k: Tensor


def _take(x: Tensor, runs: list[tuple[int, int]]) -> Tensor:
    """Gather token ranges of x [B, N, ...] -> [B, n, ...] (a view for a single range)."""
    if len(runs) == 1:
        return x[:, runs[0][0]:runs[0][1]]
    return torch.cat([x[:, a:b] for a, b in runs], dim=1)


@dataclass
class GroupedAttention:
    """Fast path: one unmasked SDPA per group of queries over exactly the keys they see."""

    groups: list[AttnGroup]

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, layer: int) -> Tensor:
        """q, k, v [B, N, h, d] (pre-RoPE) -> [B, N, h, d]"""
        out = q.new_empty(q.shape)
        for g in self.groups:
            qg = apply_rope(_take(q, g.q_runs), g.cos_q, g.sin_q).transpose(1, 2)  # [B, h, nq, d]
            kg = apply_rope(_take(k, g.k_runs), g.cos_k, g.sin_k).transpose(1, 2)  # [B, h, nk, d]
            og = Fn.scaled_dot_product_attention(qg, kg, _take(v, g.k_runs).transpose(1, 2)).transpose(1, 2)
            pos = 0
            for a, b in g.q_runs:
                out[:, a:b] = og[:, pos:pos + b - a]
                pos += b - a
        return out


def _runs(frames: list[int], tokens: int) -> list[tuple[int, int]]:
    """Ascending frame indices -> contiguous token ranges."""
    runs: list[list[int]] = []
    for f in frames:
        if runs and runs[-1][1] == f:
            runs[-1][1] = f + 1
        else:
            runs.append([f, f + 1])
    return [(a * tokens, b * tokens) for a, b in runs]


def grouped_attention(layout: FrameLayout, plan: AttentionPlan, rope: RotaryTables, hp: int, wp: int) -> GroupedAttention:
    """Group query frames by (visible key frames, window offset); positions as the cache sees them."""
    shift = plan.sink_shift if plan.sink_shift is not None else torch.zeros_like(layout.frame)
    members: dict[tuple, list[int]] = {}
    for qf in range(layout.num_frames):
        keys = tuple(plan.visible[qf].nonzero().flatten().tolist())
        members.setdefault((keys, int(shift[qf])), []).append(qf)
    groups = []
    for (keys, off), queries in members.items():
        kf = torch.tensor(keys, dtype=torch.long)
        pos_k = torch.where(plan.sink_key[kf], layout.frame[kf], layout.frame[kf] - off)
        cos_q, sin_q = rope(layout.frame[queries] - off, hp, wp)
        cos_k, sin_k = rope(pos_k, hp, wp)
        groups.append(AttnGroup(_runs(queries, hp * wp), _runs(list(keys), hp * wp), cos_q, sin_q, cos_k, sin_k))
    return GroupedAttention(groups)


def masked_attention(layout: FrameLayout, plan: AttentionPlan, rope: RotaryTables, hp: int, wp: int,
                     device: torch.device) -> MaskedAttention:
    tokens = hp * wp
    cos, sin = rope(layout.frame, hp, wp)  # [N, d/2]
    visible = plan.visible.to(device)
    mask = None if bool(visible.all()) else \
        visible.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)  # [N, N]
    attend = MaskedAttention(cos, sin, mask)
    if plan.sink_shift is not None:
        attend.cos_shift, attend.sin_shift = rope(layout.frame - plan.sink_shift, hp, wp)
        attend.sink_key = plan.sink_key.to(device).repeat_interleave(tokens)  # [N]
    return attend


@dataclass
class CachedAttention:
    """Self-attention of a block's tokens over the KV cache (which includes the block itself)."""

    cache: KVCache
    cos_k: Tensor  # [S, d/2] slot positions 0..S-1 of the valid cache
    sin_k: Tensor
    cos_q: Tensor  # [n, d/2] the newest block's slots
    sin_q: Tensor
    mask: Tensor | None = None  # [B, 1, n, S] bool: per-row episodes (KVCache.attention_mask), None = all

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        """k, v [B, n, h, d] (pre-RoPE): store without attending (a clean pass's last layer)."""
        self.cache.write(layer, k, v)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, layer: int) -> Tensor:
        """q, k, v [B, n, h, d] (pre-RoPE) -> [B, n, h, d]"""
        self.cache.write(layer, k, v)
        keys, values = self.cache.read(layer)  # [B, S, h, d] each
        qr = apply_rope(q, self.cos_q, self.sin_q)
        kr = apply_rope(keys, self.cos_k, self.sin_k)
        out = Fn.scaled_dot_product_attention(qr.transpose(1, 2), kr.transpose(1, 2), values.transpose(1, 2),
                                              attn_mask=self.mask)
        return out.transpose(1, 2)  # [B, n, h, d]
