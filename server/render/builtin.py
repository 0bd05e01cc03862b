"""Procedurally drawn built-in presenter characters (fast CPU renderer, skia + OpenCV).

Per frame (≈1.3–1.7 ms at 512² on one thread of the 2-core dev machine; README has the numbers):

1. one copy of the cached background with the torso composited over it at the breathing
   offset (one composite per breathing position, four sub-pixel phases);
2. the neck, as skia paths, only in the rows between the part always hidden under the face and
   the opaque torso; where the neck's box meets the torso the background is put back first and
   the torso redrawn over it after, so the result is that of background, neck, torso in order;
3. the cached head sprite (back hair, ears, shaded face, front hair) warped with the head pose
   (``cv2.warpAffine`` on its bounding box only) and blended over;
4. the animated features (eyes, brows, nose, mouth, blush, glasses) as anti-aliased skia paths
   under the same head transform plus a yaw/pitch parallax offset.

Where the time goes (ava, 512²): about 45% the features (skia's anti-aliased rasterisation of
~60 small paths, ~10 µs each, plus their Python), 35% the sprite warp, the rest the copy, the
neck and Python. skia draws into the RGBA frame through a BGRA view (paint colours swapped):
its BGRA blends and fills are faster than its RGBA ones in the skia-python build.

Conventions: ``eye_open_l``/``gaze_x`` are in the viewer's view (``_l`` = the eye on the left of
the image). ``emotion_weights`` (per :data:`EMOTIONS`) add the shape cues no other field carries
(lid shape, blush, brow asymmetry, a small extra on mouth corners and brows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import cv2
import numpy as np
import skia
from numpy.typing import NDArray

from engines.spec import N_VISEMES, VISEME_INDEX
from server.pipeline.types import EMOTIONS, AnimationState
from server.render.base import Renderer
from server.render.builtin_geom import (
    EYE_Y,
    HEAD_CENTER,
    MOUTH_Y,
    RGB,
    blurred,
    clamp,
    fill,
    frame_layout,
    lerp,
    mix,
    oval,
    shade,
    smooth_path,
    stroke,
)
from server.render.builtin_styles import (
    CHARACTER_STYLES,
    CharacterStyle,
    neck_path,
    paint_background,
    paint_head,
    paint_torso,
)

SIZE_RANGE: tuple[int, int] = (64, 2160)  # px, accepted frame sides (128..1080 is the contract)
SPRITE_BOX: tuple[float, float, float, float] = (-176.0, -182.0, 176.0, 244.0)  # u, head space
ROLL_PIVOT: tuple[float, float] = (0.0, 110.0)  # u, head space: the head tilts about the neck
TORSO_TOP: float = 332.0  # u, design y above which the torso layer is empty
TORSO_PHASES: int = 4  # sub-pixel phases of the cached torso (breathing)
BREATH_RISE: float = 3.5  # u, shoulder rise at breath = 1
K = TypeVar("K")  # a paint cache's key type
PAINT_CACHE: int = 2048  # paints kept per kind (fill, stroke, blur) before the cache is reset
COMP_CACHE_BYTES: int = 24 << 20  # background+torso composites kept per renderer (all phases at 512²)
CAVITY: RGB = (72, 20, 38)  # mouth cavity colour (server.render.measure looks for it)
TEETH: RGB = (247, 245, 238)
TONGUE: RGB = (232, 100, 118)
SCLERA: RGB = (248, 246, 242)
LIP_LINE: RGB = (60, 30, 10)  # mixed into the lip-meeting line (blue < green: never 'cavity')

MAX_YAW: float = 0.6  # rad, head_yaw is clamped to ±this
MAX_PITCH: float = 0.5  # rad, head_pitch is clamped to ±this

# Parallax of each layer, u per rad of (yaw, pitch): features move more than the face outline.
PAR_SPRITE = (14.0, 10.0)
PAR_NECK = (4.0, 2.0)
PAR_EYES = (40.0, 28.0)
PAR_NOSE = (54.0, 34.0)
PAR_MOUTH = (36.0, 26.0)
PAR_GLASSES = (46.0, 30.0)


def _f(x: object, lo: float, hi: float, default: float = 0.0) -> float:
    """A state field as a clamped float (NaN, None or junk → ``default`` clamped)."""
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = default
    if not math.isfinite(v):
        v = default if math.isfinite(default) else lo
    return clamp(v, lo, hi)


def emotion_weights(state: AnimationState) -> dict[str, float]:
    """Clamped, normalised weights per emotion name (falls back to ``state.emotion``)."""
    raw = list(state.emotion_weights)[: len(EMOTIONS)] if state.emotion_weights is not None else []
    w = [_f(x, 0.0, 1.0) for x in raw] + [0.0] * (len(EMOTIONS) - len(raw))
    total = sum(w)
    if total < 1e-6:
        w = [1.0 if e == state.emotion else 0.0 for e in EMOTIONS]
        total = sum(w)
        if total == 0.0:
            w[0], total = 1.0, 1.0
    if total > 1.0:
        w = [x / total for x in w]
    return dict(zip(EMOTIONS, w, strict=True))


def viseme_weights(state: AnimationState) -> list[float]:
    """``state.visemes`` as N_VISEMES floats clamped to 0..1 (zeros if malformed)."""
    try:
        v = np.asarray(state.visemes, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return [0.0] * N_VISEMES
    if v.shape[0] != N_VISEMES:
        return [0.0] * N_VISEMES
    return [clamp(x, 0.0, 1.0) for x in v.tolist()]  # NaN -> 0, ±inf -> 1 / 0


def _bgra_image(arr: NDArray[np.uint8]) -> skia.Image:
    """A premultiplied RGBA array wrapped (no copy) as a BGRA image (see BuiltinRenderer._canvas)."""
    return skia.Image.fromarray(arr, colorType=skia.kBGRA_8888_ColorType, alphaType=skia.kPremul_AlphaType, copy=False)


def _alpha255(alpha: float) -> int:
    """Opacity 0..1 (out-of-range clamped) → 0..255, the paint caches' alpha quantisation."""
    return 255 if alpha >= 1.0 else round(alpha * 255) if alpha > 0.0 else 0


def _store(cache: dict[K, skia.Paint], key: K, paint: skia.Paint) -> skia.Paint:
    """Put ``paint`` in a paint cache, emptying it first when full (bounded: the continuous
    inputs are quantised, so a cache only overflows on unusual input); returns ``paint``."""
    if len(cache) > PAINT_CACHE:
        cache.clear()
    cache[key] = paint
    return paint


def _swap(c: RGB) -> RGB:
    """An RGB colour for a paint on the swapped (BGRA) view of an RGBA buffer."""
    return (c[2], c[1], c[0])


@dataclass(frozen=True, slots=True)
class _Pose:
    """The per-frame head pose, in design units."""

    roll: float  # rad
    yaw: float  # rad
    pitch: float  # rad
    tx: float  # u, head translation in design space
    ty: float  # u
    sx: float  # horizontal squash from yaw
    sy: float  # vertical squash from pitch
    breath: float  # 0..1


class BuiltinRenderer:
    """One built-in character at one frame size; see the module docstring for the pipeline."""

    def __init__(self, style: CharacterStyle, size: tuple[int, int] = (512, 512), *, transparent: bool = False) -> None:
        """``transparent``: no background; the frame's alpha is the character's coverage
        (premultiplied RGBA), for outputs that carry an alpha matte."""
        w, h = int(size[0]), int(size[1])
        if not (SIZE_RANGE[0] <= w <= SIZE_RANGE[1] and SIZE_RANGE[0] <= h <= SIZE_RANGE[1]):
            raise ValueError(f"frame size {size!r} outside {SIZE_RANGE[0]}..{SIZE_RANGE[1]} px per side")
        self.style = style
        self._size = (w, h)
        self._lay = frame_layout(w, h)
        s = self._lay.s
        self._buf: NDArray[np.uint8] = np.zeros((h, w, 4), np.uint8)
        # Per frame, skia sees the RGBA frame as BGRA: paints get their red and blue swapped
        # (_fp, _sp, _bp) and cached RGBA images are wrapped as BGRA (_bgra_image); blending
        # treats the three colour channels alike, so the pixels are the RGBA picture, and skia's
        # BGRA image blend (~4x) and path fills (~25%) are faster than its RGBA ones here.
        self._surface = skia.Surface(self._buf, colorType=skia.kBGRA_8888_ColorType, alphaType=skia.kPremul_AlphaType)
        self._canvas = self._surface.getCanvas()
        # background (opaque, pixel space)
        self._bg: NDArray[np.uint8] = np.zeros((h, w, 4), np.uint8)
        bg_surface = skia.Surface(self._bg, colorType=skia.kRGBA_8888_ColorType, alphaType=skia.kPremul_AlphaType)
        if not transparent:
            paint_background(bg_surface.getCanvas(), style, self._lay)
        del bg_surface
        if not transparent:
            self._bg[..., 3] = 255
        self.transparent = transparent
        # torso layer at TORSO_PHASES sub-pixel offsets
        self._torso_y0 = max(0, int(math.floor(self._lay.oy + s * TORSO_TOP)))
        th = h - self._torso_y0 + int(math.ceil(BREATH_RISE * s)) + 2
        self._torso: list[tuple[NDArray[np.uint8], skia.Image]] = []
        # per phase: the first torso row with any paint, and per column the row from which the
        # torso is opaque down to its bottom (the neck is hidden there)
        self._torso_top_row: list[int] = []
        self._torso_opaque_row: list[NDArray[np.intp]] = []
        for k in range(TORSO_PHASES):
            arr = np.zeros((th, w, 4), np.uint8)
            surf = skia.Surface(arr, colorType=skia.kRGBA_8888_ColorType, alphaType=skia.kPremul_AlphaType)
            c = surf.getCanvas()
            c.translate(self._lay.ox + 256.0 * s, self._lay.oy - self._torso_y0 + k / TORSO_PHASES)
            c.scale(s, s)
            paint_torso(c, style)
            del surf
            self._torso.append((arr, _bgra_image(arr)))
            rows = np.nonzero(arr[..., 3].any(axis=1))[0]
            self._torso_top_row.append(int(rows[0]) if len(rows) else th)
            gap = arr[..., 3] != 255
            last_gap = th - 1 - np.argmax(gap[::-1], axis=0)
            self._torso_opaque_row.append(np.where(gap.any(axis=0), last_gap + 1, 0))
        # background with the torso composited, per breathing position (yi, phase), from frame row
        # _comp_y0 down: the frame starts as one copy; only the neck's rows are composited per frame
        self._comp_y0 = max(0, int(math.floor(self._torso_y0 - BREATH_RISE * s)))
        comp_bytes = (h - self._comp_y0) * w * 4
        self._comp_max = max(2, COMP_CACHE_BYTES // max(1, comp_bytes))
        self._comp: dict[tuple[int, int], NDArray[np.uint8]] = {}
        self._neck = neck_path(style)
        self._neck_shadows: list[tuple[skia.Path, float]] = []
        for rect, alpha in ((oval(0.0, 104.0, 44.0, 30.0), 0.55), (oval(0.0, 92.0, 50.0, 30.0), 0.45)):
            o = skia.Path()
            o.addOval(rect)
            clipped = skia.Op(o, self._neck, skia.PathOp.kIntersect_PathOp)
            if clipped is not None:
                self._neck_shadows.append((clipped, alpha))
        nb = self._neck.computeTightBounds()
        self._neck_box = (nb.left(), nb.top(), nb.right(), nb.bottom())  # head space, u
        # head sprite (premultiplied RGBA) in head space
        x0, y0, x1, y1 = SPRITE_BOX
        sw, sh = int(math.ceil((x1 - x0) * s)) + 2, int(math.ceil((y1 - y0) * s)) + 2
        self._sprite: NDArray[np.uint8] = np.zeros((sh, sw, 4), np.uint8)
        surf = skia.Surface(self._sprite, colorType=skia.kRGBA_8888_ColorType, alphaType=skia.kPremul_AlphaType)
        c = surf.getCanvas()
        c.scale(s, s)
        c.translate(-x0, -y0)
        paint_head(c, style)
        del surf
        # keep only the painted part: the per-frame warp and blend cost scales with its area
        ys, xs = np.nonzero(self._sprite[..., 3])
        u0, u1 = max(0, int(xs.min()) - 1), min(sw, int(xs.max()) + 2)
        v0, v1 = max(0, int(ys.min()) - 1), min(sh, int(ys.max()) + 2)
        self._sprite = np.ascontiguousarray(self._sprite[v0:v1, u0:u1])
        self._sprite_origin = (x0 + u0 / s, y0 + v0 / s)  # head-space point of sprite px (0, 0)
        self._neck_hidden_y = self._neck_hidden_top()
        self._nose_shadow = shade(style.skin_shadow, 0.95)
        self._fills: dict[tuple[RGB, int], skia.Paint] = {}
        self._strokes: dict[tuple[RGB, int, int], skia.Paint] = {}
        self._blurs: dict[tuple[RGB, int, int], skia.Paint] = {}
        self._pupil = 0.46  # pupil radius / iris radius, set per frame from arousal

    # ------------------------------------------------------------------ protocol

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in px."""
        return self._size

    def render(self, state: AnimationState) -> NDArray[np.uint8]:
        """Draw ``state``: (height, width, 4) uint8 RGBA (an internal buffer, reused)."""
        emo = emotion_weights(state)
        pose = self._pose(state)
        c = self._canvas
        c.resetMatrix()
        self._draw_body(c, pose)
        self._draw_sprite(c, pose)
        self._draw_features(c, state, pose, emo)
        c.resetMatrix()
        return self._buf

    # ------------------------------------------------------------------ layers

    def _fp(self, c: RGB, alpha: float = 1.0) -> skia.Paint:
        """Cached solid fill paint for the frame canvas (alpha quantised to 1/255)."""
        key = (c, _alpha255(alpha))
        p = self._fills.get(key)
        if p is None:
            p = _store(self._fills, key, fill(_swap(c), key[1] / 255))
        return p

    def _sp(self, c: RGB, width: float, alpha: float = 1.0) -> skia.Paint:
        """Cached round-capped stroke paint (width quantised to 1/64 u)."""
        key = (c, _alpha255(alpha), round(width * 64))
        p = self._strokes.get(key)
        if p is None:
            p = _store(self._strokes, key, stroke(_swap(c), key[2] / 64, key[1] / 255))
        return p

    def _bp(self, c: RGB, alpha: float, sigma: float) -> skia.Paint:
        """Cached soft fill paint (``sigma`` in px, quantised to 1/16)."""
        key = (c, _alpha255(alpha), round(sigma * 16))
        p = self._blurs.get(key)
        if p is None:
            p = _store(self._blurs, key, blurred(_swap(c), key[1] / 255, key[2] / 16))
        return p

    def _pose(self, state: AnimationState) -> _Pose:
        w, h = self._size
        s = self._lay.s
        yaw = _f(state.head_yaw, -MAX_YAW, MAX_YAW)
        pitch = _f(state.head_pitch, -MAX_PITCH, MAX_PITCH)
        breath = _f(state.breath, 0.0, 1.0)
        return _Pose(
            roll=_f(state.head_roll, -0.35, 0.35),
            yaw=yaw,
            pitch=pitch,
            tx=_f(state.head_dx, -0.15, 0.15) * w / s,
            ty=_f(state.head_dy, -0.15, 0.15) * h / s - 1.2 * breath,
            sx=1.0 - 0.14 * abs(yaw),
            sy=1.0 - 0.10 * abs(pitch),
            breath=breath,
        )

    def _affine(self, pose: _Pose, par: tuple[float, float]) -> tuple[float, float, float, float, float, float]:
        """Head space → frame px for a layer with parallax ``par``: (a, b, c, d, e, f) of
        ``x' = a x + b y + c``, ``y' = d x + e y + f``."""
        s, lay = self._lay.s, self._lay
        cr, sr = math.cos(pose.roll), math.sin(pose.roll)
        dx, dy = pose.yaw * par[0], pose.pitch * par[1]
        px, py = ROLL_PIVOT
        # design = C + T + R (S (q + d) - p) + p
        a, b = s * cr * pose.sx, -s * sr * pose.sy
        d, e = s * sr * pose.sx, s * cr * pose.sy
        ux, uy = pose.sx * dx - px, pose.sy * dy - py
        cx = HEAD_CENTER[0] + pose.tx + cr * ux - sr * uy + px
        cy = HEAD_CENTER[1] + pose.ty + sr * ux + cr * uy + py
        return (a, b, lay.ox + s * cx, d, e, lay.oy + s * cy)

    def _set_matrix(self, c: skia.Canvas, pose: _Pose, par: tuple[float, float]) -> None:
        a, b, cc, d, e, f = self._affine(pose, par)
        c.setMatrix(skia.Matrix.MakeAll(a, b, cc, d, e, f, 0.0, 0.0, 1.0))

    def _torso_pos(self, breath: float) -> tuple[int, int]:
        """Frame row and sub-pixel phase of the torso layer at ``breath``."""
        y = self._torso_y0 - BREATH_RISE * breath * self._lay.s
        yi = math.floor(y)
        k = round((y - yi) * TORSO_PHASES)
        if k == TORSO_PHASES:
            yi, k = yi + 1, 0
        return yi, k

    def _composite(self, yi: int, k: int) -> NDArray[np.uint8]:
        """Background rows ``_comp_y0``.. with the torso (phase ``k`` at row ``yi``) drawn over them."""
        key = (yi, k)
        comp = self._comp.get(key)
        if comp is None:
            if len(self._comp) >= self._comp_max:
                del self._comp[next(iter(self._comp))]
            comp = self._bg[self._comp_y0 :].copy()
            surf = skia.Surface(comp, colorType=skia.kBGRA_8888_ColorType, alphaType=skia.kPremul_AlphaType)
            surf.getCanvas().drawImage(self._torso[k][1], 0, yi - self._comp_y0)  # as per frame
            del surf
            self._comp[key] = comp
        return comp

    def _draw_body(self, c: skia.Canvas, pose: _Pose) -> None:
        """Background, neck and torso, as if drawn in that order: one copy of the cached
        background+torso composite, then the neck, with the torso redrawn over the neck's box."""
        w, h = self._size
        yi, k = self._torso_pos(pose.breath)
        y0 = self._comp_y0
        np.copyto(self._buf[:y0], self._bg[:y0])
        np.copyto(self._buf[y0:], self._composite(yi, k))
        # the neck's frame box
        a, b, cc, d, e, f = self._affine(pose, PAR_NECK)
        nx0, ny0, nx1, ny1 = self._neck_box
        xs = [a * x + b * y + cc for x, y in ((nx0, ny0), (nx1, ny0), (nx0, ny1), (nx1, ny1))]
        ys = [d * x + e * y + f for x, y in ((nx0, ny0), (nx1, ny0), (nx0, ny1), (nx1, ny1))]
        bx0, bx1 = max(0, math.floor(min(xs)) - 1), min(w, math.ceil(max(xs)) + 2)
        by0, by1 = max(0, math.floor(min(ys)) - 1), min(h, math.ceil(max(ys)) + 2)
        if bx1 <= bx0 or by1 <= by0:
            return
        # rows from `cut` down are opaque torso in the neck's columns, rows above `top` are under
        # the opaque face: the neck is drawn only between (clipped; this changes its edge pixels'
        # anti-aliasing by a few levels)
        cut = min(by1, yi + int(self._torso_opaque_row[k][bx0:bx1].max()))
        hy = self._neck_hidden_y
        top = max(by0, math.floor(min(d * nx0 + e * hy + f, d * nx1 + e * hy + f)))
        if cut <= top:
            return
        # where the neck meets the torso: put the background back, draw the neck, then the torso
        ry0 = max(top, yi + self._torso_top_row[k])
        if ry0 < cut:
            np.copyto(self._buf[ry0:cut, bx0:bx1], self._bg[ry0:cut, bx0:bx1])
        c.save()
        c.clipRect(skia.Rect(bx0, top, bx1, cut))
        self._draw_neck(c, pose)
        c.restore()
        if ry0 < cut:
            c.save()
            c.clipRect(skia.Rect(bx0, ry0, bx1, cut))
            c.drawImage(self._torso[k][1], 0, yi)
            c.restore()

    def _neck_hidden_top(self) -> float:
        """Head-space y above which the neck is under the opaque head sprite in every pose."""
        s = self._lay.s
        sx0, sy0 = self._sprite_origin
        sh, sw = self._sprite.shape[:2]
        cover = np.zeros((sh, sw, 4), np.uint8)
        surf = skia.Surface(cover, colorType=skia.kRGBA_8888_ColorType, alphaType=skia.kPremul_AlphaType)
        c = surf.getCanvas()
        c.scale(s, s)
        c.translate(-sx0, -sy0)
        c.drawPath(self._neck, fill((255, 255, 255)))
        del surf
        neck = cv2.dilate((cover[..., 3] > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        # the neck's parallax differs from the sprite's: it shifts against it by up to this
        dx = math.ceil(abs(PAR_SPRITE[0] - PAR_NECK[0]) * MAX_YAW * s) + 1
        dy = math.ceil(abs(PAR_SPRITE[1] - PAR_NECK[1]) * MAX_PITCH * s) + 1
        opaque = (self._sprite[..., 3] == 255).astype(np.uint8)
        safe = cv2.erode(opaque, np.ones((2 * dy + 1, 2 * dx + 1), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        shown = np.nonzero((neck & ~safe).any(axis=1))[0]
        return sy0 + (int(shown[0]) if len(shown) else sh) / s

    def _draw_neck(self, c: skia.Canvas, pose: _Pose) -> None:
        st = self.style
        c.save()
        self._set_matrix(c, pose, PAR_NECK)
        c.drawPath(self._neck, self._fp(shade(st.skin, 0.94)))
        for path, alpha in self._neck_shadows:
            c.drawPath(path, self._fp(st.skin_shadow, alpha))
        c.restore()

    def _draw_sprite(self, c: skia.Canvas, pose: _Pose) -> None:
        s = self._lay.s
        a, b, cc, d, e, f = self._affine(pose, PAR_SPRITE)
        x0, y0 = self._sprite_origin
        sh, sw = self._sprite.shape[:2]
        # sprite px (u, v) -> head space (u/s + x0, v/s + y0) -> frame px
        m = np.array(
            [[a / s, b / s, a * x0 + b * y0 + cc], [d / s, e / s, d * x0 + e * y0 + f]], np.float64
        )
        xs = [m[0, 0] * u + m[0, 1] * v + m[0, 2] for u, v in ((0, 0), (sw, 0), (0, sh), (sw, sh))]
        ys = [m[1, 0] * u + m[1, 1] * v + m[1, 2] for u, v in ((0, 0), (sw, 0), (0, sh), (sw, sh))]
        w, h = self._size
        bx0, by0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
        bx1, by1 = min(w, math.ceil(max(xs)) + 1), min(h, math.ceil(max(ys)) + 1)
        if bx1 <= bx0 or by1 <= by0:
            return
        m[0, 2] -= bx0
        m[1, 2] -= by0
        warped: NDArray[np.uint8] = cv2.warpAffine(  # type: ignore[assignment]
            self._sprite, m, (bx1 - bx0, by1 - by0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0)
        )
        c.drawImage(_bgra_image(warped), bx0, by0)

    # ------------------------------------------------------------------ features

    def _draw_features(self, c: skia.Canvas, state: AnimationState, pose: _Pose, emo: dict[str, float]) -> None:
        st = self.style
        happy, sad, angry = emo["happy"], emo["sad"], emo["angry"]
        surprised, thinking = emo["surprised"], emo["thinking"]
        # cheeks
        self._set_matrix(c, pose, PAR_EYES)
        blush = 0.30 * happy + 0.10 * angry + 0.05 * surprised
        if blush > 0.01:
            for sx in (-1.0, 1.0):
                c.drawOval(oval(sx * 54.0, 40.0, 21.0, 12.0), self._bp((240, 96, 110), blush, 6.0 * self._lay.s))
        # eyes and brows
        listening = 1.0 if state.listening is True else 0.0
        brow_r = clamp(
            _f(state.brow_raise, -1.0, 1.0) + 0.25 * surprised - 0.15 * angry + 0.12 * listening, -1.0, 1.0
        )
        self._pupil = 0.42 + 0.08 * _f(state.arousal, 0.0, 1.0) + 0.04 * surprised  # iris fraction
        brow_i = clamp(_f(state.brow_inner, -1.0, 1.0) + 0.3 * sad - 0.4 * angry, -1.0, 1.0)
        gx, gy = _f(state.gaze_x, -1.0, 1.0), _f(state.gaze_y, -1.0, 1.0)
        for side, open_raw in ((-1.0, state.eye_open_l), (1.0, state.eye_open_r)):
            op = _f(open_raw, 0.0, 1.3, 1.0)
            op = op * (1.0 + 0.12 * surprised - 0.12 * happy - 0.08 * thinking)
            # far eye (turning away) a little smaller
            scale = 1.0 + 0.12 * side * pose.yaw
            self._eye(c, side, op, gx, gy, emo, scale)
            asym = thinking * (0.45 if side > 0 else -0.15)
            self._brow(c, side, clamp(brow_r + asym, -1.0, 1.0), brow_i, emo, scale)
        if angry > 0.05:
            for sx in (-1.0, 1.0):
                crease = smooth_path([(sx * 6.0, -32.0), (sx * 8.0, -22.0), (sx * 7.0, -14.0)], closed=False)
                c.drawPath(crease, self._sp(st.skin_shadow, 1.6, 0.6 * angry))
        if st.glasses is not None:
            self._set_matrix(c, pose, PAR_GLASSES)
            self._glasses(c, pose)
        self._set_matrix(c, pose, PAR_NOSE)
        self._nose(c)
        self._set_matrix(c, pose, PAR_MOUTH)
        self._mouth(c, state, emo)
        _ = (sad,)

    def _eye(self, c: skia.Canvas, side: float, op: float, gx: float, gy: float, emo: dict[str, float], scale: float) -> None:
        st = self.style
        cx = side * st.eye_gap
        w = st.eye_w * scale
        xi, xo = cx - side * w, cx + side * w  # inner / outer corner
        yi, yo = EYE_Y + 1.0, EYE_Y - st.eye_tilt
        happy, sad, angry = emo["happy"], emo["sad"], emo["angry"]
        h_up = st.eye_h * scale * op
        hu_in = h_up * (1.0 - 0.5 * angry)
        hu_out = h_up * (1.0 - 0.4 * sad)
        h_lo = st.eye_h * scale * 0.55 * (1.0 - 0.75 * happy) * min(1.0, 0.4 + op)
        lash = self._sp(st.lash, 2.6 * scale)
        if op < 0.12:
            # closed: lash line curving down (or up for a happy squint)
            bend = 3.5 * scale * (1.0 - 2.0 * happy)
            p = skia.Path()
            p.moveTo(xi, yi)
            p.cubicTo(lerp(xi, xo, 0.3), yi + bend * 1.33, lerp(xi, xo, 0.7), yo + bend * 1.33, xo, yo)
            c.drawPath(p, lash)
            c.drawLine(xo, yo, xo + side * 4.0 * scale, yo - 2.0 * scale, self._sp(st.lash, 1.8 * scale))
            return
        up = skia.Path()
        up.moveTo(xi, yi)
        up.cubicTo(lerp(xi, xo, 0.25), yi - hu_in * 1.33, lerp(xi, xo, 0.75), yo - hu_out * 1.33, xo, yo)
        eye = skia.Path(up)
        eye.cubicTo(lerp(xi, xo, 0.7), yo + h_lo * 1.33, lerp(xi, xo, 0.3), yi + h_lo * 1.33, xi, yi)
        eye.close()
        c.drawPath(eye, self._fp(SCLERA))
        c.save()
        c.clipPath(eye, doAntiAlias=True)
        ir = st.iris_r * scale
        ix, iy = cx + gx * 0.42 * w, EYE_Y - 0.5 + gy * 0.4 * st.eye_h
        c.drawCircle(ix, iy, ir, self._fp(st.iris))
        c.drawCircle(ix, iy + ir * 0.25, ir * 0.7, self._fp(shade(st.iris, 1.35), 0.55))
        c.drawCircle(ix, iy, ir, self._sp(shade(st.iris, 0.55), 1.3 * scale))
        c.drawCircle(ix, iy, ir * self._pupil, self._fp((16, 12, 14)))
        c.drawCircle(ix - ir * 0.35, iy - ir * 0.38, ir * 0.24, self._fp((255, 255, 255), 0.95))
        c.drawCircle(ix + ir * 0.3, iy + ir * 0.3, ir * 0.1, self._fp((255, 255, 255), 0.7))
        c.drawPath(up, self._sp(st.skin_shadow, 4.5 * scale, 0.45))  # lid shadow on the eyeball
        c.restore()
        c.drawPath(up, lash)
        # outer lash flick
        flick = skia.Path()
        flick.moveTo(xo - side * 3.0 * scale, yo - 1.0 * scale)
        flick.quadTo(xo + side * 2.0 * scale, yo - 1.0 * scale, xo + side * 5.0 * scale, yo - 4.5 * scale)
        c.drawPath(flick, self._sp(st.lash, 1.8 * scale))
        lower = skia.Path()
        lower.moveTo(xo, yo)
        lower.cubicTo(lerp(xi, xo, 0.7), yo + h_lo * 1.33, lerp(xi, xo, 0.3), yi + h_lo * 1.33, xi, yi)
        c.drawPath(lower, self._sp(st.skin_shadow, 1.1 * scale, 0.55 + 0.3 * happy))
        # lid crease
        crease = skia.Path()
        ch = h_up + 5.0 * scale + 2.0 * (1.0 - op)
        crease.moveTo(lerp(xi, xo, 0.1), yi - ch * 0.6)
        crease.cubicTo(lerp(xi, xo, 0.3), yi - ch * 1.3, lerp(xi, xo, 0.75), yo - ch * 1.25, lerp(xi, xo, 0.95), yo - ch * 0.5)
        c.drawPath(crease, self._sp(st.skin_shadow, 1.3 * scale, 0.45))

    def _brow(self, c: skia.Canvas, side: float, raise_: float, inner: float, emo: dict[str, float], scale: float) -> None:
        st = self.style
        cx = side * st.eye_gap
        base = EYE_Y + st.brow_y
        xi, xo = cx - side * 19.0 * scale, cx + side * 23.0 * scale
        xp = cx + side * 6.0 * scale
        arch = 3.0 + 3.5 * emo["surprised"] - 1.5 * emo["angry"]
        yi = base - 7.0 * raise_ - 5.5 * inner + 1.0
        yp = base - 7.5 * raise_ - arch - 1.0 * inner
        yo = base - 4.0 * raise_ + 2.0 * inner + 2.0
        t = st.brow_thick * scale
        p = skia.Path()
        p.moveTo(xi, yi + t * 0.5)
        p.cubicTo(xi, yi - t * 0.5, lerp(xi, xp, 0.5), yp - t * 0.55, xp, yp - t * 0.5)
        p.cubicTo(lerp(xp, xo, 0.5), yp - t * 0.45, xo, yo - t * 0.1, xo + side * 1.0, yo + t * 0.1)
        p.cubicTo(lerp(xp, xo, 0.55), yp + t * 0.15, lerp(xi, xp, 0.5), yp + t * 0.55, xi, yi + t * 0.5)
        p.close()
        c.drawPath(p, self._fp(st.brow))
        c.drawPath(p, self._sp(st.brow, 0.8 * scale, 0.6))

    def _glasses(self, c: skia.Canvas, pose: _Pose) -> None:
        st = self.style
        assert st.glasses is not None
        r = 22.0
        for side in (-1.0, 1.0):
            cx = side * st.eye_gap
            rs = r * (1.0 + 0.12 * side * pose.yaw)
            c.drawCircle(cx, EYE_Y - 1.0, rs, self._fp((220, 236, 250), 0.10))
            c.drawCircle(cx, EYE_Y - 1.0, rs, self._sp(st.glasses, 3.4))
            glint = skia.Path()
            glint.moveTo(cx - rs * 0.55, EYE_Y - rs * 0.35)
            glint.lineTo(cx - rs * 0.2, EYE_Y - rs * 0.7)
            c.drawPath(glint, self._sp((255, 255, 255), 2.4, 0.35))
            arm = skia.Path()
            arm.moveTo(cx + side * rs, EYE_Y - 6.0)
            arm.lineTo(side * (st.face.cheek_w - 2.0), EYE_Y - 10.0)
            c.drawPath(arm, self._sp(st.glasses, 3.0))
        bridge = skia.Path()
        bridge.moveTo(-st.eye_gap + r - 1.0, EYE_Y - 4.0)
        bridge.quadTo(0.0, EYE_Y - 12.0, st.eye_gap - r + 1.0, EYE_Y - 4.0)
        c.drawPath(bridge, self._sp(st.glasses, 3.0))

    def _nose(self, c: skia.Canvas) -> None:
        st = self.style
        nw = st.nose_w
        ridge = smooth_path([(6.0, 14.0), (8.5, 26.0), (nw * 0.85, 37.0)], closed=False)
        c.drawPath(ridge, self._sp(self._nose_shadow, 2.0, 0.25))
        c.drawOval(oval(0.0, 45.0, nw * 1.0, 4.5), self._fp(st.skin_shadow, 0.3))
        for sx in (-1.0, 1.0):
            wing = skia.Path()
            wing.moveTo(sx * nw * 0.75, 36.0)
            wing.cubicTo(sx * nw * 1.25, 36.5, sx * nw * 1.3, 44.0, sx * nw * 0.75, 45.5)
            c.drawPath(wing, self._sp(st.skin_shadow, 1.7, 0.55))
            c.drawOval(oval(sx * nw * 0.42, 44.5, 2.8, 1.5), self._fp(shade(st.skin_shadow, 0.75), 0.55))
        c.drawOval(oval(-2.0, 37.0, 4.5, 3.0), self._fp(st.skin_light, 0.4))

    def _mouth(self, c: skia.Canvas, state: AnimationState, emo: dict[str, float]) -> None:
        st = self.style
        jaw = _f(state.jaw_open, 0.0, 1.0)
        wid = _f(state.mouth_width, -1.0, 1.0)
        rnd = _f(state.lip_round, 0.0, 1.0)
        prs = _f(state.lips_pressed, 0.0, 1.0)
        tuck = _f(state.lip_tuck, 0.0, 1.0)
        tng = _f(state.tongue_tip, 0.0, 1.0)
        teeth = _f(state.teeth_show, 0.0, 1.0)
        happy, sad, angry, thinking = emo["happy"], emo["sad"], emo["angry"], emo["thinking"]
        sm = clamp(_f(state.smile, -1.0, 1.0) + 0.2 * happy - 0.25 * sad - 0.1 * angry, -1.0, 1.0)
        # tongue in front of the teeth (TH) or behind them (DD, nn) from the viseme mix
        vw = viseme_weights(state)
        w_th = vw[VISEME_INDEX["TH"]]
        w_behind = vw[VISEME_INDEX["DD"]] + vw[VISEME_INDEX["nn"]] + 0.5 * vw[VISEME_INDEX["RR"]]
        front = w_th / (w_th + w_behind) if w_th + w_behind > 1e-3 else 0.0
        t_front, t_behind = tng * front, tng * (1.0 - front)
        w_kk = vw[VISEME_INDEX["kk"]]

        c.save()
        c.translate(3.0 * thinking, MOUTH_Y)
        pos = max(wid, 0.0)
        w = st.mouth_w * (1.0 + (0.24 * wid if wid >= 0 else 0.30 * wid)) * (1.0 - 0.30 * rnd) * (1.0 + 0.06 * max(sm, 0.0))
        gap = 34.0 * jaw * (1.0 - 0.85 * prs)
        part = (5.0 + 4.0 * pos) * teeth * (1.0 - prs)
        up_in = 0.3 * gap + 0.6 * part + 4.0 * jaw * (1.0 - 0.7 * rnd) + 2.5 * tuck
        lo_in = (0.7 * gap + 0.4 * part) * (1.0 - 0.85 * tuck)
        if rnd > 0.0:  # rounded lips open into an O even with little jaw
            up_in += 1.5 * rnd * min(1.0, 4.0 * jaw)
            lo_in += 2.0 * rnd * min(1.0, 4.0 * jaw)
        a_in = w * (0.93 - 0.30 * rnd)
        rcx = 0.55 + 0.5 * rnd
        cy_l = -7.0 * sm + 2.5 * thinking
        cy_r = -7.0 * sm - 3.0 * thinking
        ul = 7.5 * (1.0 - 0.6 * prs) * (1.0 + 0.3 * rnd) * (1.0 - 0.25 * pos)
        ll = 9.5 * (1.0 - 0.55 * prs) * (1.0 + 0.2 * rnd) * (1.0 - 0.2 * pos) * (1.0 - 0.35 * tuck)
        top = -up_in - ul
        bot = lo_in + ll
        # under-lip shadow and philtrum
        c.drawOval(oval(0.0, bot + 4.0, w * 0.5, 3.5 + 1.5 * prs), self._fp(st.skin_shadow, 0.30 + 0.25 * prs))
        for sx in (-1.0, 1.0):
            c.drawLine(sx * 3.5, top - 12.0, sx * 4.5, top - 1.0, self._sp(st.skin_shadow, 1.4, 0.22))
        # smile lines
        if abs(sm) > 0.25:
            for sx, cyc in ((-1.0, cy_l), (1.0, cy_r)):
                ln = skia.Path()
                ln.moveTo(sx * (st.nose_w + 10.0), -24.0)
                ln.quadTo(sx * (w + 9.0), -14.0 + cyc, sx * (w + 5.0), cyc + 4.0)
                c.drawPath(ln, self._sp(st.skin_shadow, 1.5, 0.25 * (abs(sm) - 0.25) / 0.75))
        # outer lips: upper (cupid's bow) and lower
        k = 1.0 + 0.8 * rnd
        outer = skia.Path()
        outer.moveTo(-w, cy_l)
        outer.cubicTo(-w * (0.85 + 0.15 * rnd), cy_l - (ul * 0.45 + up_in * 0.6) * k, -w * 0.5, top, -w * 0.22, top)
        dip = top + 2.6 * (1.0 - rnd) * (1.0 - 0.5 * prs)
        outer.cubicTo(-w * 0.1, top, -w * 0.05, dip, 0.0, dip)
        outer.cubicTo(w * 0.05, dip, w * 0.1, top, w * 0.22, top)
        outer.cubicTo(w * 0.5, top, w * (0.85 + 0.15 * rnd), cy_r - (ul * 0.45 + up_in * 0.6) * k, w, cy_r)
        outer.cubicTo(w * (0.8 + 0.2 * rnd), cy_r + (lo_in * 0.7 + ll * 0.5) * k, w * 0.5, bot, 0.0, bot)
        outer.cubicTo(-w * 0.5, bot, -w * (0.8 + 0.2 * rnd), cy_l + (lo_in * 0.7 + ll * 0.5) * k, -w, cy_l)
        outer.close()
        c.drawPath(outer, self._fp(st.lip_lower))
        # inner contour (the lips' meeting line / the opening)
        cyi_l = cy_l * (a_in / w) ** 2
        cyi_r = cy_r * (a_in / w) ** 2
        cavg = 0.25 * (cyi_l + cyi_r) * 0.5
        cu = (-up_in - cavg) / 0.75
        cl = (lo_in - cavg) / 0.75
        upper_in = skia.Path()
        upper_in.moveTo(-w, cy_l)
        upper_in.lineTo(-a_in, cyi_l)
        upper_in.cubicTo(-a_in * rcx, cu, a_in * rcx, cu, a_in, cyi_r)
        upper_in.lineTo(w, cy_r)
        # upper lip area = outer top edge + inner upper edge
        upper_lip = skia.Path()
        upper_lip.moveTo(-w, cy_l)
        upper_lip.cubicTo(-w * (0.85 + 0.15 * rnd), cy_l - (ul * 0.45 + up_in * 0.6) * k, -w * 0.5, top, -w * 0.22, top)
        upper_lip.cubicTo(-w * 0.1, top, -w * 0.05, dip, 0.0, dip)
        upper_lip.cubicTo(w * 0.05, dip, w * 0.1, top, w * 0.22, top)
        upper_lip.cubicTo(w * 0.5, top, w * (0.85 + 0.15 * rnd), cy_r - (ul * 0.45 + up_in * 0.6) * k, w, cy_r)
        upper_lip.lineTo(a_in, cyi_r)
        upper_lip.cubicTo(a_in * rcx, cu, -a_in * rcx, cu, -a_in, cyi_l)
        upper_lip.close()
        c.drawPath(upper_lip, self._fp(st.lip_upper))
        open_h = up_in + lo_in
        if open_h > 0.6:
            cav = skia.Path()
            cav.moveTo(-a_in, cyi_l)
            cav.cubicTo(-a_in * rcx, cu, a_in * rcx, cu, a_in, cyi_r)
            cav.cubicTo(a_in * rcx, cl, -a_in * rcx, cl, -a_in, cyi_l)
            cav.close()
            c.drawPath(cav, self._fp(CAVITY))
            c.save()
            c.clipPath(cav, doAntiAlias=True)
            ute = -0.3 * gap  # upper teeth edge
            lte = 0.7 * gap  # lower teeth edge
            # tongue body (raised at the back for kk), tongue tip behind the upper teeth (DD, nn)
            body_ry = max(3.0, 0.35 * open_h) * (1.0 + 0.6 * w_kk)
            c.drawOval(oval(0.0, lo_in + 1.0, a_in * 0.78, body_ry), self._fp(TONGUE))
            if t_behind > 0.02:
                tip_top = lerp(lo_in - body_ry, ute + 1.0, t_behind)
                ry = max(1.0, (lo_in + 2.0 - tip_top) / 2.0)
                c.drawOval(oval(0.0, tip_top + ry, max(5.0, a_in * 0.42), ry), self._fp(shade(TONGUE, 1.08)))
                c.drawLine(0.0, tip_top + 3.0, 0.0, tip_top + 2.0 * ry - 1.0, self._sp(shade(TONGUE, 0.75), 1.1, 0.6))
            # teeth
            c.drawRect(skia.Rect(-a_in, -up_in - 3.0, a_in, ute), self._fp(TEETH))
            if lo_in - lte > 0.3:
                c.drawRect(skia.Rect(-a_in, lte, a_in, lo_in + 3.0), self._fp(shade(TEETH, 0.93)))
            for xx in (-0.55, -0.27, 0.0, 0.27, 0.55):
                c.drawLine(a_in * xx, -up_in - 2.0, a_in * xx, ute, self._sp((200, 196, 190), 0.8, 0.5))
            c.drawRect(skia.Rect(-a_in, -up_in - 3.0, a_in, -up_in + 1.2), self._fp(st.lip_upper, 0.35))
            for sx in (-1.0, 1.0):  # dark corners give the teeth depth
                c.drawOval(oval(sx * a_in, 0.0, a_in * 0.32, open_h + 4.0), self._fp(CAVITY, 0.55))
            c.restore()
            if t_front > 0.02:  # TH: tongue tip between the teeth, over the lower lip
                ty = lerp(ute, lte, 0.5) + 3.0 * t_front
                rx, ry = max(9.0, a_in * 0.55), max(5.0, 0.5 * (lte - ute) + 4.0)
                al = min(1.0, 1.5 * t_front)
                c.drawOval(oval(0.0, ty, rx, ry), self._fp(TONGUE, al))
                c.drawOval(oval(0.0, ty, rx, ry), self._sp(shade(TONGUE, 0.6), 1.0, al))
                c.drawLine(0.0, ty - ry * 0.2, 0.0, ty + ry * 0.6, self._sp(shade(TONGUE, 0.7), 1.0, 0.6 * al))
                c.drawOval(oval(-rx * 0.25, ty, rx * 0.35, ry * 0.35), self._fp(shade(TONGUE, 1.3), 0.5 * t_front))
            if tuck > 0.05:  # FF: upper teeth resting on the lower lip
                c.drawRoundRect(skia.Rect(-a_in * 0.8, -up_in, a_in * 0.8, lo_in + 2.5 * tuck), 2.0, 2.0, self._fp(shade(TEETH, 0.97), min(1.0, 1.5 * tuck)))
                for xx in (-0.4, 0.0, 0.4):
                    c.drawLine(a_in * xx, -up_in + 0.5, a_in * xx, lo_in + 2.0 * tuck, self._sp((200, 196, 190), 0.8, 0.5 * tuck))
        # the line where the lips meet
        line = self._sp(mix(st.lip_upper, LIP_LINE, 0.45), 1.5 + 1.0 * prs)
        if open_h <= 0.6:
            c.drawPath(upper_in, line)
        else:
            corner_line = self._sp(mix(st.lip_upper, LIP_LINE, 0.45), 1.5 + 1.0 * prs, 1.0 - 0.85 * rnd)
            for sx, cyc, cyi in ((-1.0, cy_l, cyi_l), (1.0, cy_r, cyi_r)):
                c.drawLine(sx * w, cyc, sx * a_in, cyi, corner_line)
        if prs > 0.05:  # pressed lips: a bunched chin crease and a firmer seam
            crease = skia.Path()
            crease.moveTo(-w * 0.55, bot + 6.0)
            crease.quadTo(0.0, bot + 2.0, w * 0.55, bot + 6.0)
            c.drawPath(crease, self._sp(st.skin_shadow, 1.8, 0.55 * prs))
            c.drawPath(upper_in, self._sp(mix(st.lip_upper, LIP_LINE, 0.6), 2.4, prs))
        # corners and highlights
        for sx, cyc in ((-1.0, cy_l), (1.0, cy_r)):
            c.drawCircle(sx * w, cyc, 1.5 + 0.6 * prs, self._fp(mix(st.lip_upper, LIP_LINE, 0.4), 0.7))
        c.drawOval(oval(0.0, lo_in + ll * 0.42, w * 0.32, ll * 0.2), self._fp((255, 255, 255), 0.22))
        c.drawOval(oval(-w * 0.3, top + ul * 0.35, w * 0.12, ul * 0.15), self._fp((255, 255, 255), 0.12))
        c.restore()


def _factory(style: CharacterStyle, size: tuple[int, int] = (512, 512), transparent: bool = False) -> Renderer:
    return BuiltinRenderer(style, size, transparent=transparent)


def make_builtin(name: str, size: tuple[int, int] = (512, 512)) -> BuiltinRenderer:
    """A renderer for the built-in character ``name`` at ``size`` (width, height) px."""
    for st in CHARACTER_STYLES:
        if st.name == name:
            return BuiltinRenderer(st, size)
    raise KeyError(f"unknown built-in character {name!r}; known: {[s.name for s in CHARACTER_STYLES]}")


BUILTIN_CHARACTERS: dict[str, Callable[..., Renderer]] = {
    st.name: partial(_factory, st) for st in CHARACTER_STYLES
}
DEFAULT_CHARACTER: str = CHARACTER_STYLES[0].name
