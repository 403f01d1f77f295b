"""render: Gaussian-splat assets, posing and rasterisation (gsplat on CUDA, a vectorised CPU path).

A leaf package: it imports torch, numpy, gsplat and trimesh, never `physics`, `refine` or
`hybridsim`. Everything but `RenderError` is imported lazily on first attribute access, so
`import render` costs nothing (no torch import).
"""

from importlib import import_module

from render.errors import RenderError

_EXPORTS = {
    "SplatAsset": "render.types",
    "Gaussians": "render.types",
    "GBuffer": "render.types",
    "mesh_to_splats": "render.assets",
    "primitive_splats": "render.assets",
    "particle_splats": "render.assets",
    "srgb_to_linear": "render.assets",
    "linear_to_srgb": "render.assets",
    "read_ply": "render.ply",
    "write_ply": "render.ply",
    "SplatScene": "render.scene",
    "look_at": "render.camera",
    "intrinsics": "render.camera",
    "tune_cpu_allocator": "render._scratch",
    "rasterize": "render.rasterize",
    "rasterize_reference": "render.rasterize",
    "Plane": "render.plane",
    "composite_planes": "render.plane",
}

__all__ = ["RenderError", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'render' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return sorted(__all__)
