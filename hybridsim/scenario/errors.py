"""`SpecError`, the scenario language's one exception type (a bad scenario or run configuration).

It sits below every other module of the package, so the spec, its distributions and its checks can
all raise it without importing one another.
"""

from __future__ import annotations


class SpecError(ValueError):
    """Invalid scenario or run configuration. `path` is the YAML path of the bad value."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}" if path else message)
