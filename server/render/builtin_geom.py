"""Shared geometry for the built-in characters: frame layout, smooth paths, paint helpers.

All character drawing happens in *design units* (u): a 512 × 512 u square whose bottom edge
sits on the bottom edge of the frame, centred horizontally and scaled by
``s = min(width, height) / 512`` pixels per unit. Head features are drawn in *head space*:
design units relative to :data:`HEAD_CENTER` (x right, y down).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import skia

DESIGN: float = 512.0  # u, side of the design square
HEAD_CENTER: tuple[float, float] = (256.0, 212.0)  # u, head-space origin in design space
MOUTH_Y: float = 74.0  # u, mouth centre below the head centre (head space)
EYE_Y: float = 0.0  # u, eye centre line (head space)
MOUTH_DESIGN: tuple[float, float] = (HEAD_CENTER[0], HEAD_CENTER[1] + MOUTH_Y)  # u, design space
MIN_SIDE: int = 128  # px, smallest supported frame side
MAX_SIDE: int = 1080  # px, largest supported frame side (per the renderer contract: 128..1080)

Point = tuple[float, float]
RGB = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the design square lies in a frame: ``pixel = (ox, oy) + s * design_point``."""

    width: int  # px
    height: int  # px
    s: float  # px per design unit
    ox: float  # px, frame x of design x = 0
    oy: float  # px, frame y of design y = 0

    def to_px(self, x: float, y: float) -> Point:
        """Design-space point (u) → frame pixel coordinates (px)."""
        return (self.ox + self.s * x, self.oy + self.s * y)


def frame_layout(width: int, height: int) -> Layout:
    """Layout of a ``width`` × ``height`` px frame (any aspect; the character stands at the bottom)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    s = min(width, height) / DESIGN
    return Layout(width, height, s, (width - DESIGN * s) / 2.0, height - DESIGN * s)


def clamp(x: float, lo: float, hi: float) -> float:
    """``x`` limited to [lo, hi]; NaN becomes ``lo``."""
    if x != x:  # NaN
        return lo
    return lo if x < lo else hi if x > hi else x


def lerp(a: float, b: float, t: float) -> float:
    """Linear interpolation a → b at t."""
    return a + (b - a) * t


@lru_cache(maxsize=1024)
def mix(c1: RGB, c2: RGB, t: float) -> RGB:
    """Colour c1 → c2 at t (0..1)."""
    return (
        round(lerp(c1[0], c2[0], t)),
        round(lerp(c1[1], c2[1], t)),
        round(lerp(c1[2], c2[2], t)),
    )


@lru_cache(maxsize=1024)
def shade(c: RGB, f: float) -> RGB:
    """Darken (f < 1) or lighten toward white (f > 1) a colour."""
    if f <= 1.0:
        return (round(c[0] * f), round(c[1] * f), round(c[2] * f))
    return mix(c, (255, 255, 255), min(1.0, f - 1.0))


def color(c: RGB, alpha: float = 1.0) -> int:
    """skia ARGB colour from an RGB tuple and an alpha in 0..1."""
    return skia.ColorSetARGB(round(clamp(alpha, 0.0, 1.0) * 255), c[0], c[1], c[2])


def fill(c: RGB, alpha: float = 1.0) -> skia.Paint:
    """Anti-aliased solid fill paint."""
    return skia.Paint(AntiAlias=True, Color=color(c, alpha))


def stroke(c: RGB, width: float, alpha: float = 1.0, round_cap: bool = True) -> skia.Paint:
    """Anti-aliased stroke paint (``width`` in the current canvas units)."""
    p = skia.Paint(AntiAlias=True, Color=color(c, alpha), Style=skia.Paint.kStroke_Style)
    p.setStrokeWidth(width)
    if round_cap:
        p.setStrokeCap(skia.Paint.kRound_Cap)
        p.setStrokeJoin(skia.Paint.kRound_Join)
    return p


def blurred(c: RGB, alpha: float, sigma: float) -> skia.Paint:
    """Soft-edged fill paint (Gaussian blur of ``sigma`` in device pixels)."""
    p = fill(c, alpha)
    if sigma > 0.05:
        p.setMaskFilter(skia.MaskFilter.MakeBlur(skia.kNormal_BlurStyle, sigma))
    return p


def linear_paint(p0: Point, p1: Point, colors: Sequence[RGB], alpha: float = 1.0) -> skia.Paint:
    """Anti-aliased fill with a linear gradient from p0 to p1 (evenly spaced colours)."""
    sh = skia.GradientShader.MakeLinear(
        [skia.Point(*p0), skia.Point(*p1)], [color(c, alpha) for c in colors]
    )
    return skia.Paint(AntiAlias=True, Shader=sh)


def radial_paint(center: Point, radius: float, colors: Sequence[RGB], alphas: Sequence[float] | None = None) -> skia.Paint:
    """Anti-aliased fill with a radial gradient (evenly spaced colours, optional per-stop alpha)."""
    al = list(alphas) if alphas is not None else [1.0] * len(colors)
    sh = skia.GradientShader.MakeRadial(
        skia.Point(*center), max(radius, 1e-3), [color(c, a) for c, a in zip(colors, al, strict=True)]
    )
    return skia.Paint(AntiAlias=True, Shader=sh)


def smooth_path(pts: Sequence[Point], closed: bool = True, tension: float = 1.0) -> skia.Path:
    """Catmull-Rom spline through ``pts`` as cubic Béziers (closed loop or open curve)."""
    n = len(pts)
    if n < 2:
        raise ValueError(f"smooth_path needs at least 2 points, got {n}")
    path = skia.Path()
    path.moveTo(*pts[0])
    segs = n if closed else n - 1
    k = tension / 6.0
    for i in range(segs):
        p0 = pts[(i - 1) % n] if (closed or i > 0) else pts[0]
        p1 = pts[i]
        p2 = pts[(i + 1) % n]
        p3 = pts[(i + 2) % n] if (closed or i + 2 < n) else pts[n - 1]
        path.cubicTo(
            p1[0] + (p2[0] - p0[0]) * k,
            p1[1] + (p2[1] - p0[1]) * k,
            p2[0] - (p3[0] - p1[0]) * k,
            p2[1] - (p3[1] - p1[1]) * k,
            p2[0],
            p2[1],
        )
    if closed:
        path.close()
    return path


def mirrored(right: Sequence[Point]) -> list[Point]:
    """Closed outline from its right half listed top → bottom (x ≥ 0, endpoints on x = 0)."""
    left = [(-x, y) for (x, y) in reversed(right[1:-1])]
    return list(right) + left


def oval(cx: float, cy: float, rx: float, ry: float) -> skia.Rect:
    """Bounding rect of an ellipse."""
    return skia.Rect(cx - rx, cy - ry, cx + rx, cy + ry)
