"""Semantic checks of the parts of a `Scenario`: each distribution fits its field, an entity, a camera,
the lighting.

`spec.validate` (run by `Scenario.from_dict`) calls them, beside the checks that need the whole
scenario (names, templates, the event language). All raise `SpecError` naming the YAML path of the
bad value and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from hybridsim.scenario.convert import _convert, _key, hints
from hybridsim.scenario.distributions import (_PARAMS, Choice, Distribution, LogUniform, Normal, Param, RandInt,
                                              Uniform, _strip_optional, check, components, shown, values)
from hybridsim.scenario.environments import is_procedural, name_problem
from hybridsim.scenario.errors import SpecError
from hybridsim.scenario.files import check_content, resolve_file, resolve_texture
from hybridsim.scenario.parts import HDRI_NAMES, MESH_SUFFIXES, Camera, Entity, Lighting


def check_compatible(d: Distribution, tp, path: str, params: dict) -> None:
    """A distribution can only stand where its draws have the field's type."""
    if isinstance(d, Param):
        if d.name not in params:
            raise SpecError(path, f"unknown parameter '{d.name}'; params are {sorted(params)}")
        p = params[d.name]
        if isinstance(p, Distribution):
            check_compatible(p, tp, path, params)
        else:
            _convert(_thaw(p), tp, path)
        return
    base = _strip_optional(tp)
    if isinstance(d, Choice):
        for i, o in enumerate(d.options):
            _convert(_thaw(o), tp, f"{path}.choice[{i}]")
        return
    vector = typing.get_origin(base) is tuple
    if isinstance(d, Uniform) and isinstance(d.low, tuple):
        if not vector or len(typing.get_args(base)) != len(d.low):
            raise SpecError(path, f"vector bounds of length {len(d.low)} do not fit this value")
        return
    if isinstance(d, RandInt) and base in (int, float):
        return
    if isinstance(d, (Uniform, Normal, LogUniform)) and base is float:
        return
    want = {int: "an integer (use randint or choice)", str: "a string (use choice)", bool: "true/false (use choice)"}
    raise SpecError(path, f"a {type(d).__name__.lower()} distribution cannot give "
                          f"{want.get(base, 'this value')}")


def _thaw(v):
    return list(v) if isinstance(v, tuple) else v


def _walk_distributions(obj, tp, path: str) -> None:
    if isinstance(obj, Distribution):
        check_compatible(obj, tp, path, _PARAMS.get())
        return
    if dataclasses.is_dataclass(obj):
        types_ = hints(type(obj))
        for f in dataclasses.fields(obj):
            if f.name != "params":
                _walk_distributions(getattr(obj, f.name), types_[f.name], f"{path}.{_key(f)}")
    elif isinstance(obj, tuple):
        args = typing.get_args(_optional_inner(tp))
        for i, v in enumerate(obj):
            _walk_distributions(v, args[i] if i < len(args) else Any, f"{path}[{i}]")
    elif isinstance(obj, list):
        (arg,) = typing.get_args(_optional_inner(tp)) or (Any,)
        for i, v in enumerate(obj):
            name = getattr(v, "name", None)
            named = isinstance(name, str) and not path.endswith("events")
            _walk_distributions(v, arg, f"{path}.{name}" if named else f"{path}[{i}]")
    elif isinstance(obj, dict):
        arg = (typing.get_args(_optional_inner(tp)) or (Any, Any))[1]
        for k, v in obj.items():
            _walk_distributions(v, arg, f"{path}.{k}")


def _optional_inner(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def _validate_entity(e: Entity, path: str, base_dir) -> None:
    need = {"box": ["size"], "sphere": ["radius"], "cylinder": ["radius", "height"],
            "mesh": ["file"], "urdf": ["file"], "mjcf": ["file"]}.get(e.type, [])
    for key in need:
        if getattr(e, key) is None:
            raise SpecError(f"{path}.{key}", f"required for type '{e.type}'")
    for key in ("radius", "height", "mass", "density", "scale"):
        check(getattr(e, key), lambda v: v > 0, f"{path}.{key}", "must be > 0")
    if e.size is not None and min(components(e.size)) <= 0:
        raise SpecError(f"{path}.size", f"all extents must be > 0, got {shown(e.size, e.size)}")
    check(e.friction, lambda v: 0.01 <= v <= 5.0, f"{path}.friction", "must be in [0.01, 5]")
    check(e.restitution, lambda v: 0.0 <= v < 1.0, f"{path}.restitution", "must be in [0, 1)")
    if e.quat is not None and e.euler is not None:
        raise SpecError(f"{path}.euler", "give either quat or euler, not both")
    if e.quat is not None and not _has_distribution(e.quat) and abs(math.sqrt(sum(q * q for q in e.quat)) - 1.0) > 1e-3:
        raise SpecError(f"{path}.quat", f"must be a unit quaternion (wxyz), got {list(e.quat)}")
    color = e.appearance.color
    if color is not None and any(not 0.0 <= c <= 1.0 for c in components(color)):
        raise SpecError(f"{path}.appearance.color", f"RGB values must be in [0, 1], got {shown(color, color)}")
    for key in ("roughness", "metallic", "transmission"):
        check(getattr(e.appearance, key), lambda v: 0.0 <= v <= 1.0, f"{path}.appearance.{key}", "must be in [0, 1]")
    check(e.appearance.ior, lambda v: 1.0 <= v <= 3.0, f"{path}.appearance.ior", "must be in [1, 3] (glass: 1.45)")
    check(e.pos_jitter, lambda v: v >= 0, f"{path}.pos_jitter", "must be >= 0")
    free = not (e.fixed or e.type in ("plane", "urdf", "mjcf"))
    if e.pos_jitter != 0 and not free:
        raise SpecError(f"{path}.pos_jitter", "only free rigid bodies can be jittered; set it to 0")
    if e.held and not free:
        raise SpecError(f"{path}.held", "only free rigid bodies can be held (not fixed, plane or robot)")
    if e.file is not None:
        for f in values(e.file):
            if e.type == "mesh" and Path(f).suffix.lower() not in MESH_SUFFIXES:
                raise SpecError(f"{path}.file", f"mesh format {Path(f).suffix!r} not supported; use {MESH_SUFFIXES}")
            found = resolve_file(f, f"{path}.file", base_dir)
            if e.type in ("mesh", "urdf", "mjcf") and not f.startswith("genesis:"):  # Genesis' assets are trusted
                check_content(found, e.type, f"{path}.file")
    if e.appearance.texture is not None:
        for f in values(e.appearance.texture):
            found = resolve_texture(f, f"{path}.appearance.texture", base_dir)
            if isinstance(found, Path):
                check_content(found, "image", f"{path}.appearance.texture")


def _has_distribution(v) -> bool:
    return isinstance(v, Distribution) or (isinstance(v, tuple) and any(isinstance(c, Distribution) for c in v))


def _validate_lighting(lt: Lighting, path: str, base_dir=None) -> None:
    env = lt.environment
    if env is not None:
        for name in values(env.hdri):
            if name in HDRI_NAMES:
                continue
            if is_procedural(name):
                problem = name_problem(name)
                if problem:
                    raise SpecError(f"{path}.environment.hdri", problem)
                continue
            if not str(name).lower().endswith(".exr"):
                raise SpecError(f"{path}.environment.hdri", f"{name!r} is neither a shipped HDRI "
                                f"({', '.join(HDRI_NAMES)}), a procedural map (sky:<seed>, graded:<map>:<seed>) "
                                "nor an .exr file")
            check_content(resolve_file(name, f"{path}.environment.hdri", base_dir), "exr", f"{path}.environment.hdri")
        check(env.strength, lambda v: 0.0 <= v <= 100.0, f"{path}.environment.strength", "must be in [0, 100]")
        check(env.rotation, lambda v: math.isfinite(v), f"{path}.environment.rotation", "must be a finite angle in degrees")
    for key in ("color", "ambient"):
        v = getattr(lt, key)
        if any(not 0.0 <= c <= 1.0 for c in components(v)):
            raise SpecError(f"{path}.{key}", f"RGB values must be in [0, 1], got {shown(v, v)}")
    check(lt.intensity, lambda v: v >= 0, f"{path}.intensity", "must be >= 0")
    if not _has_distribution(lt.direction) and sum(c * c for c in lt.direction) < 1e-12:
        raise SpecError(f"{path}.direction", "must be a non-zero vector")


def _validate_camera(c: Camera, path: str) -> None:
    check(c.fov, lambda v: 1.0 <= v < 179.0, f"{path}.fov", "must be in [1, 179) degrees")
    res = components(c.res)
    if min(res) < 8 or max(res) > 4096:
        raise SpecError(f"{path}.res", f"width and height must be in [8, 4096], got {shown(c.res, c.res)}")
    if not _has_distribution(c.pos) and not _has_distribution(c.lookat) and \
            sum((a - b) ** 2 for a, b in zip(c.pos, c.lookat)) < 1e-12:
        raise SpecError(f"{path}.lookat", "must differ from pos")


def _validate_controls(controls: list, s, path: str) -> None:
    """The `actions:` section (parts.Control): kinds, targets, bounds. Joint names and limits need the
    robot's file, so the interactive environment checks those against the built world (naming the
    same YAML path). Controls are fixed per scenario: no distributions."""
    entities = {e.name: e for e in s.entities}
    copies = {f"{t.name}_{i}" for t in s.templates for i in range(t.capacity)}
    seen: dict[tuple, str] = {}
    for c in controls:
        p = f"{path}.{c.name}"
        for f in dataclasses.fields(c):
            if _has_distribution(getattr(c, f.name)) or (isinstance(getattr(c, f.name), list) and
                                                         any(isinstance(v, Distribution) for v in getattr(c, f.name))):
                raise SpecError(f"{p}.{f.name}", "an action's settings are fixed; give a plain value, not a distribution")
        allowed = {"joint_targets": {"entity", "joints", "low", "high"}, "move_camera": {"camera", "limit"}}.get(
            c.kind, {"entity", "limit"})
        for key in ("entity", "joints", "low", "high", "limit", "camera"):
            if key not in allowed and getattr(c, key) not in (None, []):
                raise SpecError(f"{p}.{key}", f"not used by {c.kind}; {c.kind} takes {sorted(allowed)}")
        if c.kind == "move_camera":
            names = [cam.name for cam in s.cameras]
            if c.camera not in names:
                raise SpecError(f"{p}.camera", f"unknown camera {c.camera!r}; cameras are {names}")
            target = ("camera", c.camera)
        else:
            if c.entity is None:
                raise SpecError(f"{p}.entity", f"{c.kind} needs an entity")
            if c.entity not in entities and c.entity not in copies:
                raise SpecError(f"{p}.entity", f"unknown entity {c.entity!r}; entities are {list(entities)}")
            e = entities.get(c.entity)
            robot = e is not None and e.type in ("urdf", "mjcf")
            if c.kind == "joint_targets" and not robot:
                raise SpecError(f"{p}.entity", f"'{c.entity}' is not a robot; joint_targets needs a urdf/mjcf entity")
            if c.kind != "joint_targets" and e is not None and (e.fixed or e.type in ("plane", "urdf", "mjcf")):
                raise SpecError(f"{p}.entity", f"'{c.entity}' is not a free rigid body; {c.kind} needs one "
                                               "(joint_targets moves a robot)")
            target = (c.entity, c.kind)
        if target in seen:
            raise SpecError(p, f"'{seen[target]}' already commands {target[1]} of '{target[0]}'; merge the two")
        seen[target] = c.name
        if c.kind == "joint_targets":
            _validate_joint_bounds(c, p)
        elif c.limit is None or not c.limit > 0:
            unit = {"impulse": "N*s", "force": "N", "torque": "N*m", "move_camera": "metres per step"}[c.kind]
            raise SpecError(f"{p}.limit", f"{c.kind} needs a limit > 0 ({unit}, per component), got {c.limit}; "
                                          "e.g. limit: 1.0")


def _validate_joint_bounds(c, p: str) -> None:
    if len(set(c.joints)) != len(c.joints):
        raise SpecError(f"{p}.joints", f"a joint is listed twice in {c.joints}")
    for key in ("low", "high"):
        v = getattr(c, key)
        if v is not None and (not c.joints or len(v) != len(c.joints)):
            raise SpecError(f"{p}.{key}", f"give one value per joint in `joints` ({len(c.joints)} listed), "
                                          f"got {len(v)}; or leave it out to use the robot's joint limits")
    if c.low is not None and c.high is not None and any(lo >= hi for lo, hi in zip(c.low, c.high)):
        bad = next(i for i, (lo, hi) in enumerate(zip(c.low, c.high)) if lo >= hi)
        raise SpecError(f"{p}.low", f"low {c.low[bad]} must be < high {c.high[bad]} for joint '{c.joints[bad]}'")
