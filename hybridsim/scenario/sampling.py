"""Typed distributions in a scenario, sampled per episode; the layout key that decides batching.

Any value of a scenario (YAML or dataclasses) may be a distribution instead of a constant:

    YAML                                   Python
    {uniform: [a, b]}                      Uniform(a, b)          a <= b; vector bounds allowed
    {normal: [mu, sigma], clip: [lo, hi]}  Normal(mu, sigma, (lo, hi))   sigma >= 0; clip optional
    {loguniform: [a, b]}                   LogUniform(a, b)       0 < a <= b
    {choice: [x, y, ...], weights: [...]}  Choice((x, y), (w1, w2))      weights optional
    {randint: [lo, hi]}                    RandInt(lo, hi)        integers, both ends included
    "$name" or {param: name}               Param("name")          a named value of `params:`

`params:` (top level) names distributions (or constants) that several places share: each is drawn
once per episode, so `"$tilt"` used twice gives the same value twice. The `${...}` form is
deliberately not used: OmegaConf would try to resolve it while Hydra composes the config.

`sample_scenario(s, seed)` returns a concrete Scenario (no distributions left). Every value has
its own stream, `derive_seed(seed, "value", <yaml path>)` (params: `derive_seed(seed, "param",
name)`), so adding a distribution elsewhere never changes the others. v1's `pos_jitter` is
resolved here too (the same draw as `bridge.initial_offsets`), leaving `pos_jitter = 0`. A
scenario with no distributions and no jitter comes back equal to the input.

`layout_key(s)` hashes what a Genesis build depends on (see `_layout`), so episodes with equal
keys can share one built World, one environment each.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

DIST_KEYS = ("uniform", "normal", "loguniform", "choice", "randint", "param")
_EXTRA_KEYS = {"normal": ("clip",), "choice": ("weights",)}


class Distribution:
    """Base of the distribution types. Subclasses are frozen dataclasses."""

    def sample(self, rng: np.random.Generator, params: dict):
        raise NotImplementedError

    def support(self) -> list:
        """Values that bound what a draw can be (range ends, or every option), for validation."""
        raise NotImplementedError

    def to_data(self):
        raise NotImplementedError

    def describe(self) -> str:
        data = self.to_data()
        return data if isinstance(data, str) else json.dumps(data)


@dataclass(frozen=True)
class Uniform(Distribution):
    low: float | tuple
    high: float | tuple

    def sample(self, rng, params):
        v = rng.uniform(np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64))
        return tuple(float(x) for x in v) if isinstance(self.low, tuple) else float(v)

    def support(self):
        return [self.low, self.high]

    def to_data(self):
        return {"uniform": [_plain_value(self.low), _plain_value(self.high)]}


@dataclass(frozen=True)
class Normal(Distribution):
    mean: float
    std: float
    clip: tuple[float, float] | None = None

    def sample(self, rng, params):
        v = float(rng.normal(self.mean, self.std))
        return float(np.clip(v, *self.clip)) if self.clip else v

    def support(self):
        return list(self.clip) if self.clip else [-math.inf, math.inf]

    def to_data(self):
        out = {"normal": [self.mean, self.std]}
        if self.clip:
            out["clip"] = list(self.clip)
        return out


@dataclass(frozen=True)
class LogUniform(Distribution):
    low: float
    high: float

    def sample(self, rng, params):
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def support(self):
        return [self.low, self.high]

    def to_data(self):
        return {"loguniform": [self.low, self.high]}


@dataclass(frozen=True)
class Choice(Distribution):
    options: tuple
    weights: tuple[float, ...] | None = None

    def sample(self, rng, params):
        p = None
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            p = w / w.sum()
        return self.options[int(rng.choice(len(self.options), p=p))]

    def support(self):
        return list(self.options)

    def to_data(self):
        out = {"choice": [_plain_value(o) for o in self.options]}
        if self.weights is not None:
            out["weights"] = list(self.weights)
        return out


@dataclass(frozen=True)
class RandInt(Distribution):
    low: int
    high: int  # included

    def sample(self, rng, params):
        return int(rng.integers(self.low, self.high + 1))

    def support(self):
        return [self.low, self.high]

    def to_data(self):
        return {"randint": [self.low, self.high]}


@dataclass(frozen=True)
class Param(Distribution):
    name: str

    def sample(self, rng, params):
        return params[self.name]

    def support(self):
        raise AssertionError("resolve Param through the scenario's params")  # see spec._values

    def to_data(self):
        return f"${self.name}"


def _plain_value(v):
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------------------- parsing


def is_param_ref(value) -> bool:
    return isinstance(value, str) and len(value) > 1 and value[0] == "$" and value[1:].isidentifier()


def is_distribution_data(value) -> bool:
    return isinstance(value, dict) and any(k in value for k in DIST_KEYS)


def parse_distribution(value, tp, path: str, convert):
    """YAML data -> Distribution, checked against the field type `tp` (None: untyped param).

    `convert(value, tp, path)` is the spec's converter, used for choice options."""
    from hybridsim.scenario.spec import SpecError

    if isinstance(value, Distribution):
        return value
    if is_param_ref(value):
        return Param(value[1:])
    kinds = [k for k in DIST_KEYS if k in value]
    if len(kinds) != 1:
        raise SpecError(path, f"give exactly one distribution, got {kinds}")
    kind = kinds[0]
    extra = [k for k in value if k not in (kind, *_EXTRA_KEYS.get(kind, ()))]
    if extra:
        allowed = [kind, *_EXTRA_KEYS.get(kind, ())]
        raise SpecError(f"{path}.{extra[0]}", f"unknown key for a {kind} distribution; allowed keys are {allowed}")
    arg, sub = value[kind], f"{path}.{kind}"
    if kind == "param":
        if not isinstance(arg, str) or not arg.isidentifier():
            raise SpecError(sub, f"expected a parameter name, got {arg!r}")
        return Param(arg)
    if kind == "choice":
        return _parse_choice(arg, value.get("weights"), tp, path, convert)
    if not isinstance(arg, (list, tuple)) or len(arg) != 2:
        raise SpecError(sub, f"expected [a, b], got {arg!r}")
    if kind == "randint":
        lo, hi = arg
        if any(isinstance(v, bool) or not isinstance(v, int) for v in arg):
            raise SpecError(sub, f"randint bounds must be integers, got {list(arg)}")
        if lo > hi:
            raise SpecError(sub, f"low {lo} > high {hi}; write [low, high]")
        return RandInt(lo, hi)
    if kind == "uniform" and all(isinstance(v, (list, tuple)) for v in arg):
        lo, hi = (tuple(_number(x, f"{sub}[{i}]") for x in v) for i, v in enumerate(arg))
        if len(lo) != len(hi):
            raise SpecError(sub, f"bounds have different lengths {len(lo)} and {len(hi)}")
        if any(a > b for a, b in zip(lo, hi)):
            raise SpecError(sub, f"low {list(lo)} > high {list(hi)} in some component; write [low, high]")
        return Uniform(lo, hi)
    a, b = (_number(v, f"{sub}[{i}]") for i, v in enumerate(arg))
    if kind == "uniform":
        if a > b:
            raise SpecError(sub, f"low {a} > high {b}; write [low, high]")
        return Uniform(a, b)
    if kind == "loguniform":
        if not 0 < a <= b:
            raise SpecError(sub, f"needs 0 < low <= high, got [{a}, {b}]")
        return LogUniform(a, b)
    if b < 0:  # normal
        raise SpecError(sub, f"sigma must be >= 0, got {b}")
    clip = value.get("clip")
    if clip is not None:
        if not isinstance(clip, (list, tuple)) or len(clip) != 2:
            raise SpecError(f"{path}.clip", f"expected [lo, hi], got {clip!r}")
        clip = tuple(_number(v, f"{path}.clip[{i}]") for i, v in enumerate(clip))
        if clip[0] > clip[1]:
            raise SpecError(f"{path}.clip", f"lo {clip[0]} > hi {clip[1]}")
    return Normal(a, b, clip)


def _parse_choice(options, weights, tp, path, convert):
    from hybridsim.scenario.spec import SpecError

    if not isinstance(options, (list, tuple)) or not options:
        raise SpecError(f"{path}.choice", f"expected a non-empty list of options, got {options!r}")
    opts = tuple(convert(o, tp, f"{path}.choice[{i}]") if tp is not None else _freeze(o)
                 for i, o in enumerate(options))
    if weights is not None:
        if not isinstance(weights, (list, tuple)) or len(weights) != len(opts):
            n = len(weights) if isinstance(weights, (list, tuple)) else weights
            raise SpecError(f"{path}.weights", f"need one weight per option ({len(opts)}), got {n}")
        weights = tuple(_number(w, f"{path}.weights[{i}]") for i, w in enumerate(weights))
        if min(weights) < 0 or sum(weights) <= 0:
            raise SpecError(f"{path}.weights", f"weights must be >= 0 with a positive sum, got {list(weights)}")
    return Choice(opts, weights)


def _number(v, path: str) -> float:
    from hybridsim.scenario.spec import SpecError

    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(path, f"expected a finite number, got {v!r}")
    return float(v)


def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def parse_param(value, path: str):
    """A `params:` entry: a distribution or a constant (number, string, bool, list of numbers)."""
    from hybridsim.scenario.spec import SpecError

    if is_param_ref(value) or (isinstance(value, dict) and "param" in value):
        raise SpecError(path, "a parameter cannot refer to another parameter; give a distribution or a constant")
    if is_distribution_data(value) or isinstance(value, Distribution):
        return parse_distribution(value, None, path, None)
    if isinstance(value, dict):
        raise SpecError(path, f"expected a distribution ({', '.join(DIST_KEYS[:-1])}) or a constant, got {value!r}")
    return _freeze(value)


def check_compatible(d: Distribution, tp, path: str, params: dict) -> None:
    """A distribution can only stand where its draws have the field's type."""
    from hybridsim.scenario.spec import SpecError, _convert

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


def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0]
    return tp


# ---------------------------------------------------------------------------- sampling


def sample_scenario(scenario, seed: int):
    """A concrete Scenario for one episode (see the module docstring). Deterministic in `seed`."""
    from hybridsim.scenario.seeding import derive_seed
    from hybridsim.scenario.spec import SpecError, validate

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
    from hybridsim.scenario.seeding import derive_seed
    from hybridsim.scenario.spec import hints

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


def _resolve_jitter(s, seed: int) -> None:
    """v1 pos_jitter: the same draw as bridge.initial_offsets, folded into pos."""
    from hybridsim.bridge import initial_offsets

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
    from hybridsim.bridge import expand_templates

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
    from hybridsim.scenario.spec import event_actions

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

