"""Draw the example sprite pack "fox" (the project's own art) with skia-python.

Writes the PNG layers and ``manifest.yaml`` to ``server/render/assets/sprites/fox/`` (or the
folder given): canvas 512x512 px, a Rhubarb mouth set A-H + X, open/half/closed eyes, pupils,
brows and emotion variants. Run: ``python -m server.render.make_example_pack [OUT_DIR]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skia
import yaml

CANVAS = 512
OUT_DEFAULT = Path(__file__).resolve().parent / "assets" / "sprites" / "fox"

ORANGE = 0xFFEE8A3C
ORANGE_DARK = 0xFFC9651F
CREAM = 0xFFFFF3E2
INK = 0xFF3A2216
PINK = 0xFFF2A0A8
MOUTH_DARK = 0xFF5A1E22
TONGUE = 0xFFE86A78
TEETH = 0xFFFFFFFF
IRIS = 0xFF4A2C12

EYES_ANCHOR = (256, 262)
EYES_SIZE = (220, 90)
MOUTH_ANCHOR = (256, 352)
MOUTH_SIZE = (130, 96)
BROWS_ANCHOR = (256, 208)
BROWS_SIZE = (220, 60)
EYE_DX = 58  # px from the centre to each eye
EYE_RX, EYE_RY = 27, 31  # eye white radii, px


def paint(color: int, stroke: float = 0.0) -> skia.Paint:
    """Antialiased fill (stroke == 0) or stroke paint."""
    p = skia.Paint(AntiAlias=True, Color=color)
    if stroke > 0:
        p.setStyle(skia.Paint.kStroke_Style)
        p.setStrokeWidth(stroke)
        p.setStrokeCap(skia.Paint.kRound_Cap)
        p.setStrokeJoin(skia.Paint.kRound_Join)
    return p


def draw_layer(size: tuple[int, int], fn: Callable[[skia.Canvas], None]) -> np.ndarray:
    """Run ``fn`` on a transparent canvas of ``size`` (w, h); return (h, w, 4) RGBA straight alpha."""
    w, h = size
    surface = skia.Surface(w, h)
    with surface as canvas:
        canvas.clear(0)
        fn(canvas)
    img = surface.makeImageSnapshot().toarray(colorType=skia.kRGBA_8888_ColorType, alphaType=skia.kUnpremul_AlphaType)
    return np.ascontiguousarray(img)


def path(points: list[tuple[float, float]], close: bool = True) -> skia.Path:
    p = skia.Path()
    p.moveTo(*points[0])
    for q in points[1:]:
        p.lineTo(*q)
    if close:
        p.close()
    return p


def background(c: skia.Canvas) -> None:
    shader = skia.GradientShader.MakeLinear([(0, 0), (0, CANVAS)], [0xFF9FD3E6, 0xFFE7F4E4])
    c.drawRect(skia.Rect(0, 0, CANVAS, CANVAS), skia.Paint(Shader=shader))
    # Soft hills.
    c.drawCircle(90, 620, 260, paint(0xFFB9DDA0))
    c.drawCircle(470, 640, 280, paint(0xFFA8D490))


def body(c: skia.Canvas) -> None:
    # Neck and shoulders, with a cream chest.
    torso = skia.Path()
    torso.moveTo(150, 512)
    torso.cubicTo(150, 440, 190, 400, 256, 398)
    torso.cubicTo(322, 400, 362, 440, 362, 512)
    torso.close()
    c.drawPath(torso, paint(ORANGE))
    c.drawPath(torso, paint(INK, 5))
    chest = skia.Path()
    chest.moveTo(205, 512)
    chest.cubicTo(205, 450, 230, 420, 256, 418)
    chest.cubicTo(282, 420, 307, 450, 307, 512)
    chest.close()
    c.drawPath(chest, paint(CREAM))


def head(c: skia.Canvas) -> None:
    # Ears behind the head.
    for s in (-1, 1):
        ear = path([(256 + s * 70, 190), (256 + s * 150, 70), (256 + s * 160, 215)])
        c.drawPath(ear, paint(ORANGE))
        c.drawPath(ear, paint(INK, 5))
        inner = path([(256 + s * 95, 185), (256 + s * 145, 100), (256 + s * 148, 200)])
        c.drawPath(inner, paint(PINK))
    # Head: a wide rounded shape narrowing to the muzzle.
    hp = skia.Path()
    hp.moveTo(256, 150)
    hp.cubicTo(350, 150, 395, 215, 392, 290)
    hp.cubicTo(390, 350, 330, 400, 256, 408)
    hp.cubicTo(182, 400, 122, 350, 120, 290)
    hp.cubicTo(117, 215, 162, 150, 256, 150)
    hp.close()
    c.drawPath(hp, paint(ORANGE))
    # Cream cheeks and muzzle.
    m = skia.Path()
    m.moveTo(128, 300)
    m.cubicTo(170, 300, 200, 290, 256, 300)
    m.cubicTo(312, 290, 342, 300, 384, 300)
    m.cubicTo(372, 360, 320, 402, 256, 406)
    m.cubicTo(192, 402, 140, 360, 128, 300)
    m.close()
    c.save()
    c.clipPath(hp, doAntiAlias=True)
    c.drawPath(m, paint(CREAM))
    # Forehead stripe.
    c.drawOval(skia.Rect(236, 150, 276, 215), paint(ORANGE_DARK))
    c.restore()
    c.drawPath(hp, paint(INK, 5))
    # Nose.
    nose = skia.Path()
    nose.moveTo(238, 312)
    nose.cubicTo(240, 302, 272, 302, 274, 312)
    nose.cubicTo(272, 324, 262, 330, 256, 330)
    nose.cubicTo(250, 330, 240, 324, 238, 312)
    nose.close()
    c.drawPath(nose, paint(INK))
    c.drawOval(skia.Rect(246, 308, 256, 313), paint(0xFF8A6A5A))
    # Blush.
    for s in (-1, 1):
        c.drawOval(skia.Rect(256 + s * 100 - 18, 318, 256 + s * 100 + 18, 332), paint(0x66F27E8A))


def _eye_centers() -> list[tuple[float, float]]:
    w, h = EYES_SIZE
    return [(w / 2 - EYE_DX, h / 2), (w / 2 + EYE_DX, h / 2)]


def eyes_open(c: skia.Canvas) -> None:
    for x, y in _eye_centers():
        r = skia.Rect(x - EYE_RX, y - EYE_RY, x + EYE_RX, y + EYE_RY)
        c.drawOval(r, paint(0xFFFFFFFF))
        c.drawOval(r, paint(INK, 4))


def eyes_half(c: skia.Canvas) -> None:
    for x, y in _eye_centers():
        r = skia.Rect(x - EYE_RX, y - EYE_RY, x + EYE_RX, y + EYE_RY)
        c.drawOval(r, paint(0xFFFFFFFF))
        c.save()
        c.clipRect(skia.Rect(x - EYE_RX - 3, y - EYE_RY - 3, x + EYE_RX + 3, y + 2))
        c.drawOval(r, paint(ORANGE))
        c.restore()
        # Half-lowered pupil peeking under the lid.
        c.save()
        c.clipRect(skia.Rect(x - EYE_RX, y + 2, x + EYE_RX, y + EYE_RY))
        c.drawCircle(x, y + 6, 15, paint(IRIS))
        c.drawCircle(x, y + 6, 8, paint(0xFF111111))
        c.restore()
        c.drawLine(x - EYE_RX, y + 2, x + EYE_RX, y + 2, paint(INK, 5))
        c.drawOval(r, paint(INK, 4))


def eyes_closed(c: skia.Canvas) -> None:
    for x, y in _eye_centers():
        r = skia.Rect(x - EYE_RX, y - EYE_RY, x + EYE_RX, y + EYE_RY)
        c.drawOval(r, paint(ORANGE))
        arc = skia.Path()
        arc.moveTo(x - EYE_RX - 2, y + 4)
        arc.quadTo(x, y + 20, x + EYE_RX + 2, y + 4)
        c.drawPath(arc, paint(INK, 5))
        for k in (-1, 0, 1):  # lashes
            c.drawLine(x + k * 14, y + 10 + (3 if k == 0 else 0), x + k * 18, y + 20 + (3 if k == 0 else 0), paint(INK, 3))


def eyes_happy(c: skia.Canvas) -> None:
    """Happy: smiling closed eyes (upward arcs)."""
    for x, y in _eye_centers():
        arc = skia.Path()
        arc.moveTo(x - EYE_RX, y + 10)
        arc.quadTo(x, y - 24, x + EYE_RX, y + 10)
        c.drawPath(arc, paint(INK, 7))


def eyes_sad(c: skia.Canvas) -> None:
    """Sad: heavy upper lids sloping down toward the outer corners, pupils looking down."""
    for i, (x, y) in enumerate(_eye_centers()):
        s = -1 if i == 0 else 1  # outer side
        r = skia.Rect(x - EYE_RX, y - EYE_RY, x + EYE_RX, y + EYE_RY)
        c.drawOval(r, paint(0xFFFFFFFF))
        c.save()
        c.clipRect(skia.Rect(x - EYE_RX, y - EYE_RY, x + EYE_RX, y + EYE_RY))
        c.drawCircle(x, y + 10, 16, paint(IRIS))
        c.drawCircle(x, y + 10, 8, paint(0xFF111111))
        c.drawCircle(x + 5, y + 4, 4, paint(0xFFFFFFFF))
        lid = path([(x - EYE_RX - 4, y - EYE_RY - 4), (x + EYE_RX + 4, y - EYE_RY - 4),
                    (x + EYE_RX + 4, y - 4 + s * 10), (x - EYE_RX - 4, y - 4 - s * 10)])
        c.drawPath(lid, paint(ORANGE))
        c.restore()
        c.drawLine(x - EYE_RX, y - 4 - s * 10 * (EYE_RX / (EYE_RX + 4)), x + EYE_RX, y - 4 + s * 10 * (EYE_RX / (EYE_RX + 4)), paint(INK, 4))
        c.drawOval(r, paint(INK, 4))


def eyes_surprised(c: skia.Canvas) -> None:
    """Surprised: wider whites, small pupils."""
    for x, y in _eye_centers():
        r = skia.Rect(x - EYE_RX - 4, y - EYE_RY - 6, x + EYE_RX + 4, y + EYE_RY + 4)
        c.drawOval(r, paint(0xFFFFFFFF))
        c.drawOval(r, paint(INK, 4))
        c.drawCircle(x, y, 10, paint(IRIS))
        c.drawCircle(x, y, 5, paint(0xFF111111))
        c.drawCircle(x + 4, y - 4, 3, paint(0xFFFFFFFF))


def pupils(c: skia.Canvas) -> None:
    for x, y in _eye_centers():
        c.drawCircle(x, y + 2, 17, paint(IRIS))
        c.drawCircle(x, y + 2, 9, paint(0xFF111111))
        c.drawCircle(x + 6, y - 5, 5, paint(0xFFFFFFFF))


def brows_variant(inner_dy: float, outer_dy: float, arch: float) -> Callable[[skia.Canvas], None]:
    """Two brow strokes; ``inner_dy``/``outer_dy`` move the inner/outer ends down (px)."""

    def fn(c: skia.Canvas) -> None:
        w, h = BROWS_SIZE
        for s in (-1, 1):
            xo, xi = w / 2 + s * (EYE_DX + 28), w / 2 + s * (EYE_DX - 26)
            p = skia.Path()
            p.moveTo(xo, h / 2 + outer_dy)
            p.quadTo((xo + xi) / 2, h / 2 - arch, xi, h / 2 + inner_dy)
            c.drawPath(p, paint(ORANGE_DARK, 11))
            c.drawPath(p, paint(INK, 3))

    return fn


def _mouth_frame(c: skia.Canvas) -> tuple[float, float]:
    return MOUTH_SIZE[0] / 2, MOUTH_SIZE[1] / 2 - 18


def open_mouth(width: float, height: float, teeth_top: float = 0.0, teeth_bottom: float = 0.0,
               tongue: float = 0.0, round_: float = 0.0, tongue_up: bool = False) -> Callable[[skia.Canvas], None]:
    """An open mouth: dark cavity ``width`` x ``height`` px, optional teeth (fraction of height)
    and tongue; ``round_`` 0..1 makes it an O."""

    def fn(c: skia.Canvas) -> None:
        cx, cy = _mouth_frame(c)
        top = cy + 4
        shape = skia.Path()
        if round_ > 0:
            shape.addOval(skia.Rect(cx - width / 2, top, cx + width / 2, top + height))
        else:
            shape.moveTo(cx - width / 2, top + 2)
            shape.quadTo(cx, top - 4, cx + width / 2, top + 2)
            shape.cubicTo(cx + width / 2, top + height * 0.7, cx + width * 0.25, top + height, cx, top + height)
            shape.cubicTo(cx - width * 0.25, top + height, cx - width / 2, top + height * 0.7, cx - width / 2, top + 2)
            shape.close()
        c.drawPath(shape, paint(MOUTH_DARK))
        c.save()
        c.clipPath(shape, doAntiAlias=True)
        if tongue > 0:
            ty = top + height * (0.35 if tongue_up else 1.0 - tongue)
            c.drawOval(skia.Rect(cx - width * 0.36, ty, cx + width * 0.36, ty + height * 0.9), paint(TONGUE))
        if teeth_top > 0:
            c.drawRect(skia.Rect(cx - width / 2, top - 6, cx + width / 2, top + height * teeth_top), paint(TEETH))
            c.drawLine(cx, top, cx, top + height * teeth_top, paint(0xFFD8D8D8, 2))
        if teeth_bottom > 0:
            c.drawRect(skia.Rect(cx - width / 2, top + height * (1 - teeth_bottom), cx + width / 2, top + height + 6), paint(TEETH))
        c.restore()
        c.drawPath(shape, paint(INK, 4))

    return fn


def closed_mouth(smile: float, pressed: bool = False) -> Callable[[skia.Canvas], None]:
    """A closed mouth: the fox ':3' line; ``smile`` px lifts the corners (negative frowns)."""

    def fn(c: skia.Canvas) -> None:
        cx, cy = _mouth_frame(c)
        p = skia.Path()
        if pressed:
            p.moveTo(cx - 30, cy + 6 - smile * 0.3)
            p.quadTo(cx, cy + 12, cx + 30, cy + 6 - smile * 0.3)
            c.drawPath(p, paint(INK, 6))
            return
        p.moveTo(cx - 34, cy + 2 - smile)
        p.quadTo(cx - 17, cy + 16, cx, cy + 4)
        p.quadTo(cx + 17, cy + 16, cx + 34, cy + 2 - smile)
        c.drawPath(p, paint(INK, 4.5))
        c.drawLine(cx, cy - 8, cx, cy + 4, paint(INK, 4))

    return fn


def mouth_g(c: skia.Canvas) -> None:
    """G: F/V, upper teeth resting on the lower lip."""
    cx, cy = _mouth_frame(c)
    top = cy + 2
    shape = skia.Path()
    shape.moveTo(cx - 30, top)
    shape.quadTo(cx, top - 6, cx + 30, top)
    shape.quadTo(cx, top + 22, cx - 30, top)
    shape.close()
    c.drawPath(shape, paint(MOUTH_DARK))
    c.save()
    c.clipPath(shape, doAntiAlias=True)
    c.drawRect(skia.Rect(cx - 30, top - 8, cx + 30, top + 10), paint(TEETH))
    c.drawLine(cx, top - 6, cx, top + 10, paint(0xFFD8D8D8, 2))
    c.restore()
    c.drawPath(shape, paint(INK, 4))
    lip = skia.Path()
    lip.moveTo(cx - 26, top + 12)
    lip.quadTo(cx, top + 24, cx + 26, top + 12)
    c.drawPath(lip, paint(0xFFD9707A, 5))


def mouths() -> dict[str, Callable[[skia.Canvas], None]]:
    """Rhubarb shapes: A closed (MBP), B clenched teeth, C open, D wide, E rounded, F pucker,
    G F/V, H L (tongue up), X idle."""
    return {
        "A": closed_mouth(0.0, pressed=True),
        "B": open_mouth(58, 20, teeth_top=0.5, teeth_bottom=0.45),
        "C": open_mouth(64, 38, teeth_top=0.22, tongue=0.3),
        "D": open_mouth(72, 62, teeth_top=0.15, tongue=0.35),
        "E": open_mouth(46, 40, teeth_top=0.12, tongue=0.25, round_=0.6),
        "F": open_mouth(24, 24, round_=1.0),
        "G": mouth_g,
        "H": open_mouth(62, 44, teeth_top=0.18, tongue=0.5, tongue_up=True),
        "X": closed_mouth(4.0),
    }


def write_png(img: np.ndarray, path: Path) -> None:
    """Save RGBA (h, w, 4) straight alpha as a palette-free, compressed PNG."""
    import cv2

    bgra = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), bgra, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {path}")


def build(out: Path) -> Path:
    """Draw every layer into ``out`` and write the manifest; returns the manifest path."""
    out.mkdir(parents=True, exist_ok=True)
    full = (CANVAS, CANVAS)
    layers: dict[str, tuple[tuple[int, int], Callable[[skia.Canvas], None]]] = {
        "background.png": (full, background),
        "body.png": (full, body),
        "head.png": (full, head),
        "eyes_open.png": (EYES_SIZE, eyes_open),
        "eyes_half.png": (EYES_SIZE, eyes_half),
        "eyes_closed.png": (EYES_SIZE, eyes_closed),
        "pupils.png": (EYES_SIZE, pupils),
        "eyes_happy.png": (EYES_SIZE, eyes_happy),
        "eyes_sad.png": (EYES_SIZE, eyes_sad),
        "eyes_surprised.png": (EYES_SIZE, eyes_surprised),
        "brows.png": (BROWS_SIZE, brows_variant(0, 0, 6)),
        "brows_angry.png": (BROWS_SIZE, brows_variant(12, -8, 0)),
        "brows_sad.png": (BROWS_SIZE, brows_variant(-12, 8, 2)),
        "brows_happy.png": (BROWS_SIZE, brows_variant(2, 2, 12)),
        "brows_thinking.png": (BROWS_SIZE, brows_variant(-4, 4, 8)),
        "mouth_X_happy.png": (MOUTH_SIZE, closed_mouth(12.0)),
        "mouth_X_sad.png": (MOUTH_SIZE, closed_mouth(-9.0)),
        "mouth_X_angry.png": (MOUTH_SIZE, closed_mouth(-5.0, pressed=True)),
        "mouth_X_surprised.png": (MOUTH_SIZE, open_mouth(22, 22, round_=1.0)),
    }
    for k, fn in mouths().items():
        layers[f"mouth_{k}.png"] = (MOUTH_SIZE, fn)
    for name, (size, fn) in layers.items():
        write_png(draw_layer(size, fn), out / name)
    manifest = {
        "format": 1,
        "name": "fox",
        "credits": "drawn by server/render/make_example_pack.py (project-made art)",
        "license": "Apache-2.0",
        "canvas": [CANVAS, CANVAS],
        "mouth_set": "rhubarb",
        "layers": {
            "background": "background.png",
            "body": "body.png",
            "head": "head.png",
            "eyes": {"open": "eyes_open.png", "half": "eyes_half.png", "closed": "eyes_closed.png"},
            "pupils": "pupils.png",
            "brows": "brows.png",
        },
        "mouths": {k: f"mouth_{k}.png" for k in mouths()},
        "anchors": {
            "head_pivot": [256, 410],
            "eyes": list(EYES_ANCHOR),
            "pupils": list(EYES_ANCHOR),
            "brows": list(BROWS_ANCHOR),
            "mouth": list(MOUTH_ANCHOR),
        },
        "motion": {"gaze_px": 9, "brow_px": 9},
        "emotions": {
            "happy": {"eyes": {"open": "eyes_happy.png"}, "brows": "brows_happy.png", "mouths": {"X": "mouth_X_happy.png"}},
            "sad": {"eyes": {"open": "eyes_sad.png"}, "brows": "brows_sad.png", "mouths": {"X": "mouth_X_sad.png"}},
            "angry": {"brows": "brows_angry.png", "mouths": {"X": "mouth_X_angry.png"}},
            "surprised": {"eyes": {"open": "eyes_surprised.png"}, "mouths": {"X": "mouth_X_surprised.png"}},
            "thinking": {"brows": "brows_thinking.png"},
        },
    }
    path_ = out / "manifest.yaml"
    text = "# Example sprite pack, generated by server/render/make_example_pack.py\n"
    text += yaml.safe_dump(manifest, sort_keys=False, default_flow_style=None)
    path_.write_text(text, encoding="utf-8")
    return path_


def main(argv: list[str] | None = None) -> int:
    """CLI entry: draw the pack into OUT_DIR (default: the packaged example)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", nargs="?", type=Path, default=OUT_DEFAULT)
    args = ap.parse_args(argv)
    m = build(args.out)
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {m} and layers ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
