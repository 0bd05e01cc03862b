"""Looks of the built-in characters and the painters of their static layers.

Static layers are painted once per renderer instance (slow gradients and blurs are fine here):
the background (pixel space), the torso (design space) and the head sprite (head space: back
hair, ears, face with soft shading, front hair). The per-frame features live in
:mod:`server.render.builtin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import skia

from server.render.builtin_geom import (
    RGB,
    Layout,
    Point,
    blurred,
    fill,
    linear_paint,
    mirrored,
    mix,
    oval,
    radial_paint,
    shade,
    smooth_path,
    stroke,
)


@dataclass(frozen=True, slots=True)
class FaceShape:
    """Right half of the face outline in head space (u); mirrored for the left half."""

    top: float = -118.0  # y of the forehead top
    temple_w: float = 80.0  # half width at the temples
    cheek_w: float = 90.0  # half width at eye level (widest)
    jaw_w: float = 70.0  # half width at the jaw corner
    jaw_y: float = 82.0  # y of the jaw corner
    chin_w: float = 30.0  # half width of the chin
    chin_y: float = 120.0  # y of the chin bottom

    def outline(self) -> list[Point]:
        """Closed outline points (clockwise from the forehead top)."""
        right = [
            (0.0, self.top),
            (self.temple_w * 0.72, self.top + 7.0),
            (self.temple_w, self.top + 42.0),
            (self.cheek_w, -12.0),
            (self.cheek_w * 0.97, 32.0),
            (self.jaw_w, self.jaw_y),
            (self.chin_w, self.chin_y - 9.0),
            (0.0, self.chin_y),
        ]
        return mirrored(right)


@dataclass(frozen=True, slots=True)
class CharacterStyle:
    """Everything that makes one built-in character look like itself."""

    name: str
    title: str  # short human description
    skin: RGB
    skin_shadow: RGB
    skin_light: RGB
    lip_upper: RGB
    lip_lower: RGB
    iris: RGB
    brow: RGB
    lash: RGB
    hair: RGB
    hair_shade: RGB
    hair_light: RGB
    shirt: RGB
    shirt_shade: RGB
    shirt_accent: RGB
    bg_top: RGB
    bg_bottom: RGB
    bg_glow: RGB
    face: FaceShape
    hair_style: str  # long_wavy | short_tousled | curly_top | bob
    outfit: str  # vneck | sweater | collar | crew
    eye_gap: float = 42.0  # u, eye centre distance from the face midline
    eye_w: float = 20.0  # u, eye half width
    eye_h: float = 11.5  # u, upper lid height above the eye line when open
    iris_r: float = 9.6  # u
    eye_tilt: float = 1.5  # u, outer corner above the inner corner
    brow_thick: float = 5.0  # u, brow thickness at its inner end
    brow_y: float = -26.0  # u, brow line above the eye line (head space)
    mouth_w: float = 31.0  # u, mouth half width at rest
    nose_w: float = 11.0  # u, half width of the nostril wings
    glasses: RGB | None = None  # frame colour of round glasses
    freckles: bool = False
    blush_base: float = 0.08  # permanent cheek warmth (alpha)
    earrings: RGB | None = None


CHARACTER_STYLES: tuple[CharacterStyle, ...] = (
    CharacterStyle(
        name="ava",
        title="Ava: warm brown skin, long wavy dark hair, teal blouse",
        skin=(196, 136, 100),
        skin_shadow=(150, 95, 68),
        skin_light=(222, 168, 130),
        lip_upper=(158, 78, 78),
        lip_lower=(184, 96, 94),
        iris=(96, 58, 30),
        brow=(52, 32, 24),
        lash=(34, 22, 20),
        hair=(62, 38, 28),
        hair_shade=(36, 22, 18),
        hair_light=(118, 78, 52),
        shirt=(36, 150, 150),
        shirt_shade=(20, 96, 104),
        shirt_accent=(240, 214, 160),
        bg_top=(250, 226, 205),
        bg_bottom=(236, 180, 160),
        bg_glow=(255, 244, 228),
        face=FaceShape(top=-118, temple_w=78, cheek_w=88, jaw_w=66, jaw_y=84, chin_w=26, chin_y=121),
        hair_style="long_wavy",
        outfit="vneck",
        eye_h=12.0,
        eye_tilt=2.5,
        brow_thick=4.6,
        mouth_w=31.0,
        nose_w=10.5,
        blush_base=0.10,
        earrings=(232, 190, 90),
    ),
    CharacterStyle(
        name="leo",
        title="Leo: fair skin, short tousled auburn hair, navy sweater over a white collar",
        skin=(240, 196, 170),
        skin_shadow=(205, 150, 128),
        skin_light=(252, 220, 200),
        lip_upper=(186, 104, 100),
        lip_lower=(206, 124, 118),
        iris=(60, 120, 96),
        brow=(120, 66, 40),
        lash=(60, 36, 28),
        hair=(150, 78, 40),
        hair_shade=(98, 46, 24),
        hair_light=(206, 126, 70),
        shirt=(42, 60, 108),
        shirt_shade=(24, 34, 66),
        shirt_accent=(246, 246, 242),
        bg_top=(212, 230, 246),
        bg_bottom=(160, 190, 222),
        bg_glow=(240, 248, 255),
        face=FaceShape(top=-116, temple_w=84, cheek_w=93, jaw_w=80, jaw_y=80, chin_w=38, chin_y=122),
        hair_style="short_tousled",
        outfit="sweater",
        eye_h=11.0,
        eye_tilt=0.5,
        brow_thick=5.6,
        mouth_w=32.0,
        nose_w=11.5,
        freckles=True,
        blush_base=0.12,
    ),
    CharacterStyle(
        name="kofi",
        title="Kofi: deep brown skin, short curly black hair, round glasses, mustard shirt",
        skin=(124, 80, 56),
        skin_shadow=(88, 54, 38),
        skin_light=(156, 106, 76),
        lip_upper=(122, 66, 58),
        lip_lower=(162, 92, 88),
        iris=(54, 32, 20),
        brow=(30, 22, 20),
        lash=(22, 16, 16),
        hair=(34, 28, 28),
        hair_shade=(18, 14, 14),
        hair_light=(78, 66, 62),
        shirt=(226, 170, 52),
        shirt_shade=(170, 118, 30),
        shirt_accent=(250, 236, 200),
        bg_top=(214, 236, 214),
        bg_bottom=(150, 196, 170),
        bg_glow=(244, 252, 238),
        face=FaceShape(top=-112, temple_w=86, cheek_w=95, jaw_w=78, jaw_y=80, chin_w=34, chin_y=119),
        hair_style="curly_top",
        outfit="collar",
        eye_h=11.2,
        eye_tilt=1.0,
        brow_thick=5.8,
        mouth_w=33.0,
        nose_w=13.0,
        glasses=(40, 34, 36),
        brow_y=-31.0,
        blush_base=0.06,
    ),
    CharacterStyle(
        name="mei",
        title="Mei: light olive skin, glossy black bob with bangs, coral top",
        skin=(234, 196, 160),
        skin_shadow=(200, 154, 120),
        skin_light=(248, 218, 190),
        lip_upper=(196, 100, 104),
        lip_lower=(216, 120, 122),
        iris=(70, 44, 30),
        brow=(40, 30, 28),
        lash=(26, 20, 20),
        hair=(30, 28, 34),
        hair_shade=(14, 12, 18),
        hair_light=(92, 90, 110),
        shirt=(240, 118, 96),
        shirt_shade=(190, 76, 64),
        shirt_accent=(255, 230, 214),
        bg_top=(236, 226, 246),
        bg_bottom=(196, 180, 226),
        bg_glow=(252, 248, 255),
        face=FaceShape(top=-116, temple_w=80, cheek_w=88, jaw_w=68, jaw_y=80, chin_w=28, chin_y=118),
        hair_style="bob",
        outfit="crew",
        eye_h=11.0,
        eye_tilt=3.0,
        brow_thick=4.4,
        mouth_w=30.0,
        nose_w=10.0,
        blush_base=0.14,
    ),
)


# --------------------------------------------------------------------------- background


def paint_background(canvas: skia.Canvas, st: CharacterStyle, lay: Layout) -> None:
    """Soft vertical gradient, a glow behind the head, a few bokeh discs and a vignette (px space)."""
    w, h = float(lay.width), float(lay.height)
    canvas.drawRect(skia.Rect(0, 0, w, h), linear_paint((0, 0), (0, h), [st.bg_top, st.bg_bottom]))
    cx, cy = lay.to_px(256.0, 200.0)
    r = lay.s * 300.0
    canvas.drawRect(
        skia.Rect(0, 0, w, h),
        radial_paint((cx, cy), r, [st.bg_glow, st.bg_glow], alphas=[0.85, 0.0]),
    )
    # bokeh: deterministic soft discs in the background colours
    discs = [(70, 120, 46, 0.22), (450, 90, 34, 0.18), (430, 300, 58, 0.14), (60, 330, 30, 0.16), (150, 40, 22, 0.15)]
    for x, y, rad, a in discs:
        px, py = lay.to_px(float(x), float(y))
        canvas.drawOval(oval(px, py, rad * lay.s, rad * lay.s), blurred(shade(st.bg_glow, 1.0), a, 6.0 * lay.s))
    diag = (w * w + h * h) ** 0.5 / 2.0
    canvas.drawRect(
        skia.Rect(0, 0, w, h),
        radial_paint((w / 2, h / 2), diag, [(0, 0, 0), (0, 0, 0), (30, 20, 30)], alphas=[0.0, 0.0, 0.32]),
    )


# --------------------------------------------------------------------------- torso


def _torso_outline() -> skia.Path:
    right = [
        (0.0, 366.0),
        (42.0, 364.0),
        (96.0, 380.0),
        (166.0, 402.0),
        (214.0, 432.0),
        (240.0, 480.0),
        (252.0, 540.0),
        (0.0, 548.0),
    ]
    return smooth_path(mirrored(right), tension=0.9)


def fabric_path(st: CharacterStyle) -> skia.Path:
    """Design-space area covered by clothes (the neck is drawn only outside it)."""
    body = _torso_outline()
    if st.outfit == "vneck":
        hole = skia.Path()
        hole.moveTo(-44, 300)
        hole.lineTo(-40, 366)
        hole.cubicTo(-30, 392, -12, 418, 0, 430)
        hole.cubicTo(12, 418, 30, 392, 40, 366)
        hole.lineTo(44, 300)
        hole.close()
    elif st.outfit == "collar":
        hole = skia.Path()
        hole.moveTo(-46, 300)
        hole.lineTo(-40, 368)
        hole.cubicTo(-26, 390, -10, 408, 0, 416)
        hole.cubicTo(10, 408, 26, 390, 40, 368)
        hole.lineTo(46, 300)
        hole.close()
    else:  # crew neck (sweater: a shirt collar is painted on top)
        hole = skia.Path()
        hole.addOval(oval(0.0, 360.0, 46.0, 24.0))
        hole.addRect(skia.Rect(-46, 300, 46, 360))
    out = skia.Op(body, hole, skia.PathOp.kDifference_PathOp)
    return out if out is not None else body


def paint_torso(canvas: skia.Canvas, st: CharacterStyle) -> None:
    """Shoulders and chest in design space (chest skin where the neckline opens)."""
    body = _torso_outline()
    # chest skin under the neckline (covered by fabric elsewhere)
    canvas.save()
    canvas.clipPath(body, doAntiAlias=True)
    canvas.drawRect(skia.Rect(-80, 340, 80, 460), linear_paint((0, 360), (0, 430), [shade(st.skin, 0.86), st.skin]))
    canvas.drawOval(oval(0, 372, 46, 16), blurred(st.skin_shadow, 0.55, 6.0))
    canvas.restore()
    fab = fabric_path(st)
    canvas.drawPath(fab, linear_paint((0, 360), (0, 520), [shade(st.shirt, 1.08), st.shirt, st.shirt_shade]))
    canvas.save()
    canvas.clipPath(fab, doAntiAlias=True)
    # side shading and shoulder highlights
    canvas.drawOval(oval(-250, 500, 70, 140), blurred(st.shirt_shade, 0.55, 22.0))
    canvas.drawOval(oval(250, 500, 70, 140), blurred(st.shirt_shade, 0.55, 22.0))
    canvas.drawOval(oval(-150, 404, 50, 12), blurred(shade(st.shirt, 1.25), 0.35, 8.0))
    canvas.drawOval(oval(150, 404, 50, 12), blurred(shade(st.shirt, 1.25), 0.35, 8.0))
    # shadow the head casts on the upper chest
    canvas.drawOval(oval(0, 372, 90, 22), blurred(st.shirt_shade, 0.35, 10.0))
    # arm creases
    for sx in (-1.0, 1.0):
        crease = smooth_path([(sx * 176, 430), (sx * 188, 470), (sx * 192, 520)], closed=False)
        canvas.drawPath(crease, stroke(st.shirt_shade, 3.0, 0.35))
    canvas.restore()
    if st.outfit == "vneck":
        for sx in (-1.0, 1.0):
            edge = skia.Path()
            edge.moveTo(sx * 40, 366)
            edge.cubicTo(sx * 30, 392, sx * 12, 418, 0, 430)
            canvas.drawPath(edge, stroke(shade(st.shirt, 1.2), 3.2, 0.9))
        # small pendant
        chain = smooth_path([(-30, 372), (0, 400), (30, 372)], closed=False)
        canvas.drawPath(chain, stroke(st.shirt_accent, 1.2, 0.85))
        canvas.drawOval(oval(0, 404, 3.4, 4.2), fill(st.shirt_accent))
    elif st.outfit == "collar":
        for sx in (-1.0, 1.0):
            flap = skia.Path()
            flap.moveTo(sx * 38, 352)
            flap.lineTo(sx * 48, 372)
            flap.lineTo(sx * 70, 398)
            flap.lineTo(sx * 30, 392)
            flap.lineTo(sx * 4, 416)
            flap.lineTo(sx * 30, 368)
            flap.close()
            canvas.drawPath(flap, fill(shade(st.shirt, 1.1)))
            canvas.drawPath(flap, stroke(st.shirt_shade, 1.6, 0.8))
        canvas.drawLine(0, 418, 0, 520, stroke(st.shirt_shade, 1.8, 0.6))
        for y in (436.0, 470.0, 504.0):
            canvas.drawCircle(5, y, 3.2, fill(st.shirt_accent))
            canvas.drawCircle(5, y, 3.2, stroke(st.shirt_shade, 0.9, 0.7))
    elif st.outfit == "sweater":
        rib = skia.Path()
        rib.addOval(oval(0.0, 362.0, 50.0, 27.0))
        canvas.save()
        canvas.clipPath(body, doAntiAlias=True)
        canvas.drawPath(rib, stroke(shade(st.shirt, 0.8), 7.0))
        canvas.restore()
        for sx in (-1.0, 1.0):
            pt = skia.Path()
            pt.moveTo(sx * 30, 352)
            pt.lineTo(sx * 12, 392)
            pt.lineTo(sx * 48, 372)
            pt.close()
            canvas.drawPath(pt, fill(st.shirt_accent))
            canvas.drawPath(pt, stroke((190, 190, 186), 1.0, 0.9))
        # knit texture lines
        for x in range(-220, 221, 18):
            canvas.save()
            canvas.clipPath(fab, doAntiAlias=True)
            canvas.drawLine(float(x), 410.0, float(x) * 1.05, 540.0, stroke(st.shirt_shade, 1.2, 0.18))
            canvas.restore()
    else:  # crew
        rib = skia.Path()
        rib.addOval(oval(0.0, 361.0, 49.0, 26.0))
        canvas.save()
        canvas.clipPath(body, doAntiAlias=True)
        canvas.drawPath(rib, stroke(shade(st.shirt, 1.15), 5.0))
        canvas.restore()


# --------------------------------------------------------------------------- head sprite


def _hair_paint(st: CharacterStyle, y0: float = -160.0, y1: float = 200.0) -> skia.Paint:
    return linear_paint((-40, y0), (40, y1), [st.hair_light, st.hair, st.hair_shade])


def _back_hair(st: CharacterStyle) -> skia.Path | None:
    if st.hair_style == "long_wavy":
        right = [
            (0.0, -156.0),
            (78.0, -146.0),
            (124.0, -100.0),
            (140.0, -20.0),
            (140.0, 60.0),
            (150.0, 130.0),
            (166.0, 190.0),
            (150.0, 226.0),
            (108.0, 222.0),
            (76.0, 190.0),
            (50.0, 130.0),
            (0.0, 118.0),
        ]
        return smooth_path(mirrored(right), tension=0.95)
    if st.hair_style == "bob":
        right = [
            (0.0, -152.0),
            (80.0, -142.0),
            (122.0, -96.0),
            (134.0, -20.0),
            (132.0, 60.0),
            (124.0, 108.0),
            (96.0, 118.0),
            (60.0, 104.0),
            (0.0, 100.0),
        ]
        return smooth_path(mirrored(right), tension=0.95)
    return None


def _front_hair(st: CharacterStyle) -> skia.Path:
    f = st.face
    if st.hair_style == "long_wavy":
        p = skia.Path()
        p.moveTo(-30, -152)
        p.cubicTo(40, -162, 118, -132, 132, -60)  # crown to right side
        p.cubicTo(142, 0, 128, 60, 138, 120)  # right lock down
        p.cubicTo(142, 150, 126, 172, 112, 176)
        p.cubicTo(118, 140, 100, 100, 96, 60)  # inner edge of right lock
        p.cubicTo(92, 10, 96, -40, 74, -80)  # right temple
        p.cubicTo(50, -104, 0, -96, -22, -112)  # sweep across forehead (side part at left)
        p.cubicTo(-40, -98, -70, -80, -86, -40)  # left temple
        p.cubicTo(-94, 0, -92, 60, -100, 110)
        p.cubicTo(-104, 140, -114, 164, -128, 172)
        p.cubicTo(-132, 130, -134, 60, -136, 0)
        p.cubicTo(-138, -80, -110, -140, -30, -152)
        p.close()
        return p
    if st.hair_style == "short_tousled":
        pts = [
            (-92.0, -26.0),
            (-104.0, -72.0),
            (-100.0, -114.0),
            (-80.0, -146.0),
            (-46.0, -166.0),
            (-4.0, -172.0),
            (38.0, -168.0),
            (74.0, -152.0),
            (100.0, -124.0),
            (110.0, -86.0),
            (106.0, -44.0),
            (97.0, -18.0),
            (89.0, -26.0),
            (88.0, -58.0),
            (80.0, -74.0),  # fringe tufts sweeping to the right
            (64.0, -66.0),
            (58.0, -86.0),
            (38.0, -80.0),
            (26.0, -98.0),
            (4.0, -92.0),
            (-14.0, -108.0),
            (-46.0, -100.0),
            (-72.0, -88.0),
            (-86.0, -64.0),
        ]
        return smooth_path(pts, tension=0.8)
    if st.hair_style == "curly_top":
        right = [
            (0.0, -166.0),
            (58.0, -160.0),
            (96.0, -132.0),
            (106.0, -92.0),
            (98.0, -62.0),
            (88.0, -64.0),
            (84.0, -84.0),
            (52.0, -96.0),
            (0.0, -98.0),
        ]
        return smooth_path(mirrored(right), tension=0.9)
    # bob with straight bangs
    p = skia.Path()
    p.moveTo(0, -156)
    p.cubicTo(78, -158, 128, -110, 132, -40)
    p.cubicTo(136, 20, 128, 80, 126, 112)
    p.cubicTo(110, 122, 98, 118, 90, 114)
    p.cubicTo(94, 60, 92, 0, 84, -40)
    p.cubicTo(80, -60, 78, -70, 72, -74)
    p.cubicTo(40, -68, -40, -68, -72, -74)
    p.cubicTo(-78, -70, -80, -60, -84, -40)
    p.cubicTo(-92, 0, -94, 60, -90, 114)
    p.cubicTo(-98, 118, -110, 122, -126, 112)
    p.cubicTo(-128, 80, -136, 20, -132, -40)
    p.cubicTo(-128, -110, -78, -158, 0, -156)
    p.close()
    _ = f
    return p


def _hair_texture(canvas: skia.Canvas, st: CharacterStyle, clip: skia.Path) -> None:
    canvas.save()
    canvas.clipPath(clip, doAntiAlias=True)
    if st.hair_style == "long_wavy":
        for i in range(9):
            x = -120.0 + i * 30.0
            strand = smooth_path([(x * 0.5, -150.0), (x * 0.9, -90.0), (x, -20.0), (x * 1.06, 60.0), (x * 1.1, 170.0)], closed=False)
            canvas.drawPath(strand, stroke(st.hair_light, 2.0, 0.25))
        shine = smooth_path([(20, -146), (70, -128), (104, -92)], closed=False)
        canvas.drawPath(shine, stroke(st.hair_light, 7.0, 0.35))
    elif st.hair_style == "short_tousled":
        for i in range(11):
            x = -84.0 + i * 17.0
            strand = smooth_path([(x - 30.0, -166.0), (x - 6.0, -140.0), (x + 10.0, -112.0), (x + 16.0, -90.0)], closed=False)
            canvas.drawPath(strand, stroke(st.hair_shade, 2.0, 0.35))
            hi = smooth_path([(x - 22.0, -160.0), (x - 2.0, -136.0), (x + 8.0, -118.0)], closed=False)
            canvas.drawPath(hi, stroke(st.hair_light, 1.6, 0.3))
        shine = smooth_path([(-60, -142), (-20, -158), (24, -156)], closed=False)
        canvas.drawPath(shine, stroke(st.hair_light, 6.0, 0.4))
    elif st.hair_style == "curly_top":
        k = 0
        for row in range(13):
            y = -168.0 + row * 6.5
            for col in range(-19, 20):
                k += 1
                x = col * 6.2 + (3.1 if row % 2 else 0.0) + ((k * 13) % 5 - 2) * 0.5
                r = 2.6 + (k * 7919 % 5) * 0.3
                c = mix(st.hair_shade, st.hair_light, ((k * 31) % 7) / 9.0)
                canvas.drawCircle(x, y + ((k * 17) % 3 - 1) * 0.8, r, fill(c, 0.55))
                canvas.drawCircle(x - 0.8, y - 0.8, r * 0.4, fill(st.hair_light, 0.25))
        canvas.drawOval(oval(-30, -146, 50, 14), blurred(st.hair_light, 0.22, 6.0))
    elif st.hair_style == "bob":
        for i in range(14):
            x = -120.0 + i * 18.5
            strand = smooth_path([(x * 0.3, -150.0), (x * 0.8, -100.0), (x, -20.0), (x, 110.0)], closed=False)
            canvas.drawPath(strand, stroke(st.hair_light, 1.6, 0.18))
        shine = smooth_path([(-70, -120), (-20, -142), (40, -140), (86, -116)], closed=False)
        canvas.drawPath(shine, stroke(st.hair_light, 8.0, 0.5))
        for i in range(16):
            x = -68.0 + i * 9.0
            canvas.drawLine(x, -110.0, x + 1.0, -72.0, stroke(st.hair_shade, 1.4, 0.35))
    canvas.restore()


def face_path(st: CharacterStyle) -> skia.Path:
    """Head-space face outline."""
    return smooth_path(st.face.outline(), tension=0.95)


def paint_head(canvas: skia.Canvas, st: CharacterStyle) -> None:
    """The static head layer in head space: back hair, ears, shaded face, front hair."""
    f = st.face
    back = _back_hair(st)
    if back is not None:
        canvas.drawPath(back, _hair_paint(st, -160.0, 230.0))
        _hair_texture(canvas, st, back)
        canvas.save()
        canvas.clipPath(back, doAntiAlias=True)
        canvas.drawOval(oval(0, 60, 110, 80), blurred(st.hair_shade, 0.6, 18.0))
        canvas.restore()
    # ears
    for sx in (-1.0, 1.0):
        ex = sx * (f.cheek_w - 4.0)
        canvas.drawOval(oval(ex, 8.0, 15.0, 25.0), fill(st.skin))
        canvas.drawOval(oval(ex + sx * 3.0, 8.0, 8.0, 16.0), fill(st.skin_shadow, 0.5))
        canvas.drawOval(oval(ex + sx * 5.0, 6.0, 5.0, 12.0), fill(st.skin_light, 0.4))
        if st.earrings is not None:
            canvas.drawCircle(ex + sx * 4.0, 36.0, 4.5, fill(st.earrings))
            canvas.drawCircle(ex + sx * 3.0, 34.5, 1.6, fill((255, 250, 230), 0.8))
    fp = face_path(st)
    canvas.drawPath(fp, radial_paint((-18.0, -10.0), 150.0, [st.skin_light, st.skin, st.skin_shadow]))
    canvas.save()
    canvas.clipPath(fp, doAntiAlias=True)
    # soft form shading: cheekbones, temples, jaw, forehead highlight
    canvas.drawOval(oval(0, f.chin_y + 14, f.jaw_w + 20, 40), blurred(st.skin_shadow, 0.5, 14.0))
    canvas.drawOval(oval(-f.cheek_w - 6, 10, 26, 90), blurred(st.skin_shadow, 0.45, 14.0))
    canvas.drawOval(oval(f.cheek_w + 6, 10, 26, 90), blurred(st.skin_shadow, 0.55, 14.0))
    canvas.drawOval(oval(-10, -70, 50, 24), blurred(st.skin_light, 0.45, 12.0))
    canvas.drawOval(oval(-50, 30, 22, 14), blurred(st.skin_light, 0.3, 8.0))
    canvas.drawOval(oval(50, 30, 22, 14), blurred(st.skin_light, 0.22, 8.0))
    # chin highlight and dimple
    canvas.drawOval(oval(0, f.chin_y - 16, 16, 8), blurred(st.skin_light, 0.35, 5.0))
    if st.blush_base > 0.0:
        for sx in (-1.0, 1.0):
            canvas.drawOval(oval(sx * 54, 40, 20, 11), blurred((236, 110, 110), st.blush_base, 6.0))
    if st.freckles:
        k = 0
        for sx in (-1.0, 1.0):
            for _i in range(9):
                k += 1
                fx = sx * (34.0 + (k * 37 % 11) * 2.6)
                fy = 24.0 + (k * 53 % 7) * 3.2
                canvas.drawCircle(fx, fy, 1.3, fill(st.skin_shadow, 0.55))
    # shadow of the hair on the forehead
    front = _front_hair(st)
    sh = skia.Path(front)
    sh.offset(0.0, 6.0)
    canvas.drawPath(sh, blurred(st.skin_shadow, 0.6, 6.0))
    canvas.restore()
    canvas.drawPath(front, _hair_paint(st))
    _hair_texture(canvas, st, front)
    if st.hair_style == "short_tousled":
        # sideburns
        for sx in (-1.0, 1.0):
            sb = skia.Path()
            sb.moveTo(sx * 92, -40)
            sb.lineTo(sx * 93, -4)
            sb.lineTo(sx * 85, -8)
            sb.lineTo(sx * 82, -40)
            sb.close()
            canvas.drawPath(sb, fill(st.hair))


def neck_path(st: CharacterStyle) -> skia.Path:
    """Head-space neck (moves with the head; its bottom hides under the clothes)."""
    right = [(0.0, 60.0), (33.0, 60.0), (31.0, 128.0), (36.0, 168.0), (52.0, 205.0), (0.0, 212.0)]
    return smooth_path(mirrored(right), tension=0.7)
