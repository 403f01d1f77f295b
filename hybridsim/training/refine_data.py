"""Paired training clips for the refiner: splat G-buffer (input) vs Genesis' raster render (target).

Scenes are procedural and randomised from one data seed: a floor (plain plane or a textured slab),
sometimes a table, 2-4 dropped or thrown objects (boxes textured with scikit-image photographs,
coloured boxes, spheres, cylinders), random directional light and ambient level, and random cameras
around the objects; with probability `robot`, a robot arm (a Franka Panda or a UR5e) beside them
that moves to a second pose early in the clip. None of the shipped scenarios (configs/scenario/) is used, so they stay held out
for evaluation (`hybridsim.training.refine_eval`).

One Genesis build per scene, `n_envs` environments (position jitter per environment) and
`n_cameras` cameras give n_envs * n_cameras clips per build. Each scene is stored as
`<out>/scene_XXXX.npz` (cond float16 [N, T, 14, H, W], target uint8 [N, T, H, W, 3]), written
atomically, so an interrupted `make_clips` resumes by skipping finished scenes.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridsim.scenario.cache import cache_dir
from hybridsim.scenario.seeding import derive_seed
from hybridsim.scenario.spec import Appearance, Camera, Entity, Event, Lighting, Scenario, Timing, validate
from hybridsim.scenario.textures import skimage_names
from refine.config import COND_CHANNELS, SHADING_CHANNELS

# Photographs used for training textures. Keep in sync with docs: `text` and `moon` are left out
# because they are nearly flat grey at 128 px.
TRAIN_TEXTURES = tuple(n for n in skimage_names() if n not in ("text", "moon"))


CLIP_COND_CHANNELS = COND_CHANNELS + SHADING_CHANNELS  # what make_clips stores: shading cues included


class DataError(RuntimeError):
    """Bad options for clip generation, or a clip folder that does not match them."""


# ---------------------------------------------------------------------------- geometry helpers


def textured_box_obj(size: tuple[float, float, float], tile: float = 0.25) -> Path:
    """A box mesh (OBJ, centred, full extents `size`) with per-face UVs repeating every `tile` m.

    Genesis primitives have no texture coordinates, so textured boxes are meshes. Files are cached
    under $HYBRIDSIM_CACHE (default ~/.cache/hybridsim)/meshes, keyed by size and tile.
    """
    sx, sy, sz = (float(s) for s in size)
    cache = cache_dir("meshes")
    path = cache / f"box2_{sx:.4f}_{sy:.4f}_{sz:.4f}_t{tile:.3f}.obj"  # box2: outward winding
    if path.exists():
        return path
    h = np.array([sx, sy, sz]) / 2
    lines, vt_lines, faces = [], [], []
    # each face: (normal axis, sign); corners listed counter-clockwise seen from outside
    for axis in range(3):
        for sign in (1.0, -1.0):
            u_ax, v_ax = (axis + 1) % 3, (axis + 2) % 3  # e_u x e_v = +e_axis: counter-clockwise from +axis
            if sign < 0:
                u_ax, v_ax = v_ax, u_ax
            base = len(lines)
            for cu, cv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = np.zeros(3)
                p[axis], p[u_ax], p[v_ax] = sign * h[axis], cu * h[u_ax], cv * h[v_ax]
                lines.append(p)
                vt_lines.append(((cu + 1) * h[u_ax] / tile, (cv + 1) * h[v_ax] / tile))
            faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    text = ["# hybridsim textured box"]
    text += [f"v {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}" for p in lines]
    text += [f"vt {u:.6f} {v:.6f}" for u, v in vt_lines]
    text += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("\n".join(text) + "\n")
    os.replace(tmp, path)
    return path


ELEVATION = (18.0, 60.0)  # camera elevation range, degrees above the horizontal (the shipped data's)
PLAIN_FLOOR = 0.5  # probability of a plain-coloured infinite floor (else a photo-textured slab); the shipped data's
DEFAULT_LIGHT = 0.25  # probability that a scene keeps the scenario's default light; the shipped data's

# Robot arms a random scene may hold (Genesis' own MJCF assets): file, a home pose, and how far each
# joint of the pose is drawn around it (radians). Joints listed in ROBOT_MIMIC follow another (the
# Panda's fingers are tied by an equality constraint). The arm stands beside the objects, turned so
# that its hand reaches toward them, and is driven to a second random pose early in the clip; every
# pose is checked by forward kinematics to keep the links above the floor and out of the table.
ROBOTS = (
    ("genesis:xml/franka_emika_panda/panda.xml",
     {"joint1": 0.0, "joint2": 0.1, "joint3": 0.0, "joint4": -2.3, "joint5": 0.0, "joint6": 2.5, "joint7": 0.78,
      "finger_joint1": 0.02, "finger_joint2": 0.02},
     {"joint1": 0.9, "joint2": 0.3, "joint4": 0.3, "joint6": 0.3, "finger_joint1": 0.02}),
    ("genesis:xml/universal_robots_ur5e/ur5e.xml",
     {"shoulder_pan": 0.0, "shoulder_lift": -1.9, "elbow": 1.9, "wrist_1": -1.57, "wrist_2": -1.57, "wrist_3": 0.0},
     {"shoulder_pan": 0.9, "shoulder_lift": 0.4, "elbow": 0.4, "wrist_1": 0.5, "wrist_3": 1.5}),
)
ROBOT_MIMIC = {"finger_joint2": "finger_joint1"}
ROBOT_CLEARANCE = 0.05  # metres kept between the arm's link axes and the floor or the table (a link's radius)
# how robot arms are placed; clip folders with robots record it, and one made by an older placement
# is not resumed by a newer one (its scenes would mix two generators). 1: kinematic aim, clear of the
# floor and the table (session 14); 2: also clear of the dropped objects' spawn spheres (session 15)
ARM_GENERATOR = 2


def arm_generator_option(robot: float) -> dict:
    """The clips.json entry recording ARM_GENERATOR for a folder with robots ({} without)."""
    return {"arm_generator": ARM_GENERATOR} if robot > 0 else {}


def _look_from(rng: np.random.Generator, target: np.ndarray, res: int, name: str,
               elevation: tuple[float, float] = ELEVATION, reach: float = 1.0) -> Camera:
    az = rng.uniform(0, 2 * math.pi)
    el = math.radians(rng.uniform(*elevation))
    dist = reach * rng.uniform(1.3, 2.8)
    pos = target + dist * np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    look = target + rng.normal(0, 0.05, 3)
    # looking (nearly) straight down, world z is no usable up: take the horizontal away from the camera
    up = (0.0, 0.0, 1.0) if el < math.radians(75) else (-math.cos(az), -math.sin(az), 0.0)
    return Camera(name=name, pos=tuple(float(v) for v in pos), lookat=tuple(float(v) for v in look),
                  up=up, fov=float(rng.uniform(35, 55)), res=(res, res))


def _color(rng: np.random.Generator) -> tuple[float, float, float]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.3, 0.95))
    return (float(r), float(g), float(b))


def random_scene(seed: int, *, frames: int = 16, res: int = 128, n_cameras: int = 2,
                 fps: float = 20.0, elevation: tuple[float, float] = ELEVATION, plain_floor: float = PLAIN_FLOOR,
                 default_light: float = DEFAULT_LIGHT, robot: float = 0.0) -> Scenario:
    """A randomised training scene (see the module docstring). Deterministic in `seed` and the
    options; the default probabilities are the thresholds the shipped data was made with.

    robot: probability that a robot arm (one of ROBOTS) stands beside the objects and moves. It
    draws from its own random stream and is appended last, so scenes without one are the same as
    before the option existed."""
    rng = np.random.default_rng(derive_seed(seed, "refine-data-scene"))
    ents: list[Entity] = []
    if rng.random() < plain_floor:
        ents.append(Entity(name="ground", type="plane", appearance=Appearance(color=_color(rng)),
                           semantic_class="floor"))
    else:
        tex = str(rng.choice(TRAIN_TEXTURES))
        ents.append(Entity(name="ground", type="mesh", file=str(textured_box_obj((4.0, 4.0, 0.1), tile=0.6)),
                           pos=(0.0, 0.0, -0.05), fixed=True, semantic_class="floor",
                           appearance=Appearance(texture=f"skimage:{tex}")))
    top, table = 0.0, None
    if rng.random() < 0.5:  # a table
        w, d, h = rng.uniform(0.7, 1.2), rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.7)
        table = (float(w), float(d), float(h))
        app = (Appearance(texture=f"skimage:{rng.choice(TRAIN_TEXTURES)}") if rng.random() < 0.5
               else Appearance(color=_color(rng)))
        kind = "mesh" if app.texture else "box"
        ents.append(Entity(name="table", type=kind, size=None if app.texture else (w, d, h),
                           file=str(textured_box_obj((w, d, h))) if app.texture else None,
                           pos=(0.0, 0.0, h / 2), fixed=True, friction=0.8, appearance=app,
                           semantic_class="table"))
        top = h
    n_obj = int(rng.integers(2, 5))
    spawns = []  # (centre, bounding radius + pos_jitter) of each dropped object, for the arm's clearance
    for i in range(n_obj):
        kind = rng.choice(["tex_box", "box", "sphere", "cylinder"], p=[0.35, 0.2, 0.25, 0.2])
        s = rng.uniform(0.06, 0.22)
        pos = (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.25, 0.25)), float(top + rng.uniform(0.15, 0.6)))
        common = dict(name=f"obj{i}", pos=pos, euler=tuple(float(v) for v in rng.uniform(-180, 180, 3)),
                      density=float(rng.uniform(200, 1000)), friction=float(rng.uniform(0.3, 1.0)),
                      restitution=float(rng.uniform(0.0, 0.5)), pos_jitter=0.05,
                      lin_vel=tuple(float(v) for v in rng.normal(0, 0.5, 3)),
                      ang_vel=tuple(float(v) for v in rng.normal(0, 2.0, 3)))
        if kind == "tex_box":
            size = tuple(float(v) for v in s * rng.uniform(0.6, 1.4, 3))
            ents.append(Entity(type="mesh", file=str(textured_box_obj(size, tile=max(size))),
                               appearance=Appearance(texture=f"skimage:{rng.choice(TRAIN_TEXTURES)}"),
                               semantic_class="box", **common))
        elif kind == "box":
            ents.append(Entity(type="box", size=tuple(float(v) for v in s * rng.uniform(0.6, 1.4, 3)),
                               appearance=Appearance(color=_color(rng)), semantic_class="box", **common))
        elif kind == "sphere":
            ents.append(Entity(type="sphere", radius=float(s / 2), appearance=Appearance(color=_color(rng)),
                               semantic_class="ball", **common))
        else:
            ents.append(Entity(type="cylinder", radius=float(s / 3), height=float(s),
                               appearance=Appearance(color=_color(rng)), semantic_class="can", **common))
        bound = {"sphere": 0.5, "cylinder": math.hypot(1 / 3, 1 / 2)}.get(kind, 0.7 * math.sqrt(3)) * s
        # + pos_jitter (0.05 per axis; a diagonal shift of up to 0.07 can eat 2 cm of ROBOT_CLEARANCE)
        spawns.append((pos, bound + 0.05))
    target = np.array([0.0, 0.0, top + 0.1])
    reach = 1.0
    rng_robot = np.random.default_rng(derive_seed(seed, "refine-data-robot"))
    if rng_robot.random() < robot:
        arm, events = _robot_arm(rng_robot, table, fps, spawns)
        ents.append(arm)
        # aim between the objects and the arm's shoulder, from further away, so both are in view
        target = 0.5 * (target + np.array([arm.pos[0], arm.pos[1], 0.45]))
        reach = 1.15
    else:
        events = []
    cams = [_look_from(rng, target, res, f"cam{i}", elevation, reach) for i in range(n_cameras)]
    el, az = math.radians(rng.uniform(25, 80)), rng.uniform(0, 2 * math.pi)
    direction = (-math.cos(az) * math.cos(el), -math.sin(az) * math.cos(el), -math.sin(el))
    tint = 1.0 - rng.uniform(0, 0.25, 3) * (rng.random(3) < 0.5)
    amb = float(rng.uniform(0.05, 0.3))
    lighting = Lighting(direction=direction, color=tuple(float(v) for v in tint),
                        intensity=float(rng.uniform(2.5, 7.0)), ambient=(amb, amb, amb))
    if rng.random() < default_light:  # the scenario default, which most user scenarios keep
        lighting = Lighting()
    scen = Scenario(name=f"refine_data_{seed}", seed=int(seed) % (2**31), entities=ents, cameras=cams,
                    timing=Timing(duration=frames / fps, fps=fps, dt=1.0 / (fps * 5), substeps=2),
                    lighting=lighting, events=events)
    validate(scen)
    return scen


def _robot_arm(rng: np.random.Generator, table: tuple[float, float, float] | None, fps: float,
               objects=()) -> tuple[Entity, list[Event]]:
    """A ROBOTS arm on the floor beside the objects (and the table of full extents `table`, if any),
    turned so that its hand reaches toward them, with a joint_targets event early in the clip that
    drives it to a second random pose. Poses whose links would dip into the floor or the table, or
    pass through an object's spawn sphere (`objects`: (centre, radius) pairs), are drawn again; after
    20 misses the arm steps 0.1 m further out."""
    file, home, spread = ROBOTS[int(rng.integers(len(ROBOTS)))]
    az = rng.uniform(0, 2 * math.pi)
    r = max(0.6, math.hypot(*table[:2]) / 2 + 0.25 if table else 0.0) + rng.uniform(0.0, 0.2)

    def pose() -> dict[str, float]:
        q = {j: float(v + rng.uniform(-spread.get(j, 0.0), spread.get(j, 0.0))) for j, v in home.items()
             if j not in ROBOT_MIMIC}
        return {j: q[ROBOT_MIMIC.get(j, j)] for j in home}

    kin = _ArmKinematics.of(file)
    yaw = math.atan2(-math.sin(az), -math.cos(az)) - kin.reach_azimuth(home)  # hand toward the origin
    for attempt in range(100):
        dist = r + 0.1 * (attempt // 20)
        pos = (dist * math.cos(az), dist * math.sin(az), 0.0)
        start, goal = pose(), pose()
        if kin.clear(start, pos, yaw, table, objects) and kin.clear(goal, pos, yaw, table, objects):
            break
    else:
        raise DataError(f"no clear pose for {file} beside a table of {table} and objects at "
                        f"{[tuple(round(c, 2) for c in o[0]) for o in objects]} in 100 draws")
    arm = Entity(name="robot", type="mjcf", file=file, pos=tuple(float(v) for v in pos),
                 euler=(0.0, 0.0, float(math.degrees(yaw))), semantic_class="robot", joints=start)
    event = Event(name="robot_move", at=float(rng.uniform(1.0, 3.0) / fps), kind="joint_targets", entity="robot",
                  targets=goal)
    return arm, [event]


class _ArmKinematics:
    """MuJoCo forward kinematics of a ROBOTS asset (the same MJCF Genesis loads): where its links are
    for a joint pose, to aim the arm and to reject poses through the floor or the table. `of(file)`
    loads each asset once per process."""

    def __init__(self, file: str) -> None:
        import mujoco

        from hybridsim.scenario.files import resolve_file

        self._mj = mujoco
        self.model = mujoco.MjModel.from_xml_path(str(resolve_file(file)))
        self.data = mujoco.MjData(self.model)

    @classmethod
    @functools.cache
    def of(cls, file: str) -> "_ArmKinematics":
        return cls(file)

    def _bodies(self, joints: dict[str, float]) -> np.ndarray:
        """-> [nbody - 1, 3] body origins in the asset's frame (world body dropped)."""
        m, d = self.model, self.data
        d.qpos[:] = 0.0
        for name, q in joints.items():
            d.qpos[m.jnt_qposadr[m.joint(name).id]] = q
        self._mj.mj_kinematics(m, d)
        return d.xpos[1:].copy()

    def reach_azimuth(self, joints: dict[str, float]) -> float:
        """Azimuth (radians, asset frame) of the last link, the hand, in this pose."""
        x, y, _ = self._bodies(joints)[-1]
        return math.atan2(y, x)

    def clear(self, joints: dict[str, float], pos, yaw: float, table: tuple[float, float, float] | None,
              objects=()) -> bool:
        """Every point along the link axes (parent to child origin, 5 per link, from the second link on) of the arm placed at
        `pos` turned by `yaw` stays ROBOT_CLEARANCE above the floor, outside the table box (full
        extents, centred on the origin, standing on the floor) grown by it, and ROBOT_CLEARANCE
        outside each (centre, radius) sphere in `objects`."""
        b = self._bodies(joints)
        parent = self.model.body_parentid[3:] - 1  # each link's parent, as a row of b; the base
        t = np.linspace(0.0, 1.0, 5)[:, None, None]  # (row 0, on the floor) and its first joint are skipped
        pts = (b[None, parent] * (1 - t) + b[None, 2:] * t).reshape(-1, 3)
        c, s = math.cos(yaw), math.sin(yaw)
        world = pts @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]) + np.asarray(pos)
        if (world[:, 2] < ROBOT_CLEARANCE).any():
            return False
        for centre, radius in objects:
            if (np.linalg.norm(world - np.asarray(centre), axis=1) < radius + ROBOT_CLEARANCE).any():
                return False
        if table is None:
            return True
        half = np.array([table[0] / 2, table[1] / 2, table[2] / 2]) + ROBOT_CLEARANCE
        inside = (np.abs(world - np.array([0.0, 0.0, table[2] / 2])) < half).all(axis=1)
        return not inside.any()


# ---------------------------------------------------------------------------- clip generation


def folder_options(meta_path: Path, meta: dict, added: dict) -> dict | None:
    """The clips.json of an existing clip folder (None for a new one), checked against this run's
    options `meta` (all but `scenes` must match). `added` maps options introduced after folders were
    first made to the value such a folder was made with. DataError naming every difference."""
    if not meta_path.exists():
        return None
    old = {**added, **json.loads(meta_path.read_text())}
    diff = {k: (old.get(k), v) for k, v in meta.items() if k != "scenes" and old.get(k) != v}
    if diff:
        raise DataError(f"{meta_path.parent} holds clips made with other options {diff} (old, new); use another "
                        "data folder or the same options")
    return old


@dataclass(frozen=True)
class ClipOptions:
    scenes: int = 12
    frames: int = 16
    res: int = 128
    n_envs: int = 4
    n_cameras: int = 2
    seed: int = 0
    elevation: tuple[float, float] = ELEVATION  # degrees; 90 = looking straight down
    plain_floor: float = PLAIN_FLOOR  # probability of a plain floor (else a photo-textured slab)
    default_light: float = DEFAULT_LIGHT  # probability of the scenario's default light (else random)
    robot: float = 0.0  # probability of a robot arm beside the objects (ROBOTS)

    def check(self) -> None:
        for name in ("scenes", "frames", "res", "n_envs", "n_cameras"):
            if getattr(self, name) < 1:
                raise DataError(f"{name}={getattr(self, name)} must be >= 1")
        lo, hi = self.elevation
        if not 0.0 <= lo <= hi <= 90.0:
            raise DataError(f"elevation={lo},{hi} must satisfy 0 <= low <= high <= 90 (degrees)")
        for name in ("plain_floor", "default_light", "robot"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(f"{name}={getattr(self, name)} must be a probability in [0, 1]")
        if self.res % 8:
            raise DataError(f"res={self.res} must be a multiple of 8 (the refiner's patch size)")


SCENE_TIMEOUT_S = 300.0  # one scene normally takes 5-30 s; see make_clips


def make_clips(out_dir: str | Path, opts: ClipOptions, progress: bool = True,
               scene_timeout: float = SCENE_TIMEOUT_S) -> list[Path]:
    """Generate (or resume) the paired clips. Returns the finished scene files in order.

    Scenes are made in a child process, in order. A scene that makes no progress for
    `scene_timeout` seconds is killed and skipped (recorded in clips.json "skipped"): Genesis'
    software rasteriser (llvmpipe through pyrender) was seen to spin forever on one frame of one
    random scene, and a data job should lose that scene, not the night.
    """
    import multiprocessing as mp
    import time

    opts.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(opts, k) for k in ("scenes", "frames", "res", "n_envs", "n_cameras", "seed")}
    meta["elevation"] = [float(v) for v in opts.elevation]
    meta["plain_floor"], meta["default_light"] = float(opts.plain_floor), float(opts.default_light)
    meta["robot"] = float(opts.robot)
    meta.update(arm_generator_option(opts.robot))
    meta["cond_channels"] = CLIP_COND_CHANNELS  # clips made before the shading cues have 7
    meta_path = out / "clips.json"
    skipped: list[int] = []
    made_by = None
    old = folder_options(meta_path, meta, {"elevation": list(ELEVATION), "plain_floor": PLAIN_FLOOR,
                                           "default_light": DEFAULT_LIGHT, "robot": 0.0, "arm_generator": 1})
    if old is not None:
        skipped = [int(i) for i in old.get("skipped", [])]
        made_by = old.get("code_commit")
    else:
        made_by = code_commit()

    def write_meta() -> None:  # code_commit: the code that made the clips (kept when resuming)
        meta_path.write_text(json.dumps({**meta, "skipped": sorted(skipped), "code_commit": made_by}, indent=1))

    write_meta()
    files = [out / f"scene_{i:04d}.npz" for i in range(opts.scenes)]
    todo = [i for i, f in enumerate(files) if not f.exists() and i not in skipped]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=opts.scenes, initial=opts.scenes - len(todo), desc="paired clips", unit="scene",
                   dynamic_ncols=True)
    ctx = mp.get_context("spawn")
    import torch

    while todo:
        child = ctx.Process(target=_clip_worker, args=(str(out), opts, todo, torch.get_num_threads()), daemon=True)
        child.start()
        last = time.monotonic()
        while todo:
            if files[todo[0]].exists():
                todo.pop(0)
                last = time.monotonic()
                if bar is not None:
                    bar.update(1)
                continue
            if not child.is_alive():
                child.join()
                if child.exitcode != 0:
                    raise DataError(f"making scene {todo[0]} failed (worker exit code {child.exitcode}); the "
                                    f"finished scenes in {out} are kept, run again to resume")
                break
            if time.monotonic() - last > scene_timeout:
                child.kill()
                child.join()
                bad = todo.pop(0)
                skipped.append(bad)
                write_meta()
                msg = (f"scene {bad} made no progress for {scene_timeout:.0f} s and was skipped "
                       f"(recorded in {meta_path.name})")
                (bar.write if bar is not None else print)(msg)
                if bar is not None:
                    bar.update(1)
                break
            time.sleep(0.2)
        if child.is_alive():
            child.join()
    if bar is not None:
        bar.close()
    return [f for f in files if f.exists()]


def code_commit() -> str | None:
    """The git commit of this checkout (+ "-dirty" with uncommitted changes), None outside git."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _clip_worker(out_dir: str, opts: ClipOptions, todo: list[int], threads: int) -> None:
    """Child process of make_clips: build and record the scenes in `todo`, in order."""
    import torch

    from hybridsim.config import RunConfig, RenderConfig
    from hybridsim.pipeline import Simulation
    from hybridsim.refining import condition_from_gbuffer

    torch.set_num_threads(threads)
    out = Path(out_dir)
    for i in todo:
        path = out / f"scene_{i:04d}.npz"
        scen = random_scene(derive_seed(opts.seed, "scene", i), frames=opts.frames, res=opts.res,
                            n_cameras=opts.n_cameras, elevation=opts.elevation, plain_floor=opts.plain_floor,
                            default_light=opts.default_light, robot=opts.robot)
        cfg = RunConfig(scenario=scen, n_envs=opts.n_envs, reference=True, progress=False,
                        render=RenderConfig())
        sim = Simulation(cfg)
        conds, targets = [], []
        with torch.no_grad():
            for frame in sim.frames():
                conds.append(torch.cat([condition_from_gbuffer(frame.gbuffer[c.name], frame.cameras[c.name],
                                                               scen.lighting) for c in scen.cameras], 0))
                targets.append(np.concatenate([frame.reference[c.name].rgb for c in scen.cameras], 0))
        # [C*B, T, 14, H, W] (camera-major), [C*B, T, H, W, 3]
        cond = torch.cat(conds, 1).half().numpy()
        target = np.stack(targets, 1).astype(np.uint8)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, cond=cond, target=target, scenario=json.dumps(scen.to_dict()))
        os.replace(tmp, path)
        del sim


def clip_files(folder: str | Path) -> list[Path]:
    """The finished scene files of a clip folder, in order (scene_0000.npz ...; an unfinished
    scene_0003.<pid>.tmp.npz is not one)."""
    return [f for f in sorted(Path(folder).expanduser().glob("scene_*.npz")) if f.stem[6:].isdigit()]


class NpzArray:
    """Array `key` of an .npz file, read one slice along its first axis at a time (`arr[k]`, a fresh
    writable array). Stored uncompressed in C order (np.savez, as clip files are), each slice is read
    from disk when asked for: the data costs page cache, which the kernel can drop and which
    parallel trainings on the same files share, and no file stays open (a data set of thousands of
    scenes needs no file handles). Any other member is read into memory once."""

    def __init__(self, path: str | Path, key: str):
        import struct
        import zipfile

        self.path, self.key, self._data = Path(path), key, None
        fortran = False
        try:
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo(f"{key}.npy")
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataError(f"{path} is no clip file with an array {key!r} ({e}); make the clips again") from None
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)  # the member's local header: its name and extra field come next
            if local[:4] != b"PK\x03\x04":
                raise DataError(f"{path}: broken zip member {key}.npy; make the clips again")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            if info.compress_type == zipfile.ZIP_STORED:  # else np.load reads it below
                version = np.lib.format.read_magic(fh)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                self.shape, fortran, self.dtype = read(fh)
                self._offset = fh.tell()
        stored = info.compress_type == zipfile.ZIP_STORED
        if not stored or fortran or self.dtype.hasobject or not self.shape:
            with np.load(path) as z:  # compressed, Fortran order or a scalar: in memory (objects refused)
                self._data = z[key]
            self.shape, self.dtype = self._data.shape, self._data.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k: int) -> np.ndarray:
        if self._data is not None:
            return np.array(self._data[k])
        k = range(self.shape[0])[k]  # IndexError out of range; negative indices count from the end
        n = int(np.prod(self.shape[1:], dtype=np.int64))
        with open(self.path, "rb") as fh:
            fh.seek(self._offset + k * n * self.dtype.itemsize)
            out = np.fromfile(fh, dtype=self.dtype, count=n)
        if out.size != n:
            raise DataError(f"{self.path}: {self.key} is cut short (slice {k}); make the clips again")
        return out.reshape(self.shape[1:])

    def read(self) -> np.ndarray:
        """The whole array."""
        if self._data is not None:
            return np.array(self._data)
        return np.stack([self[k] for k in range(len(self))]) if self.shape[0] else np.empty(self.shape, self.dtype)


class ClipDataset:
    """Map-style dataset over the scene files: item i -> (cond [T, channels, H, W], target [T, 3, H, W]).

    channels: the model's cond_channels; clips store all 14 and the first `channels` are used
    (7 = without the shading cues). Clips are read from disk per item (NpzArray), so a data set
    larger than the memory trains, and parallel trainings share one page cache.
    """

    def __init__(self, files: list[Path], channels: int = CLIP_COND_CHANNELS):
        if not files:
            raise DataError("no clip files; run make_clips first")
        self.channels = int(channels)
        self.cond, self.target = [], []
        for f in files:
            self.cond.append(NpzArray(f, "cond"))
            self.target.append(NpzArray(f, "target"))
            if self.cond[-1].shape[2] < self.channels:
                raise DataError(f"{f} has {self.cond[-1].shape[2]} condition channels, the model takes "
                                f"{self.channels}; make the clips again in a new folder")
        self.index = [(s, k) for s, c in enumerate(self.cond) for k in range(c.shape[0])]

    def __len__(self) -> int:
        return len(self.index)

    def describe(self, i: int) -> str:
        """Where item i comes from: its scene file and clip (camera-major: camera * n_envs + env)."""
        s, k = self.index[i]
        return f"{self.cond[s].path} clip {k}"

    def __getitem__(self, i: int):
        import torch

        s, k = self.index[i]
        cond = torch.from_numpy(self.cond[s][k][:, :self.channels].astype(np.float32))
        target = torch.from_numpy(self.target[s][k]).permute(0, 3, 1, 2).float() / 255.0  # a fresh array
        return cond, target
