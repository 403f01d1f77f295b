"""Scenario spec: typed dataclasses that round-trip with the YAML in `configs/scenario/`.

In YAML, `entities`, `templates` and `cameras` are mappings keyed by name (so Hydra overrides read
`scenario.entities.box.mass=2`); in Python they are lists of dataclasses carrying `name`.
`Scenario.from_dict` validates everything before anything heavy starts and raises `SpecError`
naming the YAML path of the bad value and the fix.

v2, the rare-event language (docs/scenarios.md), adds, all optional so v1 files stay valid:
- a distribution in place of any value, and a `params:` block of named ones (hybridsim.scenario.sampling);
- `templates:` (bodies to `spawn`, preallocated `capacity` times) and `held: true` entities;
- events with one trigger (`at`, `after: {event, delay}` or `when: <condition>`), `once` /
  `max_count` and a list of `actions`; a v1 event (`at` + `kind` + `entity` ...) is a timed
  event with one action;
- `require:` (reject an episode where an event did not fire, or fired out of sight) and
  `terminate:` (time limit; everything at rest for a while).
The semantic checks (`validate`) live in `hybridsim.scenario.validate` (re-exported here), those of the
event language in `hybridsim.scenario.events.validate_events`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hybridsim.scenario.sampling import (Distribution, Normal, Param, is_distribution_data, is_param_ref,
                                         parse_distribution, parse_param)

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]

ENTITY_TYPES = ("plane", "box", "sphere", "cylinder", "mesh", "urdf", "mjcf")
EVENT_KINDS = ("impulse", "force", "set_velocity", "joint_targets")  # v1
ACTION_KINDS = ("impulse", "force", "torque", "set_velocity", "joint_targets", "release", "spawn", "remove",
                "set_friction", "set_mass", "set_gravity", "move_camera")
MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".stl", ".ply")
NO_DISTRIBUTION = ("name", "type", "kind", "seed", "capacity", "event", "template", "camera")


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
    held: bool = False  # free body pinned at its pose (kinematic) until a `release` action


@dataclass
class Template(Entity):
    """A body that `spawn` actions place: `capacity` copies named `<name>_<i>` are built parked."""

    capacity: int = 1


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


# ------------------------------------------------------------------ conditions (event triggers)
@dataclass
class Contact:
    a: str  # entity (or template: any of its copies)
    b: str | None = None  # None: anything else
    min_impulse: float = 0.0  # N*s over one physics step, summed over the pair's contacts


@dataclass
class Threshold:  # speed (m/s) or height (z of the body origin, m) of one entity
    entity: str
    above: float | None = None
    below: float | None = None


@dataclass
class Distance:  # between the origins of two entities, metres
    a: str
    b: str
    above: float | None = None
    below: float | None = None


@dataclass
class AtRest:
    entity: str
    for_: float = field(default=0.3, metadata={"key": "for"})  # seconds below `speed`
    speed: float = 0.05  # m/s (and 10x that in rad/s)


@dataclass
class Region:  # axis-aligned box, world frame
    entity: str
    min: Vec3
    max: Vec3


@dataclass
class TimeWindow:  # simulation time, seconds
    above: float | None = None
    below: float | None = None


@dataclass
class Visible:  # the entity's origin projects inside the camera image, in front of it
    entity: str
    camera: str


@dataclass
class Condition:
    """Exactly one leaf, or `all` / `any` of nested conditions."""

    contact: Contact | None = None
    speed: Threshold | None = None
    height: Threshold | None = None
    distance: Distance | None = None
    at_rest: AtRest | None = None
    in_region: Region | None = None
    time: TimeWindow | None = None
    visible: Visible | None = None
    all: list[Condition] = field(default_factory=list)
    any: list[Condition] = field(default_factory=list)


@dataclass
class After:
    event: str
    delay: float = 0.0  # seconds after each firing of `event`


@dataclass
class Action:
    kind: Literal["impulse", "force", "torque", "set_velocity", "joint_targets", "release", "spawn", "remove",
                  "set_friction", "set_mass", "set_gravity", "move_camera"]
    entity: str | None = None
    vector: Vec3 | None = None  # impulse (N*s), force (N), torque (N*m), gravity (m/s^2); world frame
    duration: float | None = None  # force / torque: seconds
    lin_vel: Vec3 | None = None  # set_velocity, spawn
    ang_vel: Vec3 | None = None  # set_velocity, spawn
    targets: dict[str, float] = field(default_factory=dict)  # joint_targets: joint -> position
    value: float | None = None  # set_friction (coefficient), set_mass (kg)
    template: str | None = None  # spawn
    count: int = 1  # spawn: copies placed (at most the template's capacity in all)
    pos: Vec3 | None = None  # spawn: first copy; move_camera: camera position
    offset: Vec3 = (0.0, 0.0, 0.0)  # spawn: from one copy to the next
    euler: Vec3 | None = None  # spawn orientation in degrees (default: the template's)
    camera: str | None = None  # move_camera
    lookat: Vec3 | None = None  # move_camera
    up: Vec3 | None = None  # move_camera


@dataclass
class Event:
    at: float | None = None  # seconds (timed trigger)
    kind: Literal["impulse", "force", "torque", "set_velocity", "joint_targets", "release", "spawn", "remove",
                  "set_friction", "set_mass", "set_gravity", "move_camera"] | None = None  # v1: one inline action
    entity: str | None = None
    vector: Vec3 | None = None  # impulse (N*s) or force (N), world frame
    duration: float | None = None  # force: seconds
    lin_vel: Vec3 | None = None  # set_velocity
    ang_vel: Vec3 | None = None  # set_velocity
    targets: dict[str, float] = field(default_factory=dict)  # joint_targets: joint -> position
    name: str | None = None  # default "event<i>"
    after: After | None = None  # trigger: another event plus a delay
    when: Condition | None = None  # trigger: a condition, on its rising edge
    once: bool = True  # fire at most once (unless max_count is given)
    max_count: int | None = None  # fire at most this many times (rising edges)
    actions: list[Action] = field(default_factory=list)


@dataclass
class Require:
    event: str  # must fire (min_count times) before the episode ends
    visible: list[str] = field(default_factory=list)  # entities visible when it first fired
    camera: str | None = None  # ... in this camera (None: in at least one)
    min_count: int = 1


@dataclass
class Terminate:
    time_limit: float | None = None  # seconds (timing.duration caps it)
    at_rest: float | None = None  # seconds every free body stays below rest_speed
    rest_speed: float = 0.05  # m/s (and 10x that in rad/s)
    after: str | None = None  # at_rest counts only once this event has fired


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
    params: dict[str, Any] = field(default_factory=dict)  # name -> distribution or constant
    templates: list[Template] = field(default_factory=list)
    require: list[Require] = field(default_factory=list)
    terminate: Terminate | None = None
    lighting: Lighting = field(default_factory=Lighting)

    # ------------------------------------------------------------ conversion
    @classmethod
    def from_dict(cls, data: dict, path: str = "scenario", base_dir: str | Path | None = None) -> "Scenario":
        """Build and validate from plain YAML data. Raises SpecError."""
        data = dict(_require_mapping(data, path))
        for key in ("entities", "cameras", "templates"):
            if key in data:
                data[key] = _named_list(data[key], f"{path}.{key}")
        if data.get("params") is not None:
            params = _require_mapping(data["params"], f"{path}.params")
            data["params"] = {str(k): parse_param(v, f"{path}.params.{k}") for k, v in params.items()}
        scenario = _build(cls, data, path)
        from hybridsim.scenario.validate import validate

        validate(scenario, path, base_dir)
        return scenario

    def to_dict(self) -> dict:
        """Plain data in the YAML layout (entities/templates/cameras keyed by name)."""
        out = _plain(self)
        for key in ("entities", "cameras", "templates"):
            out[key] = {item.pop("name"): item for item in out[key]}
        return out

    def entity(self, name: str) -> Entity:
        for e in self.entities:
            if e.name == name:
                return e
        raise KeyError(name)

    def template(self, name: str) -> Template:
        for t in self.templates:
            if t.name == name:
                return t
        raise KeyError(name)


def event_name(ev: Event, index: int) -> str:
    return ev.name if ev.name is not None else f"event{index}"


def event_actions(ev: Event) -> list[Action]:
    """The actions of an event; a v1 inline action (`kind` on the event) becomes the only one."""
    if ev.kind is None:
        return list(ev.actions)
    return [Action(ev.kind, entity=ev.entity, vector=ev.vector, duration=ev.duration, lin_vel=ev.lin_vel,
                   ang_vel=ev.ang_vel, targets=dict(ev.targets))]


def template_copies(s: Scenario) -> dict[str, str]:
    """copy name -> template name, for every preallocated copy."""
    return {f"{t.name}_{i}": t.name for t in s.templates for i in range(t.capacity)}


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


@functools.lru_cache(maxsize=None)
def hints(cls) -> dict:
    """typing.get_type_hints, cached (it evaluates string annotations each call)."""
    return typing.get_type_hints(cls)


def _key(f: dataclasses.Field) -> str:
    """The YAML key of a field (`for_` is written `for`)."""
    return f.metadata.get("key", f.name)


def _build(cls, data: dict, path: str):
    if isinstance(data, cls):  # already a dataclass (Python API mixed into plain data)
        return data
    data = _require_mapping(data, path)
    types_ = hints(cls)
    fields = {_key(f): f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise SpecError(f"{path}.{unknown[0]}", f"unknown key; allowed keys are {sorted(fields)}")
    kwargs = {}
    for key, f in fields.items():
        sub = f"{path}.{key}"
        if key in data:
            value = data[key]
            if f.name in NO_DISTRIBUTION and _is_distribution(value):
                raise SpecError(sub, "cannot be a distribution (it names or shapes something fixed)")
            kwargs[f.name] = _convert(value, types_[f.name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(sub, "missing required key")
    return cls(**kwargs)


def _is_distribution(value) -> bool:
    return isinstance(value, Distribution) or is_param_ref(value) or is_distribution_data(value)


def _distribution_slot(tp) -> bool:
    """Scalars, vectors and enums may be drawn; mappings, lists and nested specs may not."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return all(_distribution_slot(a) for a in typing.get_args(tp) if a is not type(None))
    return origin not in (list, dict) and not dataclasses.is_dataclass(tp)


def _convert(value, tp, path: str):
    if _is_distribution(value):
        if not _distribution_slot(tp):
            raise SpecError(path, "a distribution can stand for a number, a string or a vector, not for this")
        return parse_distribution(value, tp, path, _convert)
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
    if isinstance(obj, Distribution):
        return obj.to_data()
    if dataclasses.is_dataclass(obj):
        compact = type(obj) in _COMPACT  # v2 parts: only what differs from the defaults
        return {_key(f): _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (compact and _is_default(f, getattr(obj, f.name)))}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


_COMPACT = (Event, Action, Condition, After, Contact, Threshold, Distance, AtRest, Region, TimeWindow, Visible,
            Require, Terminate)


def _is_default(f: dataclasses.Field, value) -> bool:
    if f.default is not dataclasses.MISSING:
        return type(value) is type(f.default) and value == f.default
    if f.default_factory is not dataclasses.MISSING:
        return value == f.default_factory()
    return False


# ---------------------------------------------------------------------------- semantics

_PARAMS: contextvars.ContextVar[dict] = contextvars.ContextVar("scenario_params", default={})


def values(v) -> list:
    """The values to check for `v`: itself, or the bounds / options of a distribution."""
    if isinstance(v, Param):
        params = _PARAMS.get()
        if v.name not in params:
            return []  # reported by the compatibility walk, with the path
        return values(params[v.name])
    if isinstance(v, Distribution):
        return v.support()
    return [v]


def components(v) -> list:
    """Every number a vector (possibly drawn, possibly per component) can hold."""
    out = []
    for x in values(v):
        if isinstance(x, (tuple, list)):
            for c in x:
                out += values(c)
        elif x is not None:
            out.append(x)
    return out


def check(v, ok, path: str, what: str) -> None:
    """SpecError(path, '<what>, got <value>') unless `ok` holds for every value `v` can take."""
    for x in values(v):
        if x is not None and not ok(x):
            raise SpecError(path, f"{what}, got {shown(v, x)}")


def shown(v, x) -> str:
    if not isinstance(v, Distribution):
        return f"{list(x) if isinstance(x, tuple) else x}"
    hint = "; add clip: [lo, hi]" if isinstance(v, Normal) and v.clip is None else ""
    return f"{x} (reachable by {v.describe()}{hint})"


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
        from hybridsim.scenario.textures import skimage_names

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


_VALIDATE_NAMES = ("validate", "_walk_distributions", "_optional_inner", "_validate", "_validate_templates",
                   "_validate_entity", "_has_distribution", "_validate_lighting", "_validate_camera")


def __getattr__(name):
    """Re-export `validate` and its helpers from `hybridsim.scenario.validate` (imported lazily: it imports this
    module)."""
    if name in _VALIDATE_NAMES:
        import hybridsim.scenario.validate

        return getattr(hybridsim.scenario.validate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
