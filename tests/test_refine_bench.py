"""The benchmark helpers run on a tiny model and return typed, sane results."""

from __future__ import annotations

import torch

from refine import ModelConfig, SamplerConfig
from refine.bench import (CacheSpeedup, LongRollout, RefineBench, Throughput, estimate_flops, matmul_gflops,
                          run_benchmarks)
from refine.testing import tiny_config, tiny_model


def test_flop_estimate_counts_the_real_parameters():
    for overrides in ({}, {"cross_attn_tokens": 3}, {"num_layers": 3, "ffn_dim": 96}, {"head_channels": 4},
                      {"head_channels": 4, "unpatchify": "smooth"}):
        model = tiny_model(**overrides)
        est = estimate_flops(ModelConfig(**tiny_config(**overrides)), SamplerConfig(num_steps=3))
        assert est.params == sum(p.numel() for p in model.parameters())
        assert est.forwards_per_block == 4 and est.tokens_per_frame == 16


def test_flop_model_matches_reference_formula():
    """REFERENCE.md: forward FLOPs ~ 2 * params * tokens + 4 * layers * tokens * context * dim.

    (Its worked example, dim 256 / 8 layers / 256 tokens / window 4 -> "~2.6 GFLOP", is about
    half of what that formula gives, 5.4 GFLOP; see refine/NOTES.md.)
    """
    spec = ModelConfig(num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, num_layers=8,
                       frames_per_block=1, sink_frames=0, window_frames=4)
    est = estimate_flops(spec, SamplerConfig(num_steps=3))
    formula = 2 * est.params * 256 + 4 * 8 * 256 * 1024 * 256
    assert abs(est.flops_per_forward - formula) / formula < 0.05
    assert 5.2e9 < est.flops_per_forward < 5.6e9
    # 3 denoising forwards + the clean pass, which skips the output projection
    assert 3.95 * est.flops_per_forward < est.flops_per_frame < 4 * est.flops_per_forward


def test_run_benchmarks_tiny():
    torch.manual_seed(0)
    res = run_benchmarks(tiny_model(frames_per_block=1, window_frames=2), SamplerConfig(num_steps=2),
                         rollout_frames=24)
    assert isinstance(res, RefineBench)
    assert isinstance(res.throughput, Throughput) and res.throughput.frames_per_s > 0
    assert isinstance(res.cache, CacheSpeedup) and res.cache.speedup > 0
    assert isinstance(res.rollout, LongRollout)
    assert res.rollout.cache_bytes_early == res.rollout.cache_bytes_late
    assert res.rollout.late_over_early > 0
    assert matmul_gflops(64, 64, 64, seconds=0.05).gflops > 0


def test_bench_device_and_dtype_are_checked():
    import pytest

    from refine import RefineError
    from refine.bench import check_device

    with pytest.raises(RefineError, match="bfloat16.*CPU"):
        check_device("cpu", "bfloat16")
    with pytest.raises(RefineError, match="dtype='half'"):
        check_device("cpu", "half")
    if not torch.cuda.is_available():
        with pytest.raises(RefineError, match="device='cuda'.*cpu"):
            run_benchmarks(tiny_model(), device="cuda")
