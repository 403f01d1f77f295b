"""Semantic validation of a `Scenario`: the checks that need more than one field.

`validate` (re-exported as `hybridsim.scenario.spec.validate`, run by `Scenario.from_dict`) raises
`SpecError` naming the YAML path of the bad value and the fix. The checks of the event language
live in `hybridsim.scenario.events.validate_events`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from hybridsim.scenario.sampling import Distribution, Param, check_compatible
from hybridsim.scenario.spec import (_PARAMS, MESH_SUFFIXES, Camera, Entity, Lighting, Scenario, SpecError, _key, check,
                                     components, hints, resolve_file, resolve_texture, shown, template_copies, values)



def validate(s: Scenario, path: str = "scenario", base_dir: str | Path | None = None) -> None:
    """Checks that need more than one field. Raises SpecError with the YAML path."""
    for name, p in s.params.items():
        if not name.isidentifier():
            raise SpecError(f"{path}.params.{name}", "parameter names must be identifiers (letters, digits, _)")
        if isinstance(p, Param):
            raise SpecError(f"{path}.params.{name}", "a parameter cannot refer to another parameter")
    token = _PARAMS.set(s.params)
    try:
        _walk_distributions(s, type(s), path)
        _validate(s, path, base_dir)
    finally:
        _PARAMS.reset(token)


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


def _validate(s: Scenario, path: str, base_dir) -> None:
    t = s.timing
    for key in ("duration", "fps", "dt"):
        check(getattr(t, key), lambda v: v > 0, f"{path}.timing.{key}", "must be > 0")
    check(t.substeps, lambda v: v >= 1, f"{path}.timing.substeps", "must be >= 1")
    if not any(isinstance(getattr(t, k), Distribution) for k in ("fps", "dt")):
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
    _validate_templates(s, path, names, base_dir)
    if not s.cameras:
        raise SpecError(f"{path}.cameras", "at least one camera is needed")
    for c in s.cameras:
        _validate_camera(c, f"{path}.cameras.{c.name}")
    from hybridsim.scenario.events import validate_events

    validate_events(s, path)


def _validate_templates(s: Scenario, path: str, names: set[str], base_dir) -> None:
    copies = template_copies(s)
    for t in s.templates:
        p = f"{path}.templates.{t.name}"
        if t.name in names:
            raise SpecError(p, f"'{t.name}' is also an entity name; rename one")
        if t.type not in ("box", "sphere", "cylinder", "mesh") or t.fixed:
            raise SpecError(f"{p}.type", f"templates are free bodies (box, sphere, cylinder, mesh), got "
                                         f"{t.type}{' fixed' if t.fixed else ''}")
        if not 1 <= t.capacity <= 64:
            raise SpecError(f"{p}.capacity", f"must be in [1, 64], got {t.capacity}")
        _validate_entity(t, p, base_dir)
        names.add(t.name)
    clash = sorted(set(copies) & names)
    if clash:
        raise SpecError(f"{path}.entities.{clash[0]}", f"clashes with a copy of template '{copies[clash[0]]}'; rename it")


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
            resolve_file(f, f"{path}.file", base_dir)
    if e.appearance.texture is not None:
        for f in values(e.appearance.texture):
            resolve_texture(f, f"{path}.appearance.texture", base_dir)


def _has_distribution(v) -> bool:
    return isinstance(v, Distribution) or (isinstance(v, tuple) and any(isinstance(c, Distribution) for c in v))


def _validate_lighting(lt: Lighting, path: str) -> None:
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
