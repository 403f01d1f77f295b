"""The interactive stage's error type."""

from __future__ import annotations


class InteractiveError(ValueError):
    """A misuse of an interactive environment or session (a wrong action shape, a step after the
    episode ended, a recording that does not replay): the message names the bad value and the fix."""
