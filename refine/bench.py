"""Benchmarks that `hybridsim bench` calls; every result is a typed dataclass.

(a) cached vs recompute-window speed-up, (b) per-frame cost and memory early vs late in a long
rollout, (c) achieved FLOP/s against a float32 matmul measured in the same run, (d) frames/s and
per-block latency. FLOPs come from the analytic model below (multiply-adds x 2).

Every benchmark takes `device` ("cpu" or "cuda") and `dtype` ("float32", or "bfloat16" for
autocast on CUDA); CUDA timings synchronise before reading the clock, and memory is then the
device's allocated bytes instead of the process RSS.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass

import torch

from refine.config import GUIDE_CHANNELS, ModelConfig, SamplerConfig
from refine.errors import RefineError


@dataclass(frozen=True)
class FlopEstimate:
    params: int  # parameters of the transformer
    tokens_per_frame: int
    context_tokens: int  # keys each query sees once the cache is full
    forwards_per_block: int
    flops_per_forward: float  # one forward over one block at full context
    flops_per_frame: float  # all forwards of a block / F


@dataclass(frozen=True)
class MatmulResult:
    shape: tuple[int, int, int]  # (m, k, n)
    gflops: float


@dataclass(frozen=True)
class Throughput:
    batch_size: int
    threads: int  # torch.get_num_threads() during the run
    device: str  # "cpu" or the CUDA device's name
    dtype: str  # "float32", or "bfloat16" (autocast)
    frames_per_s: float  # refined frames per second over all envs
    block_latency_ms: float  # median
    block_latency_p95_ms: float
    flops_per_frame: float
    achieved_gflops: float
    matmul_gflops: float  # matmul of the model's own FFN shape, same device and dtype, same run
    fraction_of_matmul: float


@dataclass(frozen=True)
class CacheSpeedup:
    cached_block_ms: float  # fastest steady-state block (min over blocks)
    recompute_block_ms: float
    speedup: float
    context_frames: int


@dataclass(frozen=True)
class LongRollout:
    frames: int
    early_frame: int
    early_ms_per_frame: float  # fastest block around early_frame, per frame
    late_ms_per_frame: float  # fastest of the last blocks, per frame
    late_over_early: float
    cache_bytes_early: int
    cache_bytes_late: int
    rss_early_mb: float  # process RSS on CPU; CUDA memory allocated on a GPU
    rss_late_mb: float


@dataclass(frozen=True)
class RefineBench:
    flops: FlopEstimate
    throughput: Throughput
    cache: CacheSpeedup
    rollout: LongRollout | None


def estimate_flops(spec: ModelConfig, sampler: SamplerConfig | None = None, height: int | None = None,
                   width: int | None = None) -> FlopEstimate:
    """FLOPs of a cached block at full context: forwards = steps + 1, each over F frames (the
    last one, the clean pass, skips the output layers)."""
    sampler = sampler or SamplerConfig()
    h, w = height or spec.sample_height, width or spec.sample_width
    p, d = spec.patch_size, spec.dim
    tokens = (h // p) * (w // p)
    n = spec.frames_per_block * tokens  # query tokens per forward
    ctx = spec.cache_frames * tokens
    per_layer = 2 * n * (4 * d * d + 2 * d * spec.ffn_dim) + 4 * n * ctx * d
    if spec.cross_attn_tokens:
        per_layer += 2 * n * 2 * d * d + 4 * n * spec.cross_attn_tokens * d
    trunk = spec.num_layers * per_layer + 2 * n * d * spec.in_channels * p * p
    output = 2 * n * d * (spec.head_channels or spec.out_channels) * _outputs_per_token(spec)
    if spec.head_channels:  # two 3x3 convs per pixel (+ 4 multiply-adds per value for a bilinear upsample)
        c_in, hid = spec.head_channels + spec.in_channels, spec.head_hidden
        output += 2 * spec.frames_per_block * h * w * 9 * (c_in * hid + hid * spec.out_channels)
        if spec.upsamples_tokens:  # guided: + the guide distances and weights of 4 taps per pixel
            output += 2 * spec.frames_per_block * h * w * 4 * spec.head_channels
            if spec.unpatchify == "guided":
                output += 2 * spec.frames_per_block * h * w * 4 * (3 * GUIDE_CHANNELS + 4)
    fwd = trunk + output
    steps = sampler.num_steps if sampler.sigmas is None else len(sampler.sigmas)
    params = _param_count(spec)
    per_block = steps * fwd + trunk
    return FlopEstimate(params, tokens, ctx, steps + 1, float(fwd), float(per_block / spec.frames_per_block))


def _outputs_per_token(spec: ModelConfig) -> int:
    """Values per channel that proj_out emits per token: a p x p block (linear) or one (smooth)."""
    return 1 if spec.upsamples_tokens else spec.patch_size * spec.patch_size


def _param_count(spec: ModelConfig) -> int:
    d, p = spec.dim, spec.patch_size
    layer = 4 * (d * d + d) + 2 * d + spec.ffn_dim * d * 2 + spec.ffn_dim + d + 6 * d
    if spec.cross_attn_tokens:
        layer += 4 * (d * d + d) + 2 * d + 2 * d
    emit = spec.head_channels or spec.out_channels
    k = _outputs_per_token(spec)
    head = spec.in_channels * p * p * d + d + d * emit * k + emit * k + 2 * d
    if spec.head_channels:
        c_in, hid = spec.head_channels + spec.in_channels, spec.head_hidden
        head += 9 * c_in * hid + hid + 9 * hid * spec.out_channels + spec.out_channels
    time = spec.freq_dim * d + d + d * d + d + d * 6 * d + 6 * d
    return spec.num_layers * layer + head + time + (spec.cross_attn_tokens * d)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_device(device: str, dtype: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RefineError(f"device={device!r} but torch.cuda.is_available() is False; use device='cpu'")
    if dtype not in DTYPES:
        raise RefineError(f"dtype={dtype!r} must be one of {list(DTYPES)}")
    if dtype != "float32" and dev.type != "cuda":
        raise RefineError(f"dtype={dtype!r} is for CUDA (bfloat16 matmuls are ~500x slower on this CPU); "
                          "use dtype='float32' on the CPU")
    return dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _autocast(dev: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=DTYPES[dtype])


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def matmul_gflops(m: int, k: int, n: int, seconds: float = 0.5, device: str = "cpu",
                  dtype: str = "float32") -> MatmulResult:
    """Matmul throughput on this machine, now (same threads, device and dtype as the model)."""
    dev = check_device(device, dtype)
    a = torch.randn(m, k, device=dev, dtype=DTYPES[dtype])
    b = torch.randn(k, n, device=dev, dtype=DTYPES[dtype])
    for _ in range(3):
        a @ b
    _sync(dev)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10 if dev.type == "cuda" else 1):  # keep the GPU queue busy between clock reads
            a @ b
            reps += 1
        _sync(dev)
    dt = (time.perf_counter() - start) / reps
    return MatmulResult((m, k, n), 2.0 * m * k * n / dt / 1e9)


def memory_mb(dev: torch.device) -> float:
    """CUDA memory allocated on a GPU, else the process RSS."""
    if dev.type == "cuda":
        return torch.cuda.memory_allocated(dev) / 2**20
    return rss_mb()


def rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cond(model, batch: int, frames: int, seed: int, dev: torch.device | None = None) -> torch.Tensor:
    """Random condition frames [B, T, C, H, W], made on the CPU and placed on dev (as the pipeline's are)."""
    spec = model.spec
    g = torch.Generator().manual_seed(seed)
    cond = torch.rand(batch, frames, spec.cond_channels, spec.sample_height, spec.sample_width, generator=g)
    return cond if dev is None else cond.to(dev)


def _time_blocks(refiner, cond: torch.Tensor, dtype: str = "float32") -> list[float]:
    """Push every block of cond [B, T, C, H, W]; seconds per block (synchronised on CUDA)."""
    f = refiner.frames_per_block
    dev = refiner.device
    times = []
    for i in range(0, cond.shape[1], f):
        _sync(dev)
        t0 = time.perf_counter()
        with _autocast(dev, dtype):
            refiner.push(cond[:, i:i + f])
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return times


def bench_throughput(model, sampler: SamplerConfig | None = None, batch_size: int = 1, blocks: int = 12,
                     seed: int = 0, device: str = "cpu", dtype: str = "float32") -> Throughput:
    """Steady-state frames/s (cache full) and block latency, with achieved FLOP/s."""
    from refine.refiner import Refiner

    dev = check_device(device, dtype)
    spec = model.spec
    refiner = Refiner(model, sampler, device=dev)
    warm = -(-spec.cache_frames // spec.frames_per_block) + 1  # fill the window first
    refiner.reset(batch_size, seed)
    f = spec.frames_per_block
    _time_blocks(refiner, _cond(model, batch_size, warm * f, seed, dev), dtype)
    times = _time_blocks(refiner, _cond(model, batch_size, blocks * f, seed + 1, dev), dtype)
    est = estimate_flops(spec, sampler)
    mm = matmul_gflops(f * est.tokens_per_frame * batch_size, spec.dim, spec.ffn_dim, device=device, dtype=dtype)
    total = sum(times)
    fps = blocks * f * batch_size / total
    achieved = est.flops_per_frame * fps / 1e9
    times_ms = sorted(t * 1e3 for t in times)
    p95 = times_ms[min(len(times_ms) - 1, int(round(0.95 * (len(times_ms) - 1))))]
    return Throughput(batch_size, torch.get_num_threads(), device_name(dev), dtype, fps, statistics.median(times_ms),
                      p95, est.flops_per_frame, achieved, mm.gflops, achieved / mm.gflops)


def bench_cache_speedup(model, sampler: SamplerConfig | None = None, batch_size: int = 1, blocks: int = 6,
                        seed: int = 0, device: str = "cpu", dtype: str = "float32") -> CacheSpeedup:
    """Cached blocks vs recomputing the full sink + window context at every denoising step."""
    from refine.refiner import Refiner

    dev = check_device(device, dtype)
    spec = model.spec
    f = spec.frames_per_block
    warm = -(-spec.cache_frames // f) + 1
    cond = _cond(model, batch_size, (warm + blocks) * f, seed, dev)
    result = []
    for recompute in (False, True):
        refiner = Refiner(model, sampler, device=dev, recompute=recompute)
        refiner.reset(batch_size, seed)
        times = _time_blocks(refiner, cond, dtype)[warm:]
        result.append(min(times) * 1e3)  # min: robust to other processes on a shared CPU
    context = spec.sink_frames + spec.window_frames - f
    return CacheSpeedup(result[0], result[1], result[1] / result[0], context)


def bench_long_rollout(model, sampler: SamplerConfig | None = None, frames: int = 500, early_frame: int = 20,
                       batch_size: int = 1, seed: int = 0, span_blocks: int = 6, device: str = "cpu",
                       dtype: str = "float32") -> LongRollout:
    """Per-frame cost and memory around `early_frame` and around the end of a `frames` rollout."""
    from refine.refiner import Refiner

    dev = check_device(device, dtype)
    spec = model.spec
    f = spec.frames_per_block
    refiner = Refiner(model, sampler, device=dev)
    refiner.reset(batch_size, seed)
    n_blocks = -(-frames // f)
    early_block = max(0, early_frame // f - span_blocks // 2)
    early, late = [], []
    cache_early = rss_early = 0
    for i in range(n_blocks):
        (dt,) = _time_blocks(refiner, _cond(model, batch_size, f, seed + i, dev), dtype)
        if early_block <= i < early_block + span_blocks:
            early.append(dt)
            cache_early, rss_early = refiner.cache.nbytes, memory_mb(dev)
        elif i >= n_blocks - span_blocks:
            late.append(dt)
    e, l_ = min(early) * 1e3 / f, min(late) * 1e3 / f  # min: robust to other processes
    return LongRollout(n_blocks * f, early_frame, e, l_, l_ / e, cache_early, refiner.cache.nbytes,
                       rss_early, memory_mb(dev))


def run_benchmarks(model=None, sampler: SamplerConfig | None = None, batch_size: int = 1,
                   rollout_frames: int | None = 500, seed: int = 0, device: str = "cpu",
                   dtype: str = "float32") -> RefineBench:
    """All refine benchmarks; model defaults to a randomly initialised default-size model
    (speed does not depend on the weights)."""
    check_device(device, dtype)
    if model is None:
        from refine.model import CausalWanRefiner

        torch.manual_seed(seed)
        model = CausalWanRefiner()
    model.eval()
    kw = dict(batch_size=batch_size, seed=seed, device=device, dtype=dtype)
    rollout = bench_long_rollout(model, sampler, rollout_frames, **kw) if rollout_frames else None
    return RefineBench(estimate_flops(model.spec, sampler), bench_throughput(model, sampler, **kw),
                       bench_cache_speedup(model, sampler, **kw), rollout)
