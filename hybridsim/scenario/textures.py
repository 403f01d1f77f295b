"""Real photographs shipped with scikit-image, usable as textures without any download."""

from __future__ import annotations

import os

import numpy as np

from hybridsim.scenario.cache import cache_dir

_PHOTOS = ("brick", "grass", "gravel", "coffee", "chelsea", "rocket", "astronaut", "camera", "moon", "text")


def skimage_names() -> list[str]:
    return list(_PHOTOS)


def load_texture(name: str) -> np.ndarray:
    """[h, w, 3] uint8 RGB for 'skimage:NAME' or an image file path."""
    if name.startswith("skimage:"):
        import skimage.data

        img = getattr(skimage.data, name.split(":", 1)[1])()
    else:
        import skimage.io

        img = skimage.io.imread(name)
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float64) / max(float(img.max()), 1.0), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(img[..., :3])


def texture_file(name: str) -> str:
    """A PNG path for a texture (Genesis' raster camera takes files); photographs are cached."""
    if not name.startswith("skimage:"):
        return name
    cache = cache_dir("textures")
    path = cache / f"{name.split(':', 1)[1]}.png"
    if not path.exists():
        import skimage.io

        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.png")
        skimage.io.imsave(tmp, load_texture(name), check_contrast=False)
        os.replace(tmp, path)
    return str(path)
