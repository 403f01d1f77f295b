"""`hybridsim eval-refiner reference=pathtraced`: every fast render against the path tracer.

Per scenario, lighting and camera, over the episode's frames, against Cycles' frame of the same
state (render.pathtrace, the same camera matrices): PSNR, SSIM and FLIP (NVIDIA's perceptual
metric, LDR, mean over pixels; lower is better) of the coarse splat render, the lit splat render,
Genesis' raster render and the refined frames, over the whole frame and over object pixels only
(Cycles' object-index pass showing a non-plane entity); PSNR after a per-channel gain and offset
fitted by least squares to the path tracer over the whole episode (`psnr_fit_<k>`: what a flat
colour correction alone would reach); and temporal stability (refiner.training.refine_eval's
flow-warped change and flicker, the path tracer as the reference).

`lighting=own,forest,sunset` evaluates each scenario under its own lights and under each named
HDRI (strength `hdri_strength`, the scenario's sun kept). The shipped scenarios are never used in
training, and forest and sunset are never used in training either (pathtrace_data.HELD_OUT_HDRIS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("coarse", "lit", "raster", "refined")


@dataclass
class PTQuality:
    scenario: str
    lighting: str
    camera: str
    frames: int
    metrics: dict  # psnr_<k>, ssim_<k>, flip_<k>, psnr_objects_<k>, psnr_fit_<k> for k in KINDS
    warp_change_refined: float
    warp_change_pathtraced: float
    flicker_refined: float
    flicker_coarse: float
    refine_ms_per_frame: float
    pathtrace_ms_per_frame: float

    def row(self) -> dict:
        out = {k: getattr(self, k) for k in ("scenario", "lighting", "camera", "frames", "warp_change_refined",
                                             "warp_change_pathtraced", "flicker_refined", "flicker_coarse",
                                             "refine_ms_per_frame", "pathtrace_ms_per_frame")}
        out.update(self.metrics)
        return out


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """uint8 or [0, 1] float images [H, W, 3] (optionally over mask [H, W]) -> dB."""
    a, b = _unit(a), _unit(b)
    d = (a - b) ** 2
    mse = d[mask].mean() if mask is not None else d.mean()
    return float(10 * np.log10(1.0 / max(float(mse), 1e-12)))


def _unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)


def flip(ref: np.ndarray, test: np.ndarray) -> float:
    import flip_evaluator

    _, mean, _ = flip_evaluator.evaluate(_unit(ref).astype(np.float32), _unit(test).astype(np.float32), "LDR",
                                         applyMagma=False)
    return float(mean)


def fit_gain_offset(src: list[np.ndarray], ref: list[np.ndarray]) -> list[np.ndarray]:
    """Per-channel least-squares gain and offset mapping src frames onto ref frames (one fit for
    the whole sequence), applied and clipped to [0, 1]."""
    x = np.stack([_unit(s) for s in src]).reshape(-1, 3)
    y = np.stack([_unit(r) for r in ref]).reshape(-1, 3)
    out = np.empty_like(x)
    for c in range(3):
        A = np.stack([x[:, c], np.ones_like(x[:, c])], 1)
        coef, *_ = np.linalg.lstsq(A, y[:, c], rcond=None)
        out[:, c] = A @ coef
    return list(np.clip(out, 0, 1).reshape(len(src), *src[0].shape))


def sequence_metrics(seqs: dict[str, list[np.ndarray]], objects: list[np.ndarray]) -> dict[str, float]:
    """seqs: 'pathtraced' and KINDS -> frames [H, W, 3] uint8; objects: masks [H, W] -> metrics."""
    from skimage.metrics import structural_similarity

    ref = seqs["pathtraced"]
    out = {}
    for k in KINDS:
        if k not in seqs:
            continue
        s = seqs[k]
        out[f"psnr_{k}"] = float(np.mean([psnr(r, x) for r, x in zip(ref, s)]))
        out[f"ssim_{k}"] = float(np.mean([structural_similarity(r, x, data_range=255, channel_axis=-1)
                                          for r, x in zip(ref, s)]))
        out[f"flip_{k}"] = float(np.mean([flip(r, x) for r, x in zip(ref, s)]))
        obj = [psnr(r, x, m) for r, x, m in zip(ref, s, objects) if m.sum() >= 16]
        out[f"psnr_objects_{k}"] = float(np.mean(obj)) if obj else float("nan")
        fitted = fit_gain_offset(s, ref)
        out[f"psnr_fit_{k}"] = float(np.mean([psnr(r, x) for r, x in zip(ref, fitted)]))
    return out


STRIP_KINDS = ("coarse", "lit", "refined", "pathtraced")


def write_strip(seq: dict[str, list[np.ndarray]], path: Path, picks: int = 3) -> Path:
    """A PNG: one row per picked frame (first, middle, last), columns coarse | lit | refined |
    path-traced (uint8 frames [H, W, 3])."""
    import imageio.v3 as iio

    n = len(seq["refined"])
    idx = sorted({0, n // 2, n - 1})[:picks]
    rows = [np.concatenate([seq[k][i] for k in STRIP_KINDS], 1) for i in idx]
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.concatenate(rows, 0))
    return path


def evaluate_clips(folder: Path, weights: str | None, frames: int = 0, progress: bool = True) -> dict:
    """The refiner streamed over saved path-traced clips (scene_*.npz of make_pathtraced_clips: the
    21-channel lit condition and the Cycles target) -> {"rows": per clip PSNR / SSIM / FLIP of the lit
    render and the refined frames, "mean", counts}. frames > 0 keeps each clip's first `frames`."""
    import torch
    from refine import Refiner
    from tqdm import tqdm

    from hybridsim.config import RefineSettings
    from hybridsim.refining import load_model, sampler_config
    from hybridsim.training.refine_data import clip_files

    settings = RefineSettings(weights=weights) if weights else RefineSettings()
    model, wdir = load_model(settings, "cpu")
    refiner = Refiner(model, sampler_config(settings, wdir))
    files = clip_files(folder)
    rows = []
    for f in tqdm(files, desc="validation clips", unit="scene", disable=not progress):
        with np.load(f) as d:
            cond, target = d["cond"], d["target"]  # [N, T, C, H, W] float16, [N, T, H, W, 3] uint8
        if frames:
            cond, target = cond[:, :frames], target[:, :frames]
        c = torch.from_numpy(cond.astype(np.float32))
        with torch.no_grad():
            out = refiner.refine_video(c, seed=0)
        refined = (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
        lit = (c[:, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
        for n in range(len(target)):
            seqs = {"pathtraced": list(target[n]), "lit": list(lit[n]), "refined": list(refined[n])}
            m = sequence_metrics(seqs, [np.zeros(target.shape[2:4], bool)] * target.shape[1])
            rows.append({"clip": f"{f.stem}/{n}", **{k: v for k, v in m.items() if "objects" not in k}})
    keys = [k for k in rows[0] if k != "clip"]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return {"rows": rows, "mean": mean, "clips": len(rows),
            "refined_better_psnr": sum(r["psnr_refined"] > r["psnr_lit"] for r in rows),
            "refined_better_flip": sum(r["flip_refined"] < r["flip_lit"] for r in rows)}


def evaluate_scenario(name: str, lighting: str, frames: int, weights: str | None, hdri_strength: float = 0.6,
                      samples: int = 16, progress: bool = True, strips: Path | None = None) -> list[PTQuality]:
    from tqdm import tqdm

    from hybridsim.output.runner import resolve_config
    from hybridsim.output.writers import linear_to_srgb, to_uint8
    from hybridsim.pipeline import Simulation
    from hybridsim.refining import frame_stream
    from hybridsim.training.evaluate import temporal_stats

    overrides = [f"refine.weights={weights or 'null'}", "reference=both", f"pathtrace.samples={samples}"]
    if lighting != "own":
        overrides += [f"+scenario.lighting.environment.hdri={lighting}",
                      f"+scenario.lighting.environment.strength={hdri_strength}"]
    cfg, base = resolve_config(name, overrides, progress=False)
    cfg.scenario.timing.duration = frames / cfg.scenario.timing.fps + 1e-6  # exactly `frames` frames
    sim = Simulation(cfg, base_dir=base)
    planes = {i + 1 for i, e in enumerate(sim.scenario.entities) if e.type == "plane"}
    try:
        stream, refiner = frame_stream(cfg, sim)
        keys = ("coarse", "lit", "raster", "refined", "pathtraced", "flow", "alpha", "objects")
        seqs = {c: {k: [] for k in keys} for c in sim.cameras}
        for frame in tqdm(stream, total=sim.n_frames, desc=f"eval {name} ({lighting})", disable=not progress):
            for c, s in seqs.items():
                gb, pt = frame.gbuffer[c], frame.pathtraced[c]
                s["coarse"].append(to_uint8(linear_to_srgb(gb.rgb[0, 0])))
                s["lit"].append(to_uint8(linear_to_srgb(frame.lit[c].rgb[0, 0])))
                s["raster"].append(frame.reference[c].rgb[0])
                s["refined"].append(frame.refined[c][0])
                s["pathtraced"].append(pt.rgb[0])
                s["flow"].append(gb.flow[0, 0].numpy())
                s["alpha"].append(gb.alpha[0, 0].numpy())
                s["objects"].append((pt.instance[0] > 0) & ~np.isin(pt.instance[0], list(planes)))
    finally:
        sim.close()
    n = len(next(iter(seqs.values()))["refined"])
    refine_ms = 1000 * refiner.timings["refine_s"] / max(1, n) / len(seqs)
    pt_ms = 1000 * sim.timings["pathtrace_s"] / max(1, n) / len(seqs)
    out = []
    for c, s in seqs.items():
        if strips is not None:
            write_strip(s, strips / f"{name}_{lighting}_{c}.png")
        ts = temporal_stats(s["refined"], s["coarse"], s["pathtraced"], s["flow"], s["alpha"])
        out.append(PTQuality(name, lighting, c, n, sequence_metrics(s, s["objects"]), ts["refined"], ts["reference"],
                             ts["flicker_refined"], ts["flicker_coarse"], refine_ms, pt_ms))
    return out


def to_markdown(rows: list[PTQuality]) -> str:
    head = ["scenario", "lighting", "camera"]
    lines = ["| " + " | ".join(head) + " | PSNR coarse / lit / raster / refined | SSIM c / l / r / ref | "
             "FLIP c / l / r / ref | object PSNR c / l / r / ref | PSNR after gain+offset fit c / l / r / ref | "
             "flicker refined / coarse |", "|" + "---|" * (len(head) + 6)]
    for r in rows:
        m = r.metrics

        def four(prefix, fmt):
            return " / ".join(fmt.format(m.get(f"{prefix}_{k}", float("nan"))) for k in KINDS)

        lines.append(f"| {r.scenario} | {r.lighting} | {r.camera} | {four('psnr', '{:.2f}')} | "
                     f"{four('ssim', '{:.3f}')} | {four('flip', '{:.3f}')} | {four('psnr_objects', '{:.2f}')} | "
                     f"{four('psnr_fit', '{:.2f}')} | {r.flicker_refined:.4f} / {r.flicker_coarse:.4f} |")
    return "\n".join(lines) + "\n"
