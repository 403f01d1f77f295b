"""`hybridsim bench`: speed measured side by side in one run, written as report.json + report.md.

Sections (select with `sections=render,physics,refine,pipeline`):
- render: CPU splat render per frame and its parts (project / bin / composite / finish) for the
  default scenario at 128² and 256², beside Genesis' raster camera on the same frames; ratio.
- physics: physics step time for 1 and 4 batched environments.
- refine: the refiner's own benchmarks on the default model (cache speed-up vs recomputing the
  window, per-frame cost and memory at frame ~500 vs ~20, FLOP/s as a fraction of a float32 matmul
  on the same machine, refined frames/s).
- throughput: `hybridsim batch` episodes per minute for 1, 2 and 4 batched environments and for
  local Ray with 1 and 2 workers, side by side (refiner off; it is measured on its own).
- pipeline: the default scenario end to end (physics -> splats -> refiner), per-stage ms per frame,
  refined frames/s and the latency from a frame's physics step to its refined frame.
- pathtrace: the path-traced reference (Cycles, `pathtrace_samples` spp + OpenImageDenoise, one
  thread) beside the lit splat render and the refiner, ms per frame at the scenario's resolution in
  one run, and their ratios (the refiner's target: >= 20x faster than the path tracer).
- interactive (only when named): the Gymnasium environment's action -> refined-frame latency and
  steps/s for 1 and 4 batched environments (hybridsim.interactive.bench).
- latent (only when named; needs `clips=<train-refiner out>/clips`): pixel space vs the latent
  space of a small trained autoencoder, quality and ms per frame (hybridsim.training.latent_bench).
`threads=N` sets torch's thread count first (on a shared CPU, 1 gives steady numbers).
The refine section takes `device=cpu|cuda`, `dtype=float32|bfloat16` (autocast, CUDA only) and
`batch=B` (environments refined together).
Targets are reported as measured ratios, never asserted.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hybridsim.scenario.spec import SpecError


@dataclass
class RenderBench:
    resolution: int
    frames: int
    gaussians: int
    splat_ms: float  # median per frame, one camera
    parts_ms: dict[str, float]  # median per part
    raster_ms: float  # Genesis raster camera, median per frame, same frames
    ratio: float  # splat_ms / raster_ms (goal: <= 1)


@dataclass
class PhysicsBench:
    n_envs: int
    step_ms: float  # median per physics step (all envs)


SECTIONS = ("render", "physics", "refine", "pipeline", "throughput", "pathtrace", "latent", "interactive")
DEFAULT_SECTIONS = SECTIONS[:-2]  # latent needs a folder of paired clips; interactive only when named
COUNTS = ("visible", "pairs")  # rasterize's timings also count visible Gaussians and tile pairs


@dataclass
class BenchReport:
    machine: dict
    render: list[RenderBench] = field(default_factory=list)
    physics: list[PhysicsBench] = field(default_factory=list)
    refine: dict | None = None
    pipeline: dict | None = None
    throughput: dict | None = None
    pathtrace: dict | None = None
    latent: dict | None = None
    interactive: dict | None = None


DEFAULTS = {"out": "bench", "sections": ",".join(DEFAULT_SECTIONS), "frames": 20, "scenario": "default",
            "threads": 0, "rollout_frames": 500, "episodes": 8, "device": "cpu", "dtype": "float32", "batch": 1,
            "clips": "", "ae_steps": 800, "space_steps": 0, "pathtrace_samples": 16}


def _options(overrides: list[str]) -> dict:
    from hybridsim.options import parse_options

    opts = parse_options(overrides, DEFAULTS, "bench")
    sections = set(opts["sections"].split(","))
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SpecError("bench sections", f"unknown {sorted(unknown)}; choose from {list(SECTIONS)}")
    if opts["frames"] < 2:
        raise SpecError("bench frames", f"must be >= 2, got {opts['frames']}")
    if opts["batch"] < 1 or opts["ae_steps"] < 1:
        raise SpecError("bench batch/ae_steps", f"must be >= 1, got {opts['batch']} / {opts['ae_steps']}")
    if "pathtrace" in sections and not 1 <= opts["pathtrace_samples"] <= 65536:
        raise SpecError("bench pathtrace_samples", f"must be in 1..65536, got {opts['pathtrace_samples']}")
    if "latent" in sections:
        from hybridsim.training.latent_bench import scene_files

        scene_files(opts["clips"])  # no clips: fail now, not after the other sections
    if "refine" in sections:
        from refine import RefineError
        from refine.bench import check_device

        try:
            check_device(opts["device"], opts["dtype"])
        except RefineError as err:
            raise SpecError("bench device/dtype", str(err)) from None
    return opts


def bench_render(scenario: str, resolution: int, frames: int) -> RenderBench:
    from hybridsim.config import compose
    from hybridsim.pipeline import Simulation

    cfg = compose([f"scenario={scenario}", "refine.enabled=false", "render.enabled=true", "reference=true",
                   *(f"scenario.cameras.{c}.res=[{resolution},{resolution}]" for c in _camera_names(scenario))])
    sim = Simulation(cfg)
    cam = next(iter(sim.cameras.values()))
    splat, raster, parts = [], [], {}
    for frame in _take(sim, frames):
        t0 = time.perf_counter()
        sim.world.render_reference(cam.name)
        raster.append((time.perf_counter() - t0) * 1e3)
        timings: dict = {}
        t0 = time.perf_counter()
        _render_once(sim, frame, cam, timings)
        splat.append((time.perf_counter() - t0) * 1e3)
        for k, v in timings.items():
            parts.setdefault(k, []).append(v)
    s, r = float(np.median(splat)), float(np.median(raster))
    return RenderBench(resolution, frames, sim.splats.num_gaussians, s,
                       {k: float(np.median(v)) for k, v in parts.items()}, r, s / r)


def _take(sim, n):
    for i, f in enumerate(sim.frames()):
        if i >= n:
            return
        yield f


def _render_once(sim, frame, cam, timings: dict) -> None:
    import torch
    from render import rasterize

    g = sim.splats.posed(frame.state.body_pos, frame.state.body_quat)
    rasterize(g, torch.as_tensor(cam.viewmat, dtype=torch.float32)[:, None],
              torch.as_tensor(cam.K, dtype=torch.float32)[:, None], cam.width, cam.height,
              prev_means=g.means, timings=timings)


def _camera_names(scenario: str) -> list[str]:
    from hybridsim.config import compose

    return [c.name for c in compose([f"scenario={scenario}"]).scenario.cameras]


def bench_physics(scenario: str, n_envs: int, steps: int = 200) -> PhysicsBench:
    from hybridsim.config import compose
    from hybridsim.pipeline import Simulation

    sim = Simulation(compose([f"scenario={scenario}", f"n_envs={n_envs}", "render.enabled=false",
                              "reference=false", "refine.enabled=false"]))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        sim.world.step()
        times.append((time.perf_counter() - t0) * 1e3)
    return PhysicsBench(n_envs, float(np.median(times)))


def _default_model():
    """-> (model, weights folder or None, label): the shipped model if there is one (speed depends on
    the size, not the weights), else a randomly initialised default-size model."""
    import torch
    from refine import RefineError

    from hybridsim.config import RefineSettings
    from hybridsim.refining import load_model

    try:
        model, folder = load_model(RefineSettings(), "cpu")
        return model, folder, "shipped default weights"
    except RefineError:
        from refine.model import CausalWanRefiner

        torch.manual_seed(0)
        return CausalWanRefiner().eval(), None, "random weights, default size (no shipped weights)"


def bench_refine(rollout_frames: int = 500, device: str = "cpu", dtype: str = "float32", batch: int = 1) -> dict:
    from refine.bench import run_benchmarks

    from hybridsim.config import RefineSettings
    from hybridsim.refining import sampler_config

    model, folder, which = _default_model()
    res = run_benchmarks(model, sampler=sampler_config(RefineSettings(), folder), rollout_frames=rollout_frames,
                         batch_size=batch, device=device, dtype=dtype)
    return {"model": which, **asdict(res)}


def bench_pipeline(scenario: str, frames: int) -> dict:
    """End to end: physics -> splat G-buffer -> refiner, one env, no reference render; serial and
    with the refiner on its worker thread (refine.overlap), side by side on the same simulation."""
    from hybridsim.config import compose
    from hybridsim.pipeline import Simulation
    from hybridsim.refining import StreamRefiner, refined_frames

    cfg = compose([f"scenario={scenario}", "reference=false", "render.enabled=true", "refine.enabled=true"])
    sim = Simulation(cfg)
    model, folder, which = _default_model()
    refiner = StreamRefiner(cfg.refine, sim, model=model, weights_dir=folder)
    for _ in refined_frames(_take(sim, 4), refiner):  # warm-up (first render / first block)
        pass
    runs = [_pipeline_run(sim, refiner, frames, overlap) for overlap in (False, True)]
    cam = next(iter(sim.cameras.values()))
    return {"scenario": scenario, "model": which, "frames_per_block": refiner.frames_per_block,
            "resolution": [cam.width, cam.height], "runs": runs,
            "overlap_speedup": runs[1]["frames_per_s"] / runs[0]["frames_per_s"]}


def bench_pathtrace(scenario: str, frames: int, samples: int = 16) -> dict:
    """Cycles vs the lit splat render vs the refiner on the same frames (ms per frame per camera)."""
    from render.pathtrace import preload

    preload()  # bpy before Genesis
    from hybridsim.config import compose
    from hybridsim.pipeline import Simulation
    from hybridsim.refining import StreamRefiner, refined_frames

    cfg = compose([f"scenario={scenario}", "reference=pathtraced", "render.lit=true", "refine.enabled=true",
                   f"pathtrace.samples={samples}", "pathtrace.threads=1"])
    sim = Simulation(cfg)
    try:
        model, folder, which = _default_model()
        refiner = StreamRefiner(cfg.refine, sim, model=model, weights_dir=folder)
        for _ in refined_frames(_take(sim, 2), refiner):  # warm-up: Cycles' first frame builds its BVH
            pass
        sim.reset()
        refiner.reset()
        before, rbefore = dict(sim.timings), dict(refiner.timings)
        n = sum(1 for _ in refined_frames(_take(sim, frames), refiner, overlap=False))
    finally:
        sim.close()
    per = n * len(sim.cameras)

    def ms(key, t, b):
        return 1e3 * (t.get(key, 0.0) - b.get(key, 0.0)) / per

    lit = ms("lit_render_s", sim.timings, before)
    splat = ms("splat_render_s", sim.timings, before) - lit
    cycles, refine = ms("pathtrace_s", sim.timings, before), ms("refine_s", refiner.timings, rbefore)
    cam = next(iter(sim.cameras.values()))
    return {"scenario": scenario, "model": which, "frames": n, "resolution": [cam.width, cam.height],
            "samples": samples, "denoise": True,
            "ms_per_frame": {"pathtrace": cycles, "splat": splat, "lit": lit, "refine": refine},
            "pathtrace_over_refine": cycles / max(refine, 1e-9),
            "pathtrace_over_fast_path": cycles / max(splat + lit + refine, 1e-9),
            "lit_over_splat": lit / max(splat, 1e-9)}


def _pipeline_run(sim, refiner, frames: int, overlap: bool) -> dict:
    """One timed rollout from the first frame; per-stage ms are busy time on each stage's thread."""
    from hybridsim.refining import refined_frames

    sim.reset()
    refiner.reset()
    before = dict(sim.timings), dict(refiner.timings)
    started: dict[int, float] = {}

    def timed(it):
        t = time.perf_counter()
        for f in it:
            started[f.index] = t  # the frame's physics step began when the previous frame was handed on
            yield f
            t = time.perf_counter()

    latency, n = [], 0
    t0 = time.perf_counter()
    for f in refined_frames(timed(_take(sim, frames)), refiner, overlap=overlap):
        latency.append((time.perf_counter() - started[f.index]) * 1e3)
        n += 1
    wall = time.perf_counter() - t0
    per = {k: 1e3 * (sim.timings[k] - before[0].get(k, 0.0)) / n for k in ("physics_s", "splat_render_s")}
    per["refine_s"] = 1e3 * (refiner.timings["refine_s"] - before[1].get("refine_s", 0.0)) / n
    return {"mode": "overlap" if overlap else "serial", "frames": n, "frames_per_s": n / wall,
            "ms_per_frame": {k.replace("_s", ""): v for k, v in per.items()},
            "latency_ms_median": float(np.median(latency)), "latency_ms_max": float(np.max(latency))}


def main(overrides: list[str]) -> int:
    opts = _options(overrides)
    if opts["threads"] > 0:
        import torch

        torch.set_num_threads(opts["threads"])
    sections = set(opts["sections"].split(","))
    if "pathtrace" in sections:  # bpy must load before any section imports Genesis
        from render.pathtrace import preload

        preload()
    report = BenchReport(machine=_machine())
    if "physics" in sections:
        report.physics = [bench_physics(opts["scenario"], b) for b in (1, 4)]
    if "render" in sections:
        report.render = [bench_render(opts["scenario"], r, opts["frames"]) for r in (128, 256)]
    if "refine" in sections:
        report.refine = bench_refine(opts["rollout_frames"], opts["device"], opts["dtype"], opts["batch"])
    if "pipeline" in sections:
        report.pipeline = bench_pipeline(opts["scenario"], opts["frames"])
    if "throughput" in sections:
        from hybridsim.output.batch import bench_throughput

        # simulation + splat render + labels + dataset writing; the refiner is benched on its own above
        report.throughput = bench_throughput(opts["scenario"], episodes=opts["episodes"], frames=opts["frames"],
                                             overrides=("refine.enabled=false",),
                                             torch_threads=opts["threads"] or 1)
    if "pathtrace" in sections:
        report.pathtrace = bench_pathtrace(opts["scenario"], opts["frames"], opts["pathtrace_samples"])
    if "latent" in sections:
        from hybridsim.training.latent_bench import bench_latent, compare_spaces, fit_autoencoder

        fitted = fit_autoencoder(opts["clips"], opts["ae_steps"])  # one autoencoder for both measurements
        report.latent = asdict(bench_latent(opts["clips"], fitted=fitted))
        if opts["space_steps"] > 0:
            report.latent["spaces"] = [asdict(r) for r in compare_spaces(opts["clips"], opts["space_steps"],
                                                                           fitted=fitted)]
    if "interactive" in sections:
        from hybridsim.interactive.bench import bench_interactive

        report.interactive = bench_interactive(opts["scenario"], opts["frames"])
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2, default=float))
    text = to_markdown(report)
    (out / "report.md").write_text(text)
    print(text)
    return 0


def to_markdown(r: BenchReport) -> str:
    lines = [f"# hybridsim bench\n\nmachine: {r.machine['processor'] or r.machine['platform']}, "
             f"{r.machine['cpus']} CPUs, torch threads {r.machine['torch_threads']}, CUDA: {r.machine['cuda']}\n"]
    if r.render:
        lines += ["## render (default scenario, one camera, median per frame)\n",
                  "| res | Gaussians | splat ms | parts ms | Genesis raster ms | splat / raster |",
                  "|---|---|---|---|---|---|"]
        for b in r.render:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in b.parts_ms.items() if k not in ("total", *COUNTS))
            counts = ", ".join(f"{k} {v:.0f}" for k, v in b.parts_ms.items() if k in COUNTS)
            parts = f"{parts} ({counts})" if counts else parts
            lines.append(f"| {b.resolution}² | {b.gaussians} | {b.splat_ms:.1f} | {parts} | {b.raster_ms:.1f} | "
                         f"{b.ratio:.2f} |")
    if r.physics:
        lines += ["\n## physics\n", "| envs | ms per step |", "|---|---|"]
        lines += [f"| {p.n_envs} | {p.step_ms:.2f} |" for p in r.physics]
    if r.refine:
        lines += _refine_markdown(r.refine)
    if r.pathtrace:
        p = r.pathtrace
        m = p["ms_per_frame"]
        lines += [f"\n## pathtrace ({p['scenario']}, {p['resolution'][0]}x{p['resolution'][1]}, Cycles {p['samples']} "
                  f"spp + OIDN on one thread, model {p['model']}, {p['frames']} frames)\n",
                  "| Cycles ms | splat ms | lit ms (extra) | refiner ms | Cycles / refiner | Cycles / (splat+lit+refiner) "
                  "| lit / splat |", "|---|---|---|---|---|---|---|",
                  f"| {m['pathtrace']:.0f} | {m['splat']:.1f} | {m['lit']:.1f} | {m['refine']:.1f} | "
                  f"{p['pathtrace_over_refine']:.1f} | {p['pathtrace_over_fast_path']:.1f} | {p['lit_over_splat']:.2f} |"]
    if r.pipeline:
        p = r.pipeline
        lines += [f"\n## pipeline ({p['scenario']}, {p['resolution'][0]}x{p['resolution'][1]}, {p['model']})\n",
                  "| refiner | frames | refined frames/s | busy ms per frame by stage | latency physics step -> "
                  "refined frame, median / max ms |", "|---|---|---|---|---|"]
        for run in p["runs"]:
            stages = ", ".join(f"{k} {v:.1f}" for k, v in run["ms_per_frame"].items())
            where = "worker thread (refine.overlap)" if run["mode"] == "overlap" else "same thread (serial)"
            lines.append(f"| {where} | {run['frames']} | {run['frames_per_s']:.2f} | {stages} | "
                         f"{run['latency_ms_median']:.0f} / {run['latency_ms_max']:.0f} |")
        lines.append(f"\noverlap / serial: **{p['overlap_speedup']:.2f}x** refined frames/s")
    if r.throughput:
        from hybridsim.output.batch import throughput_markdown

        lines += ["", throughput_markdown(r.throughput)]
    if r.latent:
        from hybridsim.training.latent_bench import LatentBench, SpaceRun, latent_markdown, spaces_markdown

        spaces = r.latent.get("spaces")
        lines += latent_markdown(LatentBench(**{k: v for k, v in r.latent.items() if k != "spaces"}))
        if spaces:
            lines += spaces_markdown([SpaceRun(**x) for x in spaces])
    if r.interactive:
        from hybridsim.interactive.bench import interactive_markdown

        lines += interactive_markdown(r.interactive)
    return "\n".join(lines) + "\n"


def _refine_markdown(d: dict) -> list[str]:
    t, c, f = d["throughput"], d["cache"], d["flops"]
    lines = [f"\n## refine ({d['model']}, batch {t['batch_size']}, {t['device']}, {t['dtype']}, "
             f"{t['threads']} thread(s))\n",
             "| measure | value |", "|---|---|",
             f"| refined frames/s | {t['frames_per_s']:.2f} |",
             f"| block latency median (F frames) | {t['block_latency_ms']:.0f} ms |",
             f"| (a) cached vs recompute-window block | {c['cached_block_ms']:.0f} vs {c['recompute_block_ms']:.0f} ms: "
             f"**{c['speedup']:.2f}x** ({c['context_frames']} context frames) |",
             f"| (c) achieved / {t['dtype']} matmul | {t['achieved_gflops']:.1f} / {t['matmul_gflops']:.1f} GFLOP/s = "
             f"**{t['fraction_of_matmul']:.2f}** ({f['flops_per_frame'] / 1e9:.2f} GFLOP per frame) |"]
    r = d.get("rollout")
    if r:
        lines.append(f"| (b) ms/frame at frame ~{r['early_frame']} vs ~{r['frames']} | {r['early_ms_per_frame']:.1f} vs "
                     f"{r['late_ms_per_frame']:.1f}: ratio **{r['late_over_early']:.2f}**; cache bytes "
                     f"{r['cache_bytes_early']} vs {r['cache_bytes_late']}; "
                     f"{'RSS' if t['device'] == 'cpu' else 'CUDA allocated'} {r['rss_early_mb']:.0f} vs "
                     f"{r['rss_late_mb']:.0f} MB |")
    return lines


def _machine() -> dict:
    import os

    import torch

    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
