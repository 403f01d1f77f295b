"""Preallocated per-layer KV cache: sink frames kept forever plus a rolling window.

Layout of each layer's buffer (logical order == physical order, so attention reads one
contiguous prefix and needs no mask):

    [ sink frames (S) | window frames (W, oldest first) ]      S_max = (S + W) * L tokens

Keys are stored before rotary embedding (LongLive's cache-relative RoPE): the model rotates them
at read time by their slot position, so positions never exceed S + W - 1 however long the
rollout runs. When a new block does not fit, the window region is shifted left in place
(a copy, no reallocation), evicting the oldest non-sink frames. Memory is fixed at construction.

Per-row episodes (interactive autoreset: one env of the batch starts a new episode while the others
run on): every cached frame carries an episode tag per row, given by `begin(..., episodes=)`. A
query attends only to the keys of its own row's episode (`attention_mask`; None, and no mask cost,
while every row's context is one episode), and a row whose episode changed gets its sink slots
refilled with the new episode's first frames (then masked out of the window, so no frame is seen
twice), as a fresh rollout keeps its first frames as sinks.
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
    tags: Tensor = field(init=False, repr=False)  # [B, S + W] episode tag of each frame slot (-1: dead)
    current: Tensor = field(init=False, repr=False)  # [B] each row's newest episode tag

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_layers", "heads", "head_dim", "tokens_per_frame", "window_frames"):
            if getattr(self, name) <= 0:
                raise RefineError(f"KVCache {name}={getattr(self, name)} must be > 0")
        if self.sink_frames < 0:
            raise RefineError(f"KVCache sink_frames={self.sink_frames} must be >= 0")
        shape = (self.batch_size, self.max_tokens, self.heads, self.head_dim)
        self.keys = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.num_layers)]
        self.values = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.num_layers)]
        self.tags = torch.zeros(self.batch_size, self.sink_frames + self.window_frames, dtype=torch.long)
        self.current = torch.zeros(self.batch_size, dtype=torch.long)

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
        self.tags.zero_()
        self.current.zero_()

    def detach_(self) -> None:
        """Drop autograd history from the buffers (same storage, nothing copied)."""
        self.keys = [k.detach() for k in self.keys]
        self.values = [v.detach() for v in self.values]

    def begin(self, num_frames: int, mode: WriteMode, episodes: Tensor | None = None) -> None:
        """Prepare the slots of a forward over `num_frames` new frames.

        'append' (a block's first denoising step) makes room, evicting the oldest non-sink frames
        if needed, and advances the counters. 'overwrite' (later steps, clean pass) reuses the
        newest block's slots; the counters do not move. `episodes` [B, num_frames] (append only)
        tags the new frames per row; None keeps each row's newest tag.
        """
        n = num_frames * self.tokens_per_frame
        if episodes is not None and mode == "append" and tuple(episodes.shape) != (self.batch_size, num_frames):
            raise RefineError(f"episodes {tuple(episodes.shape)} must be [B, F] = ({self.batch_size}, {num_frames})")
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
        self._refresh_sinks()
        overflow = self.local_end + n - self.max_tokens
        if overflow > 0:
            self._evict(overflow)
        first = self.local_end // self.tokens_per_frame
        if episodes is None:  # each row's newest episode carries on
            episodes = self.current[:, None].expand(-1, num_frames)
        episodes = episodes.to(torch.long).cpu()
        self.tags[:, first:first + num_frames] = episodes
        self.current = episodes[:, -1].clone()
        self.local_end += n
        self.global_end += n
        self.block_tokens = n

    # ---- per-row episodes ------------------------------------------------------------------------
    def attention_mask(self) -> Tensor | None:
        """[B, 1, block tokens, valid tokens] bool (True = attend) for the newest block's queries, or
        None when every row's valid slots are all of its block's episode (the common case)."""
        L, f = self.tokens_per_frame, self.block_tokens // self.tokens_per_frame
        s = self.local_end // L
        keys, queries = self.tags[:, :s], self.tags[:, s - f:s]  # [B, S], [B, F]
        same = queries[:, :, None] == keys[:, None, :]  # [B, F, S]
        if bool(same.all()):
            return None
        mask = same.repeat_interleave(L, 1).repeat_interleave(L, 2)[:, None]  # [B, 1, F L, S L]
        return mask.to(self.keys[0].device)

    def _refresh_sinks(self) -> None:
        """Rows whose newest episode is not the one in their sink slots: copy that episode's first
        cached frames into the sinks and mark their window copies dead (-1)."""
        S, L = self.sink_frames, self.tokens_per_frame
        n = self.local_end // L
        if S == 0 or n <= S:
            return
        newest = self.current
        for b in torch.nonzero(self.tags[:, 0] != newest).flatten().tolist():
            mine = [j for j in range(S, n) if int(self.tags[b, j]) == int(newest[b])][:S]
            for i, j in enumerate(mine):
                for buf in (*self.keys, *self.values):
                    buf[b, i * L:(i + 1) * L] = buf[b, j * L:(j + 1) * L]
                self.tags[b, i], self.tags[b, j] = newest[b], -1
            self.tags[b, len(mine):S] = -1  # sinks the new episode has no frame for yet
    def _evict(self, n: int) -> None:
        """Shift the window region left by n tokens in place (sinks stay)."""
        lo, hi = self.sink_tokens, self.local_end
        assert hi - n >= lo, "eviction would touch the sink"
        for buf in (*self.keys, *self.values):
            # clone: source and destination overlap
            buf[:, lo:hi - n].copy_(buf[:, lo + n:hi].clone())
        L = self.tokens_per_frame
        self.tags[:, lo // L:(hi - n) // L] = self.tags[:, (lo + n) // L:hi // L].clone()
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
        self._refresh_sinks()
        overflow = self.local_end + num_frames * self.tokens_per_frame - self.max_tokens
        if overflow > 0:
            self._evict(overflow)

    def mark(self) -> CacheMark:
        """The counters now; `rollback(mark)` forgets every block appended since."""
        return CacheMark(self.global_end, self.local_end, self.block_tokens, tuple(self.current.tolist()))

    def rollback(self, mark: CacheMark) -> None:
        """Drop the blocks appended since `mark` (their slots become free again). Only valid when
        nothing was evicted since: call `reserve` for the largest block first."""
        if self.local_end < mark.local_end or self.global_end - mark.global_end != self.local_end - mark.local_end:
            raise RefineError("cannot roll the KV cache back: frames were evicted since the mark; call "
                              "cache.reserve(frames_per_block) before appending a provisional block")
        self.global_end, self.local_end, self.block_tokens = mark.global_end, mark.local_end, mark.block_tokens
        if mark.current:
            self.current = torch.tensor(mark.current, dtype=torch.long)

    def snapshot(self) -> CacheSnapshot:
        """A copy of the valid slots and counters (slots past local_end are never read, so not kept)."""
        n = self.local_end
        return CacheSnapshot(self.mark(), self.batch_size, [k[:, :n].clone() for k in self.keys],
                             [v[:, :n].clone() for v in self.values], self.tags.clone(), self.current.clone())

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
        if snap.tags is not None:
            self.tags.copy_(snap.tags)
            self.current.copy_(snap.current)
        else:
            self.tags.zero_()
            self.current.zero_()
        self.global_end, self.local_end, self.block_tokens = snap.mark.global_end, n, snap.mark.block_tokens


@dataclass(frozen=True)
class CacheMark:
    """KVCache counters at one moment (tokens)."""

    global_end: int
    local_end: int
    block_tokens: int
    current: tuple = ()  # each row's newest episode tag


@dataclass
class CacheSnapshot:
    """A KVCache's valid slots and counters."""

    mark: CacheMark
    batch_size: int
    keys: list[Tensor]  # per layer [B, local_end, heads, head_dim]
    values: list[Tensor]  # per layer [B, local_end, heads, head_dim]
    tags: Tensor | None = None  # [B, S + W] episode tags of the slots
    current: Tensor | None = None  # [B] each row's newest tag
