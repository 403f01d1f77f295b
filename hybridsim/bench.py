"""`hybridsim bench`: speed measured side by side in one run, written as report.json + report.md.

Sections (select with `sections=render,physics,refine`):
- render: CPU splat render per frame and its parts (project / bin / composite / finish) for the
  default scenario at 128² and 256², beside Genesis' raster camera on the same frames; ratio.
- physics: physics step time for 1 and 4 batched environments.
- refine: the refiner's own benchmarks (cache speed-up, flat cost, FLOP/s fraction, frames/s).
Targets are reported as measured ratios, never asserted.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hybridsim.spec import SpecError


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


@dataclass
class BenchReport:
    machine: dict
    render: list[RenderBench] = field(default_factory=list)
    physics: list[PhysicsBench] = field(default_factory=list)
    refine: dict | None = None


def _options(overrides: list[str]) -> dict:
    opts = {"out": "bench", "sections": "render,physics,refine", "frames": 20, "scenario": "default"}
    for o in overrides:
        key, _, value = o.partition("=")
        if key not in opts or not _:
            raise SpecError(f"bench {o}", f"unknown option; options are {sorted(opts)} (key=value)")
        opts[key] = int(value) if key == "frames" else value
    if opts["frames"] < 2:
        raise SpecError("bench frames", f"must be >= 2, got {opts['frames']}")
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


def bench_refine() -> dict:
    from refine.bench import run_benchmarks

    res = run_benchmarks()
    return asdict(res) if hasattr(res, "__dataclass_fields__") else dict(res)


def main(overrides: list[str]) -> int:
    opts = _options(overrides)
    sections = set(opts["sections"].split(","))
    report = BenchReport(machine=_machine())
    if "physics" in sections:
        report.physics = [bench_physics(opts["scenario"], b) for b in (1, 4)]
    if "render" in sections:
        report.render = [bench_render(opts["scenario"], r, opts["frames"]) for r in (128, 256)]
    if "refine" in sections:
        report.refine = bench_refine()
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
            parts = ", ".join(f"{k} {v:.1f}" for k, v in b.parts_ms.items() if k != "total")
            lines.append(f"| {b.resolution}² | {b.gaussians} | {b.splat_ms:.1f} | {parts} | {b.raster_ms:.1f} | "
                         f"{b.ratio:.2f} |")
    if r.physics:
        lines += ["\n## physics\n", "| envs | ms per step |", "|---|---|"]
        lines += [f"| {p.n_envs} | {p.step_ms:.2f} |" for p in r.physics]
    if r.refine:
        lines += ["\n## refine\n", "```", json.dumps(r.refine, indent=1, default=float), "```"]
    return "\n".join(lines) + "\n"


def _machine() -> dict:
    import os

    import torch

    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
