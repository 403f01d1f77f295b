"""Procedural environment maps: more worlds to train under than the six shipped HDRIs allow.

The refiner learns the path tracer's light transport under whatever environments its training
scenes are lit by; with six HDRIs it learns their quirks (bright horizons, glare on grazing floors)
and carries them to new worlds. Two families widen that set, both equirectangular [H, W, 3]
linear-radiance maps in environment.py's convention (row 0 = top, z up):

- `procedural_sky(seed)`: a day sky (zenith-to-horizon gradient, cloud cover, an optional sun glow
  and disc), a skyline of trees or buildings at random heights, and a textured ground below the
  horizon whose radiance follows the sky's irradiance and the ground's albedo;
- `graded_map(img, seed)`: a shipped map mirrored, white-balanced, re-saturated, with its contrast
  and its ground-to-sky balance changed.

Both are deterministic in `seed` and normalised so the upper hemisphere's mean luminance, weighted
by solid angle, is 1 (the scene's `strength` sets the level). `save_environment` writes one as a half-float EXR that Cycles
and the lit render read like any other map.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from render.environment import _oiio
from render.errors import RenderError

SKY_VERSION = 1  # bump when a generator's output changes: the cached file names carry it
HALF_MAX = 65000.0  # below float16's largest finite value, 65504
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def _elevations(height: int) -> np.ndarray:
    """Elevation [H, 1] (radians) of the pixel rows' centres, row 0 at the top."""
    v = 1.0 - (np.arange(height) + 0.5) / height
    return ((v - 0.5) * math.pi)[:, None]


def _directions(height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elevation [H, 1], azimuth [1, W] (radians) and unit directions [H, W, 3] of the pixel centres."""
    u = (np.arange(2 * height) + 0.5) / (2 * height)
    elev = _elevations(height)
    phi = ((0.5 - u) * 2 * math.pi)[None, :]
    d = np.stack(np.broadcast_arrays(np.cos(elev) * np.cos(phi), np.cos(elev) * np.sin(phi), np.sin(elev)), -1)
    return elev, phi, d.astype(np.float32)


def _blobs(rng: np.random.Generator, d: np.ndarray, n: int, sharpness: tuple[float, float]) -> np.ndarray:
    """Smooth random field on the sphere in [0, 1]: n von Mises-Fisher bumps of random weight."""
    centres = rng.normal(size=(n, 3))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    kappa = np.exp(rng.uniform(*np.log(sharpness), n))
    w = rng.uniform(0.3, 1.0, n)
    field = np.zeros(d.shape[:2], np.float32)
    for c, k, wi in zip(centres, kappa, w):
        field += wi * np.exp(k * (d @ c.astype(np.float32) - 1.0))
    return field / max(float(field.max()), 1e-6)


def _palette(rng: np.random.Generator, kind: str) -> np.ndarray:
    """An albedo: foliage, earth or stone/concrete."""
    if kind == "foliage":
        c = np.array([rng.uniform(0.04, 0.15), rng.uniform(0.08, 0.25), rng.uniform(0.02, 0.10)])
    elif kind == "earth":
        c = np.array([rng.uniform(0.12, 0.35), rng.uniform(0.10, 0.28), rng.uniform(0.05, 0.18)])
    else:
        g = rng.uniform(0.15, 0.55)
        c = g + rng.uniform(-0.03, 0.03, 3)
    return np.clip(c, 0.01, 0.9).astype(np.float32)


def procedural_sky(seed: int, height: int = 512) -> np.ndarray:
    """[height, 2 height, 3] float32 linear radiance of a random outdoor world (module docstring)."""
    rng = np.random.default_rng(seed)
    elev, phi, d = _directions(height)
    up = np.clip(np.sin(elev), 0.0, 1.0)  # [H, 1]
    # sky: zenith colour from deep blue to overcast white, horizon brighter and warmer or darker
    blue = np.array([0.45, 0.62, 1.0], np.float32)
    zenith = blue + (1.0 - blue) * rng.uniform(0.0, 1.0)
    horizon = (np.array([1.0, 0.95, 0.88], np.float32) + (np.array([1.0, 0.78, 0.55]) - 1.0) * rng.uniform(0, 1)
               ) * np.exp(rng.uniform(math.log(0.5), math.log(3.0)))
    falloff = rng.uniform(2.0, 8.0)
    t = (1.0 - up) ** falloff  # 1 at the horizon, 0 at the zenith
    sky = (zenith * (1 - t[..., None]) + horizon * t[..., None]).astype(np.float32) * np.ones_like(d)
    # clouds: a thresholded smooth field, grey-white and brighter or darker than the sky
    cover = rng.uniform(0.0, 0.9)
    if cover > 0.05:
        field = _blobs(rng, d, 60, (8.0, 60.0))
        amount = np.clip((field - (1.0 - cover)) / max(cover, 1e-3) * 2.0, 0.0, 1.0)[..., None]
        cloud = np.float32(rng.uniform(0.6, 1.6)) * np.array([1.0, 1.0, 1.0], np.float32) * float(zenith @ _LUMA)
        sky = sky * (1 - amount) + cloud * amount
    # the sun's glow (and, half the time, a small disc far brighter than the sky)
    s_el, s_az = math.radians(rng.uniform(5, 70)), rng.uniform(0, 2 * math.pi)
    sun = np.array([math.cos(s_el) * math.cos(s_az), math.cos(s_el) * math.sin(s_az), math.sin(s_el)], np.float32)
    cos_sun = d @ sun
    glow = np.exp(rng.uniform(math.log(1.0), math.log(20.0))) * np.exp(rng.uniform(30, 300) * (cos_sun - 1.0))
    sky = sky + (glow[..., None] * np.array([1.0, 0.9, 0.75], np.float32)).astype(np.float32)
    if rng.random() < 0.5:
        disc = cos_sun > math.cos(math.radians(rng.uniform(1.0, 2.5)))
        sky[disc] = np.exp(rng.uniform(math.log(50), math.log(2000))) * np.array([1.0, 0.95, 0.85], np.float32)
    sky_mean = _upper_mean(sky, elev)
    world = sky.copy()
    # a skyline of trees or buildings: a random height profile over azimuth
    if rng.random() < 0.75:
        kind = str(rng.choice(["foliage", "stone"], p=[0.6, 0.4]))
        prof = np.full(phi.shape, rng.uniform(3.0, 30.0))
        for k in range(1, 9):
            prof = prof + rng.uniform(0, 8.0) / k ** 0.8 * np.sin(k * phi + rng.uniform(0, 2 * math.pi))
        if kind == "foliage":  # crowns: many short bumps
            for k in rng.integers(20, 90, 12):
                prof = prof + rng.uniform(0, 2.5) * np.sin(k * phi + rng.uniform(0, 2 * math.pi))
        else:  # blocks: a quantised profile
            prof = np.round(prof / 4.0) * 4.0
        prof = np.radians(np.clip(prof, 0.0, 60.0))
        mask = (elev > 0) & (elev < prof)
        albedo = _palette(rng, kind)
        tex = 0.6 + 0.8 * _blobs(rng, d, 150, (200.0, 2000.0))[..., None]
        shade = (albedo * sky_mean * rng.uniform(0.4, 1.1) * tex).astype(np.float32)
        world = np.where(mask[..., None], shade, world)
    # ground: albedo times the sky's irradiance, textured, hazing into the horizon colour
    albedo = _palette(rng, str(rng.choice(["foliage", "earth", "stone"])))
    tex = 0.55 + 0.9 * _blobs(rng, d, 200, (100.0, 3000.0))[..., None]
    ground = albedo * sky_mean * rng.uniform(0.25, 1.2) * tex
    haze = np.clip(1.0 + elev / math.radians(rng.uniform(2.0, 8.0)), 0.0, 1.0)[..., None]  # 1 at horizon
    ground = ground * (1 - haze) + horizon * float(zenith @ _LUMA) * 0.5 * haze
    world = np.where((elev < 0)[..., None], ground, world).astype(np.float32)
    return _normalised(world, elev)


def graded_map(img: np.ndarray, seed: int) -> np.ndarray:
    """A variant of an environment map [H, W, 3]: mirrored (half the time), white-balanced,
    re-saturated, contrast changed, and its lower hemisphere brightened or darkened."""
    rng = np.random.default_rng(seed)
    out = np.asarray(img, np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = out * np.exp(rng.normal(0.0, 0.15, 3)).astype(np.float32)
    luma = out @ _LUMA
    sat = rng.uniform(0.5, 1.4)
    out = luma[..., None] + sat * (out - luma[..., None])
    gamma = rng.uniform(0.8, 1.15)
    out = out * (np.maximum(luma, 1e-6) ** (gamma - 1.0))[..., None]
    elev = _elevations(out.shape[0])
    out = out * np.where(elev < 0, np.exp(rng.uniform(math.log(0.3), math.log(2.0))), 1.0)[..., None]
    return _normalised(np.clip(out, 0.0, None).astype(np.float32), elev)


def _upper_mean(img: np.ndarray, elev: np.ndarray) -> float:
    """Solid-angle-weighted mean luminance of the upper hemisphere."""
    w = np.cos(elev) * (elev > 0)
    return float(((img @ _LUMA) * w).sum() / (w.sum() * img.shape[1]))


def _normalised(img: np.ndarray, elev: np.ndarray) -> np.ndarray:
    """Scaled so the upper hemisphere's solid-angle-weighted mean luminance is 1."""
    mean = _upper_mean(img, elev)
    if not math.isfinite(mean) or mean <= 0:
        raise RenderError("an environment map with no light above the horizon")
    return np.ascontiguousarray(img / mean, dtype=np.float32)


def save_environment(path: str | Path, img: np.ndarray) -> Path:
    """Write [H, W, 3] linear radiance as a half-float RGB EXR (atomically: temp file, rename).
    Radiance above HALF_MAX (a graded sun can reach it) is clipped there instead of becoming inf."""
    oiio = _oiio()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.exr")
    if not np.isfinite(img).all():
        raise RenderError(f"{path}: the environment map holds non-finite values")
    img = np.ascontiguousarray(np.minimum(img, HALF_MAX), dtype=np.float32)  # bright suns: no inf in half floats
    spec = oiio.ImageSpec(img.shape[1], img.shape[0], 3, "half")
    spec.channelnames = ("R", "G", "B")
    spec.attribute("compression", "zip")
    out = oiio.ImageOutput.create(str(tmp))
    try:
        ok = out is not None and out.open(str(tmp), spec) and out.write_image(img)
        ok = out.close() and ok if out is not None else False
        if not ok:
            raise RenderError(f"cannot write {path}: {oiio.geterror()}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
