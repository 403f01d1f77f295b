"""The one exception type of the render stage (no imports, so `import render` stays cheap)."""


class RenderError(Exception):
    """Bad input to the render stage. Messages name the bad value and the fix."""
