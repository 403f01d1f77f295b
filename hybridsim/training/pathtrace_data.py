"""Paired clips against the path tracer: the lit-layout condition (refine LIT_CHANNELS) as input,
Cycles' frame of the same physics state and camera as the target.

Scenes are refine_data's random scenes with randomised looks on top: every object gets a
roughness, some are metallic or glass; the world is lit by one of the training HDRIs (rotated,
scaled) or a uniform ambient, plus a sun of random direction and strength; with option
`procedural`, some HDRI worlds are procedural maps instead (render.skies: random skies with
skylines and grounds, or graded variants of the training HDRIs), named in the scenario
(`sky:<seed>`, `graded:<map>:<seed>`) and made once under $HYBRIDSIM_CACHE/environments. The HDRIs in HELD_OUT_HDRIS never appear in training data, not even
graded, so evaluations under them are held out in lighting as well as in scene. Each scene is `<out>/scene_XXXX.npz` in ClipDataset's format, written
atomically; Cycles is the slow part (~0.8 s per 128^2 frame at 16 samples + denoising on one
core), so a killed `make_pathtraced_clips` resumes at the first missing scene.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridsim.scenario.seeding import derive_seed
from hybridsim.training.refine_data import ELEVATION, DataError, random_scene

# the lit render's version that clip conditions are made with; clips made before a change hold stale
# conditions (recondition_clips re-renders them and keeps the Cycles targets).
# 1: shadow map fitted to all Gaussians, 64 px (sessions 9-10); 2: fitted to the receivers, 128 px,
# normal-offset lookups (session 11: shadows of small objects and of scenes with a far caster)
# 3: the mirror-environment channel carries a lobe around the sun's mirror direction (session 12)
# 4: that sun term is the sun's GGX specular radiance, sized by the material (session 13)
LIT_VERSION = 4

TRAIN_HDRIS = ("city", "courtyard", "interior", "studio", "sunrise", "night")
HELD_OUT_HDRIS = ("forest", "sunset")
PROCEDURAL_SKY_SHARE = 0.6  # of the procedural environments, skies (the rest graded TRAIN_HDRIS maps)


def procedural_environment(seed: int) -> str:
    """`seed`'s procedural environment map by name (hybridsim.scenario.environments): a sky
    (`sky:<seed>`) or a graded variant of one of TRAIN_HDRIS (`graded:<map>:<seed>`), never of a
    held-out map. The renderers make its file on first use."""
    rng = np.random.default_rng(derive_seed(seed, "procedural-env"))
    return f"sky:{seed}" if rng.random() < PROCEDURAL_SKY_SHARE else f"graded:{rng.choice(TRAIN_HDRIS)}:{seed}"


def random_photo_scene(seed: int, *, frames: int = 12, res: int = 128, n_cameras: int = 2,
                       elevation=ELEVATION, plain_floor: float = 0.5, hdri: float = 0.85, default_light: float = 0.0,
                       robot: float = 0.0, procedural: float = 0.0):
    """A refine_data random scene with randomised materials and HDRI lighting (deterministic in seed).

    default_light: probability that the scene keeps the scenario spec's default sun and ambient
    (spec.Lighting(), which most user scenarios keep; the HDRI draw is unchanged) and, on a plain
    floor, a near-neutral grey floor colour like the shipped scenarios'. It draws from its own random
    stream, so scenes made with default_light=0 are the same as before the option existed.
    robot: probability of a robot arm (refine_data.random_scene). It keeps its asset's colours and
    gets one random roughness; its looks are drawn before the light's, so a scene with an arm is lit
    differently from the same seed without one.
    procedural: probability that an HDRI world's map is a procedural one (procedural_environment)
    instead of the shipped map drawn; rotation and strength are kept. Its own random stream: scenes
    made with procedural=0 are the same as before the option existed."""
    from hybridsim.scenario.spec import Lighting, LightingEnvironment, validate

    scen = random_scene(seed, frames=frames, res=res, n_cameras=n_cameras, elevation=elevation,
                        plain_floor=plain_floor, default_light=0.0, robot=robot)
    rng = np.random.default_rng(derive_seed(seed, "photo-looks"))
    ents = []
    for e in scen.entities:
        kind = rng.random()
        app = dataclasses.replace(e.appearance, roughness=float(rng.uniform(0.15, 0.95)))
        if e.name.startswith("obj") and kind < 0.12:
            app = dataclasses.replace(app, metallic=1.0, roughness=float(rng.uniform(0.1, 0.5)))
        elif e.name.startswith("obj") and kind < 0.2 and not app.texture:
            app = dataclasses.replace(app, transmission=1.0, ior=1.45, roughness=float(rng.uniform(0.0, 0.2)))
        ents.append(dataclasses.replace(e, appearance=app))
    lt = scen.lighting
    el, az = math.radians(rng.uniform(20, 80)), rng.uniform(0, 2 * math.pi)
    direction = (-math.cos(az) * math.cos(el), -math.sin(az) * math.cos(el), -math.sin(el))
    env = None
    if rng.random() < hdri:
        env = LightingEnvironment(hdri=str(rng.choice(TRAIN_HDRIS)), rotation=float(rng.uniform(0, 360)),
                                  strength=float(np.exp(rng.uniform(np.log(0.3), np.log(1.2)))))
    if env is not None and np.random.default_rng(derive_seed(seed, "photo-procedural")).random() < procedural:
        env = dataclasses.replace(env, hdri=procedural_environment(seed))
    lighting = dataclasses.replace(lt, direction=direction, intensity=float(rng.uniform(0.5, 5.0)), environment=env)
    rng_default = np.random.default_rng(derive_seed(seed, "photo-default-light"))
    if rng_default.random() < default_light:
        lighting = dataclasses.replace(Lighting(), environment=env)
        grey = float(rng_default.uniform(0.3, 0.65))
        tint = rng_default.uniform(-0.03, 0.03, 3)
        ents = [dataclasses.replace(e, appearance=dataclasses.replace(
                    e.appearance, color=tuple(float(np.clip(grey + t, 0, 1)) for t in tint)))
                if e.type == "plane" else e for e in ents]
    scen = dataclasses.replace(scen, entities=ents, lighting=lighting, name=f"photo_data_{seed}")
    validate(scen)
    return scen


@dataclass(frozen=True)
class PTClipOptions:
    scenes: int = 40
    frames: int = 12
    res: int = 128
    n_envs: int = 2
    n_cameras: int = 2
    seed: int = 0
    samples: int = 16  # Cycles samples per pixel (OpenImageDenoise on)
    elevation: tuple[float, float] = ELEVATION
    plain_floor: float = 0.5
    hdri: float = 0.85  # probability of an HDRI world (else a uniform ambient)
    default_light: float = 0.0  # probability of the spec's default sun + ambient and a grey plain floor
    robot: float = 0.0  # probability of a robot arm beside the objects (refine_data.ROBOTS)
    procedural: float = 0.0  # probability that an HDRI world is a procedural map (procedural_environment)

    def check(self) -> None:
        for name in ("scenes", "frames", "res", "n_envs", "n_cameras", "samples"):
            if getattr(self, name) < 1:
                raise DataError(f"{name}={getattr(self, name)} must be >= 1")
        if self.res % 8:
            raise DataError(f"res={self.res} must be a multiple of 8 (the refiner's patch size)")
        for name in ("plain_floor", "hdri", "default_light", "robot", "procedural"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(f"{name}={getattr(self, name)} must be a probability in [0, 1]")


def make_pathtraced_clips(out_dir: str | Path, opts: PTClipOptions, progress: bool = True) -> list[Path]:
    """Generate (or resume) the path-traced clips; returns the finished scene files in order."""
    from render.pathtrace import preload

    from hybridsim.training.refine_data import arm_generator_option, code_commit, folder_options

    preload()  # before Genesis (see preload)
    opts.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(opts).items()}
    meta.update(arm_generator_option(opts.robot))
    meta_path = out / "clips.json"
    old = folder_options(meta_path, meta, {"default_light": 0.0, "robot": 0.0, "procedural": 0.0, "arm_generator": 1})
    made_by = old.get("code_commit") if old is not None else code_commit()
    meta_path.write_text(json.dumps({**meta, "target": "pathtraced", "code_commit": made_by}, indent=1))
    files = [out / f"scene_{i:04d}.npz" for i in range(opts.scenes)]
    todo = [i for i, f in enumerate(files) if not f.exists()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=opts.scenes, initial=opts.scenes - len(todo), desc="path-traced clips", unit="scene",
                   dynamic_ncols=True)
    for i in todo:
        _make_scene(out, opts, i)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return [f for f in files if f.exists()]


def _make_scene(out: Path, opts: PTClipOptions, i: int) -> None:
    scen = random_photo_scene(derive_seed(opts.seed, "scene", i), frames=opts.frames, res=opts.res,
                              n_cameras=opts.n_cameras, elevation=opts.elevation, plain_floor=opts.plain_floor,
                              hdri=opts.hdri, default_light=opts.default_light, robot=opts.robot,
                              procedural=opts.procedural)
    ref_args = dict(samples=opts.samples, seed=derive_seed(opts.seed, "cycles", i) % (2**31))
    conds, targets = _render_clip(scen, opts.n_envs, ref_args)
    if not np.isfinite(conds).all():  # a bug upstream (an environment map with inf, say): never train on it
        raise DataError(f"scene {i} of {out}: its lit condition holds non-finite values (lighting "
                        f"{scen.lighting.environment}); nothing was written")
    target = np.stack(targets, 1).astype(np.uint8)  # [C*B, T, H, W, 3]
    _save(out / f"scene_{i:04d}.npz", conds, target, json.dumps(scen.to_dict()))


def _render_clip(scen, n_envs: int, ref_args: dict | None = None):
    """-> (cond [C*B, T, 21, H, W] float16 camera-major, Cycles frames per step or None): the lit
    render comes from the pipeline exactly as `hybridsim run` makes it (render.lit)."""
    import torch

    from hybridsim.appearance import PathTracedReference, lit_condition
    from hybridsim.config import RunConfig
    from hybridsim.pipeline import Simulation

    sim = Simulation(RunConfig(scenario=scen, n_envs=n_envs, reference=False, progress=False))
    ref = PathTracedReference(sim.world, sim.look, sim.cameras, **ref_args) if ref_args is not None else None
    mats = sim.materials
    conds, targets = [], []
    try:
        with torch.no_grad():
            for frame in sim.frames():
                conds.append(torch.cat([lit_condition(frame.gbuffer[c.name], frame.lit[c.name], frame.cameras[c.name],
                                                      mats) for c in scen.cameras], 0))
                if ref is not None:
                    pt = ref.render(frame)
                    targets.append(np.concatenate([pt[c.name].rgb for c in scen.cameras], 0))
    finally:
        if ref is not None:
            ref.close()
    return torch.cat(conds, 1).half().numpy(), (targets if ref is not None else None)


def _save(path: Path, cond: np.ndarray, target: np.ndarray, scenario: str) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, cond=cond, target=target, scenario=scenario, lit_version=LIT_VERSION)
    os.replace(tmp, path)  # atomic: a killed job leaves the old file or the new one


def lit_version(path: str | Path) -> int:
    """The lit-render version a clip file's conditions were made with (1 = before versions were kept)."""
    with np.load(path) as z:
        return int(z["lit_version"]) if "lit_version" in z.files else 1


def require_current_conditions(files: list[Path], recondition: bool, option: str, progress: bool = True) -> None:
    """Clips must hold conditions of the current lit render: re-render stale ones (recondition) or
    raise SpecError(option) with the fix, before anything heavy runs."""
    from hybridsim.scenario.spec import SpecError

    stale = [f for f in files if lit_version(f) < LIT_VERSION]
    if stale and not recondition:
        raise SpecError(option, f"{len(stale)} of {len(files)} clips (e.g. {stale[0]}) hold conditions of an older "
                        f"lit render (now version {LIT_VERSION}); add recondition=true to re-render them from their "
                        "scenarios (Cycles targets kept, ~15 s per scene)")
    recondition_clips(stale, progress=progress)


# channels of the lit layout that do not depend on the lighting: depth, alpha, albedo
_GEOMETRY = [3, 4, 7, 8, 9]


def recondition_clips(files: list[Path], progress: bool = True) -> int:
    """Re-render the conditions of path-traced clip files made by an older lit render (lit_version <
    LIT_VERSION), keeping their Cycles targets: the physics is re-run from the stored scenario, and
    its geometry channels must match the stored ones (else the targets would show another state and
    the file is left as it was, with a DataError). Resumable per file; -> files rewritten."""
    stale = [Path(f) for f in files if lit_version(f) < LIT_VERSION]
    if not stale:
        return 0
    from render.pathtrace import preload

    from hybridsim.scenario.environments import is_procedural, rebuild
    from hybridsim.scenario.spec import Scenario

    from tqdm import tqdm

    preload()
    for f in tqdm(stale, desc="re-rendering lit conditions", unit="scene", dynamic_ncols=True, disable=not progress):
        with np.load(f) as z:
            old, target, scenario = z["cond"], z["target"], str(z["scenario"])
        spec = json.loads(scenario)
        env = (spec.get("lighting") or {}).get("environment") or {}
        if env.get("hdri") and not is_procedural(env["hdri"]) and not Path(env["hdri"]).exists():
            # clips made before procedural maps were stored by name hold this machine's cache path
            env["hdri"] = str(rebuild(env["hdri"]) or env["hdri"])
        scen = Scenario.from_dict(spec)
        cond, _ = _render_clip(scen, old.shape[0] // len(scen.cameras))
        gap = float(np.abs(cond[:, :, _GEOMETRY].astype(np.float32) - old[:, :, _GEOMETRY].astype(np.float32)).max())
        if cond.shape != old.shape or gap > 0.02:
            raise DataError(f"{f}: re-running its scenario gives other geometry (max difference {gap:.3f}); its "
                            "Cycles targets no longer match, so it was left as it was: make these clips again")
        _save(f, cond, target, scenario)
    return len(stale)
