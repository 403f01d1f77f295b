"""Benchmark the CPU rasteriser on a default-like scene: `python -m render.bench [--size 256]`.

The scene: a 10 m textured ground plane, a table (top + 4 legs) and six small objects, about
27k Gaussians, seen by one camera from 1.5 m. Prints ms per camera-frame broken into parts.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from render._scratch import tune_cpu_allocator
from render.assets import primitive_splats
from render.camera import intrinsics, look_at
from render.rasterize import rasterize
from render.scene import SplatScene


def demo_scene(seed: int = 0) -> tuple[SplatScene, torch.Tensor, torch.Tensor]:
    """(scene, body_pos [1, K, 3], body_quat [1, K, 4]) for ground + table + six objects."""
    checker = np.kron((np.indices((8, 8)).sum(0) % 2)[..., None] * 80 + 90, np.ones((16, 16, 1))).astype(np.uint8)
    checker = np.repeat(checker, 3, axis=-1)
    assets = [primitive_splats("plane", size=10.0, texture=checker, uv_repeat=10.0, seed=seed)]
    body_index, inst, poses = [-1], [0], []
    parts = [("box", dict(size=(1.2, 0.8, 0.04)), (0, 0, 0.75), (0.55, 0.4, 0.25))]
    for dx in (-0.55, 0.55):
        for dy in (-0.35, 0.35):
            parts.append(("box", dict(size=(0.05, 0.05, 0.73)), (dx, dy, 0.365), (0.45, 0.3, 0.2)))
    objects = [("box", dict(size=(0.08, 0.08, 0.08))), ("sphere", dict(radius=0.04)),
               ("cylinder", dict(radius=0.03, height=0.1))] * 2
    for i, (kind, kw) in enumerate(objects):
        x, y = -0.4 + 0.16 * i, 0.15 * (-1) ** i
        parts.append((kind, kw, (x, y, 0.82), tuple(np.random.default_rng(i).uniform(0.2, 0.9, 3))))
    for k, (kind, kw, pos, color) in enumerate(parts):
        assets.append(primitive_splats(kind, base_color=color, seed=seed + k, **kw))
        body_index.append(k)
        inst.append(k + 1)
        poses.append(pos)
    body_pos = torch.tensor(poses, dtype=torch.float32)[None]
    body_quat = torch.tensor([1.0, 0, 0, 0]).expand(1, len(poses), 4).clone()
    return SplatScene(assets, body_index, inst), body_pos, body_quat


def _cameras(num: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[num, 4, 4] viewmats around the table at ~1.6 m, [num, 3, 3] Ks (60 deg vertical fov)."""
    views = [look_at((1.3 * np.cos(a) + 0.3 * np.sin(a), 1.3 * np.sin(a) + 0.5 * np.cos(a), 1.45),
                     (0.0, 0.0, 0.75)) for a in np.linspace(0, 2 * np.pi, num, endpoint=False)]
    return torch.stack(views), intrinsics(60.0, size, size).expand(num, 3, 3)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--envs", type=int, default=1, help="B: environments (the scene is replicated)")
    ap.add_argument("--cameras", type=int, default=1, help="C: cameras per environment")
    ap.add_argument("--instance-mode", default="instance", choices=["instance", "gaussian"])
    ap.add_argument("--tune-allocator", action="store_true", help="call render.tune_cpu_allocator() first")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tune_allocator:
        tune_cpu_allocator()
    scene, pos, quat = demo_scene()
    g = scene.posed(pos.expand(args.envs, -1, -1), quat.expand(args.envs, -1, -1))
    frames = args.envs * args.cameras
    print(f"{scene.num_gaussians} Gaussians, B={args.envs} C={args.cameras}, {torch.get_num_threads()} threads; "
          "ms per call (median of wall clock; cpu = process CPU time), and per camera-frame")
    for size in args.size:
        views, Ks = _cameras(args.cameras, size)
        views, Ks = views.expand(args.envs, -1, -1, -1), Ks.expand(args.envs, -1, -1, -1)
        rows, cpu = [], []
        for _ in range(args.repeats + 1):
            t, c0 = {}, time.process_time()
            rasterize(g, views, Ks, size, size, prev_means=g.means, backend="torch", timings=t,
                      instance_mode=args.instance_mode)
            rows.append(t)
            cpu.append((time.process_time() - c0) * 1e3)
        rows, cpu = rows[1:], cpu[1:]  # the first call warms allocators, scratch buffers, lazy imports
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        best = min(r["total"] for r in rows)
        print(f"{size}x{size}: total {med['total']:.1f} (best {best:.1f}, cpu {statistics.median(cpu):.1f}); "
              f"project {med['project']:.1f}, bin {med['bin']:.1f}, composite {med['composite']:.1f}, "
              f"finish {med['finish']:.1f}; per camera-frame {med['total'] / frames:.1f} ms "
              f"(Genesis raster 256x256 ~40 ms); visible {int(med['visible'])}, tile pairs {int(med['pairs'])}")


if __name__ == "__main__":
    main()
