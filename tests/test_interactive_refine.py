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


# ---- per-row episodes (vector-env autoreset: one env starts over while the others run on) --------
def _rollout(model, cond, tags=None, sampler=None, seed=7, previews=False):
    """Push cond [B, T, ...] block by block with per-frame tags [B, T] -> refined [B, T, 3, H, W]."""
    r = Refiner(model, sampler or SamplerConfig(num_steps=2, noise="zero"))
    r.reset(cond.shape[0], seed=seed)
    out = []
    for i in range(0, cond.shape[1], 2):
        t = None if tags is None else tags[:, i:i + 2].contiguous()
        if previews:
            r.preview(cond[:, i:i + 1].contiguous(), None if t is None else t[:, :1].contiguous())
        out.append(r.push(cond[:, i:i + 2].contiguous(), t))
    return torch.cat(out, 1), r


@pytest.mark.parametrize("at", [4, 5])  # at a block boundary, and mid-block
def test_reset_row_forgets_its_old_episode_and_leaves_the_others(at):
    model, cond = tiny_model(seed=4), _conds(frames=16)
    tags = torch.zeros(2, 16, dtype=torch.long)
    tags[1, at:] = 1  # env 1 starts a new episode at frame `at`
    base, _ = _rollout(model, cond, tags)
    # what env 1 saw before its reset does not matter afterwards, bit for bit (masked keys weigh 0,
    # its sink is refilled from the new episode) ...
    other = cond.clone()
    other[1, :at] = torch.rand_like(other[1, :at])
    swapped, r = _rollout(model, other, tags, previews=True)
    assert torch.equal(swapped[1, at:], base[1, at:])
    assert not torch.equal(swapped[1, :at], base[1, :at])
    assert int(r.cache.tags[1, 0]) == 1  # the sink holds the new episode's first frame
    # ... and env 0 is refined as if env 1 had never reset (the same up to float summation order)
    plain, _ = _rollout(model, cond)
    assert torch.allclose(base[0], plain[0], atol=1e-6)
    assert not torch.allclose(base[1, at:], plain[1, at:], atol=1e-3)


def test_reset_row_at_block_start_matches_a_fresh_rollout_once_the_window_refills():
    """A row reset at a block boundary sees what a fresh rollout of the new episode sees, except for
    cache positions until its window holds only new frames: close at first, then equal to float error."""
    model, cond = tiny_model(seed=5), _conds(frames=20)
    tags = torch.zeros(2, 20, dtype=torch.long)
    tags[1, 6:] = 1
    reset, _ = _rollout(model, cond, tags)
    fresh, _ = _rollout(model, cond[1:, 6:].contiguous(), seed=7)
    err = (reset[1, 6:] - fresh[0]).abs().amax(dim=(1, 2, 3))
    assert err[:2].max() < 1e-5  # the first block sees only itself: RoPE is relative
    assert err.max() < 0.05 and err[-2:].max() < 1e-3, err  # converges as old positions leave


def test_reset_rows_refusals():
    model = tiny_model()
    r = Refiner(model, SamplerConfig(num_steps=2))
    with pytest.raises(RefineError, match="before reset"):
        r.reset_rows([0], [1])
    r.reset(2)
    with pytest.raises(RefineError, match="one seed per row"):
        r.reset_rows([0, 2], [1, 2])
    with pytest.raises(RefineError, match="episode tags"):
        r.push(torch.zeros(2, 2, 7, 16, 16), torch.zeros(2, 3, dtype=torch.long))
