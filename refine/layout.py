"""Which frames may attend to which, and at which rotary positions, in a dense forward.

A dense forward sees a sequence of T' frames (T' = T for a plain causal sequence, 2T for teacher
forcing's [clean | noisy]). Each frame has an absolute frame number, a block number and a flag
saying whether it is a noisy copy. The rules below are the ones the KV cache realises
incrementally, so that one dense forward is the reference for cached inference:

- a clean (or plain) key frame k is visible to query frame q if block(k) <= block(q)
  (strictly < when q is noisy) and k lies in q's cache window: k < S (sink) or
  k >= max(S, end(q) - W), where end(q) is one past the last frame of q's block;
- a noisy key frame is visible only to noisy queries of its own block;
- positions are relative to q's window: sinks sit at 0..S-1 and window frames right after them,
  i.e. frame f sits at f - off(q), off(q) = max(S, end(q) - W) - S. Rotary attention depends only
  on position differences, so non-sink keys can use absolute positions against absolute query
  positions; only sink keys need the query shifted by -off(q).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FrameLayout:
    """Per-frame description of a dense sequence of T' frames."""

    frame: Tensor  # [T'] long, frame number (rotary position before window offsets)
    block: Tensor  # [T'] long, block number
    noisy: Tensor  # [T'] bool, True for the noisy copy in teacher forcing

    @staticmethod
    def causal(num_frames: int, frames_per_block: int) -> "FrameLayout":
        f = torch.arange(num_frames)  # [T]
        return FrameLayout(f, f // frames_per_block, torch.zeros(num_frames, dtype=torch.bool))

    @staticmethod
    def teacher_forcing(num_frames: int, frames_per_block: int) -> "FrameLayout":
        """[clean 0..T-1 | noisy 0..T-1]: noisy block i sees clean blocks < i and itself."""
        f = torch.arange(num_frames).repeat(2)  # [2T]
        noisy = torch.arange(2 * num_frames) >= num_frames  # [2T]
        return FrameLayout(f, f // frames_per_block, noisy)

    @property
    def num_frames(self) -> int:
        return int(self.frame.numel())


@dataclass(frozen=True)
class AttentionPlan:
    """Frame-level visibility and the rotary shift needed against sink keys."""

    visible: Tensor  # [T', T'] bool, True = query frame (row) may attend to key frame (column)
    sink_shift: Tensor | None  # [T'] long, off(q) per query frame; None when all are 0
    sink_key: Tensor  # [T'] bool, key frames that are sinks (frame < S)


def plan_attention(layout: FrameLayout, sink_frames: int, window_frames: int | None) -> AttentionPlan:
    """Build the visibility and rotary shifts of a dense forward (window None = no eviction)."""
    frame, block, noisy = layout.frame, layout.block, layout.noisy  # [T'] each
    n_blocks = int(block.max()) + 1 if block.numel() else 0
    block_end = torch.zeros(n_blocks, dtype=torch.long).scatter_reduce(
        0, block, frame + 1, reduce="amax")  # [n_blocks] one past the last frame of each block
    end = block_end[block]  # [T'] per query frame
    if window_frames is None:
        w_start = torch.full_like(end, sink_frames)  # [T']
    else:
        w_start = torch.clamp(end - window_frames, min=sink_frames)  # [T']
    sink_key = frame < sink_frames  # [T']
    in_window = sink_key[None, :] | (frame[None, :] >= w_start[:, None])  # [Tq, Tk]
    bq, bk = block[:, None], block[None, :]  # [Tq, 1], [1, Tk]
    nq, nk = noisy[:, None], noisy[None, :]
    clean_key = ~nk & in_window & torch.where(nq, bk < bq, bk <= bq)  # [Tq, Tk]
    noisy_key = nk & nq & (bk == bq)
    shift = w_start - sink_frames  # [T']
    return AttentionPlan(
        visible=clean_key | noisy_key,
        sink_shift=shift if bool((shift != 0).any()) else None,
        sink_key=sink_key,
    )
