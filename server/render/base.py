"""The renderer interface every avatar kind implements."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from server.pipeline.types import AnimationState


class Renderer(Protocol):
    """Draws an :class:`AnimationState`. One instance per session (it may cache buffers)."""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames in pixels."""
        ...

    def render(self, state: AnimationState) -> NDArray[np.uint8]:
        """Draw one frame: (height, width, 4) uint8 RGBA, C-contiguous.

        Deterministic: the same state gives the same pixels. May return an internal buffer
        that is overwritten by the next call.
        """
        ...
