"""Scenario spec: typed dataclasses that round-trip with the YAML in `configs/scenario/`.

In YAML, `entities`, `templates` and `cameras` are mappings keyed by name (so Hydra overrides read
`scenario.entities.box.mass=2`); in Python they are lists of dataclasses carrying `name`.
`Scenario.from_dict` validates everything before anything heavy starts and raises `SpecError`
naming the YAML path of the bad value and the fix.

v2, the rare-event language (docs/scenarios.md), adds, all optional so v1 files stay valid:
- a distribution in place of any value, and a `params:` block of named ones (hybridsim.scenario.distributions);
- `templates:` (bodies to `spawn`, preallocated `capacity` times) and `held: true` entities;
- events with one trigger (`at`, `after: {event, delay}` or `when: <condition>`), `once` /
  `max_count` and a list of `actions`; a v1 event (`at` + `kind` + `entity` ...) is a timed
  event with one action;
- `require:` (reject an episode where an event did not fire, or fired out of sight) and
  `terminate:` (time limit; everything at rest for a while);
- `actions:` (what an agent commands at every step of the interactive environment: robot joint
  targets, pushes on bodies, camera motion; parts.Control), keyed by name like entities.
`Scenario` is here with the checks that need all of it (`validate`, run by `Scenario.from_dict`, and
those of the event language); the parts it is made of are in `parts.py` (re-exported here, as is
`SpecError`), their conversion from YAML data in `convert.py` and their own checks in `validate.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridsim.scenario.convert import _build, _named_list, _plain, _require_mapping, short
from hybridsim.scenario.distributions import _PARAMS, Distribution, Param, check, components, parse_param, values
from hybridsim.scenario.errors import SpecError
from hybridsim.scenario.files import absolute_files
from hybridsim.scenario.parts import (  # noqa: F401 (re-exported: spec is the language's public face)
    ACTION_KINDS, CONTROL_KINDS, ENTITY_TYPES, EVENT_KINDS, LEAVES, MESH_SUFFIXES, Action, After, Appearance, AtRest, Camera,
    Condition, Contact, Control, Distance, Entity, Event, HDRI_NAMES, Lighting, LightingEnvironment, Quat, Region, Require,
    Template, Terminate, Threshold,
    TimeWindow, Timing, Vec3, Visible, event_actions, event_name)
from hybridsim.scenario.validate import (_validate_camera, _validate_controls, _validate_entity, _validate_lighting,
                                         _walk_distributions)


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
    actions: list[Control] = field(default_factory=list)  # the interactive environment's action space

    # ------------------------------------------------------------ conversion
    @classmethod
    def from_dict(cls, data: dict, path: str = "scenario", base_dir: str | Path | None = None) -> "Scenario":
        """Build and validate from plain YAML data. Raises SpecError."""
        data = dict(_require_mapping(data, path))
        for key in ("entities", "cameras", "templates", "actions"):
            if key in data:
                data[key] = _named_list(data[key], f"{path}.{key}")
        if data.get("params") is not None:
            params = _require_mapping(data["params"], f"{path}.params")
            data["params"] = {str(k): parse_param(v, f"{path}.params.{k}") for k, v in params.items()}
        scenario = absolute_files(_build(cls, data, path), base_dir)  # no later step needs base_dir
        validate(scenario, path, base_dir)
        return scenario

    def to_dict(self) -> dict:
        """Plain data in the YAML layout (entities/templates/cameras keyed by name)."""
        out = _plain(self)
        for key in ("entities", "cameras", "templates", "actions"):
            out[key] = {item.pop("name"): item for item in out[key]}
        if not out["actions"]:  # absent from files written before the section existed: keep them equal
            del out["actions"]
        else:  # only what is set, as it would be written by hand
            out["actions"] = {k: {f: v for f, v in c.items() if v not in (None, [])} for k, c in out["actions"].items()}
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


def template_copies(s: Scenario) -> dict[str, str]:
    """copy name -> template name, for every preallocated copy."""
    return {f"{t.name}_{i}": t.name for t in s.templates for i in range(t.capacity)}


def expand_templates(s: Scenario) -> Scenario:
    """The scenario with every template copy `<template>_<i>` listed as a (held) entity, as the
    World builds it. Idempotent; the same object when there are no templates."""
    if not s.templates or all(name in {e.name for e in s.entities} for name in template_copies(s)):
        return s
    copies = []
    for t in s.templates:
        fields = {f.name: getattr(t, f.name) for f in dataclasses.fields(Entity)}
        for i in range(t.capacity):
            copies.append(Entity(**{**fields, "name": f"{t.name}_{i}", "held": True, "pos_jitter": 0.0}))
    return dataclasses.replace(s, entities=[*s.entities, *copies])


# ---------------------------------------------------------------------------- validation


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


def _validate(s: Scenario, path: str, base_dir) -> None:
    if not s.name or len(s.name) > 100 or s.name.startswith(".") or any(c in s.name for c in "/\\") or \
            not s.name.isprintable():  # the default out_dir is runs/<name>: a name must not lead elsewhere
        raise SpecError(f"{path}.name", f"{short(s.name)} is not usable as a folder name (1-100 printable characters, "
                                        "no '/' or '\\', not starting with '.'); e.g. name: drop_test")
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
    _validate_lighting(s.lighting, f"{path}.lighting", base_dir)
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
    validate_events(s, path)
    _validate_controls(s.actions, s, f"{path}.actions")


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


# ---------------------------------------------------------------------------- the event language

_ACTION_FIELDS = {
    "impulse": {"entity", "vector"}, "force": {"entity", "vector", "duration"},
    "torque": {"entity", "vector", "duration"}, "set_velocity": {"entity", "lin_vel", "ang_vel"},
    "joint_targets": {"entity", "targets"}, "release": {"entity"}, "remove": {"entity"},
    "set_friction": {"entity", "value"}, "set_mass": {"entity", "value"}, "set_gravity": {"vector"},
    "spawn": {"template", "count", "pos", "offset", "euler", "lin_vel", "ang_vel"},
    "move_camera": {"camera", "pos", "lookat", "up"},
}
_INLINE_KINDS = ("impulse", "force", "torque", "set_velocity", "joint_targets", "release", "remove")
_FREE_KINDS = ("impulse", "force", "torque", "set_velocity", "release", "remove", "set_mass")


def validate_events(s: Scenario, path: str) -> None:
    """Events, require and terminate. Raises SpecError naming the YAML path."""
    index: dict[str, int] = {}
    for i, ev in enumerate(s.events):
        name = event_name(ev, i)
        if name in index:
            raise SpecError(f"{path}.events[{i}].name", f"duplicate event name '{name}'")
        index[name] = i
    for i, ev in enumerate(s.events):
        _validate_event(ev, s, f"{path}.events[{i}]", index)
    _check_cycles(s, path, index)
    for j, r in enumerate(s.require):
        p = f"{path}.require[{j}]"
        _known(r.event, index, f"{p}.event", "event")
        for k, name in enumerate(r.visible):
            _entity(name, s, f"{p}.visible[{k}]")
        if r.camera is not None:
            _known(r.camera, [c.name for c in s.cameras], f"{p}.camera", "camera")
        check(r.min_count, lambda v: v >= 1, f"{p}.min_count", "must be >= 1")
    t = s.terminate
    if t is not None:
        p = f"{path}.terminate"
        check(t.time_limit, lambda v: v > 0, f"{p}.time_limit", "must be > 0 seconds")
        check(t.at_rest, lambda v: v > 0, f"{p}.at_rest", "must be > 0 seconds")
        check(t.rest_speed, lambda v: v > 0, f"{p}.rest_speed", "must be > 0")
        if t.after is not None:
            _known(t.after, index, f"{p}.after", "event")


def _known(name, known, path: str, what: str) -> None:
    for v in values(name):
        if v not in known:
            raise SpecError(path, f"unknown {what} '{v}'; {what}s are {list(known)}")


def _entity(name, s: Scenario, path: str, free: bool = False, groups: bool = False) -> None:
    """A known entity (or template copy; a template name stands for all its copies where `groups`)."""
    copies = template_copies(s)
    known = [e.name for e in s.entities] + list(copies) + ([t.name for t in s.templates] if groups else [])
    for v in values(name):
        if v not in known:
            raise SpecError(path, f"unknown entity '{v}'; entities are {[e.name for e in s.entities]}"
                                  + (f" (and template copies {list(copies)})" if copies else ""))
        if free and v not in copies:
            e = s.entity(v)
            if e.fixed or e.type in ("plane", "urdf", "mjcf"):
                raise SpecError(path, f"'{v}' is not a free rigid body; this action needs one")


def _validate_event(ev, s: Scenario, p: str, index: dict[str, int]) -> None:
    triggers = [k for k in ("at", "after", "when") if getattr(ev, k) is not None]
    if len(triggers) != 1:
        raise SpecError(p, f"give exactly one trigger (at, after or when), got {triggers or 'none'}")
    check(ev.at, lambda v: v >= 0, f"{p}.at", "must be >= 0 seconds")
    if ev.after is not None:
        _known(ev.after.event, index, f"{p}.after.event", "event")
        check(ev.after.delay, lambda v: v >= 0, f"{p}.after.delay", "must be >= 0 seconds")
    if ev.when is not None:
        _validate_condition(ev.when, s, f"{p}.when")
    check(ev.max_count, lambda v: v >= 1, f"{p}.max_count", "must be >= 1")
    if ev.at is not None and ev.max_count not in (None, 1):
        raise SpecError(f"{p}.max_count", "a timed (at) event fires once; use `after` or `when` to repeat")
    if ev.kind is not None:
        if ev.actions:
            raise SpecError(f"{p}.actions", "give either kind (one inline action) or actions, not both")
        if ev.kind not in _INLINE_KINDS:
            raise SpecError(f"{p}.kind", f"{ev.kind} takes more than the inline fields; write it as "
                                         f"actions: [{{kind: {ev.kind}, ...}}]")
        _validate_action(event_actions(ev)[0], s, p)
        return
    for key in ("entity", "vector", "duration", "lin_vel", "ang_vel"):
        if getattr(ev, key) is not None:
            raise SpecError(f"{p}.{key}", "needs `kind` (or move it into actions)")
    if ev.targets:
        raise SpecError(f"{p}.targets", "needs `kind: joint_targets` (or move it into actions)")
    for j, a in enumerate(ev.actions):
        _validate_action(a, s, f"{p}.actions[{j}]")


def _validate_action(a: Action, s: Scenario, p: str) -> None:
    allowed = _ACTION_FIELDS[a.kind]
    defaults = Action(a.kind)
    for key in ("entity", "vector", "duration", "lin_vel", "ang_vel", "targets", "value", "template", "count",
                "pos", "offset", "euler", "camera", "lookat", "up"):
        if key not in allowed and getattr(a, key) != getattr(defaults, key):
            raise SpecError(f"{p}.{key}", f"not used by {a.kind}; {a.kind} takes {sorted(allowed)}")
    if "entity" in allowed:
        if a.entity is None:
            raise SpecError(f"{p}.entity", f"{a.kind} needs an entity")
        _entity(a.entity, s, f"{p}.entity", free=a.kind in _FREE_KINDS)
    if a.kind == "joint_targets":
        for v in values(a.entity):
            if v in template_copies(s) or s.entity(v).type not in ("urdf", "mjcf"):
                raise SpecError(f"{p}.entity", f"'{v}' is not a robot; joint_targets needs a urdf/mjcf robot")
        if not a.targets:
            raise SpecError(f"{p}.targets", "give at least one joint: position")
    if a.kind in ("impulse", "force", "torque", "set_gravity") and a.vector is None:
        raise SpecError(f"{p}.vector", f"required for {a.kind} (world-frame x, y, z)")
    if a.kind in ("force", "torque"):
        if a.duration is None:
            raise SpecError(f"{p}.duration", f"{a.kind} needs a duration > 0 seconds, got None")
        check(a.duration, lambda v: v > 0, f"{p}.duration", f"{a.kind} needs a duration > 0 seconds")
    if a.kind == "set_velocity" and a.lin_vel is None and a.ang_vel is None:
        raise SpecError(f"{p}.lin_vel", "set_velocity needs lin_vel and/or ang_vel")
    if a.kind in ("set_friction", "set_mass"):
        if a.value is None:
            raise SpecError(f"{p}.value", f"{a.kind} needs a value")
        if a.kind == "set_friction":
            check(a.value, lambda v: 0.01 <= v <= 5.0, f"{p}.value", "friction must be in [0.01, 5]")
        else:
            check(a.value, lambda v: v > 0, f"{p}.value", "mass must be > 0 kg")
    if a.kind == "spawn":
        _known(a.template, [t.name for t in s.templates], f"{p}.template", "template")
        if a.pos is None:
            raise SpecError(f"{p}.pos", "spawn needs the position of the first copy")
        cap = s.template(a.template).capacity
        check(a.count, lambda v: 0 <= v <= cap, f"{p}.count", f"must be in [0, capacity {cap}]")
    if a.kind == "move_camera":
        _known(a.camera, [c.name for c in s.cameras], f"{p}.camera", "camera")
        if a.pos is None and a.lookat is None:
            raise SpecError(f"{p}.pos", "move_camera needs pos and/or lookat")


def _validate_condition(c: Condition, s: Scenario, p: str) -> None:
    given = [k for k in (*LEAVES, "all", "any") if getattr(c, k) not in (None, [])]
    if len(given) != 1:
        raise SpecError(p, f"give exactly one condition ({', '.join(LEAVES)}) or all/any; got {given or 'none'}")
    kind = given[0]
    leaf, q = getattr(c, kind), f"{p}.{kind}"
    if kind in ("all", "any"):
        for j, sub in enumerate(leaf):
            _validate_condition(sub, s, f"{q}[{j}]")
        return
    if kind == "contact":
        _entity(leaf.a, s, f"{q}.a", groups=True)
        if leaf.b is not None:
            _entity(leaf.b, s, f"{q}.b", groups=True)
        check(leaf.min_impulse, lambda v: v >= 0, f"{q}.min_impulse", "must be >= 0 N*s")
    elif kind == "visible":
        _entity(leaf.entity, s, f"{q}.entity")
        _known(leaf.camera, [cam.name for cam in s.cameras], f"{q}.camera", "camera")
    elif kind == "distance":
        _entity(leaf.a, s, f"{q}.a")
        _entity(leaf.b, s, f"{q}.b")
    elif kind != "time":
        _entity(leaf.entity, s, f"{q}.entity")
    if kind in ("speed", "height", "distance", "time"):
        ops = [k for k in ("above", "below") if getattr(leaf, k) is not None]
        if len(ops) != 1:
            raise SpecError(q, f"give exactly one of above / below, got {ops or 'none'}")
    if kind == "at_rest":
        check(leaf.for_, lambda v: v > 0, f"{q}.for", "must be > 0 seconds")
        check(leaf.speed, lambda v: v > 0, f"{q}.speed", "must be > 0 m/s")
    if kind == "in_region":
        lo, hi = components(leaf.min), components(leaf.max)
        if len(lo) == len(hi) == 3 and any(a > b for a, b in zip(lo, hi)):
            raise SpecError(q, f"min {lo} must be <= max {hi} in every component")


def _check_cycles(s: Scenario, path: str, index: dict[str, int]) -> None:
    """`after` chains must end at an event with another trigger."""
    source = {event_name(ev, i): ev.after.event for i, ev in enumerate(s.events) if ev.after is not None}
    for start in source:
        chain = [start]
        while chain[-1] in source:
            nxt = source[chain[-1]]
            if nxt in chain:
                cycle = chain[chain.index(nxt):] + [nxt]
                raise SpecError(f"{path}.events[{index[cycle[0]]}].after.event",
                                f"circular `after` chain: {' -> '.join(cycle)}; one of them needs `at` or `when`")
            chain.append(nxt)


def events_after_end(s: Scenario, path: str = "scenario") -> list[str]:
    """One line per timed event (`at`, or an `after` chain that starts at one) that cannot fire
    because the run ends first: its time is past the last physics step of the episode
    (timing.duration, cut by terminate.time_limit). A distribution counts when even its earliest
    value is too late. Such an event is not an error (a short run of a long scenario is a common
    check), but it must not pass silently."""
    t = s.timing
    if any(isinstance(getattr(t, k), Distribution) for k in ("duration", "fps", "dt")):
        return []
    duration = t.duration
    limit = s.terminate.time_limit if s.terminate is not None else None
    if limit is not None and not isinstance(limit, Distribution):
        duration = min(duration, limit)
    spf = max(1, round(1.0 / (t.fps * t.dt)))
    last_step = (max(0, int(duration * t.fps + 1e-9) - 1)) * spf - 1  # the last step a trigger is checked at
    names = [event_name(ev, i) for i, ev in enumerate(s.events)]
    earliest: dict[str, float | None] = {}

    def first_time(i: int, depth: int = 0) -> float | None:
        ev = s.events[i]
        if names[i] in earliest:
            return earliest[names[i]]
        if ev.at is not None:
            found = _earliest(ev.at)
        elif ev.after is not None and depth < len(s.events) and ev.after.event in names:
            src, delay = first_time(names.index(ev.after.event), depth + 1), _earliest(ev.after.delay)
            found = None if src is None or delay is None else src + delay
        else:
            found = None  # `when` conditions are decided by the simulation
        earliest[names[i]] = found
        return found

    out = []
    token = _PARAMS.set(s.params)  # `at: {param: ...}` reads the scenario's params
    try:
        times = [first_time(i) for i in range(len(s.events))]
    finally:
        _PARAMS.reset(token)
    for i, ev in enumerate(s.events):
        at = times[i]
        if at is not None and round(at / t.dt) > last_step:
            trigger = f"at={at:g} s" if ev.at is not None else f"after '{ev.after.event}' at t={at:g} s"
            out.append(f"{path}.events[{i}] ('{names[i]}', {trigger}) is after the run's last physics step "
                       f"(t={max(last_step, 0) * t.dt:.4g} s, timing.duration={duration:g}) and will not fire; "
                       f"raise {path}.timing.duration above {at:g} or move the event earlier")
    return out


def _earliest(v) -> float | None:
    if isinstance(v, Distribution):
        try:
            return float(min(values(v)))
        except (TypeError, ValueError):
            return None
    return float(v) if isinstance(v, (int, float)) else None
