"""YAML data <-> the spec's typed dataclasses: `_build` checks types and keys and names the YAML path
of a bad value in its SpecError, `_plain` turns a dataclass back into data, `hints` caches the
type hints. A distribution may stand for a number, a string or a vector (distributions.py parses it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Literal

from hybridsim.scenario.distributions import Distribution, is_distribution_data, is_param_ref, parse_distribution
from hybridsim.scenario.errors import SpecError
from hybridsim.scenario.parts import (Action, After, AtRest, Condition, Contact, Distance, Event, Region, Require,
                                      Terminate, Threshold, TimeWindow, Visible)

NO_DISTRIBUTION = ("name", "type", "kind", "seed", "capacity", "event", "template", "camera")
SHOWN_CHARS = 60  # an error shows at most this much of a bad value or key: never a file's content


def short(value) -> str:
    """repr of a value from the input, cut to SHOWN_CHARS (a scenario may be an untrusted file)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS - 15]}... ({len(text)} chars)"


def _require_mapping(data, path: str) -> dict:
    if not isinstance(data, dict):
        raise SpecError(path, f"expected a mapping, got {type(data).__name__} {short(data)}")
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
            raise SpecError(f"{path}.{name}.name", f"{short(item['name'])} differs from its key {short(name)}; "
                                                   "drop `name`")
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
        key = unknown[0] if isinstance(unknown[0], str) and len(unknown[0]) <= SHOWN_CHARS else short(unknown[0])
        raise SpecError(f"{path}.{key}", f"unknown key; allowed keys are {sorted(fields)}")
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
            raise SpecError(path, f"{short(value)} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise SpecError(path, f"expected a list of {len(args)} numbers, got {short(value)}")
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
            raise SpecError(path, f"expected true or false, got {short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, f"expected an integer, got {short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpecError(path, f"expected a finite number, got {short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(path, f"expected a string, got {short(value)}")
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
