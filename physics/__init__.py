"""physics: Genesis rigid-body worlds built from plain specs, stepped in batches.

Light names (specs, the error type) import eagerly; the Genesis-backed `World` loads on first use.
"""

from physics.spec import BodySpec, CameraSpec, PhysicsError, WorldSpec

_LAZY = {
    "World": "physics.world",
    "PhysicsState": "physics.world",
    "Contacts": "physics.world",
    "BodyInfo": "physics.world",
    "LinkVisual": "physics.world",
    "ReferenceFrame": "physics.world",
    "Snapshot": "physics.world",
    "init_genesis": "physics.world",
    "look_at": "physics.camera",
    "intrinsics": "physics.camera",
}

__all__ = ["BodySpec", "CameraSpec", "PhysicsError", "WorldSpec", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'physics' has no attribute {name!r}")
