"""`hybridsim train-refiner`: paired clips from randomised scenes, then refine.train, resumable.

    hybridsim train-refiner out=refiner_train                       # data + training into out/
    hybridsim train-refiner out=refiner_train install=true          # ... and ship as the default

Both stages resume: finished scenes in out/clips/ are kept, training resumes from
out/train/checkpoints/latest. With install=true the trained model is copied to refine/weights/
with training.json recording the exact command, the data seed, the options and the final loss.
"""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from hybridsim.options import parse_options, positive
from hybridsim.scenario.spec import SpecError

DEFAULTS = {
    "out": "refiner_train",
    # data
    "scenes": 20, "frames": 12, "res": 128, "n_envs": 4, "cameras": 2, "data_seed": 0,
    "elevation": "18,60",  # camera elevation range of the random scenes, degrees (90 = straight down)
    "plain": 0.5,  # probability of a plain-coloured floor in a random scene (else a photo-textured slab)
    # probability that a random scene keeps the scenario's default light (target=pathtraced: the
    # default sun and ambient, any HDRI kept, and a grey plain floor; folders made before this option
    # existed for pathtraced clips hold default_light=0)
    "default_light": 0.25,
    # probability of a robot arm (a Franka Panda or a UR5e, Genesis' MJCF assets) beside the objects of
    # a random scene, moving to a second pose early in the clip (refine_data.ROBOTS); 0 keeps clip
    # folders made before this option resumable; the shipped model's last stage used 0.6
    "robot": 0.0,
    "target": "raster",  # what the refiner learns: raster (Genesis' OpenGL render) or pathtraced (Cycles)
    "samples": 16,  # target=pathtraced: Cycles samples per pixel (OpenImageDenoise on)
    "hdri": 0.85,  # target=pathtraced: probability of an HDRI world in a random scene (else uniform ambient)
    # target=pathtraced: probability that an HDRI world is a procedural map (a random sky with a skyline
    # and ground, or a graded variant of a training HDRI; render.skies) instead of a shipped one
    "procedural": 0.0,
    # training
    "phase1": 700, "phase2": 300, "phase3": 0, "batch": 2, "clip_frames": 6, "lr": 3e-4, "seed": 0,
    "checkpoint_every": 50, "threads": 0, "device": "cpu", "prediction": "sample",
    "shading": True,  # 14 condition channels: G-buffer + normals / light (refine.conditioning)
    "layers": 4, "heads": 3, "ffn": 768,  # transformer size: blocks, attention heads (x 64 dims), FFN width
    "head": 16,  # pixel head features per pixel (refine ModelConfig.head_channels); 0 = Wan's un-patchify
    "unpatchify": "linear",  # tokens to pixels: linear (Wan's p x p blocks), smooth (bilinear) or guided
    # (bilinear weighted by the likeness of the render, depth and alpha; refine ModelConfig.unpatchify)
    "ssim": 0.0,  # weight of a (1 - SSIM) term in phases 2 and 3 (refine TrainConfig.ssim_weight)
    "sigmas": "",  # sigma list that phases 2/3 specialise on and sampler.json ships, e.g. 0.2,0.1,0.05
    "temporal": 0.0,  # weight of the frame-to-frame change term in phases 2 and 3 (TrainConfig.temporal_weight)
    "grad": 0.0,  # weight of an edge term (neighbour differences) in phases 2 and 3 (TrainConfig.grad_weight)
    "loss": "mse",  # per-pixel loss: mse, or charbonnier (a smooth L1; refine TrainConfig.loss)
    "noise": "fresh",  # sampler noise trained on and shipped: fresh per block, or one static field
    # false: no clean pass after a block (its context is the K/V of its last step; a third cheaper per
    # block). With one sigma and noise=zero, phase 2 then trains exactly what inference runs (refine
    # train.direct_loss) instead of teacher forcing on barely noised targets
    "clean_pass": True,
    # comma-separated folders of finished clips from other clip runs (e.g. another data seed or
    # lighting mix) trained on together with out/clips; same frames, res and target
    "extra_clips": "",
    # target=pathtraced: re-render the conditions of clips made by an older lit render (their Cycles
    # targets kept); without it such clips are refused
    "recondition": False,
    "init": "",  # start from this saved refiner (fine-tune), e.g. init=refine/weights; '' = fresh weights
    "train_only": "",  # comma-separated parameter-name prefixes to train, e.g. pixel_head; '' = all
    "install": False, "progress": True,
}


def main(overrides: list[str]) -> int:
    opts = parse_options(overrides, DEFAULTS, "train-refiner")
    positive(opts, "train-refiner", "scenes", "frames", "res", "n_envs", "cameras", "batch", "clip_frames", "lr",
             "layers", "heads", "ffn")
    _sampler(opts["sigmas"], opts["noise"], opts["clean_pass"])  # a bad list fails now, not after the data
    _elevation(opts["elevation"])
    from refine.config import PIXEL_LOSSES
    if opts["loss"] not in PIXEL_LOSSES:
        raise SpecError("train-refiner loss", f"must be one of {', '.join(PIXEL_LOSSES)}, got {opts['loss']!r}")
    if opts["target"] not in ("raster", "pathtraced"):
        raise SpecError("train-refiner target", f"must be raster or pathtraced, got {opts['target']!r}")
    for key in ("plain", "default_light", "hdri", "robot", "procedural"):
        if not 0.0 <= opts[key] <= 1.0:
            raise SpecError(f"train-refiner {key}", f"must be a probability in [0, 1], got {opts[key]}")
    from refine.config import UNPATCHIFY_MODES

    if opts["unpatchify"] not in UNPATCHIFY_MODES:
        raise SpecError("train-refiner unpatchify", f"must be one of {', '.join(UNPATCHIFY_MODES)}, "
                        f"got {opts['unpatchify']!r}")
    if opts["unpatchify"] != "linear" and not opts["head"]:
        raise SpecError("train-refiner unpatchify", f"{opts['unpatchify']} needs the pixel head; set head=16 (or more)")
    for key in ("head", "phase3", "ssim", "temporal", "grad"):
        if opts[key] < 0:
            raise SpecError(f"train-refiner {key}", f"must be >= 0, got {opts[key]}")
    # a missing or mismatched init folder, or a train_only prefix that names nothing, fails now,
    # not after the data is made
    extra = _extra_clips(opts)
    if opts["target"] == "pathtraced" and not opts["recondition"]:  # stale clips fail now, not after new ones
        from hybridsim.training.pathtrace_data import require_current_conditions
        from hybridsim.training.refine_data import clip_files

        require_current_conditions(clip_files(Path(opts["out"]) / "clips") + [f for e in extra for f in e["files"]],
                                   False, "train-refiner recondition")
    init_model = _init_model(opts)[0] if opts["init"] else None
    if opts["train_only"]:
        _check_train_only(opts, init_model)
    result = train_refiner(opts, command="hybridsim train-refiner " + " ".join(shlex.quote(o) for o in overrides))
    print(f"trained {result['steps']} steps (final loss {result['final_loss']:.4f}) -> {result['model_dir']}"
          + (f"; installed to {result['installed']}" if result.get("installed") else ""))
    return 0


def train_refiner(opts: dict, command: str = "") -> dict:
    import torch

    from refine import TrainConfig
    from refine.train import train  # not `from refine import train`: once refine.train is imported
    # as a module, the package attribute `train` is that module, not the lazy function

    from hybridsim.training.refine_data import ClipDataset, code_commit

    if opts["threads"] > 0:
        torch.set_num_threads(opts["threads"])
    out = Path(opts["out"])
    t0 = time.perf_counter()
    files = _make_data(opts, out / "clips")
    extra = _extra_clips(opts)
    files = files + [f for e in extra for f in e.pop("files")]
    if opts["target"] == "pathtraced":
        from hybridsim.training.pathtrace_data import require_current_conditions

        require_current_conditions(files, opts["recondition"], "train-refiner recondition", opts["progress"])
    data_s = time.perf_counter() - t0
    torch.manual_seed(opts["seed"])
    init = None
    if opts["init"]:
        model, init = _init_model(opts)
    else:
        model = _fresh_model(opts)
    clips = ClipDataset(files, channels=model.spec.cond_channels)
    sampler_cfg = _sampler(opts["sigmas"], opts["noise"], opts["clean_pass"])
    tcfg = TrainConfig(phase1_steps=opts["phase1"], phase2_steps=opts["phase2"], phase3_steps=opts["phase3"],
                       batch_size=opts["batch"], ssim_weight=opts["ssim"], temporal_weight=opts["temporal"],
                       grad_weight=opts["grad"],
                       clip_frames=opts["clip_frames"], lr=opts["lr"], seed=opts["seed"], device=opts["device"],
                       checkpoint_every=opts["checkpoint_every"], progress=opts["progress"],
                       sampler=sampler_cfg, train_only=_prefixes(opts["train_only"]), loss=opts["loss"])
    t1 = time.perf_counter()
    res = train(model, clips, tcfg, out / "train")
    train_s = time.perf_counter() - t1
    sampler = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(tcfg.sampler).items()}
    if res.model_dir is not None:  # the schedule phase 2 specialised on travels with the weights
        (res.model_dir / "sampler.json").write_text(json.dumps(sampler, indent=1))
    record = {
        "command": command,
        "options": opts,
        "data_seed": opts["data_seed"],
        "train_seed": opts["seed"],
        "clips": len(clips),
        "code_commit": code_commit(),  # this call's code; the clips' own is clips_code_commit
        "clips_code_commit": json.loads((out / "clips" / "clips.json").read_text()).get("code_commit"),
        "extra_clips": extra,  # folder, scene count, data seed, code commit of each extra clip folder
        "sampler": sampler,
        "init": init,  # the model fine-tuned from, with its own training record (None = fresh weights)
        "steps": res.end_step,
        "resumed_from_step": res.start_step,
        "final_loss": res.final_loss if res.end_step > res.start_step else _last_loss(out / "train" / "loss.jsonl"),
        "loss_tail_mean": _loss_tail(out / "train" / "loss.jsonl"),
        "data_s_this_call": round(data_s, 1),
        "train_s_this_call": round(train_s, 1),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "model_dir": str(res.model_dir) if res.model_dir else None,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1))
    if opts["install"] and res.model_dir is not None:
        record["installed"] = str(install(res.model_dir, record))
    return record


def _make_data(opts: dict, folder: Path) -> list[Path]:
    """Make or resume the paired clips the options name: Genesis' raster or Cycles as the target."""
    if opts["target"] == "pathtraced":
        from hybridsim.training.pathtrace_data import PTClipOptions, make_pathtraced_clips

        return make_pathtraced_clips(folder, PTClipOptions(
            scenes=opts["scenes"], frames=opts["frames"], res=opts["res"], n_envs=opts["n_envs"],
            n_cameras=opts["cameras"], seed=opts["data_seed"], samples=opts["samples"],
            elevation=_elevation(opts["elevation"]), plain_floor=opts["plain"], hdri=opts["hdri"],
            default_light=opts["default_light"], robot=opts["robot"], procedural=opts["procedural"]),
            progress=opts["progress"])
    from hybridsim.training.refine_data import ClipOptions, make_clips

    return make_clips(folder, ClipOptions(scenes=opts["scenes"], frames=opts["frames"], res=opts["res"],
                                          n_envs=opts["n_envs"], n_cameras=opts["cameras"], seed=opts["data_seed"],
                                          elevation=_elevation(opts["elevation"]), plain_floor=opts["plain"],
                                          default_light=opts["default_light"], robot=opts["robot"]),
                      progress=opts["progress"])


def _extra_clips(opts: dict) -> list[dict]:
    """The extra_clips folders as [{folder, scenes, seed, hdri, code_commit, files}]; SpecError naming the
    folder if one is missing, empty, or holds clips of another frame count, resolution or target."""
    from hybridsim.training.refine_data import clip_files

    out = []
    for text in _prefixes(opts["extra_clips"]):
        folder = Path(text).expanduser()
        meta_path = folder / "clips.json"
        if not meta_path.is_file():
            raise SpecError("train-refiner extra_clips", f"{folder} has no clips.json; give a clips folder "
                            "written by train-refiner (e.g. runs/other/clips)")
        meta = json.loads(meta_path.read_text())
        want = {"frames": opts["frames"], "res": opts["res"], "target": opts["target"]}
        got = {k: meta.get(k, "raster" if k == "target" else None) for k in want}
        if got != want:
            raise SpecError("train-refiner extra_clips", f"{folder} holds clips with {got}, this run trains on "
                            f"{want}; make them with the same frames, res and target")
        files = clip_files(folder)
        if not files:
            raise SpecError("train-refiner extra_clips", f"{folder} holds no finished scene_*.npz yet")
        out.append({"folder": str(folder.resolve()), "scenes": len(files), "seed": meta.get("seed"),
                    "hdri": meta.get("hdri"), "code_commit": meta.get("code_commit"), "files": files})
    return out


def _cond_channels(opts: dict) -> int:
    """The condition layout the options train: lit (21) for the path tracer, else G-buffer (+ shading)."""
    from refine.conditioning import COND_CHANNELS, LIT_CHANNELS, SHADING_CHANNELS

    if opts["target"] == "pathtraced":
        return LIT_CHANNELS
    return COND_CHANNELS + (SHADING_CHANNELS if opts["shading"] else 0)


def _fresh_model(opts: dict):
    """A randomly initialised refiner of the architecture the options name (torch's global seed)."""
    from refine import ModelConfig
    from refine.model import CausalWanRefiner

    mcfg = ModelConfig(sample_height=opts["res"], sample_width=opts["res"], prediction=opts["prediction"],
                       cond_channels=_cond_channels(opts), num_layers=opts["layers"],
                       num_attention_heads=opts["heads"], ffn_dim=opts["ffn"],
                       head_channels=opts["head"], unpatchify=opts["unpatchify"])
    return CausalWanRefiner.from_spec(mcfg)


def _check_train_only(opts: dict, model=None) -> None:
    """SpecError if a train_only prefix names no parameter of `model` (default: a fresh one of the
    options' architecture)."""
    from refine import RefineError
    from refine.train import _trainable

    try:
        _trainable(model if model is not None else _fresh_model(opts), _prefixes(opts["train_only"]))
    except RefineError as err:
        raise SpecError("train-refiner train_only", str(err)) from None


# options that fix the architecture; a fine-tune (init=) must agree with the folder's model
ARCH_OPTIONS = {"res": "sample_height", "prediction": "prediction", "head": "head_channels",
                "unpatchify": "unpatchify", "layers": "num_layers", "heads": "num_attention_heads", "ffn": "ffn_dim"}


def _init_model(opts: dict):
    """-> (model loaded from opts['init'], {'folder', 'training'}); SpecError if it cannot be the
    starting point of this run (not a refiner folder, or another architecture than the options)."""
    from refine import RefineError
    from refine.model import CausalWanRefiner

    folder = Path(opts["init"]).expanduser()
    try:
        model = CausalWanRefiner.from_pretrained(folder)
    except RefineError as err:
        raise SpecError("train-refiner init", f"{err}; give a folder written by train-refiner or save_pretrained, "
                        "e.g. init=refine/weights") from None
    spec = model.spec
    for key, field in ARCH_OPTIONS.items():
        if getattr(spec, field) != opts[key]:
            raise SpecError(f"train-refiner {key}", f"{opts[key]!r} but the init model in {folder} has "
                            f"{field}={getattr(spec, field)!r}; set {key}={getattr(spec, field)} or drop init")
    cond = _cond_channels(opts)
    if spec.cond_channels != cond or spec.sample_width != opts["res"]:
        raise SpecError("train-refiner shading", f"the init model in {folder} takes {spec.cond_channels} condition "
                        f"channels at {spec.sample_width}x{spec.sample_height}, these options give {cond} at "
                        f"{opts['res']}x{opts['res']}")
    record = folder / "training.json"
    parent = json.loads(record.read_text()) if record.is_file() else None
    return model, {"folder": str(folder.resolve()), "training": parent}


def _prefixes(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _elevation(text: str) -> tuple[float, float]:
    """'low,high' degrees -> (low, high); SpecError naming the option otherwise."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise SpecError("train-refiner elevation", f"expected two numbers low,high in degrees, got {text!r}") from None
    if not 0.0 <= lo <= hi <= 90.0:
        raise SpecError("train-refiner elevation", f"{text!r}: need 0 <= low <= high <= 90 (90 = straight down)")
    return lo, hi


def _sampler(sigmas: str, noise: str = "fresh", clean_pass: bool = True):
    """'' -> refine's default schedule; '0.2,0.1,0.05' -> that list (checked by SamplerConfig)."""
    from refine import RefineError, SamplerConfig

    try:
        SamplerConfig(noise=noise)
    except RefineError as err:
        raise SpecError("train-refiner noise", str(err)) from None
    if not sigmas.strip():
        return SamplerConfig(noise=noise, clean_pass=clean_pass)
    try:
        return SamplerConfig(sigmas=tuple(float(x) for x in sigmas.split(",")), noise=noise, clean_pass=clean_pass)
    except (ValueError, RefineError) as err:
        raise SpecError("train-refiner sigmas", f"{sigmas!r}: {err}; give decreasing values in (0, 1], "
                        "e.g. sigmas=0.2,0.1,0.05") from None


def install(model_dir: Path, record: dict) -> Path:
    """Copy a trained model folder into refine/weights/ (the package's default) with its record."""
    from refine import DEFAULT_WEIGHTS_DIR
    from refine.model import CausalWanRefiner

    CausalWanRefiner.from_pretrained(model_dir)  # refuse to install something that does not load
    dest = Path(DEFAULT_WEIGHTS_DIR)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(model_dir, tmp)
    (tmp / "training.json").write_text(json.dumps(record, indent=1))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _losses(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [json.loads(line)["loss"] for line in path.read_text().splitlines() if line.strip()]


def _loss_tail(path: Path, n: int = 50) -> float | None:
    tail = _losses(path)[-n:]
    return sum(tail) / len(tail) if tail else None


def _last_loss(path: Path) -> float:
    losses = _losses(path)
    return losses[-1] if losses else float("nan")
