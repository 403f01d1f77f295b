"""The KV cache proof: blockwise cached inference == one dense forward with the causal mask."""

from __future__ import annotations

import pytest
import torch

from refine import RefineError
from refine.cache import KVCache
from refine.layout import FrameLayout, plan_attention
from refine.testing import tiny_model

H = W = 16


def _inputs(b: int, t: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 3, H, W, generator=g)
    cond = torch.rand(b, t, 7, H, W, generator=g)
    ts = torch.rand(b, t, generator=g) * 1000
    return x, cond, ts, g


def _cached_blocks(model, x, cond, ts, g, passes: int = 3):
    """Per block: append with junk input, overwrite with junk, ..., last pass with (x, ts).

    Returns the last pass's outputs [B, T, 3, H, W] and the cache.
    """
    b, t = x.shape[:2]
    f = model.spec.frames_per_block
    cache = model.new_cache(b, H, W)
    outs = []
    with torch.no_grad():
        for i in range(0, t, f):
            s = slice(i, i + f)
            for k in range(passes - 1):
                junk_x = torch.randn(b, f, 3, H, W, generator=g)
                junk_t = torch.rand(b, f, generator=g) * 1000
                model.forward_cached(junk_x, cond[:, s], junk_t, cache, "append" if k == 0 else "overwrite")
            mode = "overwrite" if passes > 1 else "append"
            outs.append(model.forward_cached(x[:, s], cond[:, s], ts[:, s], cache, mode))
    return torch.cat(outs, 1), cache


CASES = [  # (F, sink, window, T): every case rolls past sink + window
    (1, 1, 3, 9),
    (3, 1, 4, 15),
    (3, 1, 3, 12),
    (3, 0, 6, 15),
    (2, 3, 4, 14),  # sink spans more than a block
]


@pytest.mark.parametrize("f,sink,window,t", CASES)
def test_cached_equals_dense_forward(f, sink, window, t):
    model = tiny_model(seed=1, frames_per_block=f, sink_frames=sink, window_frames=window)
    x, cond, ts, g = _inputs(2, t, seed=f + 10 * sink)
    with torch.no_grad():
        ref = model(x, cond, ts)  # one dense forward, block-causal + sink/window mask
    out, cache = _cached_blocks(model, x, cond, ts, g)
    assert cache.global_end == t * cache.tokens_per_frame
    assert cache.local_end == cache.max_tokens, "the window must have rolled"
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("unpatchify", ["linear", "smooth", "guided"])
def test_cached_equals_dense_forward_with_pixel_head(unpatchify):
    """The pixel head (and the smooth and guided un-patchify) is per frame, so it keeps the cache proof
    (F = 3, rolled window, sink kept)."""
    model = tiny_model(seed=2, frames_per_block=3, sink_frames=1, window_frames=3, head_channels=4,
                       prediction="sample", unpatchify=unpatchify)
    torch.nn.init.normal_(model.pixel_head[2].weight, std=0.1)  # zero-initialised: make it count
    x, cond, ts, g = _inputs(2, 12, seed=5)
    with torch.no_grad():
        ref = model(x, cond, ts)
    out, _ = _cached_blocks(model, x, cond, ts, g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("f", [1, 3])
def test_reference_is_sensitive_to_the_window(f):
    """Without the window rules the dense forward differs: the equality above is not vacuous."""
    model = tiny_model(seed=1, frames_per_block=f, sink_frames=1, window_frames=3)
    x, cond, ts, g = _inputs(1, 4 * f + 3, seed=5)
    out, _ = _cached_blocks(model, x, cond, ts, g, passes=1)
    with torch.no_grad():
        unwindowed = model(x, cond, ts, use_window=False)
    assert (out - unwindowed).abs().max() > 1e-3
    torch.testing.assert_close(out[:, :3], unwindowed[:, :3], atol=1e-5, rtol=1e-5)  # before the roll


@pytest.mark.parametrize("f,sink,window,t", [(1, 1, 3, 8), (3, 1, 4, 12)])
def test_cached_denoising_steps_equal_teacher_forcing_forward(f, sink, window, t):
    """Step k of every block (noisy block over clean cached context) == the noisy half of one
    dense teacher-forcing forward over [clean | noisy] with the same per-frame timesteps."""
    model = tiny_model(seed=2, frames_per_block=f, sink_frames=sink, window_frames=window)
    b, steps = 2, 3
    x_clean, cond, t_clean, g = _inputs(b, t, seed=7)
    t_clean = t_clean * 0.05  # context noise level
    x_noisy = torch.randn(steps, b, t, 3, H, W, generator=g)
    t_noisy = torch.rand(steps, b, t, generator=g) * 1000  # own timestep per frame
    cache = model.new_cache(b, H, W)
    outs = torch.zeros(steps, b, t, 3, H, W)
    with torch.no_grad():
        for i in range(0, t, f):
            s = slice(i, i + f)
            for k in range(steps):
                mode = "append" if k == 0 else "overwrite"
                outs[k, :, s] = model.forward_cached(x_noisy[k, :, s], cond[:, s], t_noisy[k, :, s], cache, mode)
            model.forward_cached(x_clean[:, s], cond[:, s], t_clean[:, s], cache, "overwrite")
        layout = FrameLayout.teacher_forcing(t, f)
        for k in range(steps):
            ref = model(torch.cat([x_clean, x_noisy[k]], 1), torch.cat([cond, cond], 1),
                        torch.cat([t_clean, t_noisy[k]], 1), layout=layout)
            torch.testing.assert_close(outs[k], ref[:, t:], atol=1e-5, rtol=1e-5)
            clean_ref = model(x_clean, cond, t_clean)
            torch.testing.assert_close(ref[:, :t], clean_ref, atol=1e-5, rtol=1e-5)


def test_teacher_forcing_mask():
    plan = plan_attention(FrameLayout.teacher_forcing(4, 2), sink_frames=0, window_frames=None)
    v = plan.visible.int()
    # rows/cols: clean f0 f1 f2 f3 | noisy f0 f1 f2 f3
    assert v[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]  # clean block 0 sees clean block 0
    assert v[2].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # clean block 1 sees clean blocks <= 1
    assert v[4].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]  # noisy block 0 sees only itself
    assert v[7].tolist() == [1, 1, 0, 0, 0, 0, 1, 1]  # noisy block 1: clean block 0 + itself
    assert plan.sink_shift is None


def test_window_plan_positions():
    plan = plan_attention(FrameLayout.causal(8, 2), sink_frames=1, window_frames=4)
    # block 3 = frames 6, 7: window frames 4..7 (start max(1, 8 - 4) = 4) plus sink 0
    assert plan.visible[7].int().tolist() == [1, 0, 0, 0, 1, 1, 1, 1]
    assert plan.sink_shift.tolist() == [0, 0, 0, 0, 1, 1, 3, 3]


def test_cache_memory_is_flat_and_buffers_are_reused():
    model = tiny_model(frames_per_block=1, sink_frames=1, window_frames=2)
    cache = model.new_cache(1, H, W)
    ptrs = [t.data_ptr() for t in (*cache.keys, *cache.values)]
    nbytes = cache.nbytes
    x, cond, ts, _ = _inputs(1, 1, seed=0)
    with torch.no_grad():
        for _ in range(40):
            model.forward_cached(x, cond, ts, cache, "append")
            model.forward_cached(x, cond, ts, cache, "overwrite")
    assert [t.data_ptr() for t in (*cache.keys, *cache.values)] == ptrs
    assert cache.nbytes == nbytes == 2 * 2 * (1 + 2) * 16 * 32 * 4  # layers x K/V x frames x L x D x 4 B
    assert cache.frames_seen == 40 and cache.valid_frames == 3
    cache.reset()
    assert (cache.global_end, cache.local_end) == (0, 0)


def test_cache_misuse_raises():
    cache = KVCache(batch_size=1, num_layers=1, heads=2, head_dim=4, tokens_per_frame=2, sink_frames=1,
                    window_frames=2)
    with pytest.raises(RefineError, match="append"):
        cache.begin(1, "overwrite")
    with pytest.raises(RefineError, match="window_frames"):
        cache.begin(3, "append")
    with pytest.raises(RefineError, match="write mode"):
        cache.begin(1, "insert")
    model = tiny_model()
    wrong = model.new_cache(2, H, W)
    x, cond, ts, _ = _inputs(1, 2, seed=0)
    with pytest.raises(RefineError, match="new_cache"):
        model.forward_cached(x, cond, ts, wrong, "append")


@pytest.mark.parametrize("layout_kind,f,sink,window,t", [
    ("causal", 1, 1, 3, 7), ("causal", 3, 1, 4, 12), ("causal", 2, 3, 4, 10),
    ("teacher", 2, 1, 4, 8), ("teacher", 3, 0, 3, 9),
])
def test_grouped_fast_path_equals_masked_reference(layout_kind, f, sink, window, t):
    """The grouped attention (one unmasked SDPA per group) == the plain N x N masked reference."""
    model = tiny_model(seed=4, frames_per_block=f, sink_frames=sink, window_frames=window)
    n = t if layout_kind == "causal" else 2 * t
    x, cond, ts, _ = _inputs(2, n, seed=9)
    layout = FrameLayout.causal(t, f) if layout_kind == "causal" else FrameLayout.teacher_forcing(t, f)
    with torch.no_grad():
        for use_window in (True, False):
            fast = model(x, cond, ts, layout=layout, use_window=use_window)
            ref = model(x, cond, ts, layout=layout, use_window=use_window, attention="masked")
            torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_grouped_fast_path_gradients_match_reference():
    model = tiny_model(seed=4, frames_per_block=2, sink_frames=1, window_frames=2)
    x, cond, ts, _ = _inputs(1, 12, seed=2)
    layout = FrameLayout.teacher_forcing(6, 2)
    grads = []
    for attention in ("grouped", "masked"):
        model.zero_grad()
        model(x, cond, ts, layout=layout, attention=attention).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
