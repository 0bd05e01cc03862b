"""Photo-portrait avatars: a registered photo animated by mesh-driven warps.

Registration (:func:`register_photo`, the only place mediapipe is imported) finds exactly one
clear face with mediapipe's face mesh, crops and scales the portrait to the output size and
stores, in the avatar's folder::

    source.<ext>         the uploaded image, unchanged
    portrait.png         the crop, RGB, ``size`` px
    landmarks.json       468 face-mesh landmarks (portrait px), the triangle mesh, consent
                         statement with who/when, source hash, mouth-interior geometry
    mouth_interior.png   4 stacked RGBA tiles: cavity, upper teeth, lower teeth, tongue

Rendering (:class:`PhotoRenderer`) builds, once per renderer (clones share it), first-order
backward displacement fields per expression parameter over the face box and a feathered
rigid-motion field over the head (hair included; shoulders and background stay). Per frame:
``sum(param_k * field_k)`` (a BLAS mat-vec; the smooth pose part at 1/4 resolution) drives one
``cv2.remap`` of the head box; the mouth interior is composited inside the inner-lip polygon
(solved on the actual map, so it lies exactly behind the warped lips); blinks move the lid
margin down over each eye and stretch the lid skin above it (a tiny per-column remap).
``eye_open_l`` is the eye on the viewer's left.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from server.errors import AvatarError
from server.pipeline.types import AnimationState
from server.render.image_header import ImageRejected, read_header

FORMAT = 1
MIN_FACE_PX = 64  # px, smallest accepted face-mesh bbox width in the source image
MAX_PIXELS = 40_000_000  # refuse larger uploads (checked on the header before decoding)
N_MESH = 468  # face-mesh landmarks used (the 10 iris points are left out of the mesh)
POSE_STEP = 4  # px, sampling step of the (smooth) head-pose displacement field

# mediapipe face-mesh indices, listed from the viewer's left to right.
UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIP_UPPER_ALL = frozenset((*UPPER_INNER, *UPPER_OUTER, 76, 62, 184, 183, 42, 41, 38, 72, 12, 11, 302, 268, 271, 272, 407, 408, 292, 306))
LIP_LOWER_ALL = frozenset((*LOWER_INNER, *LOWER_OUTER, 77, 96, 89, 90, 179, 180, 86, 85, 15, 16, 316, 315, 403, 404, 319, 320, 325, 307))
CORNERS = frozenset((61, 291, 78, 308, 62, 292, 76, 306, 77, 307, 96, 325))
# Eyes: upper lid, lower lid (paired, outer -> inner) and corners; "R" is the subject's right
# eye (viewer's left in a frontal photo).
EYE_R_UPPER = (246, 161, 160, 159, 158, 157, 173)
EYE_R_LOWER = (7, 163, 144, 145, 153, 154, 155)
EYE_R_CORNERS = (33, 133)
EYE_L_UPPER = (466, 388, 387, 386, 385, 384, 398)
EYE_L_LOWER = (249, 390, 373, 374, 380, 381, 382)
EYE_L_CORNERS = (263, 362)
EYE_CREASES = (247, 30, 29, 27, 28, 56, 190, 467, 260, 259, 257, 258, 286, 414)
BROWS = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
FOREHEAD, CHIN = 10, 152

# Remap basis order (the per-frame parameter vector).
BASES: tuple[str, ...] = (
    "jaw_open", "mouth_width", "lip_round", "lips_pressed", "smile", "lip_tuck", "teeth_show",
    "brow_raise", "brow_inner",
)


class PhotoRejected(AvatarError):
    """A photo cannot become an avatar (no face, several faces, too small, no consent...)."""


# ---------------------------------------------------------------- registration


def _u8(a: object) -> NDArray[np.uint8]:
    """An OpenCV result as a typed uint8 array (no copy)."""
    return np.asarray(a, dtype=np.uint8)


def _read_rgb(path: Path) -> NDArray[np.uint8]:
    """Read an image file as (h, w, 3) uint8 RGB; refuse unreadable or huge files."""
    if not path.is_file():
        raise PhotoRejected(f"image file {path} does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    try:  # the header's size first: never decode an image bomb
        read_header(data.tobytes(), MAX_PIXELS, f"image {path.name}")
    except ImageRejected as e:
        raise PhotoRejected(str(e)) from None
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise PhotoRejected(f"cannot read {path} as an image (JPEG, PNG, WebP, BMP or TIFF expected)")
    if raw.dtype != np.uint8:
        raw = cv2.convertScaleAbs(raw, alpha=255.0 / max(float(raw.max()), 1.0))
    if raw.shape[0] * raw.shape[1] > MAX_PIXELS:
        raise PhotoRejected(f"image {path} is {raw.shape[1]}x{raw.shape[0]} px; at most {MAX_PIXELS // 1_000_000} MP accepted")
    if raw.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB))
    if raw.shape[2] == 4:
        # Flatten transparency onto white.
        a = raw[..., 3:4].astype(np.float32) / 255.0
        bgr = raw[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
        return np.ascontiguousarray(cv2.cvtColor(bgr.astype(np.uint8), cv2.COLOR_BGR2RGB))
    return np.ascontiguousarray(cv2.cvtColor(raw, cv2.COLOR_BGR2RGB))


def _protobuf_compat() -> None:
    """mediapipe 0.10.21 calls ``MessageFactory.GetPrototype``, which protobuf >= 5 removed
    (onnx needs protobuf >= 6.31): restore it as the documented ``GetMessageClass``."""
    from google.protobuf import message_factory

    if not hasattr(message_factory.MessageFactory, "GetPrototype"):
        message_factory.MessageFactory.GetPrototype = lambda self, descriptor: message_factory.GetMessageClass(descriptor)


def detect_faces(rgb: NDArray[np.uint8]) -> list[NDArray[np.float32]]:
    """Every distinct face in ``rgb`` (h, w, 3): a list of (478, 3) landmark arrays in px.

    mediapipe's detector sees a square-ish view, so wide or tall images are scanned with
    overlapping square windows (and half-size windows when none is found); detections of
    the same face from several windows are merged.
    """
    try:
        _protobuf_compat()
        import mediapipe as mp  # lazily: only registration needs it
    except ImportError as e:
        raise AvatarError(
            f"photo avatars need mediapipe 0.10.21 ({e}); install it with `make setup` "
            "or `pip install --no-deps mediapipe==0.10.21` plus the [photo] extra"
        ) from e

    h, w = rgb.shape[:2]
    faces: list[NDArray[np.float32]] = []

    def scan(side: int) -> None:
        with warnings.catch_warnings():  # mediapipe's protobuf use warns about deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            scan_windows(side)

    def scan_windows(side: int) -> None:
        xs = sorted({*range(0, max(w - side, 0) + 1, max(side // 2, 1)), max(w - side, 0)})
        ys = sorted({*range(0, max(h - side, 0) + 1, max(side // 2, 1)), max(h - side, 0)})
        with mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=2, refine_landmarks=True, min_detection_confidence=0.5
        ) as fm:
            for y0 in ys:
                for x0 in xs:
                    tile = np.ascontiguousarray(rgb[y0 : y0 + side, x0 : x0 + side])
                    th, tw = tile.shape[:2]
                    res = fm.process(tile)
                    for f in res.multi_face_landmarks or []:
                        pts = np.array([[p.x * tw + x0, p.y * th + y0, p.z * tw] for p in f.landmark], np.float32)
                        _merge(faces, pts)

    scan(min(h, w))
    if not faces and min(h, w) >= 256:
        scan(min(h, w) // 2)
    return faces


def _merge(faces: list[NDArray[np.float32]], pts: NDArray[np.float32]) -> None:
    """Add ``pts`` unless it is a face already in ``faces`` (centres closer than half a width)."""
    c = pts[:N_MESH, :2].mean(0)
    width = float(np.ptp(pts[:N_MESH, 0]))
    for i, f in enumerate(faces):
        fc = f[:N_MESH, :2].mean(0)
        fw = float(np.ptp(f[:N_MESH, 0]))
        if float(np.hypot(*(c - fc))) < 0.5 * max(width, fw):
            if width > fw:  # keep the fuller view
                faces[i] = pts
            return
    faces.append(pts)


def consent_statement(consent_by: str) -> str:
    """The consent text recorded with a photo avatar."""
    return (
        f"{consent_by} confirmed that the person shown agreed to this photo being animated "
        "as a talking avatar on this server."
    )


def register_photo(image_path: Path, out_dir: Path, name: str, consent_by: str, size: tuple[int, int] = (512, 512)) -> dict[str, Any]:
    """Validate a portrait and write its avatar folder ``out_dir``; returns the stored metadata.

    Raises :class:`PhotoRejected` (no consent, unreadable, no face, several faces, face too
    small). ``out_dir`` must not exist yet; nothing is left behind on failure.
    """
    who = (consent_by or "").strip()
    if not who:
        raise PhotoRejected("a photo avatar needs a consent statement: give --consent-by WHO (the person who confirms consent)")
    if len(who) > 200:
        raise PhotoRejected(f"consent_by is {len(who)} characters; at most 200")
    image_path = Path(image_path)
    rgb = _read_rgb(image_path)
    faces = detect_faces(rgb)
    if not faces:
        raise PhotoRejected(f"no face found in {image_path.name} ({rgb.shape[1]}x{rgb.shape[0]} px): use a clear, front-facing portrait")
    if len(faces) > 1:
        raise PhotoRejected(f"found {len(faces)} faces in {image_path.name}: a portrait must show exactly one person")
    lm = faces[0]
    fw = float(np.ptp(lm[:N_MESH, 0]))
    if fw < MIN_FACE_PX:
        raise PhotoRejected(f"the face in {image_path.name} is too small ({fw:.0f} px wide; at least {MIN_FACE_PX} px needed): crop closer or use a larger photo")

    W, H = int(size[0]), int(size[1])
    # Crop: a box 2.4 face heights tall (output aspect), the eye line at 42 % of its height.
    eyes_mid = 0.5 * (lm[[33, 133]].mean(0) + lm[[263, 362]].mean(0))[:2]
    face_h = float(np.hypot(*(lm[CHIN, :2] - lm[FOREHEAD, :2])))
    ch = 2.4 * face_h
    cw = ch * W / H
    cx = float(lm[:N_MESH, 0].mean())
    x0, y0 = cx - cw / 2.0, float(eyes_mid[1]) - 0.42 * ch
    s = W / cw
    m = np.array([[s, 0.0, -x0 * s], [0.0, s, -y0 * s]], np.float64)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    portrait = _u8(cv2.warpAffine(rgb, m, (W, H), flags=interp, borderMode=cv2.BORDER_REPLICATE))
    # Landmarks again on the portrait itself (face fills it: more precise); else transformed.
    refit = detect_faces(portrait)
    if len(refit) == 1:
        plm = refit[0]
    else:
        plm = lm.copy()
        plm[:, :2] = lm[:, :2] * s + m[:, 2]
        plm[:, 2] *= s
    tri = _triangulate(plm[:N_MESH, :2])
    mouth = _mouth_interior_assets(portrait, plm)

    tmp = out_dir.with_name(out_dir.name + ".partial")
    if out_dir.exists():
        raise AvatarError(f"avatar folder {out_dir} already exists")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        src_name = "source" + (image_path.suffix.lower() if image_path.suffix else ".img")
        shutil.copyfile(image_path, tmp / src_name)
        cv2.imwrite(str(tmp / "portrait.png"), cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp / "mouth_interior.png"), cv2.cvtColor(mouth.tiles, cv2.COLOR_RGBA2BGRA))
        meta: dict[str, Any] = {
            "format": FORMAT,
            "name": name,
            "size": [W, H],
            "consent": {
                "statement": consent_statement(who),
                "by": who,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            "source": {
                "file": src_name,
                "original_name": image_path.name,
                "sha256": hashlib.sha256(image_path.read_bytes()).hexdigest(),
                "size": [int(rgb.shape[1]), int(rgb.shape[0])],
                "crop_to_portrait": m.round(6).tolist(),
            },
            "landmarks": plm.round(2).tolist(),
            "triangles": tri.tolist(),
            "mouth_interior": {"file": "mouth_interior.png", "origin": list(mouth.origin), "tile": list(mouth.tile_size)},
        }
        (tmp / "landmarks.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _triangulate(pts: NDArray[np.floating[Any]]) -> NDArray[np.int32]:
    """Delaunay triangles (m, 3) over ``pts`` (n, 2) px: indices into ``pts``.

    Coincident points are merged (the first one is used).
    """
    p = np.asarray(pts, np.float64)
    lo, hi = np.floor(p.min(0)) - 2.0, np.ceil(p.max(0)) + 2.0
    sub = cv2.Subdiv2D((int(lo[0]), int(lo[1]), int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1))
    index: dict[tuple[float, float], int] = {}
    for i, q in enumerate(p):
        key = (round(float(np.float32(q[0])), 2), round(float(np.float32(q[1])), 2))
        if key not in index:
            index[key] = i
            sub.insert((float(q[0]), float(q[1])))
    out = []
    for t in np.asarray(sub.getTriangleList()).reshape(-1, 3, 2):
        if (t < lo).any() or (t > hi).any():
            continue  # touches Subdiv2D's virtual outer vertices
        idx = [index.get((round(float(v[0]), 2), round(float(v[1]), 2)), -1) for v in t]
        if -1 in idx:
            idx = [int(np.argmin(((p - v) ** 2).sum(1))) for v in t]
        if len(set(idx)) == 3:
            out.append(idx)
    return np.array(out, np.int32).reshape(-1, 3)


def _interpolate(pts: NDArray[np.floating[Any]], vals: NDArray[np.floating[Any]], box: tuple[int, int, int, int]) -> NDArray[np.float64]:
    """Piecewise-linear interpolation of ``vals`` (n, c) at ``pts`` (n, 2) over the Delaunay
    mesh, sampled at every pixel of ``box`` (x0, y0, x1, y1): (y1 - y0, x1 - x0, c); 0 outside."""
    x0, y0, x1, y1 = box
    p = np.asarray(pts, np.float64)
    v = np.asarray(vals, np.float64)
    out = np.zeros((y1 - y0, x1 - x0, v.shape[1]))
    for i, j, k in _triangulate(p):
        a, b, c = p[i], p[j], p[k]
        det = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        if abs(det) < 1e-9:
            continue
        tx0 = max(int(math.floor(min(a[0], b[0], c[0]))), x0)
        tx1 = min(int(math.ceil(max(a[0], b[0], c[0]))) + 1, x1)
        ty0 = max(int(math.floor(min(a[1], b[1], c[1]))), y0)
        ty1 = min(int(math.ceil(max(a[1], b[1], c[1]))) + 1, y1)
        if tx1 <= tx0 or ty1 <= ty0:
            continue
        X = np.arange(tx0, tx1, dtype=np.float64)[None, :] - c[0]
        Y = np.arange(ty0, ty1, dtype=np.float64)[:, None] - c[1]
        l1 = ((b[1] - c[1]) * X + (c[0] - b[0]) * Y) / det
        l2 = ((c[1] - a[1]) * X + (a[0] - c[0]) * Y) / det
        l3 = 1.0 - l1 - l2
        inside = (l1 >= -1e-9) & (l2 >= -1e-9) & (l3 >= -1e-9)
        if not inside.any():
            continue
        region = out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
        region[inside] = l1[inside][:, None] * v[i] + l2[inside][:, None] * v[j] + l3[inside][:, None] * v[k]
    return out


# ---------------------------------------------------------------- face geometry


@dataclass(frozen=True, slots=True)
class _Frame:
    """Face-aligned frame: ``ex`` viewer-left -> right along the eyes, ``ey`` down; units."""

    ex: NDArray[np.float64]
    ey: NDArray[np.float64]
    mouth_c: NDArray[np.float64]  # px, between the inner lips
    half_w: float  # px, half the mouth width
    face_h: float  # px, forehead top to chin
    eye_dist: float  # px
    mid: NDArray[np.float64]  # px, between the eyes


def _frame(lm: NDArray[np.float32]) -> _Frame:
    p = lm[:, :2].astype(np.float64)
    er, el = p[[33, 133, 159, 145]].mean(0), p[[263, 362, 386, 374]].mean(0)
    if er[0] > el[0]:
        er, el = el, er
    ex = (el - er) / max(np.hypot(*(el - er)), 1e-6)
    ey = np.array([-ex[1], ex[0]])
    mc = 0.5 * (p[13] + p[14])
    half_w = 0.5 * float(np.hypot(*(p[291] - p[61])))
    face_h = float(np.hypot(*(p[CHIN] - p[FOREHEAD])))
    return _Frame(ex, ey, mc, max(half_w, 1.0), max(face_h, 1.0), float(np.hypot(*(el - er))), 0.5 * (er + el))


def _smoothstep(e0: float, e1: float, x: NDArray[np.float64]) -> NDArray[np.float64]:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def landmark_bases(lm: NDArray[np.float32]) -> NDArray[np.float64]:
    """Forward displacement of every mesh landmark per basis at parameter 1: (K, 468, 2) px."""
    f = _frame(lm)
    p = lm[:N_MESH, :2].astype(np.float64)
    rel = p - f.mouth_c
    a = rel @ f.ex / f.half_w  # mouth corners at a = +-1
    b = rel @ f.ey / f.face_h  # down, face heights from the mouth centre
    idx = np.arange(N_MESH)
    ui, li = np.array(UPPER_INNER), np.array(LOWER_INNER)
    seam_a = a[ui]
    seam_b = 0.5 * (b[ui] + b[li])
    order = np.argsort(seam_a)
    seam = np.interp(a, seam_a[order], seam_b[order])
    is_upper_lip = np.isin(idx, list(LIP_UPPER_ALL))
    is_lower_lip = np.isin(idx, list(LIP_LOWER_ALL)) & ~np.isin(idx, list(CORNERS))
    is_corner = np.isin(idx, list(CORNERS))
    lower = (is_lower_lip | ((b > seam + 0.004) & ~is_upper_lip)) & ~is_corner
    upper = ~lower & ~is_corner
    aa = np.abs(a)
    K = len(BASES)
    dx = np.zeros((K, N_MESH))
    dy = np.zeros((K, N_MESH))
    near_mouth = np.exp(-((b / 0.085) ** 2))
    prof = np.where(aa <= 1.0, a, np.sign(a) * np.clip(1.0 - (aa - 1.0) / 0.9, 0.0, 1.0))
    centre = np.clip(1.0 - aa**2, 0.0, 1.0)

    # jaw_open: everything below the lips drops, fading toward the jaw hinges.
    J = 0.10 * f.face_h
    fall = np.clip(1.0 - np.maximum(aa - 1.0, 0.0) / 2.8, 0.0, 1.0) ** 1.5
    ramp = np.where(aa <= 1.0, 1.0, _smoothstep(0.0, 0.06, b - seam))
    lip_soft = 1.0 - 0.5 * _smoothstep(0.6, 1.0, aa)
    dy[0] = np.where(lower, J * fall * ramp * np.where(is_lower_lip, lip_soft, 1.0), 0.0)
    dy[0] += np.where(is_corner, 0.35 * J, 0.0)
    dx[0] += np.where(is_corner, -0.06 * f.half_w * np.sign(a), 0.0)
    dy[0] += np.where(upper & (b > -0.12) & (aa < 1.2), -0.12 * J * centre, 0.0)
    # mouth_width: stretch along the mouth line.
    dx[1] = 0.18 * f.half_w * prof * near_mouth
    # lip_round: corners in, lip centres apart (an O).
    dx[2] = -0.22 * f.half_w * prof * near_mouth
    c8 = np.clip(1.0 - (a / 0.8) ** 2, 0.0, 1.0)
    dy[2] = np.where(is_upper_lip, -0.020 * f.face_h * c8, 0.0) + np.where(is_lower_lip, 0.026 * f.face_h * c8, 0.0)
    # lips_pressed: outer lip edges toward the seam (thinner lips).
    up_th = float(np.median(b[np.array(UPPER_INNER[3:8])] - b[np.array(UPPER_OUTER[3:8])])) * f.face_h
    lo_th = float(np.median(b[np.array(LOWER_OUTER[3:8])] - b[np.array(LOWER_INNER[3:8])])) * f.face_h
    outer_u = np.isin(idx, UPPER_OUTER[1:-1])
    outer_l = np.isin(idx, LOWER_OUTER[1:-1])
    dy[3] = np.where(outer_u, 0.35 * up_th, 0.0) - np.where(outer_l, 0.35 * lo_th, 0.0)
    # ... and closes a mouth that is open in the photo (a smile showing teeth).
    gap_rest = np.clip(b[li] - b[ui], 0.0, None) * f.face_h
    gap = np.interp(a, seam_a[order], gap_rest[order]) * (aa <= 1.05)
    dy[3] += np.where(is_upper_lip, 0.48 * gap, 0.0) - np.where(is_lower_lip, 0.48 * gap, 0.0)
    # smile: corners up and out, cheeks lift.
    wc = np.exp(-(((aa - 1.0) / 0.5) ** 2)) * np.exp(-((b / 0.08) ** 2))
    cheek = np.exp(-(((aa - 1.6) / 0.6) ** 2)) * np.exp(-(((b + 0.1) / 0.08) ** 2))
    dx[4] = np.sign(a) * 0.12 * f.half_w * wc
    dy[4] = -0.035 * f.face_h * wc - 0.012 * f.face_h * cheek
    # lip_tuck: lower lip up under the upper teeth.
    dy[5] = np.where(is_lower_lip, -0.03 * f.face_h * (1.0 - _smoothstep(0.5, 1.0, aa)), 0.0)
    # teeth_show: upper lip up, lower lip down.
    tw = 1.0 - _smoothstep(0.6, 1.05, aa)
    dy[6] = np.where(is_upper_lip, -0.022 * f.face_h * tw, 0.0) + np.where(is_lower_lip, 0.018 * f.face_h * tw, 0.0)
    # Brows: a bump around the brow landmarks, only well above the eyes.
    bp = p[np.array(BROWS)]
    d = np.sqrt(((p[:, None, :] - bp[None, :, :]) ** 2).sum(-1)).min(1)
    w_b = np.exp(-((d / (0.07 * f.face_h)) ** 2))
    above = (f.mid - p) @ f.ey
    gate = _smoothstep(0.03 * f.face_h, 0.075 * f.face_h, above)
    # The eyes themselves never move with the brows (only the skin between them stretches).
    eye_ring = np.isin(idx, [*EYE_R_UPPER, *EYE_R_LOWER, *EYE_R_CORNERS, *EYE_L_UPPER, *EYE_L_LOWER, *EYE_L_CORNERS])
    crease = np.isin(idx, EYE_CREASES)
    gate = np.where(eye_ring, 0.0, np.where(crease, np.minimum(gate, 0.15), gate))
    dy[7] = -0.035 * f.face_h * w_b * gate
    inner = np.clip(1.0 - np.abs((p - f.mid) @ f.ex) / (0.6 * f.eye_dist), 0.0, 1.0)
    dy[8] = -0.035 * f.face_h * w_b * gate * inner
    out = dx[:, :, None] * f.ex[None, None, :] + dy[:, :, None] * f.ey[None, None, :]
    return out


@dataclass(frozen=True, slots=True)
class _MouthAssets:
    tiles: NDArray[np.uint8]  # (4 * th, tw, 4) RGBA straight: cavity, upper teeth, lower teeth, tongue
    origin: tuple[int, int]  # portrait px of the tiles' top-left
    tile_size: tuple[int, int]  # (tw, th)


def _mouth_interior_assets(portrait: NDArray[np.uint8], lm: NDArray[np.float32]) -> _MouthAssets:
    """Draw the mouth interior (cavity, teeth, tongue) for this face, in portrait px.

    Colours follow the photo: the cavity is the lips' hue darkened, the teeth take the face's
    brightness so they do not glow in a dim photo.
    """
    f = _frame(lm)
    J = 0.10 * f.face_h
    tw = int(math.ceil(2.6 * f.half_w))
    th = int(math.ceil(2.6 * J + 0.12 * f.face_h))
    ox = int(round(f.mouth_c[0] - tw / 2))
    oy = int(round(f.mouth_c[1] - 0.06 * f.face_h))
    lips = np.array([lm[i, :2] for i in (*UPPER_OUTER, *LOWER_OUTER)], np.int32)
    mask = np.zeros(portrait.shape[:2], np.uint8)
    cv2.fillPoly(mask, [cv2.convexHull(lips)], 255)
    lip_rgb = np.array(cv2.mean(portrait, mask=mask)[:3])
    skin = np.array(cv2.mean(portrait)[:3])
    bright = float(np.clip(skin.mean() / 150.0, 0.55, 1.0))
    cavity_top = np.clip(lip_rgb * 0.25, 0, 255)
    cavity_bot = np.clip(lip_rgb * 0.55 + np.array([20.0, 0.0, 0.0]), 0, 255)
    yy, xx = np.mgrid[0:th, 0:tw].astype(np.float32)
    cx = tw / 2.0
    seam_y = f.mouth_c[1] - oy  # tile px of the lip seam at rest
    u = (xx - cx) / (0.9 * f.half_w)  # -1..1 across the teeth arch
    side = np.clip(np.abs(u), 0, 1)
    t = np.clip((yy - seam_y + 0.02 * f.face_h) / max(th - seam_y, 1.0), 0, 1)[..., None]
    cavity = cavity_top * (1 - t) + cavity_bot * t
    cavity *= (1.0 - 0.55 * side**2)[..., None]
    tiles = np.zeros((4, th, tw, 4), np.uint8)
    tiles[0, ..., :3] = np.clip(cavity, 0, 255).astype(np.uint8)
    tiles[0, ..., 3] = 255
    teeth_rgb = np.array([236.0, 232.0, 220.0]) * bright
    gum = np.clip(lip_rgb * 0.9, 0, 255)

    def teeth(top: float, bottom: float, edge_down: bool) -> NDArray[np.uint8]:
        """A row of teeth between rows ``top``..``bottom``; ``edge_down``: biting edge at the bottom."""
        out = np.zeros((th, tw, 4), np.float32)
        arch = 0.012 * f.face_h * (u**2)  # the arch curves away at the sides
        # Tooth widths: incisors widest, narrowing toward the sides; each tooth's biting edge
        # is slightly rounded (a scallop) and its sides a touch darker (a soft groove).
        pos = np.arcsin(np.clip(u, -0.999, 0.999)) / (math.pi / 2) * 2.6 + 0.5
        within = pos % 1.0  # 0..1 across one tooth
        scallop = 0.006 * f.face_h * (2.0 * np.abs(within - 0.5)) ** 2
        if edge_down:
            y_edge = bottom - arch - scallop
            inside = (yy >= top) & (yy <= y_edge)
            shade = 1.0 - 0.18 * np.clip((y_edge - yy) / max(bottom - top, 1.0), 0, 1)
        else:
            y_edge = top + arch + scallop
            inside = (yy >= y_edge) & (yy <= bottom)
            shade = 1.0 - 0.18 * np.clip((yy - y_edge) / max(bottom - top, 1.0), 0, 1)
        groove = 1.0 - 0.12 * np.clip(1.0 - np.minimum(within, 1.0 - within) / 0.12, 0.0, 1.0)
        dark = np.clip(1.0 - 0.9 * side**3, 0.0, 1.0) * shade * groove
        out[..., :3] = teeth_rgb[None, None, :] * dark[..., None]
        out[..., 3] = np.where(inside & (side < 0.98), 255.0, 0.0)
        gum_band = inside & (np.abs(yy - (top if edge_down else bottom)) < 0.01 * f.face_h)
        out[gum_band, :3] = gum
        return out.astype(np.uint8)

    # The photo's own mouth opening (a smile showing teeth): its pixels become the teeth
    # layers (upper half fixed to the skull, lower half moving with the jaw), over drawn teeth.
    ring = np.array([lm[i, :2] for i in (*UPPER_INNER, *LOWER_INNER[-2:0:-1])], np.float64) - (ox, oy)
    open_mask = np.zeros((th, tw), np.uint8)
    cv2.fillPoly(open_mask, [np.round(ring * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    open_mask = _u8(cv2.erode(open_mask, np.ones((3, 3), np.uint8)))
    photo = _u8(cv2.warpAffine(portrait, np.array([[1.0, 0, -ox], [0, 1.0, -oy]]), (tw, th), borderMode=cv2.BORDER_REPLICATE))
    real = open_mask > 0
    # Use the photo's teeth only when the mouth shows a real band of them: open by at least
    # 2 % of the face height at its centre, and brighter than the lips.
    centre = np.array(UPPER_INNER[3:8]), np.array(LOWER_INNER[3:8])
    rest_gap = float(np.median(lm[centre[1], 1] - lm[centre[0], 1]))
    use_real = bool(real.sum() > 20 and rest_gap >= max(3.0, 0.02 * f.face_h))
    if use_real:
        luma = photo[real].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        use_real = float(np.median(luma)) > 1.1 * float(lip_rgb @ np.array([0.299, 0.587, 0.114]))
    if use_real:
        bright_px = photo[real][photo[real].mean(1) > np.percentile(photo[real].mean(1), 70)]
        teeth_rgb = np.clip(bright_px.mean(0), 120, 255) if len(bright_px) else teeth_rgb
    tooth_h = 0.05 * f.face_h
    ui_pts = lm[np.array(UPPER_INNER), :2] - (ox, oy)
    lip_top = float(ui_pts[:, 1].min())  # the synthetic teeth reach above the highest lip point
    tiles[1] = teeth(min(seam_y - tooth_h, lip_top - 0.03 * f.face_h), seam_y + 0.012 * f.face_h, True)
    tiles[2] = teeth(seam_y + 0.004 * f.face_h, seam_y + 0.004 * f.face_h + tooth_h * 0.85, False)
    if use_real:
        _real_teeth(tiles[1], tiles[2], photo, real, top_row=lip_top - 0.03 * f.face_h, depth=tooth_h)
    tongue = np.zeros((th, tw, 4), np.uint8)
    tongue_rgb = np.clip(lip_rgb * np.array([0.9, 0.5, 0.55]) + np.array([15.0, 0.0, 0.0]), 0, 255)
    ty = int(round(seam_y + 0.03 * f.face_h))
    axes = (int(round(0.72 * f.half_w)), int(round(0.07 * f.face_h)))
    cv2.ellipse(tongue, (int(round(cx)), ty + axes[1]), axes, 0, 180, 360, (*tongue_rgb.tolist(), 255), -1, cv2.LINE_AA)
    cv2.rectangle(tongue, (int(round(cx - axes[0])), ty + axes[1]), (int(round(cx + axes[0])), th), (*tongue_rgb.tolist(), 255), -1)
    shade = np.clip(1.0 - (yy - ty) / (2.5 * axes[1] + 1), 0.55, 1.0)
    tongue[..., :3] = (tongue[..., :3] * shade[..., None]).astype(np.uint8)
    tiles[3] = tongue
    return _MouthAssets(np.ascontiguousarray(tiles.reshape(4 * th, tw, 4)), (ox, oy), (tw, th))


def _real_teeth(upper: NDArray[np.uint8], lower: NDArray[np.uint8], photo: NDArray[np.uint8], real: NDArray[np.bool_], top_row: float, depth: float) -> None:
    """Fill the teeth tiles from the photo's open mouth, in place.

    Upper: the opening's pixels, each column extended up to ``top_row`` with its top pixel
    (teeth continue under the lip). Lower: the upper teeth mirrored about each column's
    bottom edge, darker, ``depth`` px deep (hidden by the lower lip until the jaw opens).
    """
    th, tw = real.shape
    if not real.any():
        return
    rows = np.arange(th)[:, None]
    has: NDArray[np.bool_] = np.asarray(real.any(axis=0), dtype=bool)
    first = np.where(has, real.argmax(0), th)
    last = np.where(has, th - 1 - real[::-1].argmax(0), -1)
    top = int(max(math.floor(top_row), 0))
    ext = (rows >= top) & (rows < first[None, :]) & has[None, :]
    src = photo[np.clip(first + 1, 0, th - 1), np.arange(tw)].astype(np.float32)  # (tw, 3) top pixels
    src = cv2.GaussianBlur(src[None], (0, 0), sigmaX=max(depth / 6.0, 1.0), sigmaY=0.1)[0]
    fade = np.clip(1.0 - (first[None, :] - rows) / max(4.0 * depth, 1.0), 0.75, 1.0)
    ext_rgb = (src[None, :, :] * fade[..., None]).astype(np.uint8)
    upper[ext, :3] = ext_rgb[ext]
    upper[ext, 3] = 255
    upper[real, :3] = photo[real]
    upper[real, 3] = 255
    # Mirror: lower(y) = upper(2 * last - y) for y in (last - 1 .. last + depth).
    mirror_y = 2 * last[None, :] - rows
    ok = has[None, :] & (rows >= last[None, :] - 1) & (rows <= last[None, :] + depth) & (mirror_y >= top) & (mirror_y < th)
    my = np.clip(mirror_y, 0, th - 1)
    xs = np.broadcast_to(np.arange(tw)[None, :], (th, tw))
    vals = upper[my, xs]
    sel = ok & (vals[..., 3] > 0)
    lower[sel, :3] = (vals[sel, :3].astype(np.float32) * 0.82).astype(np.uint8)
    lower[sel, 3] = 255


# ---------------------------------------------------------------- rendering


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if not v >= lo else hi if v > hi else v  # NaN -> lo


def _premul(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    out = rgba.copy()
    a = rgba[..., 3:4].astype(np.uint16)
    out[..., :3] = ((rgba[..., :3].astype(np.uint16) * a + 127) // 255).astype(np.uint8)
    return out


@dataclass(slots=True)
class _Eye:
    """Per-eye blink data in portrait px: a box and per-column lid curves."""

    x0: int
    y0: int
    x1: int
    y1: int
    upper: NDArray[np.float32]  # (x1 - x0,) y of the upper lid per column (absolute px)
    lower: NDArray[np.float32]
    skin: float  # px of lid skin above the upper lid that is stretched down
    lash_h: float  # px, height of the lid margin (lashes) that moves down unchanged


class PhotoRenderer:
    """Animates a registered photo avatar; frames are (H, W, 4) uint8 RGBA."""

    def __init__(self, folder: Path, size: tuple[int, int] = (512, 512)) -> None:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "landmarks.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise AvatarError(f"photo avatar {folder} has no readable landmarks.json: {e}") from e
        if meta.get("format") != FORMAT:
            raise AvatarError(f"photo avatar {folder}: landmarks.json format {meta.get('format')!r}, expected {FORMAT}")
        bgr = cv2.imread(str(folder / "portrait.png"), cv2.IMREAD_COLOR)
        tiles = cv2.imread(str(folder / "mouth_interior.png"), cv2.IMREAD_UNCHANGED)
        if bgr is None or tiles is None or tiles.ndim != 3 or tiles.shape[2] != 4:
            raise AvatarError(f"photo avatar {folder}: portrait.png or mouth_interior.png missing or unreadable")
        W, H = int(size[0]), int(size[1])
        if not (16 <= W <= 4096 and 16 <= H <= 4096):
            raise AvatarError(f"render size {size} out of range (16..4096 px per side)")
        self._size = (W, H)
        rw, rh = meta["size"]
        s = max(W / rw, H / rh)  # cover: crop the portrait rather than pad it
        offx, offy = (W - rw * s) / 2.0, (H - rh * s) / 2.0
        place = np.array([[s, 0, offx], [0, s, offy]], np.float64)
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        rgb = cv2.warpAffine(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), place, (W, H), flags=interp, borderMode=cv2.BORDER_REPLICATE)
        self._portrait = np.ascontiguousarray(_u8(cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)))
        self._work = self._portrait.copy()
        lm = np.array(meta["landmarks"], np.float32)
        lm[:, :2] = lm[:, :2] * s + place[:, 2]
        self._lm = lm
        f = _frame(lm)
        self._f = f
        self._J = 0.10 * f.face_h

        # Displacement bases: forward at the landmarks, first-order backward on the ROI grid.
        D = landmark_bases(lm) * 1.0  # (K, 468, 2)
        self._D = D
        moving = np.abs(D).max(axis=(0, 2)) > 0.05
        pts = lm[:N_MESH, :2].astype(np.float64)
        mp_ = pts[moving]
        margin = 0.12 * f.face_h
        x0 = int(max(math.floor(mp_[:, 0].min() - margin), 0))
        y0 = int(max(math.floor(mp_[:, 1].min() - margin), 0))
        x1 = int(min(math.ceil(mp_[:, 0].max() + margin), W))
        y1 = int(min(math.ceil(mp_[:, 1].max() + 1.6 * margin), H))
        self._roi = (x0, y0, x1, y1)
        border = []
        for t in np.linspace(0.0, 1.0, 12):
            border += [(x0 + t * (x1 - x0), y0), (x0 + t * (x1 - x0), y1), (x0, y0 + t * (y1 - y0)), (x1, y0 + t * (y1 - y0))]
        allp = np.concatenate([pts, np.array(border)])
        K = D.shape[0]
        vals = np.concatenate([D.transpose(1, 0, 2).reshape(N_MESH, 2 * K), np.zeros((len(border), 2 * K))])
        field = -_interpolate(allp, vals, (x0, y0, x1, y1)).reshape(y1 - y0, x1 - x0, K, 2)  # first-order inverse
        # Brow fields: smooth away the mesh's facets (they stretch skin, no sharp edges there).
        sig = max(0.015 * f.face_h, 1.0)
        for k in (BASES.index("brow_raise"), BASES.index("brow_inner")):
            for c in range(2):
                field[:, :, k, c] = cv2.GaussianBlur(np.ascontiguousarray(field[:, :, k, c]), (0, 0), sig)
        # Bases that close a gap (compressions) are inverted exactly at parameter 1 instead:
        # interpolate -D over the deformed landmark positions.
        bpts = np.array(border)
        for k in (BASES.index("lips_pressed"), BASES.index("lip_tuck")):
            moved = np.concatenate([pts + D[k], bpts])
            v = np.concatenate([-D[k], np.zeros((len(bpts), 2))])
            field[:, :, k, :] = _interpolate(moved, v, (x0, y0, x1, y1))
        self._basis = np.ascontiguousarray(field.transpose(2, 0, 1, 3).reshape(K, -1).astype(np.float32))
        self._roi_shape = (y1 - y0, x1 - x0)

        # Head pose: a feathered region around the head (hair included) moves rigidly; the
        # shoulders and background stay. Backward bases of rotation and translation.
        fw = float(np.ptp(pts[:, 0]))
        X0, X1 = pts[:, 0].min() - 0.38 * fw, pts[:, 0].max() + 0.38 * fw
        Y0, Y1 = float(lm[FOREHEAD, 1]) - 0.5 * f.face_h, float(lm[CHIN, 1]) + 0.4 * f.face_h
        hx0, hy0 = int(max(math.floor(min(X0, x0)), 0)), int(max(math.floor(min(Y0, y0)), 0))
        hx1, hy1 = int(min(math.ceil(max(X1, x1)), W)), int(min(math.ceil(max(Y1, y1)), H))
        self._head = (hx0, hy0, hx1, hy1)
        hy, hx = np.mgrid[hy0:hy1, hx0:hx1].astype(np.float64)
        wx = np.ones_like(hx)
        if X0 > 0:
            wx *= _smoothstep(X0, X0 + 0.33 * fw, hx)
        if X1 < W:
            wx *= _smoothstep(X1, X1 - 0.33 * fw, hx)
        wy = np.ones_like(hy)
        if Y0 > 0:
            wy *= _smoothstep(Y0, Y0 + 0.35 * f.face_h, hy)
        chin_y = float(lm[CHIN, 1])
        if Y1 < H:
            wy *= _smoothstep(Y1, chin_y + 0.05 * f.face_h, hy)
        wgt = wx * wy
        self._pivot = np.array([float(lm[CHIN, 0]), chin_y], np.float64)
        ux, uy = hx - self._pivot[0], hy - self._pivot[1]
        pose = np.stack([
            np.stack([wgt * ux, wgt * uy], -1),  # x (cos - 1)
            np.stack([wgt * uy, -wgt * ux], -1),  # x sin
            np.stack([wgt, np.zeros_like(wgt)], -1),  # x backward tx
            np.stack([np.zeros_like(wgt), wgt], -1),  # x backward ty
        ])
        # The pose field is smooth: keep it at 1/POSE_STEP resolution, upsample per frame.
        pl = pose[:, ::POSE_STEP, ::POSE_STEP]
        self._pose_low_shape = pl.shape[1:3]
        self._pose_basis = np.ascontiguousarray(pl.reshape(4, -1).astype(np.float32))
        self._head_grid = np.ascontiguousarray(np.stack([hx, hy], -1).astype(np.float32))
        self._sub = (slice(y0 - hy0, y1 - hy0), slice(x0 - hx0, x1 - hx0))
        self._head_shape = (hy1 - hy0, hx1 - hx0)

        # Mouth interior tiles, placed in frame px.
        mi = meta["mouth_interior"]
        tw, th = mi["tile"]
        tiles = cv2.cvtColor(tiles, cv2.COLOR_BGRA2RGBA)
        ntw, nth = max(1, round(tw * s)), max(1, round(th * s))
        layers = [cv2.resize(tiles[i * th : (i + 1) * th], (ntw, nth), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR) for i in range(4)]
        self._cavity = np.ascontiguousarray(layers[0][..., :3])
        self._teeth_u, self._teeth_l, self._tongue = (_premul(np.ascontiguousarray(x)) for x in layers[1:])
        self._mi_origin = (round(mi["origin"][0] * s + offx), round(mi["origin"][1] * s + offy))
        self._tiles: dict[tuple[int, int, bool], NDArray[np.uint8]] = {}  # composited interiors

        # Eyes (viewer's left first).
        eyes = []
        for up, lo, corners in ((EYE_R_UPPER, EYE_R_LOWER, EYE_R_CORNERS), (EYE_L_UPPER, EYE_L_LOWER, EYE_L_CORNERS)):
            eyes.append(self._eye(lm, up, lo, corners))
        eyes.sort(key=lambda e: e.x0)
        self._eyes = eyes

    def _eye(self, lm: NDArray[np.float32], up: tuple[int, ...], lo: tuple[int, ...], corners: tuple[int, int]) -> _Eye:
        c = lm[list(corners), :2]
        u = np.concatenate([c, lm[list(up), :2]])
        lw = np.concatenate([c, lm[list(lo), :2]])
        xa, xb = float(min(c[:, 0])), float(max(c[:, 0]))
        eye_h = float(np.max(lm[list(lo), 1]) - np.min(lm[list(up), 1]))
        skin = max(0.9 * eye_h, 3.0)
        x0, x1 = int(math.floor(xa)) - 1, int(math.ceil(xb)) + 2
        y0 = int(math.floor(float(u[:, 1].min()) - skin)) - 1
        y1 = int(math.ceil(float(lw[:, 1].max()))) + 3
        xs = np.arange(x0, x1, dtype=np.float64) + 0.0
        ou, ol = np.argsort(u[:, 0]), np.argsort(lw[:, 0])
        yu = np.interp(xs, u[ou, 0], u[ou, 1])
        yl = np.interp(xs, lw[ol, 0], lw[ol, 1])
        yl = np.maximum(yl, yu)
        return _Eye(x0, y0, x1, y1, yu.astype(np.float32), yl.astype(np.float32), skin, max(1.5, 0.22 * eye_h))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames in px."""
        return self._size

    def clone(self) -> PhotoRenderer:
        """A new renderer sharing this one's precomputed (read-only) data; own frame buffers."""
        other = copy.copy(self)
        other._work = self._portrait.copy()
        other._tiles = {}
        return other

    def params(self, state: AnimationState) -> NDArray[np.float32]:
        """The remap basis weights (len(BASES),) for ``state``, clamped to their ranges."""
        pressed = _clamp(state.lips_pressed, 0.0, 1.0)
        jaw = _clamp(state.jaw_open, 0.0, 1.0) * (1.0 - 0.9 * pressed)
        return np.array(
            [
                jaw,
                _clamp(state.mouth_width, -1.0, 1.0),
                _clamp(state.lip_round, 0.0, 1.0),
                pressed,
                _clamp(state.smile, -1.0, 1.0),
                _clamp(state.lip_tuck, 0.0, 1.0),
                _clamp(state.teeth_show, 0.0, 1.0),
                _clamp(state.brow_raise, -1.0, 1.0),
                _clamp(state.brow_inner, -1.0, 1.0),
            ],
            np.float32,
        )

    def _pose(self, state: AnimationState) -> tuple[float, float, float]:
        """Head pose (roll rad, tx px, ty px) from the state, clamped."""
        W, H = self._size
        th = _clamp(state.head_roll, -0.3, 0.3)
        tx = _clamp(state.head_dx, -0.15, 0.15) * W + math.sin(_clamp(state.head_yaw, -0.6, 0.6)) * 0.05 * W
        ty = _clamp(state.head_dy, -0.15, 0.15) * H + math.sin(_clamp(state.head_pitch, -0.6, 0.6)) * 0.04 * H
        ty -= _clamp(state.breath, 0.0, 1.0) * 0.002 * H
        return th, tx, ty

    def pose_params(self, state: AnimationState) -> tuple[float, float, float, float]:
        """Weights of the 4 backward pose bases: (cos - 1, sin, tx', ty') of the head roll/shift."""
        th, tx, ty = self._pose(state)
        c, sn = math.cos(th), math.sin(th)
        return (c - 1.0, sn, -c * tx - sn * ty, -c * ty + sn * tx)

    def _pose_affine(self, state: AnimationState) -> NDArray[np.float64]:
        """(2, 3) forward head-pose affine (frame px -> frame px), about the chin."""
        th, tx, ty = self._pose(state)
        c, sn = math.cos(th), math.sin(th)
        r = np.array([[c, -sn], [sn, c]])
        t = self._pivot - r @ self._pivot + (tx, ty)
        return np.concatenate([r, t[:, None]], 1)

    def _pose_shift(self, state: AnimationState, at: NDArray[np.float64]) -> tuple[int, int]:
        """Integer forward pose displacement (px) of the point ``at``."""
        m = self._pose_affine(state)
        d = m[:, :2] @ at + m[:, 2] - at
        return (round(float(d[0])), round(float(d[1])))

    def render(self, state: AnimationState) -> NDArray[np.uint8]:
        """Draw one frame: (H, W, 4) uint8 RGBA (an internal buffer, reused next call)."""
        p = self.params(state)
        q = np.array(self.pose_params(state), np.float32)
        hx0, hy0, hx1, hy1 = self._head
        work = self._work
        if float(np.abs(p).max()) < 1e-3 and float(np.abs(q).max()) < 1e-4:
            work[hy0:hy1, hx0:hx1] = self._portrait[hy0:hy1, hx0:hx1]
        else:
            low = (q @ self._pose_basis).reshape(*self._pose_low_shape, 2)
            hh, ww = self._head_shape
            lh, lw = self._pose_low_shape
            # (A sub-pixel misalignment of the upsampled field is harmless: it is smooth.)
            up = cv2.resize(low, (lw * POSE_STEP, lh * POSE_STEP), interpolation=cv2.INTER_LINEAR)
            maps = up[:hh, :ww] + self._head_grid
            if float(np.abs(p).max()) >= 1e-3:
                # The expression field moves with the head: add it where the pose put the face.
                sx, sy = self._pose_shift(state, self._f.mouth_c)
                e = (p @ self._basis).reshape(*self._roi_shape, 2)
                ys, xs = self._sub
                r0, c0 = ys.start + sy, xs.start + sx
                hh, ww = self._head_shape
                a0, b0 = max(r0, 0), max(c0, 0)
                a1, b1 = min(r0 + e.shape[0], hh), min(c0 + e.shape[1], ww)
                if a1 > a0 and b1 > b0:
                    maps[a0:a1, b0:b1] += e[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
            work[hy0:hy1, hx0:hx1] = cv2.remap(self._portrait, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            self._mouth(work, p, state, maps)
        opens = (_clamp(state.eye_open_l, 0.0, 1.3), _clamp(state.eye_open_r, 0.0, 1.3))
        for eye, o in zip(self._eyes, opens, strict=True):
            if o < 0.97:
                self._blink(work, eye, 1.0 - o, self._pose_shift(state, np.array([(eye.x0 + eye.x1) / 2.0, (eye.y0 + eye.y1) / 2.0])))
        return work

    def _lip_ring(self, p: NDArray[np.float32], maps: NDArray[np.float32]) -> NDArray[np.float64]:
        """Where the remap puts the inner-lip landmarks: (n, 2) frame px.

        Starts from the forward displacement and solves ``maps(y) = x`` with a few damped
        Newton steps (finite-difference Jacobian of the map), so the interior polygon matches
        the warped lips.
        """
        ring = list(UPPER_INNER) + list(LOWER_INNER[-2:0:-1])
        src = self._lm[ring, :2].astype(np.float64)
        y = src + np.tensordot(p, self._D[:, ring, :], axes=1)
        off = np.array([self._head[0], self._head[1]], np.float64)
        hh, ww = maps.shape[:2]
        n = len(ring)
        for _ in range(2):
            q = np.concatenate([y, y + (1.0, 0.0), y + (0.0, 1.0)]) - off
            qx = np.clip(q[:, 0], 0.0, ww - 1.001)
            qy = np.clip(q[:, 1], 0.0, hh - 1.001)
            ix, iy = qx.astype(np.intp), qy.astype(np.intp)
            fx, fy = (qx - ix)[:, None], (qy - iy)[:, None]
            m = (maps[iy, ix] * (1 - fx) + maps[iy, ix + 1] * fx) * (1 - fy) + (maps[iy + 1, ix] * (1 - fx) + maps[iy + 1, ix + 1] * fx) * fy
            m0, jx, jy = m[:n], m[n : 2 * n] - m[:n], m[2 * n :] - m[:n]
            det = jx[:, 0] * jy[:, 1] - jy[:, 0] * jx[:, 1]
            det = np.where(np.abs(det) > 0.05, det, np.inf)
            r = src - m0
            step = np.stack([(jy[:, 1] * r[:, 0] - jy[:, 0] * r[:, 1]) / det, (-jx[:, 1] * r[:, 0] + jx[:, 0] * r[:, 1]) / det], -1)
            y = y + np.clip(step, -4.0, 4.0)
        return y

    def _mouth(self, work: NDArray[np.uint8], p: NDArray[np.float32], state: AnimationState, maps: NDArray[np.float32]) -> None:
        """Composite the mouth interior inside the deformed inner-lip polygon.

        The interior (cavity, tongue, lower teeth moved with the jaw, upper teeth) is built in
        the unposed tile, then warped with the head pose into the polygon's bbox.
        """
        pts = self._lip_ring(p, maps)
        bx0, by0 = max(int(math.floor(pts[:, 0].min())) - 1, 0), max(int(math.floor(pts[:, 1].min())) - 1, 0)
        bx1 = min(int(math.ceil(pts[:, 0].max())) + 2, work.shape[1])
        by1 = min(int(math.ceil(pts[:, 1].max())) + 2, work.shape[0])
        if bx1 - bx0 < 2 or by1 - by0 < 2:
            return
        mask = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
        cv2.fillPoly(mask, [np.round((pts - [bx0, by0]) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        if not mask.any():
            return
        jaw_dy = int(round(float(p[0]) * self._J * 0.85))
        tongue_dy = jaw_dy - int(round(_clamp(state.tongue_tip, 0.0, 1.0) * (0.05 * self._f.face_h + 0.4 * jaw_dy)))
        tip_front = state.tongue_tip > 0.5
        key = (jaw_dy, tongue_dy, tip_front)
        tile = self._tiles.get(key)
        if tile is None:
            tile = np.full((*self._cavity.shape[:2], 4), 255, np.uint8)
            tile[..., :3] = self._cavity
            if not tip_front:
                self._over(tile, self._tongue, 0, -tongue_dy)
            self._over(tile, self._teeth_l, 0, -jaw_dy)
            if tip_front:
                self._over(tile, self._tongue, 0, -tongue_dy)
            self._over(tile, self._teeth_u, 0, 0)
            if len(self._tiles) >= 64:
                self._tiles.pop(next(iter(self._tiles)))
            self._tiles[key] = tile
        m = self._pose_affine(state)
        m[:, 2] += m[:, :2] @ np.array(self._mi_origin, np.float64) - (bx0, by0)
        buf = cv2.warpAffine(tile, m, (bx1 - bx0, by1 - by0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if p[3] > 0.0:  # pressed lips: the interior fades out
            mask = (mask.astype(np.float32) * (1.0 - 0.8 * float(p[3]))).astype(np.uint8)
        dst = work[by0:by1, bx0:bx1]
        m4 = cv2.merge([mask, mask, mask, mask])
        inv = cv2.bitwise_not(m4)
        dst[...] = cv2.add(cv2.multiply(buf, m4, scale=1.0 / 255.0), cv2.multiply(dst, inv, scale=1.0 / 255.0))

    @staticmethod
    def _over(buf: NDArray[np.uint8], layer: NDArray[np.uint8], lx: int, ly: int) -> None:
        """Blend premultiplied ``layer`` over ``buf``, buf's (0, 0) at layer (lx, ly)."""
        h, w = buf.shape[:2]
        lh, lw = layer.shape[:2]
        sy0, sx0 = max(ly, 0), max(lx, 0)
        sy1, sx1 = min(ly + h, lh), min(lx + w, lw)
        if sy1 <= sy0 or sx1 <= sx0:
            return
        src = layer[sy0:sy1, sx0:sx1]
        dst = buf[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx]
        a = np.ascontiguousarray(src[..., 3])
        inv = cv2.cvtColor(cv2.bitwise_not(a), cv2.COLOR_GRAY2RGBA)
        dst[...] = cv2.add(src, cv2.multiply(dst, inv, scale=1.0 / 255.0))

    def _blink(self, work: NDArray[np.uint8], e: _Eye, close: float, shift: tuple[int, int] = (0, 0)) -> None:
        """Lower the upper lid by ``close`` (0..1) of the eye height: lid skin stretched down.

        ``shift``: (dx, dy) px the head pose moved this eye.
        """
        H, W = work.shape[:2]
        sx, sy = shift
        y0, y1 = max(e.y0 + sy, 0), min(e.y1 + sy, H)
        x0, x1 = max(e.x0 + sx, 0), min(e.x1 + sx, W)
        if y1 - y0 < 2 or x1 - x0 < 2:
            return
        cols = slice(x0 - e.x0 - sx, x1 - e.x0 - sx)
        yu, yl = e.upper[cols] + sy, e.lower[cols] + sy
        edge = yu + min(close, 1.0) * 1.04 * (yl - yu)  # lid margin per column, frame px
        top = yu - e.skin
        lash = e.lash_h
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        # Rows top..edge-lash show the lid skin top..yu-lash (stretched); the lid margin with
        # its lashes (yu-lash..yu) moves down to edge-lash..edge; rows below are unchanged.
        scale = (yu - lash - top) / np.maximum(edge - lash - top, 1e-3)
        skin_y = top + (ys - top) * scale
        margin_y = ys - (edge - yu)
        src_y = np.where((ys >= top) & (ys < edge - lash), skin_y, np.where((ys >= edge - lash) & (ys <= edge + 1.0), margin_y, ys))
        map_x = np.broadcast_to(np.arange(x0, x1, dtype=np.float32)[None, :], src_y.shape)
        work[y0:y1, x0:x1] = cv2.remap(work, np.ascontiguousarray(map_x), np.ascontiguousarray(src_y.astype(np.float32)), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
