"""`SpecError`, the scenario language's one exception type (a bad scenario or run configuration).

It sits below every other module of the package, so the spec, its distributions and its checks can
all raise it without importing one another.
"""

from __future__ import annotations


class SpecError(ValueError):
    """Invalid scenario or run configuration. `path` is the YAML path of the bad value."""

    def __init__(self, path: str, message: str):
        if len(path) > 120:  # a path is made of the input's keys: keep a huge key from filling the line
            path = f"{path[:100]}... ({len(path)} chars)"
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}" if path else message)
