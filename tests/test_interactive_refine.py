"""Refiner support for interactive use (issue 18): provisional partial blocks and snapshots.

A refined frame every step comes from `Refiner.preview` on the unfinished block; it must leave the
cache and noise streams as they were, so the full blocks are bit-identical to a run without
previews. Snapshots restore a rollout bit-identically. Tiny models only: fast, no Genesis.
"""

from __future__ import annotations

import pytest
import torch

from refine import Refiner, SamplerConfig
from refine.errors import RefineError
from refine.testing import synthetic_clips, tiny_model


def _conds(frames: int = 12, batch: int = 2):  # -> [B, T, 7, 16, 16]
    return torch.stack([c for c, _ in synthetic_clips(batch, frames, seed=3)])


@pytest.mark.parametrize("noise", ["fresh", "static", "zero"])
def test_preview_leaves_blocks_bit_identical(noise):
    model, cond = tiny_model(seed=1), _conds()
    sampler = SamplerConfig(num_steps=2, noise=noise)
    plain, live = Refiner(model, sampler), Refiner(model, sampler)
    plain.reset(2, seed=7)
    live.reset(2, seed=7)
    for i in range(0, cond.shape[1], 2):  # window 4 + sink 1: evictions happen from the 3rd block on
        block = cond[:, i:i + 2].contiguous()
        first = live.preview(block[:, :1])
        assert first.shape == (2, 1, 3, 16, 16) and torch.isfinite(first).all()
        assert torch.equal(live.preview(block[:, :1]), first)  # a preview changes nothing
        assert torch.equal(live.push(block), plain.push(block))
        assert live.cache.local_end == plain.cache.local_end and live.cache.global_end == plain.cache.global_end


def test_snapshot_restore_branches_bit_identically():
    model, cond = tiny_model(seed=2), _conds(frames=14)
    r = Refiner(model, SamplerConfig(num_steps=2, noise="fresh"))
    r.reset(2, seed=5)
    for i in range(0, 6, 2):
        r.push(cond[:, i:i + 2].contiguous())
    snap = r.snapshot()
    first = [r.push(cond[:, i:i + 2].contiguous()) for i in range(6, 14, 2)]
    r.restore(snap)
    again = [r.push(cond[:, i:i + 2].contiguous()) for i in range(6, 14, 2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    r.restore(snap)  # a snapshot can be restored more than once
    assert torch.equal(r.push(cond[:, 6:8].contiguous()), first[0])


def test_preview_and_restore_refusals():
    model = tiny_model()
    r = Refiner(model, SamplerConfig(num_steps=2))
    r.reset(1)
    with pytest.raises(RefineError, match="1 <= k <= F"):
        r.preview(torch.zeros(1, 3, 7, 16, 16))
    other = Refiner(model, SamplerConfig(num_steps=2))
    other.reset(2)
    with pytest.raises(RefineError, match="batch 2"):
        r.restore(other.snapshot())
    cache = r.cache
    mark = cache.mark()
    for _ in range(3):  # fill the window so the next append evicts
        cache.begin(2, "append")
    with pytest.raises(RefineError, match="evicted"):
        cache.rollback(mark)
