"""How open is the mouth in a frame of a built-in character? (for end-to-end video checks)

The built-in characters paint the open mouth's cavity a dark purple-red
(:data:`server.render.builtin.CAVITY`) that nothing else near the mouth uses: skin, lips, hair
and shadows are dark only with blue below green, pupils and lashes are near grey. The measure
counts such pixels in a generous window around where the mouth is drawn (wide margins for
head motion, compression blur and rescaling), and normalises the count by the frame scale.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from server.render.builtin_geom import DESIGN, MOUTH_DESIGN, frame_layout

# Window around the mouth centre, in design units (u): head motion of ±~25 u stays inside.
WINDOW_X: float = 72.0  # u, half width
WINDOW_UP: float = 34.0  # u, above the mouth centre (stops short of the nostrils)
WINDOW_DOWN: float = 60.0  # u, below the mouth centre
# Normalisation: cavity area (u²) that reads as 1.0 (the 'aa' viseme is ~1).
FULL_OPEN_AREA: float = 1150.0


def cavity_mask(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """(H, W) bool: pixels with the mouth-cavity look (dark, red above green, blue ≥ green)."""
    x = rgb.astype(np.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    lum = (77 * r + 150 * g + 29 * b) >> 8
    return (lum < 66) & (r - g > 28) & (b - g > 3)


def mouth_openness(rgb: NDArray[np.uint8], character: str | None = None) -> float:
    """0 (closed) .. ~1 (wide open 'aa') for an (H, W, 3) uint8 RGB frame of a built-in character.

    Works on frames rescaled to any size with the renderer's layout (character at the bottom,
    centred, scaled by min(H, W)); RGBA input is accepted (alpha ignored). ``character`` is
    checked against the built-in names when given (all built-ins share the mouth layout).
    """
    if character is not None:
        from server.render.builtin import BUILTIN_CHARACTERS

        if character not in BUILTIN_CHARACTERS:
            raise KeyError(f"unknown built-in character {character!r}; known: {sorted(BUILTIN_CHARACTERS)}")
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got shape {a.shape} dtype {a.dtype}")
    h, w = a.shape[:2]
    lay = frame_layout(w, h)
    mx, my = lay.to_px(*MOUTH_DESIGN)
    s = lay.s
    x0, x1 = max(0, int(mx - WINDOW_X * s)), min(w, int(mx + WINDOW_X * s) + 1)
    y0, y1 = max(0, int(my - WINDOW_UP * s)), min(h, int(my + WINDOW_DOWN * s) + 1)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    mask = cavity_mask(a[y0:y1, x0:x1, :3])
    area_u2 = float(mask.sum()) / (s * s)
    _ = DESIGN
    return area_u2 / FULL_OPEN_AREA
