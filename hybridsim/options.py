"""`key=value` options for the commands that are not Hydra runs (bench, train-refiner, eval-refiner)."""

from __future__ import annotations

from hybridsim.scenario.spec import SpecError


def parse_options(overrides: list[str], defaults: dict, command: str) -> dict:
    """Typed by the default's type (bool accepts true/false/1/0; None defaults take strings)."""
    opts = dict(defaults)
    for o in overrides:
        key, eq, value = o.partition("=")
        if key not in opts or not eq:
            raise SpecError(f"{command} {o}", f"unknown option; options are {sorted(opts)} (key=value)")
        default = defaults[key]
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                opts[key] = value.lower() in ("true", "1")
            elif isinstance(default, int):
                opts[key] = int(value)
            elif isinstance(default, float):
                opts[key] = float(value)
            else:
                opts[key] = value
        except ValueError:
            raise SpecError(f"{command} {key}", f"expected {type(default).__name__}, got {value!r}") from None
    return opts


def positive(opts: dict, command: str, *keys: str) -> None:
    for key in keys:
        if opts[key] <= 0:
            raise SpecError(f"{command} {key}", f"must be > 0, got {opts[key]}")
