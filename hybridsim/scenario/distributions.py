"""Typed distributions that a scenario may give in place of any value, and checks of such values.

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

`values`, `components` and `check` let a check cover every value a (possibly drawn) field can take;
`sampling.sample_scenario` draws the distributions for one episode.
"""

from __future__ import annotations

import contextvars
import json
import math
import types
import typing
from dataclasses import dataclass

import numpy as np

from hybridsim.scenario.errors import SpecError

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
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(path, f"expected a finite number, got {v!r}")
    return float(v)


def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def parse_param(value, path: str):
    """A `params:` entry: a distribution or a constant (number, string, bool, list of numbers)."""
    if is_param_ref(value) or (isinstance(value, dict) and "param" in value):
        raise SpecError(path, "a parameter cannot refer to another parameter; give a distribution or a constant")
    if is_distribution_data(value) or isinstance(value, Distribution):
        return parse_distribution(value, None, path, None)
    if isinstance(value, dict):
        raise SpecError(path, f"expected a distribution ({', '.join(DIST_KEYS[:-1])}) or a constant, got {value!r}")
    return _freeze(value)


def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0]
    return tp


# ---------------------------------------------------------------------------- checks of values that may be drawn

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
