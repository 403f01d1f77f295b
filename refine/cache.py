"""Preallocated per-layer KV cache: sink frames kept forever plus a rolling window.

Layout of each layer's buffer (logical order == physical order, so attention reads one
contiguous prefix and needs no mask):

    [ sink frames (S) | window frames (W, oldest first) ]      S_max = (S + W) * L tokens

Keys are stored before rotary embedding (LongLive's cache-relative RoPE): the model rotates them
at read time by their slot position, so positions never exceed S + W - 1 however long the
rollout runs. When a new block does not fit, the window region is shifted left in place
(a copy, no reallocation), evicting the oldest non-sink frames. Memory is fixed at construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from refine.errors import RefineError

WriteMode = Literal["append", "overwrite"]


@dataclass
class KVCache:
    """K/V buffers of every layer, batched over B environments.

    Counters (in tokens, as Self-Forcing keeps them):
      global_end: tokens ever appended (frames ever seen x L);
      local_end:  valid tokens in the buffer; the newest block occupies
                  [local_end - block_tokens, local_end).
    """

    batch_size: int
    num_layers: int
    heads: int
    head_dim: int
    tokens_per_frame: int
    sink_frames: int
    window_frames: int
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    keys: list[Tensor] = field(init=False, repr=False)  # per layer [B, S_max, heads, head_dim]
    values: list[Tensor] = field(init=False, repr=False)  # per layer [B, S_max, heads, head_dim]
    global_end: int = field(init=False, default=0)
    local_end: int = field(init=False, default=0)
    block_tokens: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_layers", "heads", "head_dim", "tokens_per_frame", "window_frames"):
            if getattr(self, name) <= 0:
                raise RefineError(f"KVCache {name}={getattr(self, name)} must be > 0")
        if self.sink_frames < 0:
            raise RefineError(f"KVCache sink_frames={self.sink_frames} must be >= 0")
        shape = (self.batch_size, self.max_tokens, self.heads, self.head_dim)
        self.keys = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.num_layers)]
        self.values = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.num_layers)]

    @property
    def sink_tokens(self) -> int:
        return self.sink_frames * self.tokens_per_frame

    @property
    def max_tokens(self) -> int:
        return (self.sink_frames + self.window_frames) * self.tokens_per_frame

    @property
    def valid_frames(self) -> int:
        return self.local_end // self.tokens_per_frame

    @property
    def frames_seen(self) -> int:
        return self.global_end // self.tokens_per_frame

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def reset(self) -> None:
        """Forget everything; the buffers are kept (no reallocation)."""
        self.global_end = self.local_end = self.block_tokens = 0

    def detach_(self) -> None:
        """Drop autograd history from the buffers (same storage, nothing copied)."""
        self.keys = [k.detach() for k in self.keys]
        self.values = [v.detach() for v in self.values]

    def begin(self, num_frames: int, mode: WriteMode) -> None:
        """Prepare the slots of a forward over `num_frames` new frames.

        'append' (a block's first denoising step) makes room, evicting the oldest non-sink frames
        if needed, and advances the counters. 'overwrite' (later steps, clean pass) reuses the
        newest block's slots; the counters do not move.
        """
        n = num_frames * self.tokens_per_frame
        if mode == "overwrite":
            if self.block_tokens != n:
                raise RefineError(f"overwrite of {num_frames} frames but the newest cached block has "
                                  f"{self.block_tokens // self.tokens_per_frame}; call with "
                                  "write='append' on a block's first step")
            return
        if mode != "append":
            raise RefineError(f"write mode {mode!r} is not 'append' or 'overwrite'")
        if num_frames > self.window_frames:
            raise RefineError(f"block of {num_frames} frames exceeds window_frames={self.window_frames}")
        overflow = self.local_end + n - self.max_tokens
        if overflow > 0:
            self._evict(overflow)
        self.local_end += n
        self.global_end += n
        self.block_tokens = n

    def _evict(self, n: int) -> None:
        """Shift the window region left by n tokens in place (sinks stay)."""
        lo, hi = self.sink_tokens, self.local_end
        assert hi - n >= lo, "eviction would touch the sink"
        for buf in (*self.keys, *self.values):
            # clone: source and destination overlap
            buf[:, lo:hi - n].copy_(buf[:, lo + n:hi].clone())
        self.local_end -= n

    def write(self, layer: int, key: Tensor, value: Tensor) -> None:
        """Write the newest block's pre-RoPE K/V of one layer.

        key, value: [B, n, heads, head_dim], n == block_tokens
        """
        n = key.shape[1]
        assert n == self.block_tokens, (n, self.block_tokens)
        self.keys[layer][:, self.local_end - n:self.local_end].copy_(key)
        self.values[layer][:, self.local_end - n:self.local_end].copy_(value)

    def read(self, layer: int) -> tuple[Tensor, Tensor]:
        """Views of the valid slots: ([B, local_end, heads, head_dim], same)."""
        return self.keys[layer][:, :self.local_end], self.values[layer][:, :self.local_end]

    # ---- provisional blocks and snapshots (interactive use: a refined frame every step, branching) ----
    def reserve(self, num_frames: int) -> None:
        """Evict now what appending a block of `num_frames` would evict. A shorter provisional block
        appended after this (then dropped with `rollback`) sees exactly the context the full block
        will, and the full block's own append then evicts nothing: the valid slots end up as they
        would without the provisional block."""
        overflow = self.local_end + num_frames * self.tokens_per_frame - self.max_tokens
        if overflow > 0:
            self._evict(overflow)

    def mark(self) -> CacheMark:
        """The counters now; `rollback(mark)` forgets every block appended since."""
        return CacheMark(self.global_end, self.local_end, self.block_tokens)

    def rollback(self, mark: CacheMark) -> None:
        """Drop the blocks appended since `mark` (their slots become free again). Only valid when
        nothing was evicted since: call `reserve` for the largest block first."""
        if self.local_end < mark.local_end or self.global_end - mark.global_end != self.local_end - mark.local_end:
            raise RefineError("cannot roll the KV cache back: frames were evicted since the mark; call "
                              "cache.reserve(frames_per_block) before appending a provisional block")
        self.global_end, self.local_end, self.block_tokens = mark.global_end, mark.local_end, mark.block_tokens

    def snapshot(self) -> CacheSnapshot:
        """A copy of the valid slots and counters (slots past local_end are never read, so not kept)."""
        n = self.local_end
        return CacheSnapshot(self.mark(), self.batch_size, [k[:, :n].clone() for k in self.keys],
                             [v[:, :n].clone() for v in self.values])

    def restore(self, snap: CacheSnapshot) -> None:
        """Back to a snapshot of this cache (or of one with the same shape): bit-identical reads after."""
        if snap.batch_size != self.batch_size or len(snap.keys) != self.num_layers or \
                (snap.keys and tuple(snap.keys[0].shape[2:]) != (self.heads, self.head_dim)):
            raise RefineError(f"cache snapshot of B={snap.batch_size}, {len(snap.keys)} layers does not fit this "
                              f"cache (B={self.batch_size}, {self.num_layers} layers); restore into the refiner "
                              "it was taken from")
        n = snap.mark.local_end
        for buf, saved in zip((*self.keys, *self.values), (*snap.keys, *snap.values)):
            buf[:, :n].copy_(saved)
        self.global_end, self.local_end, self.block_tokens = snap.mark.global_end, n, snap.mark.block_tokens


@dataclass(frozen=True)
class CacheMark:
    """KVCache counters at one moment (tokens)."""

    global_end: int
    local_end: int
    block_tokens: int


@dataclass
class CacheSnapshot:
    """A KVCache's valid slots and counters."""

    mark: CacheMark
    batch_size: int
    keys: list[Tensor]  # per layer [B, local_end, heads, head_dim]
    values: list[Tensor]  # per layer [B, local_end, heads, head_dim]
