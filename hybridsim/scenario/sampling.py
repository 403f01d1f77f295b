"""Per-episode sampling of a scenario's distributions; the layout key that decides batching.

`sample_scenario(s, seed)` returns a concrete Scenario (no distributions left). Every value has
its own stream, `derive_seed(seed, "value", <yaml path>)` (params: `derive_seed(seed, "param",
name)`), so adding a distribution elsewhere never changes the others. v1's `pos_jitter` is
resolved here too (the same draw as `initial_offsets`), leaving `pos_jitter = 0`. A
scenario with no distributions and no jitter comes back equal to the input.

`layout_key(s)` hashes what a Genesis build depends on (see `_layout`), so episodes with equal
keys can share one built World, one environment each.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing
from typing import Any

import numpy as np

from hybridsim.scenario.convert import hints
from hybridsim.scenario.distributions import Distribution, _plain_value, _strip_optional
from hybridsim.scenario.errors import SpecError
from hybridsim.scenario.parts import event_actions
from hybridsim.scenario.seeding import derive_seed
from hybridsim.scenario.spec import Scenario, expand_templates, validate


# ---------------------------------------------------------------------------- sampling


def sample_scenario(scenario, seed: int):
    """A concrete Scenario for one episode (see the module docstring). Deterministic in `seed`."""
    params = {}
    for name, p in scenario.params.items():
        params[name] = p.sample(np.random.default_rng(derive_seed(seed, "param", name)), {}) \
            if isinstance(p, Distribution) else p
    out = copy.deepcopy(_sample(scenario, type(scenario), "", seed, params))  # shares nothing with the input
    out.params = params
    _resolve_jitter(out, seed)
    out._sample_seed = seed  # not a field: read by pipeline.Simulation.seeds
    try:
        validate(out)
    except SpecError as exc:
        raise SpecError(f"scenario.{exc.path.removeprefix('scenario.')}",
                        f"{exc.message} (a value drawn with seed {seed}; narrow the distribution)") from None
    return out


def _sample(obj, tp, path: str, seed: int, params: dict):
    if isinstance(obj, Distribution):
        v = obj.sample(np.random.default_rng(derive_seed(seed, "value", path)), params)
        return _coerce(v, tp)
    if dataclasses.is_dataclass(obj):
        types_ = hints(type(obj))
        changes = {}
        for f in dataclasses.fields(obj):
            if f.name == "params":
                continue
            v = getattr(obj, f.name)
            new = _sample(v, types_[f.name], _join(path, f.name), seed, params)
            if new is not v:
                changes[f.name] = new
        return dataclasses.replace(obj, **changes) if changes else obj
    base = _strip_optional(tp)
    if isinstance(obj, tuple):
        args = typing.get_args(base) or (Any,) * len(obj)
        items = [_sample(v, a, f"{path}[{i}]", seed, params) for i, (v, a) in enumerate(zip(obj, args))]
        return tuple(items) if any(a is not b for a, b in zip(items, obj)) else obj
    if isinstance(obj, list):
        (arg,) = typing.get_args(base) or (Any,)
        items = [_sample(v, arg, _list_path(path, i, v), seed, params) for i, v in enumerate(obj)]
        return items if any(a is not b for a, b in zip(items, obj)) else obj
    if isinstance(obj, dict):
        arg = (typing.get_args(base) or (Any, Any))[1]
        items = {k: _sample(v, arg, f"{path}.{k}", seed, params) for k, v in obj.items()}
        return items if any(items[k] is not obj[k] for k in obj) else obj
    return obj


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _list_path(path: str, i: int, item) -> str:
    name = getattr(item, "name", None)
    if isinstance(name, str) and path in ("entities", "cameras", "templates"):
        return f"{path}.{name}"
    return f"{path}[{i}]"


def _coerce(v, tp):
    base = _strip_optional(tp)
    if base is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if typing.get_origin(base) is tuple and isinstance(v, (list, tuple)):
        args = typing.get_args(base)
        return tuple(_coerce(x, a) for x, a in zip(v, args))
    return v


def initial_offsets(s: Scenario, seeds: list[int]) -> dict[str, np.ndarray]:
    """Per-environment x/y position offsets [B, 3] for entities with pos_jitter > 0."""
    out = {}
    for e in s.entities:
        if e.pos_jitter > 0:
            rows = []
            for seed in seeds:
                r = np.random.default_rng(derive_seed(seed, "pos_jitter", e.name))
                dx, dy = r.uniform(-e.pos_jitter, e.pos_jitter, size=2)
                rows.append((dx, dy, 0.0))
            out[e.name] = np.asarray(rows, dtype=np.float64)
    return out


def _resolve_jitter(s, seed: int) -> None:
    """v1 pos_jitter: the same draw as initial_offsets, folded into pos."""
    offsets = initial_offsets(s, [seed])
    if not offsets:
        return
    s.entities = [dataclasses.replace(e, pos=tuple(float(p + d) for p, d in zip(e.pos, offsets[e.name][0])),
                                      pos_jitter=0.0) if e.name in offsets else e for e in s.entities]


def has_distributions(obj) -> bool:
    """True when any value (params aside) is still a distribution, or v1 jitter is set."""
    if isinstance(obj, Distribution):
        return True
    if dataclasses.is_dataclass(obj):
        if getattr(obj, "pos_jitter", 0.0):
            return True
        return any(has_distributions(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "params")
    if isinstance(obj, (list, tuple)):
        return any(has_distributions(v) for v in obj)
    if isinstance(obj, dict):
        return any(has_distributions(v) for v in obj.values())
    return False


# ---------------------------------------------------------------------------- layout key

_BODY_KEYS = ("type", "size", "radius", "height", "file", "scale", "fixed", "density", "restitution", "decompose",
              "appearance")


def layout_key(scenario) -> str:
    """Stable hash of everything that changes the Genesis build (and the batched event structure).

    In: entity and template-copy types, sizes, files, scale, fixed, density, restitution, appearance
    (it is baked into the reference render), poses of planes and fixed meshes; template capacities;
    lighting; cameras (names, resolution, fov); dt, substeps, fps; the shape of events / require /
    terminate (names, trigger types, condition trees, action kinds). Out: poses, velocities, mass, friction, gravity, joints,
    held, camera poses, event times and values: all set per environment after the build.
    The reference render on/off is a run option and not part of the key."""
    if has_distributions(scenario):
        raise ValueError("layout_key needs a concrete scenario; call sample_scenario first")
    s = expand_templates(scenario)
    bodies = []
    for e in s.entities:
        row = {k: _plain_value(getattr(e, k)) if k != "appearance" else dataclasses.asdict(e.appearance)
               for k in _BODY_KEYS}
        row["name"] = e.name
        if e.type == "plane" or (e.fixed and e.type == "mesh"):  # Genesis batches neither's pose
            row["pose"] = [_plain_value(e.pos), _plain_value(e.quat), _plain_value(e.euler)]
        bodies.append(row)
    data = {
        "bodies": bodies,
        "templates": [(t.name, t.capacity) for t in s.templates],
        "cameras": [(c.name, list(c.res), c.fov) for c in s.cameras],
        "timing": [s.timing.dt, s.timing.substeps, s.timing.fps],
        "lighting": dataclasses.asdict(s.lighting),  # Genesis' lights are fixed at the build
        "events": event_signature(s),
    }
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def event_signature(s) -> list:
    """The structure of events, require and terminate with every value left out."""
    def cond(c):
        if c is None:
            return None
        if c.all or c.any:
            return {"all" if c.all else "any": [cond(x) for x in (c.all or c.any)]}
        (kind, leaf), = [(f.name, getattr(c, f.name)) for f in dataclasses.fields(c)
                         if f.name not in ("all", "any") and getattr(c, f.name) is not None]
        ops = sorted(k for k in ("above", "below") if getattr(leaf, k, None) is not None)
        return [kind, ops]

    events = []
    for ev in s.events:
        trig = "at" if ev.at is not None else "after" if ev.after is not None else "when"
        events.append([ev.name, trig, cond(ev.when), ev.once, ev.max_count, [a.kind for a in event_actions(ev)],
                       ev.after.event if ev.after else None])
    req = [[r.event, len(r.visible), r.camera is None] for r in s.require]
    term = None
    if s.terminate is not None:
        t = s.terminate
        term = [t.time_limit is None, t.at_rest is None, t.after]
    return [events, req, term]
