"""The "AI avatar" disclosure badge drawn into the video itself.

A likeness animated by this server should say so wherever the video goes (a viewer's page, OBS,
a recording, a call through a virtual camera), so the badge is drawn into the frames, not the
page. ``[video] disclosure``: ``"photo"`` (the default: on photo avatars, real people's faces),
``"always"``, or ``"off"``. The badge is made once per frame size and blended into the bottom
left corner of each frame (~0.05 ms at 512²).
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from server.pipeline.types import AnimationState
from server.render.base import Renderer

TEXT = "AI avatar"
MODES = ("photo", "always", "off")


def badge(width: int, height: int) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """The badge for a ``width`` x ``height`` frame: (RGB (h, w, 3), alpha (h, w, 1) 0..1)."""
    scale = max(0.35, min(width, height) / 900.0)
    thick = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(TEXT, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(3, round(th * 0.45))
    h, w = th + base + 2 * pad, tw + 2 * pad
    rgb = np.zeros((h, w, 3), np.uint8)
    alpha = np.full((h, w), 0.62, np.float32)  # a dark translucent plate ...
    cv2.putText(rgb, TEXT, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    text = rgb.max(axis=2) > 0
    alpha[text] = 1.0  # ... with opaque white text
    return rgb, alpha[..., None]


class DisclosedRenderer:
    """A renderer whose frames carry the disclosure badge."""

    def __init__(self, inner: Renderer) -> None:
        self.inner = inner
        w, h = inner.size
        self._rgb, self._alpha = badge(w, h)
        bh, bw = self._rgb.shape[:2]
        margin = max(4, h // 64)
        self._y0, self._x0 = h - bh - margin, margin

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames in pixels."""
        return self.inner.size

    def render(self, state: AnimationState) -> NDArray[np.uint8]:
        """The inner frame, (H, W, 4) RGBA, with the badge blended in."""
        frame = self.inner.render(state)
        bh, bw = self._rgb.shape[:2]
        region = frame[self._y0 : self._y0 + bh, self._x0 : self._x0 + bw]
        # premultiplied "over": right for opaque frames and for transparent ones (the OBS matte)
        a = self._alpha
        region[..., :3] = (region[..., :3].astype(np.float32) * (1.0 - a) + self._rgb.astype(np.float32) * a).astype(np.uint8)
        region[..., 3:] = (region[..., 3:].astype(np.float32) * (1.0 - a) + 255.0 * a).astype(np.uint8)
        return frame


def with_disclosure(renderer: Renderer, kind: str, mode: str) -> Renderer:
    """``renderer`` with the badge when ``mode`` asks for it for avatars of ``kind``."""
    if mode not in MODES:
        raise ValueError(f"video.disclosure must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "always" or (mode == "photo" and kind == "photo"):
        return DisclosedRenderer(renderer)
    return renderer
