"""`hybridsim bench sections=interactive`: action -> refined-frame latency and steps/s of the
interactive environment for 1 and 4 batched environments."""

from __future__ import annotations

import time

import numpy as np


def bench_interactive(scenario: str = "default", steps: int = 20, env_counts=(1, 4), overrides=()) -> dict:
    """Per env count: median / p90 / max wall time of `step()` (action in -> refined frames of every
    env out), split into steps that complete a refiner block and steps that preview one; steps/s
    and env-steps/s; the median physics / render / refine ms of a step."""
    from hybridsim.interactive.registration import make_vec_env

    runs = []
    for n in env_counts:
        envs = make_vec_env(scenario, *overrides, num_envs=n)
        try:
            runs.append(_run(envs, steps))
        finally:
            envs.close()
    res = runs[0]["resolution"]
    return {"scenario": scenario, "resolution": res, "steps": steps, "runs": runs}


def _run(envs, steps: int) -> dict:
    envs.reset(seed=0)
    envs.action_space.seed(0)
    for _ in range(2):  # warm-up: first blocks, kernels, allocations
        envs.step(envs.action_space.sample())
    lat, kinds, parts = [], [], []
    t_start = time.perf_counter()
    for _ in range(steps):
        a = envs.action_space.sample()
        t0 = time.perf_counter()
        _, _, terminated, truncated, info = envs.step(a)
        lat.append(time.perf_counter() - t0)
        kinds.append(bool(info["provisional"][0]))
        t = envs.session.last
        parts.append((t.physics_s, t.render_s, t.refine_s))
        if (terminated | truncated).all():
            envs.step(envs.action_space.sample())  # the autoreset step, not timed
    wall = time.perf_counter() - t_start
    lat_ms, kinds = np.array(lat) * 1e3, np.array(kinds)
    cams = envs.session.sim.cameras
    cam = next(iter(cams.values()))
    return {"num_envs": envs.num_envs, "cameras": len(cams), "resolution": [cam.width, cam.height],
            "latency_ms_median": float(np.median(lat_ms)), "latency_ms_p90": float(np.percentile(lat_ms, 90)),
            "latency_ms_max": float(lat_ms.max()),
            "preview_step_ms_median": float(np.median(lat_ms[kinds])) if kinds.any() else None,
            "block_step_ms_median": float(np.median(lat_ms[~kinds])) if (~kinds).any() else None,
            "steps_per_s": steps / sum(lat), "env_steps_per_s": envs.num_envs * steps / sum(lat),
            "wall_s": wall, "ms_median": {k: float(np.median([p[i] for p in parts]) * 1e3)
                                          for i, k in enumerate(("physics", "render", "refine"))}}


def interactive_markdown(d: dict) -> list[str]:
    lines = [f"\n## interactive ({d['scenario']}, {d['resolution'][0]}x{d['resolution'][1]}, a refined frame every "
             f"step, {d['steps']} steps of random actions)\n",
             "| envs | action -> refined frames, median / p90 / max ms | preview step / block step, median ms | "
             "steps/s | env-steps/s | physics / render / refine ms |", "|---|---|---|---|---|---|"]
    for r in d["runs"]:
        m = r["ms_median"]
        pv = "-" if r["preview_step_ms_median"] is None else f"{r['preview_step_ms_median']:.0f}"
        bl = "-" if r["block_step_ms_median"] is None else f"{r['block_step_ms_median']:.0f}"
        lines.append(f"| {r['num_envs']} | {r['latency_ms_median']:.0f} / {r['latency_ms_p90']:.0f} / "
                     f"{r['latency_ms_max']:.0f} | {pv} / {bl} | {r['steps_per_s']:.2f} | {r['env_steps_per_s']:.2f} | "
                     f"{m['physics']:.0f} / {m['render']:.0f} / {m['refine']:.0f} |")
    return lines
