"""The typed parts a `Scenario` (spec.py) is made of: bodies, cameras, timing, lighting, and the
event language (conditions, actions, events, require, terminate).

Plain dataclasses. convert.py builds them from YAML data, validate.py and spec.py check them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]

ENTITY_TYPES = ("plane", "box", "sphere", "cylinder", "mesh", "urdf", "mjcf")
EVENT_KINDS = ("impulse", "force", "set_velocity", "joint_targets")  # v1
ACTION_KINDS = ("impulse", "force", "torque", "set_velocity", "joint_targets", "release", "spawn", "remove",
                "set_friction", "set_mass", "set_gravity", "move_camera")
MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".stl", ".ply")
LEAVES = ("contact", "speed", "height", "distance", "at_rest", "in_region", "time", "visible")  # of a Condition
CONTROL_KINDS = ("joint_targets", "impulse", "force", "torque", "move_camera")  # of an `actions:` entry


@dataclass
class Appearance:
    color: Vec3 | None = None  # RGB in [0, 1]; None = the asset's own materials, else grey
    texture: str | None = None  # image file, or "skimage:NAME" for a scikit-image photograph
    # Principled-BSDF parameters of the path-traced reference (and refiner inputs), all in [0, 1]
    roughness: float = 0.5  # 0 = mirror-smooth, 1 = fully diffuse
    metallic: float = 0.0  # 1 = metal (the colour tints reflections)
    transmission: float = 0.0  # 1 = glass (refracts with `ior`)
    ior: float = 1.45  # index of refraction, [1, 3]; 1.45 = glass


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
class LightingEnvironment:
    """An HDRI environment map lighting the scene (and seen behind it) in the path-traced and lit renders."""

    # a map shipped with Blender (HDRI_NAMES), a procedural map (sky:<seed>, graded:<map>:<seed>;
    # scenario.environments) or an .exr file
    hdri: str = "courtyard"
    rotation: float = 0.0  # degrees about +z
    strength: float = 1.0  # radiance scale, >= 0


HDRI_NAMES = ("city", "courtyard", "forest", "interior", "night", "studio", "sunrise", "sunset")


@dataclass
class Lighting:
    """Scene lights: a sun (directional light) plus either a uniform ambient or an HDRI environment.
    Genesis' raster reference uses direction, color, intensity and ambient; the path tracer and the
    lit splat render also use the environment (it replaces the ambient)."""

    direction: Vec3 = (-1.0, -1.0, -1.0)  # directional light, world frame (the way the light travels)
    color: Vec3 = (1.0, 1.0, 1.0)
    intensity: float = 5.0  # the sun's irradiance in the path tracer (W/m^2)
    ambient: Vec3 = (0.1, 0.1, 0.1)
    environment: LightingEnvironment | None = None


@dataclass
class Control:
    """One entry of `actions:`: something an agent commands at every step of the interactive
    environment (hybridsim.interactive). Each entry adds components to the action vector, named as
    the dataset's `action` feature names them (hybridsim.output.actions):

    - joint_targets: `<entity>.<joint>.target` per joint, the PD position target (radians or
      metres), bounded by the joint's limits in the URDF/MJCF unless `low` / `high` narrow them;
    - impulse / force / torque: `<entity>.<kind>.{x,y,z}` in [-limit, limit] (N*s, N, N*m, world
      frame); an impulse acts once before the step's first physics step, a force or torque over
      all the physics steps of the step (one output frame);
    - move_camera: `<camera>.move_camera.{x,y,z}`, the camera position's change in metres per step
      within [-limit, limit]; it keeps looking at its lookat point.
    """

    name: str
    kind: Literal["joint_targets", "impulse", "force", "torque", "move_camera"]
    entity: str | None = None  # joint_targets: a urdf/mjcf robot; impulse/force/torque: a free body
    joints: list[str] = field(default_factory=list)  # joint_targets: [] = every 1-dof joint of the robot
    low: list[float] | None = None  # joint_targets: per joint in `joints`; default the URDF/MJCF limits
    high: list[float] | None = None
    limit: float | None = None  # impulse N*s, force N, torque N*m per component; move_camera m per step
    camera: str | None = None  # move_camera


def event_name(ev: Event, index: int) -> str:
    return ev.name if ev.name is not None else f"event{index}"


def event_actions(ev: Event) -> list[Action]:
    """The actions of an event; a v1 inline action (`kind` on the event) becomes the only one."""
    if ev.kind is None:
        return list(ev.actions)
    return [Action(ev.kind, entity=ev.entity, vector=ev.vector, duration=ev.duration, lin_vel=ev.lin_vel,
                   ang_vel=ev.ang_vel, targets=dict(ev.targets))]
