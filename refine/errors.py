"""The one exception type of the refine stage."""

from __future__ import annotations


class RefineError(Exception):
    """Raised for bad inputs, configs or checkpoints; the message names the bad value and the fix."""
