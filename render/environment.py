"""Environment light: the HDRI maps Blender ships, their radiance by direction, and their diffuse
irradiance as 9 spherical-harmonic coefficients per colour (Ramamoorthi & Hanrahan 2001).

One convention everywhere (Cycles' equirectangular mapping, z up): a world direction d is first
rotated by `rotation` degrees about +z (what a Mapping node in front of the Environment Texture
does), then looked up at u = 0.5 - atan2(y, x) / 2pi, v = 0.5 + asin(z) / pi (v = 0 is the
bottom row). `tests/test_render_pathtrace.py` checks this against Cycles' own background pixels.

Reading the EXR files uses OpenImageIO as bundled inside the `bpy` wheel (imported lazily).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from render.errors import RenderError

HDRI_NAMES = ("city", "courtyard", "forest", "interior", "night", "studio", "sunrise", "sunset")


@dataclass(frozen=True)
class Environment:
    """World lighting: an HDRI (or a uniform colour) plus a sun."""

    hdri: str | None = None  # a shipped name (HDRI_NAMES) or an .exr path; None = uniform `ambient`
    rotation: float = 0.0  # degrees about +z
    strength: float = 1.0  # multiplies the HDRI's radiance
    ambient: tuple[float, float, float] = (0.1, 0.1, 0.1)  # uniform radiance (linear) when hdri is None
    sun_direction: tuple[float, float, float] = (-1.0, -1.0, -1.0)  # direction the light travels, world
    sun_color: tuple[float, float, float] = (1.0, 1.0, 1.0)  # linear
    sun_strength: float = 5.0  # irradiance, W/m^2 (Cycles' sun strength)
    sun_angle: float = 2.0  # degrees: angular diameter (soft shadows in Cycles)

    def __post_init__(self) -> None:
        if self.hdri is not None and self.hdri not in HDRI_NAMES and not str(self.hdri).lower().endswith(".exr"):
            raise RenderError(f"hdri={self.hdri!r} is neither a shipped map ({', '.join(HDRI_NAMES)}) nor an .exr "
                              "file")
        if not (self.strength >= 0 and self.sun_strength >= 0 and math.isfinite(self.strength)):
            raise RenderError(f"strength={self.strength} and sun_strength={self.sun_strength} must be finite and >= 0")
        if float(np.linalg.norm(self.sun_direction)) == 0:
            raise RenderError("sun_direction must be a non-zero vector")

    @property
    def sun_unit(self) -> np.ndarray:  # [3] the direction the light travels, unit length
        d = np.asarray(self.sun_direction, dtype=np.float64)
        return d / np.linalg.norm(d)


def _bpy_root() -> Path:
    """Blender's versioned resource folder (bpy.utils.resource_path("LOCAL")), found on disk without
    importing bpy: after Genesis has loaded its older Embree, `import bpy` fails, and the HDRI files
    are all the lit render needs from Blender."""
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise RenderError("the path tracer and HDRI lighting need Blender as a module: pip install bpy")
    package = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(d for d in package.iterdir() if d.is_dir() and (d / "datafiles").is_dir())
    if not found:
        raise RenderError(f"no Blender resource folder (<version>/datafiles) in {package}; reinstall bpy")
    return found[-1]


def hdri_path(name: str) -> Path:
    """The .exr file of a shipped HDRI name (or `name` itself when it is a path)."""
    if name in HDRI_NAMES:
        path = _bpy_root() / "datafiles" / "studiolights" / "world" / f"{name}.exr"
    else:
        path = Path(name).expanduser()
    if not path.is_file():
        raise RenderError(f"HDRI file {path} not found; use one of {', '.join(HDRI_NAMES)} or an existing .exr")
    return path


def _oiio():
    import sys

    site = _bpy_root() / "python" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if str(site) not in sys.path:
        sys.path.append(str(site))
    import OpenImageIO

    return OpenImageIO


def read_exr(path: str | Path) -> dict[str, np.ndarray]:
    """Every channel of every part of an EXR file: name -> float32 [H, W] (row 0 = top)."""
    oiio = _oiio()
    inp = oiio.ImageInput.open(str(path))
    if inp is None:
        raise RenderError(f"cannot read {path} as an EXR image: {oiio.geterror()}")
    out, k = {}, 0
    try:
        while inp.seek_subimage(k, 0):
            spec = inp.spec()
            px = inp.read_image(k, 0, 0, spec.nchannels, "float")
            if px is None:
                raise RenderError(f"cannot decode part {k} of {path}: {inp.geterror()}")
            px = np.asarray(px, dtype=np.float32).reshape(spec.height, spec.width, spec.nchannels)
            for i, name in enumerate(spec.channelnames):
                out[name] = px[..., i]
            k += 1
    finally:
        inp.close()
    return out


@lru_cache(maxsize=16)
def load_hdri(name: str, max_width: int = 512) -> np.ndarray:
    """[H, W, 3] float32 linear radiance of an HDRI (row 0 = top), box-downsampled to <= max_width."""
    ch = read_exr(hdri_path(name))
    keys = [k for k in ch if k.split(".")[-1] in ("R", "G", "B")]
    if len(keys) < 3:
        raise RenderError(f"{name}: an HDRI needs R, G and B channels, found {sorted(ch)}")
    img = np.stack([ch[k] for k in sorted(keys, key=lambda k: "RGB".index(k.split(".")[-1]))[:3]], -1)
    if not np.isfinite(img).all():
        raise RenderError(f"{name}: the environment map holds non-finite radiance (inf or NaN); fix or replace it")
    while img.shape[1] > max_width and img.shape[0] % 2 == 0 and img.shape[1] % 2 == 0:
        img = img.reshape(img.shape[0] // 2, 2, img.shape[1] // 2, 2, 3).mean((1, 3))
    return np.ascontiguousarray(img, dtype=np.float32)


def _rotate_z(d: Tensor, degrees: float) -> Tensor:  # [..., 3] -> [..., 3]
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return torch.stack((c * d[..., 0] - s * d[..., 1], s * d[..., 0] + c * d[..., 1], d[..., 2]), -1)


def env_radiance(env: Environment, dirs: Tensor) -> Tensor:  # [..., 3] world directions -> [..., 3] linear
    """What a camera ray leaving along `dirs` sees of the environment (bilinear, no sun disc)."""
    if env.hdri is None:
        return torch.as_tensor(env.ambient, dtype=dirs.dtype, device=dirs.device).expand(dirs.shape).clone()
    img = torch.from_numpy(load_hdri(env.hdri)).to(dirs.device)
    d = _rotate_z(torch.nn.functional.normalize(dirs, dim=-1), env.rotation)
    u = 0.5 - torch.atan2(d[..., 1], d[..., 0]) / (2 * math.pi)
    v = 0.5 + torch.asin(d[..., 2].clamp(-1, 1)) / math.pi
    grid = torch.stack((u * 2 - 1, (1 - v) * 2 - 1), -1).reshape(1, -1, 1, 2).float()
    tex = img.permute(2, 0, 1)[None].float()  # [1, 3, H, W]
    out = torch.nn.functional.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return (out[0, :, :, 0].T.reshape(*dirs.shape[:-1], 3) * env.strength).to(dirs.dtype)


def _sh_basis(d: Tensor) -> Tensor:  # [..., 3] unit -> [..., 9] real SH up to l = 2
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return torch.stack((
        torch.full_like(x, 0.282095),
        0.488603 * y, 0.488603 * z, 0.488603 * x,
        1.092548 * x * y, 1.092548 * y * z, 0.315392 * (3 * z * z - 1), 1.092548 * x * z,
        0.546274 * (x * x - y * y)), -1)


@lru_cache(maxsize=32)
def _sh_coefficients(hdri: str) -> Tensor:
    """[9, 3] radiance SH coefficients of the unrotated, unit-strength map."""
    img = torch.from_numpy(load_hdri(hdri, max_width=256)).double()
    h, w = img.shape[:2]
    v = 1.0 - (torch.arange(h, dtype=torch.float64) + 0.5) / h  # row 0 = top = v near 1
    u = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    elev = (v - 0.5) * math.pi  # asin(z)
    phi = (0.5 - u) * 2 * math.pi  # atan2(y, x)
    el, ph = torch.meshgrid(elev, phi, indexing="ij")
    d = torch.stack((el.cos() * ph.cos(), el.cos() * ph.sin(), el.sin()), -1)
    solid = (el.cos() * (math.pi / h) * (2 * math.pi / w))[..., None]  # d_omega per pixel
    return torch.einsum("hwk,hwc->kc", _sh_basis(d) * solid, img).float()


_COSINE_LOBE = (math.pi, *(2 * math.pi / 3,) * 3, *(math.pi / 4,) * 5)


def irradiance(env: Environment, normals: Tensor) -> Tensor:  # [..., 3] unit world normals -> [..., 3]
    """Diffuse irradiance from the environment (no sun, no occlusion): Lambertian radiance is
    albedo / pi times this. Exact for a uniform environment; 9-term SH for an HDRI."""
    if env.hdri is None:
        return math.pi * torch.as_tensor(env.ambient, dtype=normals.dtype, device=normals.device).expand(normals.shape)
    coef = _sh_coefficients(env.hdri).to(normals.device) * env.strength
    lobe = torch.tensor(_COSINE_LOBE, dtype=coef.dtype, device=normals.device)[:, None]
    basis = _sh_basis(_rotate_z(normals.float(), env.rotation))
    return (basis @ (coef * lobe)).clamp_min(0).to(normals.dtype)
