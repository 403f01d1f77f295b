"""Reading a scenario YAML file given by path: untrusted input, so its cost is bounded and nothing
of its content is echoed back in an error.

Bounds: the file's size (MAX_SCENARIO_BYTES), its text (UTF-8, no NUL bytes) and the number of
values it expands to once YAML aliases are followed (MAX_YAML_NODES; nested anchors, the
"billion laughs" bomb, would otherwise grow without limit while OmegaConf copies them). The top
level must be a mapping that has at least one scenario key.
"""

from __future__ import annotations

from pathlib import Path

from hybridsim.scenario.errors import SpecError

MAX_SCENARIO_BYTES = 4 << 20  # the largest shipped scenario is ~4 KiB
MAX_YAML_NODES = 200_000  # values after alias expansion (shipped scenarios: a few hundred)
SCENARIO_KEYS = ("name", "entities", "cameras", "timing", "events", "templates", "params", "lighting", "gravity",
                 "seed", "description", "require", "terminate")


def read_scenario_file(path: Path, what: str = "scenario") -> dict:
    """Plain data of a scenario YAML file; SpecError (one line, no file content) when it is not one."""
    text = _read_text(path, what)
    import yaml
    from omegaconf._utils import get_yaml_loader  # OmegaConf's loader: the same types as Hydra's files

    try:
        root = yaml.compose(text, Loader=get_yaml_loader())
        if root is not None:
            _check_expansion(root, path, what)
        data = yaml.load(text, Loader=get_yaml_loader())
    except yaml.YAMLError as exc:
        raise SpecError(what, f"'{path}' is not valid YAML ({_yaml_problem(exc)}); fix the syntax") from None
    if not isinstance(data, dict):
        kind = {type(None): "nothing", list: "a list", str: "plain text"}.get(type(data), "a single value")
        raise SpecError(what, f"'{path}' is not a scenario file: it holds {kind}, not a mapping of scenario keys "
                              "(name, entities, cameras, ...); see configs/scenario/default.yaml for the layout")
    if not any(isinstance(k, str) and k in SCENARIO_KEYS for k in data):
        raise SpecError(what, f"'{path}' is not a scenario file (none of the keys name, entities, cameras, timing); "
                              "see configs/scenario/default.yaml for the layout")
    where = _interpolation(data, what)
    if where is not None:  # ${oc.env:...} would copy environment variables (secrets) into the run's files
        raise SpecError(where, f"'{path}' uses an OmegaConf interpolation (${{...}}); a scenario file may not "
                               "read environment variables or other config: write the value out, or use params:")
    return data


def _interpolation(data, path: str) -> str | None:
    """The YAML path of the first key or string value holding `${`, else None."""
    stack = [(data, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str) and "${" in node:
            return where
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if isinstance(k, str) and "${" in k:
                return where
            stack.append((v, f"{where}.{k}" if isinstance(node, dict) else f"{where}[{k}]"))
    return None


def _read_text(path: Path, what: str) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_SCENARIO_BYTES:
            raise SpecError(what, f"'{path}' is {size / 2**20:.1f} MiB, above the {MAX_SCENARIO_BYTES >> 20} MiB "
                                  "limit for a scenario file; is it the right file?")
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(what, f"cannot read '{path}' ({exc.strerror or type(exc).__name__}); "
                              "give a readable YAML file") from None
    if b"\x00" in raw:
        raise SpecError(what, f"'{path}' is a binary file, not a YAML scenario; give a text YAML file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(what, f"'{path}' is not UTF-8 text, so not a YAML scenario; give a text YAML file") from None


def _check_expansion(root, path: Path, what: str) -> None:
    """Count the values the node graph expands to, each shared (aliased) node once per use."""
    import yaml

    sizes: dict[int, int] = {}
    seen: set[int] = set()  # nodes on the current path: an alias to an ancestor is a cycle
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            seen.discard(key)
            kids = _children(node, yaml)
            sizes[key] = 1 + sum(sizes[id(k)] for k in kids)
            if sizes[key] > MAX_YAML_NODES:
                raise SpecError(what, f"'{path}' expands to more than {MAX_YAML_NODES} values through YAML "
                                      "aliases (&anchor / *alias); write the values out or use fewer aliases")
            continue
        if key in sizes:
            continue
        if key in seen:
            raise SpecError(what, f"'{path}' has a YAML alias that contains itself; remove the recursive alias")
        seen.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node, yaml) if id(k) not in sizes)


def _children(node, yaml) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _yaml_problem(exc) -> str:
    """Where and what, never the offending text (YAML errors quote the file)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"
