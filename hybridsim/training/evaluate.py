"""Checks of the splat render against Genesis' raster render of the same state and camera.

These prove camera conventions and posing: silhouettes (IoU per entity), depth on covered pixels,
and flow (warping the previous frame by the flow reproduces the current one better than no warp).
`warp_back` and `temporal_stats` measure the flow-warped frame-to-frame change of a video (the
temporal stability that eval-refiner reports against either reference).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


@dataclass
class AgreementReport:
    iou: dict[str, float]  # entity -> mean IoU over frames where it is visible in the reference
    depth_median_abs_m: float  # over pixels covered by both renders (objects, not the floor plane)
    depth_median_rel: float  # same, relative to the reference depth
    flow_warp_err: float  # mean |I_t - warp(I_{t-1}, flow_t)| over covered moving pixels
    no_warp_err: float  # mean |I_t - I_{t-1}| over the same pixels
    frames: int = 0
    per_frame_iou: dict[str, list[float]] = field(default_factory=dict)


def compare_frames(frames, camera: str, scenario, world, skip_classes=("floor",)) -> AgreementReport:
    """frames: Frames carrying both `reference` and `gbuffer` for `camera` (env 0 is used)."""
    ent_index = {e.name: i for i, e in enumerate(scenario.entities)}
    skip = {e.name for e in scenario.entities if e.semantic_class in skip_classes or e.type == "plane"}
    slot_to_inst = np.array([ent_index[b.entity] + 1 for b in world.bodies] + [0], dtype=np.int64)
    ious, depth_abs, depth_rel, warp_e, nowarp_e = defaultdict(list), [], [], [], []
    prev = None
    for f in frames:
        ref, gb = f.reference[camera], f.gbuffer[camera]
        ref_inst = slot_to_inst[ref.body[0]]  # body -1 -> last entry (0 = background)
        splat_inst = gb.instance_id[0, 0].numpy()
        for name, i in ent_index.items():
            if name in skip:
                continue
            a, b = ref_inst == i + 1, splat_inst == i + 1
            if a.sum() >= 20:  # visible enough for a silhouette to mean something
                ious[name].append(float((a & b).sum() / max((a | b).sum(), 1)))
        both = (ref_inst > 0) & (splat_inst > 0) & (ref_inst == splat_inst) & ~np.isin(
            ref_inst, [ent_index[n] + 1 for n in skip])
        d_ref, d_spl = ref.depth[0], gb.depth[0, 0].numpy()
        if both.any():
            depth_abs.append(np.abs(d_spl[both] - d_ref[both]))
            depth_rel.append(np.abs(d_spl[both] - d_ref[both]) / d_ref[both])
        if prev is not None:
            w, n = _warp_errors(prev, gb)
            warp_e += w
            nowarp_e += n
        prev = gb
    cat = lambda xs: np.concatenate(xs) if xs else np.array([np.nan])  # noqa: E731
    return AgreementReport(
        iou={k: float(np.mean(v)) for k, v in ious.items()},
        depth_median_abs_m=float(np.median(cat(depth_abs))),
        depth_median_rel=float(np.median(cat(depth_rel))),
        flow_warp_err=float(np.mean(warp_e)) if warp_e else float("nan"),
        no_warp_err=float(np.mean(nowarp_e)) if nowarp_e else float("nan"),
        frames=len(frames),
        per_frame_iou=dict(ious),
    )


def _warp_errors(prev, cur) -> tuple[list[float], list[float]]:
    """Backward-warp the previous splat RGB by the current flow: I_t(x) ~ I_{t-1}(x - flow_t(x))."""
    import torch
    import torch.nn.functional as F

    rgb_prev = prev.rgb[0, 0].permute(2, 0, 1)[None]  # [1, 3, H, W]
    rgb_cur = cur.rgb[0, 0]  # [H, W, 3]
    flow = cur.flow[0, 0]  # [H, W, 2]
    H, W = flow.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    src_x, src_y = xs - flow[..., 0], ys - flow[..., 1]
    grid = torch.stack([2 * (src_x + 0.5) / W - 1, 2 * (src_y + 0.5) / H - 1], dim=-1)[None]
    warped = F.grid_sample(rgb_prev, grid, mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    covered = (cur.alpha[0, 0] > 0.99) & (flow.norm(dim=-1) > 0.25)
    if covered.sum() < 10:
        return [], []
    err_w = (warped - rgb_cur).abs().mean(-1)[covered]
    err_n = (rgb_prev[0].permute(1, 2, 0) - rgb_cur).abs().mean(-1)[covered]
    return [float(err_w.mean())], [float(err_n.mean())]


def warp_back(prev: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """prev [H, W, C] float, flow [H, W, 2] pixels (frame_t(x) ~ frame_{t-1}(x - flow)) -> [H, W, C]."""
    import torch
    import torch.nn.functional as F

    H, W = flow.shape[:2]
    ys, xs = np.meshgrid(np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32), indexing="ij")
    gx = 2 * (xs - flow[..., 0] + 0.5) / W - 1
    gy = 2 * (ys - flow[..., 1] + 0.5) / H - 1
    grid = torch.from_numpy(np.stack([gx, gy], -1)[None].astype(np.float32))
    src = torch.from_numpy(np.ascontiguousarray(prev, dtype=np.float32)).permute(2, 0, 1)[None]
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0] \
        .permute(1, 2, 0).numpy()


def temporal_stats(refined, coarse, reference, flows, alphas) -> dict[str, float]:
    """Lists of [H, W, 3] uint8 frames, flows [H, W, 2], alphas [H, W] -> warp-change / flicker means."""
    sums = {k: [] for k in ("refined", "coarse", "reference", "flicker_refined", "flicker_coarse")}
    for t in range(1, len(refined)):
        mask = alphas[t] > 0.99
        if mask.sum() < 10:
            continue
        d = {}
        for name, seq in (("refined", refined), ("coarse", coarse), ("reference", reference)):
            cur = seq[t].astype(np.float32) / 255
            d[name] = cur - warp_back(seq[t - 1].astype(np.float32) / 255, flows[t])
            sums[name].append(float(np.abs(d[name]).mean(-1)[mask].mean()))
        sums["flicker_refined"].append(float(np.abs(d["refined"] - d["reference"]).mean(-1)[mask].mean()))
        sums["flicker_coarse"].append(float(np.abs(d["coarse"] - d["reference"]).mean(-1)[mask].mean()))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in sums.items()}
