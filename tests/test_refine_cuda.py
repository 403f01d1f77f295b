"""The refiner on CUDA: same maths as the CPU path, the cache proof on the device, training steps.

Skipped where torch.cuda.is_available() is False (conftest turns the `gpu` mark into a skip).
"""

from __future__ import annotations

import pytest
import torch

from refine import SamplerConfig
from refine.refiner import Refiner
from refine.testing import synthetic_clips, tiny_model

pytestmark = pytest.mark.gpu
H = W = 16


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full float32 matmuls, so CPU and CUDA agree to float32 rounding, not TF32's 10 bits."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _inputs(b: int, t: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, t, 3, H, W, generator=g), torch.rand(b, t, 7, H, W, generator=g),
            torch.rand(b, t, generator=g) * 1000)


@pytest.mark.parametrize("unpatchify", ["linear", "smooth"])
def test_dense_forward_on_cuda_matches_cpu(unpatchify):
    model = tiny_model(seed=3, frames_per_block=3, sink_frames=1, window_frames=3, head_channels=4,
                       prediction="sample", unpatchify=unpatchify)
    torch.nn.init.normal_(model.pixel_head[2].weight, std=0.1)
    x, cond, ts = _inputs(2, 12, seed=1)
    with torch.no_grad():
        ref = model(x, cond, ts)
        out = model.to("cuda")(x.cuda(), cond.cuda(), ts.cuda()).cpu()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("f,sink,window,t", [(1, 1, 3, 9), (3, 1, 4, 15)])
def test_cached_equals_dense_forward_on_cuda(f, sink, window, t):
    model = tiny_model(seed=1, frames_per_block=f, sink_frames=sink, window_frames=window).to("cuda")
    x, cond, ts = (v.cuda() for v in _inputs(2, t, seed=f))
    with torch.no_grad():
        ref = model(x, cond, ts)
        cache = model.new_cache(2, H, W)
        outs = []
        for i in range(0, t, f):
            s = slice(i, i + f)
            model.forward_cached(torch.randn_like(x[:, s]), cond[:, s], ts[:, s] * 0.5, cache, "append")
            outs.append(model.forward_cached(x[:, s], cond[:, s], ts[:, s], cache, "overwrite"))
    assert cache.local_end == cache.max_tokens, "the window must have rolled"
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("noise", ["fresh", "static", "zero"])
def test_refiner_on_cuda_is_deterministic_and_returns_to_the_callers_device(noise):
    model = tiny_model(seed=0, frames_per_block=2)
    cond = torch.rand(2, 6, 7, H, W, generator=torch.Generator().manual_seed(4))
    cfg = SamplerConfig(sigmas=(0.5, 0.2), noise=noise)
    a = Refiner(model, cfg, device="cuda").refine_video(cond, seed=7)
    b = Refiner(model, cfg, device="cuda").refine_video(cond, seed=7)
    assert a.device.type == "cpu" and a.shape == (2, 6, 3, H, W)
    assert torch.equal(a, b) and torch.isfinite(a).all() and 0 <= float(a.min()) and float(a.max()) <= 1
    # cached and recomputed rollouts agree on the device until the first eviction
    r = Refiner(model, cfg, device="cuda", recompute=True).refine_video(cond, seed=7)
    torch.testing.assert_close(a[:, :4], r[:, :4], atol=1e-4, rtol=0)


@pytest.mark.parametrize("loss, unpatchify, head", [("mse", "linear", 0), ("charbonnier", "smooth", 4)])
def test_training_steps_on_cuda(tmp_path, loss, unpatchify, head):
    from refine import TrainConfig
    from refine.model import CausalWanRefiner
    from refine.train import train

    model = tiny_model(seed=0, prediction="sample", unpatchify=unpatchify, head_channels=head)
    cfg = TrainConfig(phase1_steps=3, phase2_steps=2, phase3_steps=2, batch_size=2, clip_frames=4, device="cuda",
                      checkpoint_every=7, progress=False, temporal_weight=1.0, ssim_weight=0.1, loss=loss,
                      sampler=SamplerConfig(num_steps=2, noise="static"))
    result = train(model, synthetic_clips(4, 6), cfg, tmp_path)
    assert result.end_step == 7 and result.final_loss == result.final_loss
    loaded = CausalWanRefiner.from_pretrained(result.model_dir)
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(p.cpu(), q, msg=name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_benchmarks_on_cuda(dtype):
    from refine.bench import run_benchmarks

    res = run_benchmarks(tiny_model(frames_per_block=1, window_frames=2), SamplerConfig(num_steps=2),
                         batch_size=2, rollout_frames=24, device="cuda", dtype=dtype)
    assert res.throughput.dtype == dtype and res.throughput.device != "cpu"
    assert res.throughput.frames_per_s > 0 and res.throughput.matmul_gflops > 0
    assert res.rollout.cache_bytes_early == res.rollout.cache_bytes_late
