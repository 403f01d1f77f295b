"""Where a scenario's files come from: meshes and robots (paths, or assets shipped with Genesis) and
textures (image files, or scikit-image photographs by name), and whether their content is usable.

A scenario's files are untrusted input: validation opens each one (`check_content`) so that a
garbage mesh or a text file named .png is refused with one line before the Genesis build, not with
a traceback from deep inside it, and their size is bounded. Genesis' own assets are trusted.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from hybridsim.scenario.errors import SpecError

MAX_MESH_BYTES = 512 << 20
MAX_ROBOT_BYTES = 64 << 20
MAX_IMAGE_BYTES = 512 << 20
MAX_IMAGE_PIXELS = 16384 * 16384  # a texture larger than this is a decompression bomb, not a texture
EXR_MAGIC = b"\x76\x2f\x31\x01"


def resolve_file(name: str, path: str = "", base_dir=None) -> Path:
    """Find a mesh/robot file: absolute, relative to the YAML or CWD, or 'genesis:' assets."""
    candidates: list[Path] = []
    if name.startswith("genesis:"):
        candidates.append(_genesis_assets() / name.split(":", 1)[1])
    else:
        p = Path(name).expanduser()
        candidates += [p] if p.is_absolute() else [Path(base_dir or ".") / p, Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise SpecError(path, f"file not found: '{name}' (looked at {[str(c) for c in candidates]}); "
                    "give an existing path or 'genesis:<path inside Genesis assets>'")


def resolve_texture(name: str, path: str = "", base_dir=None) -> Path | str:
    if name.startswith("skimage:"):
        from hybridsim.scenario.textures import skimage_names

        key = name.split(":", 1)[1]
        if key not in skimage_names():
            raise SpecError(path, f"unknown scikit-image texture '{key}'; choose from {skimage_names()}")
        return name
    return resolve_file(name, path, base_dir)


def _genesis_assets() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("genesis")
    if spec is None or spec.origin is None:
        raise SpecError("", "genesis is not installed; pip install genesis-world")
    return Path(spec.origin).parent / "assets"


# ---------------------------------------------------------------------------- absolute paths


def absolute_files(scenario, base_dir=None):
    """The scenario with every mesh, robot, texture and HDRI file that is found next to the YAML
    (base_dir) or in the working folder named by its absolute path. Later steps have no base_dir
    (each episode's sampled scenario is validated again; the Genesis build, the splat textures and
    the Cycles scene open the files), so they must not need one. Files that are not found are left
    as they are, for validation to report."""
    from hybridsim.scenario.distributions import Choice, Param

    params = dict(scenario.params)

    def value(v):
        if isinstance(v, Param):
            if v.name in params:
                params[v.name] = value(params[v.name])
            return v
        if isinstance(v, Choice):
            return dataclasses.replace(v, options=tuple(value(o) for o in v.options))
        return _absolute(v, base_dir) if isinstance(v, str) else v

    def entity(e):
        app = e.appearance
        if app.texture is not None:
            app = dataclasses.replace(app, texture=value(app.texture))
        return dataclasses.replace(e, file=value(e.file) if e.file is not None else None, appearance=app)

    lighting = scenario.lighting
    if lighting.environment is not None:
        env = dataclasses.replace(lighting.environment, hdri=value(lighting.environment.hdri))
        lighting = dataclasses.replace(lighting, environment=env)
    entities = [entity(e) for e in scenario.entities]
    templates = [entity(t) for t in scenario.templates]
    return dataclasses.replace(scenario, entities=entities, templates=templates, lighting=lighting, params=params)


def _absolute(name: str, base_dir) -> str:
    from hybridsim.scenario.environments import is_procedural
    from hybridsim.scenario.parts import HDRI_NAMES

    if name.startswith(("genesis:", "skimage:")) or is_procedural(name) or name in HDRI_NAMES:
        return name
    p = Path(name).expanduser()
    if p.is_absolute():
        return name
    for c in ([Path(base_dir) / p] if base_dir else []) + [Path.cwd() / p]:
        if c.is_file():
            return str(c.resolve())
    return name


# ---------------------------------------------------------------------------- content checks


def check_content(path: Path, kind: str, where: str) -> None:
    """SpecError at `where` unless the file at `path` opens as a `kind` ("mesh", "urdf", "mjcf",
    "image" or "exr"). Cached by path, size and modification time: sampling validates every
    episode again."""
    try:
        st = path.stat()
    except OSError as exc:
        raise SpecError(where, f"cannot read '{path}' ({exc.strerror}); give a readable file") from None
    problem = _content_problem(str(path), kind, st.st_size, st.st_mtime_ns)
    if problem:
        raise SpecError(where, f"'{path}' {problem}")


@functools.lru_cache(maxsize=256)
def _content_problem(path: str, kind: str, size: int, mtime_ns: int) -> str | None:
    limit = {"mesh": MAX_MESH_BYTES, "urdf": MAX_ROBOT_BYTES, "mjcf": MAX_ROBOT_BYTES}.get(kind, MAX_IMAGE_BYTES)
    if size > limit:
        return f"is {size / 2**20:.0f} MiB, above the {limit >> 20} MiB limit for a {kind} file; simplify it"
    if size == 0:
        return f"is empty; give a {kind} file"
    try:
        return {"mesh": _mesh_problem, "urdf": _robot_problem, "mjcf": _robot_problem,
                "image": _image_problem, "exr": _exr_problem}[kind](Path(path), kind)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"


def _mesh_problem(path: Path, kind: str) -> str | None:
    import trimesh

    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for garbage; only the kind is reported
        return f"is not a readable mesh ({type(exc).__name__}); export it again as {path.suffix or '.obj'}"
    if len(getattr(mesh, "vertices", ())) == 0 or len(getattr(mesh, "faces", ())) == 0:
        return "holds no triangles (trimesh read 0 faces); is it a mesh file?"
    return None


def _robot_problem(path: Path, kind: str) -> str | None:
    import xml.etree.ElementTree as ET

    try:  # expat refuses entity amplification (billion laughs) itself
        root = ET.parse(str(path)).getroot()
    except ET.ParseError as exc:
        return f"is not valid XML ({exc.msg if hasattr(exc, 'msg') else 'parse error'}); is it a {kind} file?"
    want = "robot" if kind == "urdf" else "mujoco"
    if root.tag != want:
        return f"is XML but its root element is <{root.tag[:40]}>, not <{want}>; is it a {kind} file?"
    return None


def _image_problem(path: Path, kind: str) -> str | None:
    import warnings

    import PIL.Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(str(path)) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    return f"is {w}x{h} pixels, above the {MAX_IMAGE_PIXELS} pixel limit for a texture; scale it down"
                img.load()  # decode every pixel: a valid header over garbage fails here
    except Exception as exc:  # PIL raises many types for garbage; only the kind is reported
        return f"is not a readable image ({type(exc).__name__}); give a PNG or JPEG texture"
    return None


def _exr_problem(path: Path, kind: str) -> str | None:
    with path.open("rb") as fh:
        if fh.read(4) != EXR_MAGIC:
            return "is not an OpenEXR image (wrong magic number); give an .exr environment map"
    return None
