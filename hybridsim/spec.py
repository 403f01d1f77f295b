"""Scenario spec v1: typed dataclasses that round-trip with the YAML in `configs/scenario/`.

In YAML, `entities` and `cameras` are mappings keyed by name (so Hydra overrides read
`scenario.entities.box.mass=2`); in Python they are lists of dataclasses carrying `name`.
`Scenario.from_dict` validates everything before anything heavy starts and raises `SpecError`
naming the YAML path of the bad value and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]

ENTITY_TYPES = ("plane", "box", "sphere", "cylinder", "mesh", "urdf", "mjcf")
EVENT_KINDS = ("impulse", "force", "set_velocity", "joint_targets")
MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".stl", ".ply")


class SpecError(ValueError):
    """Invalid scenario or run configuration. `path` is the YAML path of the bad value."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}" if path else message)


@dataclass
class Appearance:
    color: Vec3 | None = None  # RGB in [0, 1]; None = the asset's own materials, else grey
    texture: str | None = None  # image file, or "skimage:NAME" for a scikit-image photograph


@dataclass
class Entity:
    name: str
    type: Literal["plane", "box", "sphere", "cylinder", "mesh", "urdf", "mjcf"]
    size: Vec3 | None = None  # box: full extents, metres
    radius: float | None = None  # sphere, cylinder
    height: float | None = None  # cylinder (axis along body z)
    file: str | None = None  # mesh / urdf / mjcf; "genesis:REL" = asset shipped with Genesis
    scale: float = 1.0
    pos: Vec3 = (0.0, 0.0, 0.0)
    quat: Quat | None = None  # wxyz; or give `euler`
    euler: Vec3 | None = None  # roll, pitch, yaw in degrees (extrinsic x, then y, then z)
    fixed: bool = False
    mass: float | None = None  # kg (wins over density)
    density: float | None = None  # kg/m^3
    friction: float | None = None  # Genesis default (1.0) when None
    restitution: float = 0.0  # in [0, 1)
    lin_vel: Vec3 = (0.0, 0.0, 0.0)  # initial, m/s, world frame
    ang_vel: Vec3 = (0.0, 0.0, 0.0)  # initial, rad/s, world frame
    appearance: Appearance = field(default_factory=Appearance)
    semantic_class: str = "object"
    pos_jitter: float = 0.0  # metres: uniform x/y offset drawn per environment from its seed
    joints: dict[str, float] = field(default_factory=dict)  # robots: initial joint positions
    decompose: bool = False  # mesh: convex decomposition instead of a single convex hull


@dataclass
class Camera:
    name: str
    pos: Vec3
    lookat: Vec3 = (0.0, 0.0, 0.0)
    up: Vec3 = (0.0, 0.0, 1.0)
    fov: float = 45.0  # vertical, degrees
    res: tuple[int, int] = (128, 128)  # width, height in pixels


@dataclass
class Timing:
    duration: float = 2.0  # seconds
    fps: float = 20.0  # output frames per second
    dt: float = 0.01  # physics step, seconds
    substeps: int = 1

    @property
    def steps_per_frame(self) -> int:
        return max(1, round(1.0 / (self.fps * self.dt)))

    @property
    def n_frames(self) -> int:
        return int(math.floor(self.duration * self.fps + 1e-9))


@dataclass
class Event:
    at: float  # seconds
    kind: Literal["impulse", "force", "set_velocity", "joint_targets"]
    entity: str
    vector: Vec3 | None = None  # impulse (N*s) or force (N), world frame
    duration: float | None = None  # force: seconds
    lin_vel: Vec3 | None = None  # set_velocity
    ang_vel: Vec3 | None = None  # set_velocity
    targets: dict[str, float] = field(default_factory=dict)  # joint_targets: joint -> position


@dataclass
class Lighting:
    """Lights of the reference raster render (the splat render is unlit)."""

    direction: Vec3 = (-1.0, -1.0, -1.0)  # directional light, world frame
    color: Vec3 = (1.0, 1.0, 1.0)
    intensity: float = 5.0
    ambient: Vec3 = (0.1, 0.1, 0.1)


@dataclass
class Scenario:
    name: str
    seed: int = 0
    description: str = ""
    gravity: Vec3 = (0.0, 0.0, -9.81)
    timing: Timing = field(default_factory=Timing)
    entities: list[Entity] = field(default_factory=list)
    cameras: list[Camera] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    lighting: Lighting = field(default_factory=Lighting)

    # ------------------------------------------------------------ conversion
    @classmethod
    def from_dict(cls, data: dict, path: str = "scenario", base_dir: str | Path | None = None) -> "Scenario":
        """Build and validate from plain YAML data. Raises SpecError."""
        data = dict(_require_mapping(data, path))
        for key in ("entities", "cameras"):
            if key in data:
                data[key] = _named_list(data[key], f"{path}.{key}")
        scenario = _build(cls, data, path)
        validate(scenario, path, base_dir)
        return scenario

    def to_dict(self) -> dict:
        """Plain data in the YAML layout (entities/cameras keyed by name)."""
        out = _plain(self)
        for key in ("entities", "cameras"):
            out[key] = {item.pop("name"): item for item in out[key]}
        return out

    def entity(self, name: str) -> Entity:
        for e in self.entities:
            if e.name == name:
                return e
        raise KeyError(name)


# ---------------------------------------------------------------------------- generic build


def _require_mapping(data, path: str) -> dict:
    if not isinstance(data, dict):
        raise SpecError(path, f"expected a mapping, got {type(data).__name__} {data!r}")
    return data


def _named_list(data, path: str) -> list:
    if data is None:
        return []
    if isinstance(data, list):  # also accept a list of items that carry `name`
        return data
    out = []
    for name, item in _require_mapping(data, path).items():
        item = dict(_require_mapping(item if item is not None else {}, f"{path}.{name}"))
        if "name" in item and item["name"] != name:
            raise SpecError(f"{path}.{name}.name", f"'{item['name']}' differs from its key '{name}'; drop `name`")
        item["name"] = str(name)
        out.append(item)
    return out


def _build(cls, data: dict, path: str):
    data = _require_mapping(data, path)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise SpecError(f"{path}.{unknown[0]}", f"unknown key; allowed keys are {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        sub = f"{path}.{f.name}"
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(sub, "missing required key")
    return cls(**kwargs)


def _convert(value, tp, path: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path)
    if origin is Literal:
        if value not in args:
            raise SpecError(path, f"{value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise SpecError(path, f"expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise SpecError(path, f"expected a list, got {type(value).__name__}")
        return [_convert(v, args[0], _item_path(path, i, v)) for i, v in enumerate(value)]
    if origin is dict:
        mapping = _require_mapping(value if value is not None else {}, path)
        return {str(k): _convert(v, args[1], f"{path}.{k}") for k, v in mapping.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    return _scalar(value, tp, path)


def _item_path(path: str, i: int, item) -> str:
    """Named items (entities, cameras) are addressed by name, as they are keyed in YAML."""
    if isinstance(item, dict) and isinstance(item.get("name"), str) and not path.endswith("events"):
        return f"{path}.{item['name']}"
    return f"{path}[{i}]"


def _scalar(value, tp, path: str):
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpecError(path, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(path, f"expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported field type {tp} at {path}")  # programming error, not user input


def _plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------- semantics


def validate(s: Scenario, path: str = "scenario", base_dir: str | Path | None = None) -> None:
    """Checks that need more than one field. Raises SpecError with the YAML path."""
    t = s.timing
    for key in ("duration", "fps", "dt"):
        if getattr(t, key) <= 0:
            raise SpecError(f"{path}.timing.{key}", f"must be > 0, got {getattr(t, key)}")
    if t.substeps < 1:
        raise SpecError(f"{path}.timing.substeps", f"must be >= 1, got {t.substeps}")
    ratio = 1.0 / (t.fps * t.dt)
    if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
        raise SpecError(f"{path}.timing", f"1/(fps*dt) = {ratio:.4g} must be a whole number of steps per frame; "
                        f"pick dt = 1/(fps*n), e.g. dt={1.0 / (t.fps * max(1, round(ratio))):.6g}")
    if s.seed < 0:
        raise SpecError(f"{path}.seed", f"must be >= 0, got {s.seed}")
    _validate_lighting(s.lighting, f"{path}.lighting")
    names: set[str] = set()
    for e in s.entities:
        _validate_entity(e, f"{path}.entities.{e.name}", base_dir)
        if e.name in names:
            raise SpecError(f"{path}.entities.{e.name}", "duplicate entity name")
        names.add(e.name)
    if not s.cameras:
        raise SpecError(f"{path}.cameras", "at least one camera is needed")
    for c in s.cameras:
        _validate_camera(c, f"{path}.cameras.{c.name}")
    for i, ev in enumerate(s.events):
        _validate_event(ev, s, f"{path}.events[{i}]")


def _validate_entity(e: Entity, path: str, base_dir) -> None:
    need = {"box": ["size"], "sphere": ["radius"], "cylinder": ["radius", "height"],
            "mesh": ["file"], "urdf": ["file"], "mjcf": ["file"]}.get(e.type, [])
    for key in need:
        if getattr(e, key) is None:
            raise SpecError(f"{path}.{key}", f"required for type '{e.type}'")
    for key in ("radius", "height", "mass", "density", "scale"):
        v = getattr(e, key)
        if v is not None and v <= 0:
            raise SpecError(f"{path}.{key}", f"must be > 0, got {v}")
    if e.size is not None and min(e.size) <= 0:
        raise SpecError(f"{path}.size", f"all extents must be > 0, got {list(e.size)}")
    if e.friction is not None and not 0.01 <= e.friction <= 5.0:
        raise SpecError(f"{path}.friction", f"must be in [0.01, 5], got {e.friction}")
    if not 0.0 <= e.restitution < 1.0:
        raise SpecError(f"{path}.restitution", f"must be in [0, 1), got {e.restitution}")
    if e.quat is not None and e.euler is not None:
        raise SpecError(f"{path}.euler", "give either quat or euler, not both")
    if e.quat is not None and abs(math.sqrt(sum(q * q for q in e.quat)) - 1.0) > 1e-3:
        raise SpecError(f"{path}.quat", f"must be a unit quaternion (wxyz), got {list(e.quat)}")
    if e.appearance.color is not None and any(not 0.0 <= c <= 1.0 for c in e.appearance.color):
        raise SpecError(f"{path}.appearance.color", f"RGB values must be in [0, 1], got {list(e.appearance.color)}")
    if e.pos_jitter < 0:
        raise SpecError(f"{path}.pos_jitter", f"must be >= 0, got {e.pos_jitter}")
    if e.pos_jitter > 0 and (e.fixed or e.type in ("plane", "urdf", "mjcf")):
        raise SpecError(f"{path}.pos_jitter", "only free rigid bodies can be jittered; set it to 0")
    if e.file is not None:
        if e.type == "mesh" and Path(e.file).suffix.lower() not in MESH_SUFFIXES:
            raise SpecError(f"{path}.file", f"mesh format {Path(e.file).suffix!r} not supported; use {MESH_SUFFIXES}")
        resolve_file(e.file, f"{path}.file", base_dir)
    if e.appearance.texture is not None:
        resolve_texture(e.appearance.texture, f"{path}.appearance.texture", base_dir)


def _validate_lighting(lt: Lighting, path: str) -> None:
    for key in ("color", "ambient"):
        if any(not 0.0 <= c <= 1.0 for c in getattr(lt, key)):
            raise SpecError(f"{path}.{key}", f"RGB values must be in [0, 1], got {list(getattr(lt, key))}")
    if lt.intensity < 0:
        raise SpecError(f"{path}.intensity", f"must be >= 0, got {lt.intensity}")
    if sum(c * c for c in lt.direction) < 1e-12:
        raise SpecError(f"{path}.direction", "must be a non-zero vector")


def _validate_camera(c: Camera, path: str) -> None:
    if not 1.0 <= c.fov < 179.0:
        raise SpecError(f"{path}.fov", f"must be in [1, 179) degrees, got {c.fov}")
    if min(c.res) < 8 or max(c.res) > 4096:
        raise SpecError(f"{path}.res", f"width and height must be in [8, 4096], got {list(c.res)}")
    if sum((a - b) ** 2 for a, b in zip(c.pos, c.lookat)) < 1e-12:
        raise SpecError(f"{path}.lookat", "must differ from pos")


def _validate_event(ev: Event, s: Scenario, path: str) -> None:
    names = [e.name for e in s.entities]
    if ev.entity not in names:
        raise SpecError(f"{path}.entity", f"unknown entity '{ev.entity}'; entities are {names}")
    if ev.at < 0:  # events after the end are allowed (a shortened run simply never reaches them)
        raise SpecError(f"{path}.at", f"must be >= 0 seconds, got {ev.at}")
    ent = s.entity(ev.entity)
    robot = ent.type in ("urdf", "mjcf")
    if ev.kind == "joint_targets":
        if not robot:
            raise SpecError(f"{path}.entity", f"'{ev.entity}' is a {ent.type}; joint_targets needs a urdf/mjcf robot")
        if not ev.targets:
            raise SpecError(f"{path}.targets", "give at least one joint: position")
        return
    if robot or ent.fixed or ent.type == "plane":
        raise SpecError(f"{path}.entity", f"'{ev.entity}' is not a free rigid body; {ev.kind} needs one")
    if ev.kind in ("impulse", "force") and ev.vector is None:
        raise SpecError(f"{path}.vector", f"required for {ev.kind} (world-frame x, y, z)")
    if ev.kind == "force" and (ev.duration is None or ev.duration <= 0):
        raise SpecError(f"{path}.duration", f"force needs a duration > 0 seconds, got {ev.duration}")
    if ev.kind == "set_velocity" and ev.lin_vel is None and ev.ang_vel is None:
        raise SpecError(f"{path}.lin_vel", "set_velocity needs lin_vel and/or ang_vel")


def resolve_file(name: str, path: str = "", base_dir=None) -> Path:
    """Find a mesh/robot file: absolute, relative to the YAML or CWD, or 'genesis:' assets."""
    candidates: list[Path] = []
    if name.startswith("genesis:"):
        candidates.append(_genesis_assets() / name.split(":", 1)[1])
    else:
        p = Path(name).expanduser()
        candidates += [p] if p.is_absolute() else [Path(base_dir or ".") / p, Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise SpecError(path, f"file not found: '{name}' (looked at {[str(c) for c in candidates]}); "
                    "give an existing path or 'genesis:<path inside Genesis assets>'")


def resolve_texture(name: str, path: str = "", base_dir=None) -> Path | str:
    if name.startswith("skimage:"):
        from hybridsim.textures import skimage_names

        key = name.split(":", 1)[1]
        if key not in skimage_names():
            raise SpecError(path, f"unknown scikit-image texture '{key}'; choose from {skimage_names()}")
        return name
    return resolve_file(name, path, base_dir)


def _genesis_assets() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("genesis")
    if spec is None or spec.origin is None:
        raise SpecError("", "genesis is not installed; pip install genesis-world")
    return Path(spec.origin).parent / "assets"
