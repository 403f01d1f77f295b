"""`hybridsim eval-refiner`: quality of refined frames on held-out scenarios.

The shipped scenarios (configs/scenario/) are never used for training (`hybridsim.training.refine_data`
makes its own randomised scenes), so they are the held-out set. Per scenario and camera, over the
episode's frames, with Genesis' raster render as the reference:

- PSNR and SSIM of the coarse splat render and of the refined frames against the reference;
- temporal stability: the flow-warped frame-to-frame change |I_t(x) - I_{t-1}(x - flow_t(x))|
  on pixels the splats cover, for refined, coarse and reference videos, and the flicker
  |dRefined - dReference| (change that the reference does not have). Flow is the splat
  G-buffer's, i.e. the true motion of the geometry.

Writes <out>/eval.json and <out>/eval.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hybridsim.options import parse_options, positive
from hybridsim.training.evaluate import temporal_stats

DEFAULTS = {"out": "eval_refiner", "scenarios": "default,stack_topple,franka_push,mesh_slope", "frames": 40,
            "weights": "", "sigmas": "", "noise": "", "threads": 0, "progress": True,
            "reference": "raster",  # raster (Genesis) or pathtraced (Cycles; hybridsim.training.pathtrace_eval)
            "lighting": "own,forest,sunset",  # pathtraced: the scenario's own lights and/or these HDRIs
            "hdri_strength": 0.6, "samples": 16,
            # a folder of path-traced training-format clips (scene_*.npz: cond + Cycles target), e.g. a
            # validation set made with another data seed: model choices are made there, never on the
            # held-out scenarios
            "clips": "",
            "recondition": False}  # clips=: re-render conditions made by an older lit render (targets kept)


@dataclass
class SceneQuality:
    scenario: str
    camera: str
    frames: int
    psnr_coarse: float
    psnr_refined: float
    ssim_coarse: float
    ssim_refined: float
    warp_change_refined: float  # mean |I_t - warp(I_{t-1})| on covered pixels, [0, 1] units
    warp_change_coarse: float
    warp_change_reference: float
    flicker_refined: float  # mean |dRefined - dReference| (flow-warped differences)
    flicker_coarse: float
    refine_ms_per_frame: float


def evaluate_scenario(name: str, frames: int, weights: str | None, progress: bool = True,
                      sigmas: str = "", noise: str = "") -> list[SceneQuality]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from tqdm import tqdm

    from hybridsim.pipeline import Simulation
    from hybridsim.refining import frame_stream
    from hybridsim.output.runner import resolve_config
    from hybridsim.output.writers import linear_to_srgb, to_uint8

    cfg, base = resolve_config(name, [f"refine.weights={weights or 'null'}",
                                      f"refine.sigmas=[{sigmas}]" if sigmas else "refine.sigmas=null",
                                      f"refine.noise={noise or 'null'}"],
                               progress=False, reference=True)
    timing = cfg.scenario.timing
    timing.duration = frames / timing.fps + 1e-6  # exactly `frames` frames
    sim = Simulation(cfg, base_dir=base)
    stream, refiner = frame_stream(cfg, sim)
    seqs = {c: {"refined": [], "coarse": [], "reference": [], "flow": [], "alpha": []} for c in sim.cameras}
    for frame in tqdm(stream, total=sim.n_frames, desc=f"eval {name}", disable=not progress):
        for c, s in seqs.items():
            gb = frame.gbuffer[c]
            s["refined"].append(frame.refined[c][0])
            s["coarse"].append(to_uint8(linear_to_srgb(gb.rgb[0, 0])))
            s["reference"].append(frame.reference[c].rgb[0])
            s["flow"].append(gb.flow[0, 0].numpy())
            s["alpha"].append(gb.alpha[0, 0].numpy())
    out = []
    ms = 1000 * refiner.timings["refine_s"] / max(1, len(seqs[next(iter(seqs))]["refined"])) / len(seqs)
    for c, s in seqs.items():
        def metric(fn, key):
            return float(np.mean([fn(r, x) for r, x in zip(s["reference"], s[key])]))

        def psnr(a, b):
            return peak_signal_noise_ratio(a, b, data_range=255)

        def ssim(a, b):
            return structural_similarity(a, b, data_range=255, channel_axis=-1)

        ts = temporal_stats(s["refined"], s["coarse"], s["reference"], s["flow"], s["alpha"])
        out.append(SceneQuality(name, c, len(s["refined"]), metric(psnr, "coarse"), metric(psnr, "refined"),
                                metric(ssim, "coarse"), metric(ssim, "refined"), ts["refined"], ts["coarse"],
                                ts["reference"], ts["flicker_refined"], ts["flicker_coarse"], ms))
    return out


def to_markdown(rows: list[SceneQuality]) -> str:
    lines = ["| scenario | camera | frames | PSNR coarse | PSNR refined | gain dB | SSIM coarse | SSIM refined | "
             "warp-change refined / reference / coarse | flicker refined / coarse | refine ms/frame |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.scenario} | {r.camera} | {r.frames} | {r.psnr_coarse:.2f} | {r.psnr_refined:.2f} | "
                     f"{r.psnr_refined - r.psnr_coarse:+.2f} | {r.ssim_coarse:.3f} | {r.ssim_refined:.3f} | "
                     f"{r.warp_change_refined:.4f} / {r.warp_change_reference:.4f} / {r.warp_change_coarse:.4f} | "
                     f"{r.flicker_refined:.4f} / {r.flicker_coarse:.4f} | {r.refine_ms_per_frame:.0f} |")
    return "\n".join(lines) + "\n"


def main(overrides: list[str]) -> int:
    import torch

    opts = parse_options(overrides, DEFAULTS, "eval-refiner")
    positive(opts, "eval-refiner", "frames", "samples")
    if opts["reference"] not in ("raster", "pathtraced"):
        from hybridsim.scenario.spec import SpecError

        raise SpecError("eval-refiner reference", f"must be raster or pathtraced, got {opts['reference']!r}")
    if opts["threads"] > 0:
        torch.set_num_threads(opts["threads"])
    if opts["clips"]:
        return _main_clips(opts)
    if opts["reference"] == "pathtraced":
        return _main_pathtraced(opts)
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[SceneQuality] = []
    for name in [s for s in opts["scenarios"].split(",") if s]:
        rows += evaluate_scenario(name, opts["frames"], opts["weights"] or None, opts["progress"], opts["sigmas"],
                                  opts["noise"])
        (out / "eval.json").write_text(json.dumps({"options": opts, "rows": [asdict(r) for r in rows]}, indent=1))
    (out / "eval.md").write_text(to_markdown(rows))
    print(to_markdown(rows))
    print(f"wrote {out / 'eval.json'} and eval.md in {time.perf_counter() - t0:.0f} s")
    return 0


def _main_clips(opts: dict) -> int:
    from hybridsim.scenario.spec import SpecError
    from hybridsim.training import pathtrace_eval as pe

    folder = Path(opts["clips"])
    from hybridsim.training.pathtrace_data import require_current_conditions
    from hybridsim.training.refine_data import clip_files

    files = clip_files(folder)
    if not files:
        raise SpecError("eval-refiner clips", f"{folder} holds no scene_*.npz clips; give a folder made by "
                        "train-refiner target=pathtraced (its clips/ folder)")
    require_current_conditions(files, opts["recondition"], "eval-refiner recondition", opts["progress"])
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary = pe.evaluate_clips(folder, opts["weights"] or None, frames=opts["frames"], progress=opts["progress"])
    (out / "eval.json").write_text(json.dumps({"options": opts, "reference": "pathtraced clips", **summary}, indent=1))
    m = summary["mean"]
    print(f"{summary['clips']} clips of {folder}: PSNR lit {m['psnr_lit']:.2f} refined {m['psnr_refined']:.2f} dB "
          f"(refined - lit {m['psnr_refined'] - m['psnr_lit']:+.2f}); SSIM {m['ssim_lit']:.3f} / {m['ssim_refined']:.3f}; "
          f"FLIP {m['flip_lit']:.3f} / {m['flip_refined']:.3f}; refined better than lit in PSNR on "
          f"{summary['refined_better_psnr']}/{summary['clips']} clips, FLIP {summary['refined_better_flip']}/"
          f"{summary['clips']} ({time.perf_counter() - t0:.0f} s) -> {out / 'eval.json'}")
    return 0


def _main_pathtraced(opts: dict) -> int:
    from render.pathtrace import preload

    from hybridsim.scenario.spec import HDRI_NAMES, SpecError
    from hybridsim.training import pathtrace_eval as pe

    lightings = [x for x in opts["lighting"].split(",") if x]
    bad = [x for x in lightings if x != "own" and x not in HDRI_NAMES]
    if bad:
        raise SpecError("eval-refiner lighting", f"{bad} are not 'own' or a shipped HDRI ({', '.join(HDRI_NAMES)})")
    preload()  # bpy before Genesis
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for name in [s for s in opts["scenarios"].split(",") if s]:
        for lighting in lightings:
            rows += pe.evaluate_scenario(name, lighting, opts["frames"], opts["weights"] or None,
                                         opts["hdri_strength"], opts["samples"], opts["progress"], out / "strips")
            (out / "eval.json").write_text(json.dumps({"options": opts, "reference": "pathtraced",
                                                       "rows": [r.row() for r in rows]}, indent=1))
    (out / "eval.md").write_text(pe.to_markdown(rows))
    print(pe.to_markdown(rows))
    print(f"wrote {out / 'eval.json'} and eval.md in {time.perf_counter() - t0:.0f} s")
    return 0
