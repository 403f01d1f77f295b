"""Plain typed inputs of the physics stage.

These are deliberately small: `hybridsim` owns the user-facing scenario spec and converts it into
these. Nothing here knows about YAML, Hydra or rendering.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BodyKind = Literal["plane", "box", "sphere", "cylinder", "mesh", "urdf", "mjcf"]


class PhysicsError(RuntimeError):
    """Anything that goes wrong inside the physics stage (bad body, blow-up, bad action)."""


@dataclass
class BodySpec:
    name: str
    kind: BodyKind
    size: tuple[float, float, float] | None = None  # box full extents, metres
    radius: float | None = None
    height: float | None = None
    file: str | None = None  # resolved absolute path for mesh / urdf / mjcf
    scale: float = 1.0
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)  # wxyz
    fixed: bool = False
    mass: float | None = None  # kg; overrides density
    density: float | None = None  # kg/m^3
    friction: float | None = None
    restitution: float = 0.0
    lin_vel: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ang_vel: tuple[float, float, float] = (0.0, 0.0, 0.0)
    color: tuple[float, float, float] | None = None  # None: the file's own materials (grey for primitives)
    texture: str | None = None  # image path used by the reference raster render
    joints: dict[str, float] = field(default_factory=dict)  # initial joint positions (robots), rad or m
    decompose: bool = False  # mesh: convex decomposition (slow first build) instead of one convex hull
    held: bool = False  # free body pinned (kinematic) at its initial pose until World.release
    parked: bool = False  # free body kept out of the way (World.park) until placed with World.place


@dataclass
class CameraSpec:
    name: str
    pos: tuple[float, float, float]
    lookat: tuple[float, float, float] = (0.0, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov: float = 45.0  # vertical, degrees
    res: tuple[int, int] = (128, 128)  # width, height


@dataclass
class WorldSpec:
    bodies: list[BodySpec]
    cameras: list[CameraSpec] = field(default_factory=list)
    dt: float = 0.01
    substeps: int = 1
    gravity: tuple[float, float, float] = (0.0, 0.0, -9.81)
    max_speed: float = 100.0  # m/s; anything faster is treated as a blow-up
    reference_render: bool = True  # attach Genesis raster cameras (needs EGL)
    shadows: bool = True
    per_env_inertia: bool = True  # mass may differ per environment (Genesis batch_links_info)
    light_dir: tuple[float, float, float] = (-1.0, -1.0, -1.0)  # directional light (reference render)
    light_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    light_intensity: float = 5.0
    ambient: tuple[float, float, float] = (0.1, 0.1, 0.1)
