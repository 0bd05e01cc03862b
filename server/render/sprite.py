"""Sprite-pack avatars: PNG layers + a manifest, composited per frame (PNGtuber style).

A pack is a folder with ``manifest.yaml`` (or ``manifest.json``) and PNG layers::

    format: 1
    name: fox
    canvas: [512, 512]            # px, size the art is drawn at
    mouth_set: rhubarb            # "rhubarb" (shapes A-H, X) or "visemes" (the 15 names)
    layers:
      background: background.png  # optional, canvas-sized, opaque
      body: body.png              # optional, canvas-sized (breathing scales it)
      head: head.png              # required, canvas-sized (everything that moves with the head)
      eyes: {open: eyes_open.png, closed: eyes_closed.png, half: eyes_half.png}  # half optional
      pupils: pupils.png          # optional, drawn over open eyes, shifted by the gaze
      brows: brows.png            # optional
    mouths: {A: mouth_A.png, B: mouth_B.png, ...}
    anchors:                      # canvas px: where feature layers are centred
      head_pivot: [256, 430]      # head rotation centre (the neck)
      eyes: [256, 250]
      mouth: [256, 340]
      pupils: [256, 250]          # optional, default = eyes
      brows: [256, 200]           # required when a brows layer exists
    motion: {gaze_px: 10, brow_px: 8}          # optional, canvas px
    emotions:                     # optional per-emotion variants (any subset)
      happy: {eyes: {open: eyes_happy.png}, brows: brows_happy.png, mouths: {X: mouth_X_happy.png}}

An emotion's own ``eyes.open`` layer replaces the open eyes and the pupils (draw them in).

Rhubarb packs need A-F; G, H and X fall back to B, C and A (Rhubarb Lip Sync's own rule).
Viseme packs need all 15 mouths. Feature layers of one kind (eyes, mouths) share one size.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from numpy.typing import NDArray

from engines.spec import VISEMES
from server.errors import AvatarError
from server.pipeline.types import EMOTIONS, AnimationState

RHUBARB_SHAPES: tuple[str, ...] = ("A", "B", "C", "D", "E", "F", "G", "H", "X")
RHUBARB_REQUIRED: tuple[str, ...] = ("A", "B", "C", "D", "E", "F")
RHUBARB_FALLBACK: dict[str, str] = {"G": "B", "H": "C", "X": "A"}

# Oculus viseme -> Rhubarb mouth shape, used until engines.phonemes.VISEME_TO_RHUBARB exists.
# A: closed (M B P), B: clenched teeth (most consonants, EE), C: open (EH, AE), D: wide open (AA),
# E: slightly rounded (AO, ER), F: puckered (UW, OW, W), G: F/V, H: long L, X: idle/rest.
_FALLBACK_VISEME_TO_RHUBARB: dict[str, str] = {
    "sil": "X", "PP": "A", "FF": "G", "TH": "B", "DD": "B", "kk": "B", "CH": "B", "SS": "B",
    "nn": "H", "RR": "E", "aa": "D", "E": "C", "I": "B", "O": "E", "U": "F",
}

CANVAS_LAYERS: tuple[str, ...] = ("background", "body", "head")
EYE_STATES: tuple[str, ...] = ("open", "half", "closed")
BREATH_LEVELS = 8  # precomputed body frames
HEAD_CACHE_SIZE = 96  # composited heads kept per renderer
MAX_ROLL = 0.3  # rad, head tilt is clamped to this


def viseme_to_rhubarb() -> dict[str, str]:
    """The viseme -> Rhubarb shape table (the corpus engineer's when available)."""
    try:
        from engines.phonemes import VISEME_TO_RHUBARB  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return dict(_FALLBACK_VISEME_TO_RHUBARB)
    table = {str(k): str(v) for k, v in dict(VISEME_TO_RHUBARB).items()}
    if set(table) >= set(VISEMES) and set(table.values()) <= set(RHUBARB_SHAPES):
        return table
    return dict(_FALLBACK_VISEME_TO_RHUBARB)


@dataclass(frozen=True, slots=True)
class PackProblem:
    """One problem with a sprite pack: the file it concerns, a message, a line when known."""

    file: Path
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        return f"{where}: {self.message}"


@dataclass(slots=True)
class SpritePack:
    """A validated pack: RGBA layers (straight alpha, canvas px) and anchors."""

    root: Path
    name: str
    canvas: tuple[int, int]  # (width, height) px
    mouth_set: str  # "rhubarb" or "visemes"
    background: NDArray[np.uint8] | None
    body: NDArray[np.uint8] | None
    head: NDArray[np.uint8]
    eyes: dict[str, NDArray[np.uint8]]  # open / closed / half
    pupils: NDArray[np.uint8] | None
    brows: NDArray[np.uint8] | None
    mouths: dict[str, NDArray[np.uint8]]  # shape or viseme name -> RGBA
    anchors: dict[str, tuple[float, float]]
    gaze_px: float = 10.0
    brow_px: float = 8.0
    emotion_brows: dict[str, NDArray[np.uint8]] = field(default_factory=dict)
    emotion_mouths: dict[str, dict[str, NDArray[np.uint8]]] = field(default_factory=dict)
    emotion_eyes: dict[str, dict[str, NDArray[np.uint8]]] = field(default_factory=dict)


# ---------------------------------------------------------------- manifest parsing / validation


class _Checker:
    """Collects every problem while reading a pack; keeps what it could load."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[PackProblem] = []
        self.manifest_path = root / "manifest.yaml"
        self.lines: dict[str, int] = {}

    def add(self, file: Path, message: str, line: int | None = None) -> None:
        self.problems.append(PackProblem(file, message, line))

    def bad(self, key: str, message: str) -> None:
        self.add(self.manifest_path, message, self.lines.get(key))

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.root.is_dir():
            self.add(self.root, "sprite pack folder does not exist")
            return None
        yml = [self.root / "manifest.yaml", self.root / "manifest.yml"]
        js = self.root / "manifest.json"
        found = [p for p in yml if p.is_file()]
        if found:
            self.manifest_path = found[0]
            text = found[0].read_text(encoding="utf-8", errors="replace")
            try:
                node = yaml.compose(text)
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                line = mark.line + 1 if mark is not None else None
                self.add(found[0], f"YAML error: {getattr(e, 'problem', None) or e}", line)
                return None
            self._index_lines(node, "")
        elif js.is_file():
            self.manifest_path = js
            try:
                data = json.loads(js.read_text(encoding="utf-8", errors="replace"))
            except json.JSONDecodeError as e:
                self.add(js, f"JSON error: {e.msg}", e.lineno)
                return None
        else:
            self.add(self.root / "manifest.yaml", "missing manifest (manifest.yaml or manifest.json)")
            return None
        if not isinstance(data, dict):
            self.add(self.manifest_path, f"manifest must be a mapping, got {type(data).__name__}")
            return None
        return data

    def _index_lines(self, node: yaml.Node | None, prefix: str) -> None:
        """Remember the 1-based line of every mapping key (dotted path) for messages."""
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}" if isinstance(k, yaml.ScalarNode) else prefix
                self.lines[key] = k.start_mark.line + 1
                self._index_lines(v, key + ".")

    def image(self, key: str, rel: Any) -> NDArray[np.uint8] | None:
        """Load one PNG as RGBA (straight alpha); report a bad entry or file."""
        if not isinstance(rel, str) or not rel:
            self.bad(key, f"{key}: expected a PNG file name, got {rel!r}")
            return None
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root.resolve()):
            self.bad(key, f"{key}: {rel!r} points outside the pack")
            return None
        if not path.is_file():
            self.add(path, f"missing PNG file for {key}")
            return None
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.dtype != np.uint8 or raw.ndim not in (2, 3):
            self.add(path, f"unreadable PNG file for {key} (not an 8-bit image)")
            return None
        if raw.ndim == 2:
            img = cv2.cvtColor(raw, cv2.COLOR_GRAY2RGBA)
        elif raw.shape[2] == 3:
            img = cv2.cvtColor(raw, cv2.COLOR_BGR2RGBA)
        else:
            img = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA)
        return np.ascontiguousarray(img)

    def point(self, key: str, value: Any, canvas: tuple[int, int]) -> tuple[float, float] | None:
        ok = (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        )
        if not ok:
            self.bad(f"anchors.{key}", f"anchor {key}: expected [x, y] in canvas px, got {value!r}")
            return None
        x, y = float(value[0]), float(value[1])
        if not (0 <= x <= canvas[0] and 0 <= y <= canvas[1]):
            self.bad(f"anchors.{key}", f"anchor {key} {[x, y]} lies outside the {canvas[0]}x{canvas[1]} canvas")
            return None
        return (x, y)


def _check(root: Path) -> tuple[list[PackProblem], SpritePack | None]:
    c = _Checker(Path(root))
    data = c.read_manifest()
    if data is None:
        return c.problems, None
    known = {"format", "name", "canvas", "mouth_set", "layers", "mouths", "anchors", "motion", "emotions", "credits", "license"}
    for k in data:
        if k not in known:
            c.bad(str(k), f"unknown manifest key {k!r} (known: {', '.join(sorted(known))})")
    name = data.get("name", c.root.name)
    if not isinstance(name, str):
        c.bad("name", f"name must be text, got {name!r}")
        name = c.root.name
    cv = data.get("canvas")
    canvas = (0, 0)
    if (
        isinstance(cv, list)
        and len(cv) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= 4096 for v in cv)
    ):
        canvas = (int(cv[0]), int(cv[1]))
    else:
        c.bad("canvas", f"canvas: expected [width, height] in px (16..4096), got {cv!r}")
    mouth_set = data.get("mouth_set", "rhubarb")
    if mouth_set not in ("rhubarb", "visemes"):
        c.bad("mouth_set", f"mouth_set must be 'rhubarb' or 'visemes', got {mouth_set!r}")
        mouth_set = "rhubarb"
    valid_keys = RHUBARB_SHAPES if mouth_set == "rhubarb" else tuple(VISEMES)
    required = RHUBARB_REQUIRED if mouth_set == "rhubarb" else tuple(VISEMES)

    layers = data.get("layers")
    if not isinstance(layers, dict):
        c.bad("layers", f"layers: expected a mapping of layer name -> PNG, got {layers!r}")
        layers = {}
    for k in layers:
        if k not in (*CANVAS_LAYERS, "eyes", "pupils", "brows"):
            c.bad(f"layers.{k}", f"unknown layer {k!r} (known: background, body, head, eyes, pupils, brows)")
    canvas_imgs: dict[str, NDArray[np.uint8] | None] = {}
    for k in CANVAS_LAYERS:
        if k not in layers:
            if k == "head":
                c.bad("layers", "layers.head is required (the head art that moves)")
            canvas_imgs[k] = None
            continue
        img = c.image(f"layers.{k}", layers[k])
        if img is not None and canvas != (0, 0) and (img.shape[1], img.shape[0]) != canvas:
            c.add(c.root / str(layers[k]), f"wrong size {img.shape[1]}x{img.shape[0]} for layers.{k}: canvas layers must be {canvas[0]}x{canvas[1]}")
            img = None
        canvas_imgs[k] = img

    def same_size(group: str, imgs: dict[str, NDArray[np.uint8]], files: dict[str, str]) -> None:
        sizes = {k: (v.shape[1], v.shape[0]) for k, v in imgs.items()}
        if len(set(sizes.values())) > 1:
            first = next(iter(sizes.values()))
            for k, s in sizes.items():
                if s != first:
                    c.add(c.root / files[k], f"wrong size {s[0]}x{s[1]} for {group}.{k}: every {group} layer must be {first[0]}x{first[1]}")
                    imgs.pop(k)

    eyes_spec = layers.get("eyes")
    eyes: dict[str, NDArray[np.uint8]] = {}
    eye_files: dict[str, str] = {}
    if not isinstance(eyes_spec, dict):
        c.bad("layers.eyes" if "eyes" in layers else "layers", f"layers.eyes: expected a mapping with open, closed (and optional half), got {eyes_spec!r}")
    else:
        for k, v in eyes_spec.items():
            if k not in EYE_STATES:
                c.bad(f"layers.eyes.{k}", f"unknown eye state {k!r} (known: open, half, closed)")
                continue
            img = c.image(f"layers.eyes.{k}", v)
            if img is not None:
                eyes[k], eye_files[k] = img, str(v)
        for k in ("open", "closed"):
            if k not in eyes_spec:
                c.bad("layers.eyes", f"layers.eyes.{k} is required")
        same_size("eyes", eyes, eye_files)
    pupils = c.image("layers.pupils", layers["pupils"]) if "pupils" in layers else None
    brows = c.image("layers.brows", layers["brows"]) if "brows" in layers else None

    mouths_spec = data.get("mouths")
    mouths: dict[str, NDArray[np.uint8]] = {}
    mouth_files: dict[str, str] = {}
    if not isinstance(mouths_spec, dict):
        c.bad("mouths", f"mouths: expected a mapping of {mouth_set} key -> PNG, got {mouths_spec!r}")
        mouths_spec = {}
    for k, v in mouths_spec.items():
        if str(k) not in valid_keys:
            c.bad(f"mouths.{k}", f"unknown {'Rhubarb shape' if mouth_set == 'rhubarb' else 'viseme'} key {k!r} in mouths (valid: {', '.join(valid_keys)})")
            continue
        img = c.image(f"mouths.{k}", v)
        if img is not None:
            mouths[str(k)], mouth_files[str(k)] = img, str(v)
    missing = [k for k in required if k not in mouths_spec]
    if missing:
        c.bad("mouths", f"missing required mouths: {', '.join(missing)}")

    emotion_brows: dict[str, NDArray[np.uint8]] = {}
    emotion_mouths: dict[str, dict[str, NDArray[np.uint8]]] = {}
    emotion_eyes: dict[str, dict[str, NDArray[np.uint8]]] = {}
    emo_spec = data.get("emotions", {}) or {}
    if not isinstance(emo_spec, dict):
        c.bad("emotions", f"emotions: expected a mapping emotion -> variants, got {emo_spec!r}")
        emo_spec = {}
    for emo, spec in emo_spec.items():
        if emo not in EMOTIONS:
            c.bad(f"emotions.{emo}", f"unknown emotion {emo!r} (known: {', '.join(EMOTIONS)})")
            continue
        if not isinstance(spec, dict):
            c.bad(f"emotions.{emo}", f"emotions.{emo}: expected a mapping with eyes, brows and/or mouths, got {spec!r}")
            continue
        for k in spec:
            if k not in ("eyes", "brows", "mouths"):
                c.bad(f"emotions.{emo}.{k}", f"unknown emotion variant {k!r} (known: eyes, brows, mouths)")
        ee = spec.get("eyes", {}) or {}
        if not isinstance(ee, dict):
            c.bad(f"emotions.{emo}.eyes", f"emotions.{emo}.eyes: expected a mapping eye state -> PNG, got {ee!r}")
            ee = {}
        for k, v in ee.items():
            if k not in EYE_STATES:
                c.bad(f"emotions.{emo}.eyes.{k}", f"unknown eye state {k!r} (known: open, half, closed)")
                continue
            img = c.image(f"emotions.{emo}.eyes.{k}", v)
            ref = eyes.get("open")
            if img is not None and ref is not None and img.shape != ref.shape:
                c.add(c.root / str(v), f"wrong size {img.shape[1]}x{img.shape[0]} for emotions.{emo}.eyes.{k}: must match layers.eyes {ref.shape[1]}x{ref.shape[0]}")
            elif img is not None:
                emotion_eyes.setdefault(emo, {})[k] = img
        if "brows" in spec:
            img = c.image(f"emotions.{emo}.brows", spec["brows"])
            if img is not None:
                if brows is not None and img.shape != brows.shape:
                    c.add(c.root / str(spec["brows"]), f"wrong size {img.shape[1]}x{img.shape[0]} for emotions.{emo}.brows: must match layers.brows {brows.shape[1]}x{brows.shape[0]}")
                else:
                    emotion_brows[emo] = img
        em = spec.get("mouths", {}) or {}
        if not isinstance(em, dict):
            c.bad(f"emotions.{emo}.mouths", f"emotions.{emo}.mouths: expected a mapping, got {em!r}")
            continue
        emotion_mouths[emo] = {}
        for k, v in em.items():
            if str(k) not in valid_keys:
                c.bad(f"emotions.{emo}.mouths.{k}", f"unknown {'Rhubarb shape' if mouth_set == 'rhubarb' else 'viseme'} key {k!r} in emotions.{emo}.mouths (valid: {', '.join(valid_keys)})")
                continue
            img = c.image(f"emotions.{emo}.mouths.{k}", v)
            if img is not None:
                mouths_key = f"{emo}.{k}"
                mouths[mouths_key], mouth_files[mouths_key] = img, str(v)
    same_size("mouths", mouths, mouth_files)
    for key in [k for k in mouths if "." in k]:
        emo, k = key.split(".", 1)
        emotion_mouths[emo][k] = mouths.pop(key)

    anchors_spec = data.get("anchors")
    anchors: dict[str, tuple[float, float]] = {}
    if not isinstance(anchors_spec, dict):
        c.bad("anchors", f"anchors: expected a mapping name -> [x, y], got {anchors_spec!r}")
        anchors_spec = {}
    need = ["head_pivot", "eyes", "mouth"] + (["brows"] if "brows" in layers else [])
    for k, v in anchors_spec.items():
        if k not in ("head_pivot", "eyes", "mouth", "pupils", "brows"):
            c.bad(f"anchors.{k}", f"unknown anchor {k!r} (known: head_pivot, eyes, mouth, pupils, brows)")
            continue
        if canvas != (0, 0):
            p = c.point(str(k), v, canvas)
            if p is not None:
                anchors[str(k)] = p
    for k in need:
        if k not in anchors_spec:
            c.bad("anchors", f"missing anchor {k!r}")
    anchors.setdefault("pupils", anchors.get("eyes", (0.0, 0.0)))

    motion = data.get("motion", {}) or {}
    gaze_px, brow_px = 10.0, 8.0
    if not isinstance(motion, dict):
        c.bad("motion", f"motion: expected a mapping, got {motion!r}")
    else:
        for k, v in motion.items():
            if k not in ("gaze_px", "brow_px"):
                c.bad(f"motion.{k}", f"unknown motion setting {k!r} (known: gaze_px, brow_px)")
            elif not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 200:
                c.bad(f"motion.{k}", f"motion.{k}: expected px in 0..200, got {v!r}")
            elif k == "gaze_px":
                gaze_px = float(v)
            else:
                brow_px = float(v)

    head = canvas_imgs.get("head")
    if c.problems or head is None:
        return c.problems, None
    pack = SpritePack(
        root=c.root, name=name, canvas=canvas, mouth_set=str(mouth_set),
        background=canvas_imgs["background"], body=canvas_imgs["body"], head=head,
        eyes=eyes, pupils=pupils, brows=brows, mouths=mouths, anchors=anchors,
        gaze_px=gaze_px, brow_px=brow_px, emotion_brows=emotion_brows, emotion_mouths=emotion_mouths,
        emotion_eyes=emotion_eyes,
    )
    return [], pack


def validate_pack(root: Path) -> list[PackProblem]:
    """Every problem with the sprite pack in ``root`` (empty list: the pack is usable)."""
    return _check(Path(root))[0]


def load_pack(root: Path) -> SpritePack:
    """Read and validate a pack; raises :class:`AvatarError` listing every problem."""
    problems, pack = _check(Path(root))
    if problems or pack is None:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise AvatarError(f"sprite pack {root} has {len(problems)} problem(s):\n{listing}")
    return pack


# ---------------------------------------------------------------- compositing


def _u8(a: object) -> NDArray[np.uint8]:
    """An OpenCV result as a typed uint8 array (no copy)."""
    return np.asarray(a, dtype=np.uint8)


def premultiply(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Straight-alpha RGBA (h, w, 4) uint8 -> premultiplied RGBA."""
    a = rgba[..., 3:4].astype(np.uint16)
    out = rgba.copy()
    out[..., :3] = ((rgba[..., :3].astype(np.uint16) * a + 127) // 255).astype(np.uint8)
    return out


def inverse_alpha4(premul: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(h, w, 4): 255 - alpha replicated to 4 channels, the multiplier of the layer below."""
    inv = cv2.subtract(np.full(premul.shape[:2], 255, np.uint8), np.ascontiguousarray(premul[..., 3]))
    return _u8(cv2.merge([inv, inv, inv, inv]))


def blend_over(dst: NDArray[np.uint8], src: NDArray[np.uint8], inv4: NDArray[np.uint8]) -> None:
    """In place: ``dst = src + dst * inv4 / 255`` on same-shaped (h, w, 4) uint8 views.

    ``src`` is premultiplied; ``inv4`` is :func:`inverse_alpha4` of it.
    """
    tmp = cv2.multiply(dst, inv4, scale=1.0 / 255.0)
    cv2.add(src, tmp, dst=tmp)
    dst[...] = tmp


@dataclass(slots=True)
class _Layer:
    """A premultiplied layer with its inverse alpha and integer placement (x, y) in its parent."""

    px: NDArray[np.uint8]
    inv4: NDArray[np.uint8]
    x: int
    y: int

    @classmethod
    def make(cls, straight: NDArray[np.uint8], x: int, y: int) -> _Layer:
        pm = premultiply(straight)
        return cls(pm, inverse_alpha4(pm), x, y)

    def draw(self, dst: NDArray[np.uint8], dx: int = 0, dy: int = 0) -> None:
        """Blend onto ``dst`` at (x + dx, y + dy), clipped to ``dst``."""
        h, w = self.px.shape[:2]
        x0, y0 = self.x + dx, self.y + dy
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + w, dst.shape[1]), min(y0 + h, dst.shape[0])
        if cx1 <= cx0 or cy1 <= cy0:
            return
        sl = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        blend_over(dst[cy0:cy1, cx0:cx1], self.px[sl], self.inv4[sl])


def _alpha_bbox(img: NDArray[np.uint8]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels with alpha > 0 (the whole image when empty)."""
    ys, xs = np.nonzero(img[..., 3])
    if len(xs) == 0:
        return (0, 0, img.shape[1], img.shape[0])
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if not v >= lo else hi if v > hi else v  # NaN -> lo


class SpriteRenderer:
    """Renders a :class:`SpritePack` at ``size`` (width, height): (H, W, 4) uint8 RGBA frames.

    Per frame: copy a precomputed background+body (breath level), composite the head with the
    current eyes/brows/mouth/pupils (cached per combination), rotate/translate it with the head
    pose and blend it over its bounding box only.
    """

    def __init__(self, pack: SpritePack, size: tuple[int, int] = (512, 512), bg_rgb: tuple[int, int, int] = (40, 44, 52)) -> None:
        w, h = int(size[0]), int(size[1])
        if not (16 <= w <= 4096 and 16 <= h <= 4096):
            raise AvatarError(f"render size {size} out of range (16..4096 px per side)")
        self._size = (w, h)
        self.pack = pack
        self._shape_of = viseme_to_rhubarb() if pack.mouth_set == "rhubarb" else {v: v for v in VISEMES}
        cw, ch = pack.canvas
        s = min(w / cw, h / ch)
        self._scale = s
        ox, oy = (w - cw * s) / 2.0, (h - ch * s) / 2.0

        def scaled(img: NDArray[np.uint8]) -> NDArray[np.uint8]:
            nw, nh = max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))
            interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            return np.ascontiguousarray(cv2.resize(img, (nw, nh), interpolation=interp))

        def to_out(p: tuple[float, float]) -> tuple[float, float]:
            return (p[0] * s + ox, p[1] * s + oy)

        # Background + body at BREATH_LEVELS chest heights.
        base = np.empty((h, w, 4), np.uint8)
        base[...] = (*bg_rgb, 255)
        if pack.background is not None:
            # The background covers the whole frame (cropped when the aspect ratios differ).
            cs = max(w / cw, h / ch)
            bw, bh = max(w, round(cw * cs)), max(h, round(ch * cs))
            bgs = cv2.resize(pack.background, (bw, bh), interpolation=cv2.INTER_AREA if cs < 1 else cv2.INTER_LINEAR)
            bx, by = (bw - w) // 2, (bh - h) // 2
            _Layer.make(np.ascontiguousarray(bgs[by : by + h, bx : bx + w]), 0, 0).draw(base)
        self._bases: list[NDArray[np.uint8]] = []
        body = scaled(pack.body) if pack.body is not None else None
        for i in range(BREATH_LEVELS):
            frame = base.copy()
            if body is not None:
                bh = body.shape[0]
                grow = 1.0 + 0.012 * i / (BREATH_LEVELS - 1)
                stretched = _u8(cv2.resize(body, (body.shape[1], round(bh * grow)), interpolation=cv2.INTER_LINEAR))
                # Keep the bottom edge fixed: the chest rises.
                _Layer.make(stretched, round(ox), round(oy) + bh - stretched.shape[0]).draw(frame)
            self._bases.append(frame)

        # The head: the bbox of its art and of every feature layer, in output px; the cached
        # composite covers it, and per frame only its rotated bbox is warped and blended.
        head = scaled(pack.head)
        hx0, hy0, hx1, hy1 = _alpha_bbox(head)
        hx0, hy0 = hx0 + round(ox), hy0 + round(oy)
        hx1, hy1 = hx1 + round(ox), hy1 + round(oy)
        slack = math.ceil(max(pack.gaze_px, pack.brow_px) * s) + 1
        feats: list[tuple[NDArray[np.uint8], str]] = [(v, "eyes") for v in pack.eyes.values()]
        feats += [(v, "eyes") for m in pack.emotion_eyes.values() for v in m.values()]
        feats += [(v, "mouth") for v in pack.mouths.values()]
        feats += [(v, "mouth") for m in pack.emotion_mouths.values() for v in m.values()]
        if pack.pupils is not None:
            feats.append((pack.pupils, "pupils"))
        if pack.brows is not None:
            feats += [(v, "brows") for v in (pack.brows, *pack.emotion_brows.values())]
        for img, anchor in feats:
            ax, ay = to_out(pack.anchors[anchor])
            fw, fh = img.shape[1] * s / 2.0 + slack, img.shape[0] * s / 2.0 + slack
            hx0, hy0 = min(hx0, math.floor(ax - fw)), min(hy0, math.floor(ay - fh))
            hx1, hy1 = max(hx1, math.ceil(ax + fw)), max(hy1, math.ceil(ay + fh))
        hx0, hy0, hx1, hy1 = max(hx0, 0), max(hy0, 0), min(hx1, w), min(hy1, h)
        self._head_rect = (hx0, hy0, hx1 - hx0, hy1 - hy0)  # x, y, w, h in output px
        full = np.zeros((h, w, 4), np.uint8)
        x0, y0 = round(ox), round(oy)
        full[y0 : y0 + head.shape[0], x0 : x0 + head.shape[1]] = head[: h - y0, : w - x0]
        self._head_base = premultiply(np.ascontiguousarray(full[hy0:hy1, hx0:hx1]))
        px, py = to_out(pack.anchors["head_pivot"])
        self._pivot = (px - hx0, py - hy0)

        def feature(img: NDArray[np.uint8], anchor: str) -> _Layer:
            sc = scaled(img)
            ax, ay = to_out(pack.anchors[anchor])
            x = round(ax - sc.shape[1] / 2.0) - self._head_rect[0]
            y = round(ay - sc.shape[0] / 2.0) - self._head_rect[1]
            return _Layer.make(sc, x, y)

        self._eyes = {k: feature(v, "eyes") for k, v in pack.eyes.items()}
        self._emotion_eyes = {(emo, k): feature(v, "eyes") for emo, m in pack.emotion_eyes.items() for k, v in m.items()}
        self._pupils = feature(pack.pupils, "pupils") if pack.pupils is not None else None
        ea = np.ascontiguousarray(self._eyes["open"].px[..., 3])
        self._eye_mask4 = cv2.merge([ea, ea, ea, ea])
        self._brows: dict[str, _Layer] = {}
        if pack.brows is not None:
            self._brows["neutral"] = feature(pack.brows, "brows")
            for emo, img in pack.emotion_brows.items():
                self._brows[emo] = feature(img, "brows")
        self._mouths: dict[tuple[str, str], _Layer] = {}
        for k, img in pack.mouths.items():
            self._mouths[("neutral", k)] = feature(img, "mouth")
        for emo, m in pack.emotion_mouths.items():
            for k, img in m.items():
                self._mouths[(emo, k)] = feature(img, "mouth")
        self._gaze_px = pack.gaze_px * s
        self._brow_px = pack.brow_px * s
        self._cache: OrderedDict[tuple[Any, ...], tuple[NDArray[np.uint8], NDArray[np.uint8]]] = OrderedDict()
        self._out = np.empty((h, w, 4), np.uint8)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames in px."""
        return self._size

    def mouth_key(self, state: AnimationState) -> str:
        """The mouth layer key drawn for ``state`` (strongest viseme, mapped for Rhubarb packs)."""
        v = np.asarray(state.visemes, dtype=np.float32).reshape(-1)
        idx = int(np.argmax(np.nan_to_num(v, nan=-1.0))) if v.size == len(VISEMES) else 0
        key = self._shape_of.get(VISEMES[idx], "X")
        if self.pack.mouth_set == "rhubarb":
            while ("neutral", key) not in self._mouths:
                key = RHUBARB_FALLBACK.get(key, "A")
        return key

    def _mouth_layer(self, emotion: str, key: str) -> _Layer:
        return self._mouths.get((emotion, key)) or self._mouths[("neutral", key)]

    def _eye_state(self, state: AnimationState) -> str:
        o = 0.5 * (_clamp(state.eye_open_l, 0.0, 1.3) + _clamp(state.eye_open_r, 0.0, 1.3))
        if o < 0.3:
            return "closed"
        if o < 0.7 and "half" in self._eyes:
            return "half"
        return "open" if o >= 0.5 else "closed"

    def _head(self, state: AnimationState) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        emotion = state.emotion if state.emotion in EMOTIONS else "neutral"
        eye = self._eye_state(state)
        mouth = self.mouth_key(state)
        brow_dy = round(-_clamp(state.brow_raise, -1.0, 1.0) * self._brow_px)
        gx = round(_clamp(state.gaze_x, -1.0, 1.0) * self._gaze_px)
        gy = round(_clamp(state.gaze_y, -1.0, 1.0) * self._gaze_px * 0.6)
        key = (emotion, eye, mouth, brow_dy, gx, gy)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        img = self._head_base.copy()
        # An emotion's own open eyes (e.g. happy arcs) come with their pupils drawn in.
        own = self._emotion_eyes.get((emotion, eye))
        (own or self._eyes[eye]).draw(img)
        if eye == "open" and own is None and self._pupils is not None:
            # Pupils only inside the open eye whites: mask with the eyes layer's alpha, locally.
            e = self._eyes["open"]
            local = np.zeros_like(e.px)
            self._pupils.draw(local, gx - e.x, gy - e.y)
            local = _u8(cv2.multiply(local, self._eye_mask4, scale=1.0 / 255.0))
            _Layer(local, inverse_alpha4(local), e.x, e.y).draw(img)
        if self._brows:
            self._brows.get(emotion, self._brows["neutral"]).draw(img, 0, brow_dy)
        self._mouth_layer(emotion, mouth).draw(img)
        entry = (img, inverse_alpha4(img))
        self._cache[key] = entry
        if len(self._cache) > HEAD_CACHE_SIZE:
            self._cache.popitem(last=False)
        return entry

    def render(self, state: AnimationState) -> NDArray[np.uint8]:
        """Draw one frame: (H, W, 4) uint8 RGBA (an internal buffer, reused next call)."""
        w, h = self._size
        level = round(_clamp(state.breath, 0.0, 1.0) * (BREATH_LEVELS - 1))
        out = self._out
        np.copyto(out, self._bases[level])
        head, inv = self._head(state)
        rx, ry, rw, rh = self._head_rect
        roll = math.degrees(_clamp(state.head_roll, -MAX_ROLL, MAX_ROLL))
        # Yaw/pitch of flat art: a small shift; plus translation and a speaking bob.
        dx = _clamp(state.head_dx, -0.3, 0.3) * w + math.sin(_clamp(state.head_yaw, -0.6, 0.6)) * 0.08 * w
        dy = (
            _clamp(state.head_dy, -0.3, 0.3) * h
            + math.sin(_clamp(state.head_pitch, -0.6, 0.6)) * 0.06 * h
            - _clamp(state.breath, 0.0, 1.0) * 0.004 * h
            + _clamp(state.jaw_open, 0.0, 1.0) * 0.004 * h
        )
        if abs(roll) < 0.05:
            _Layer(head, inv, rx + round(dx), ry + round(dy)).draw(out)
            return out
        # Rotate about the pivot, translate; warp only the destination bbox of the head rect.
        m = cv2.getRotationMatrix2D(self._pivot, -roll, 1.0)
        m[0, 2] += rx + dx
        m[1, 2] += ry + dy
        corners = np.array([[0, 0, 1], [rw, 0, 1], [0, rh, 1], [rw, rh, 1]], np.float64) @ m.T
        x0, y0 = max(math.floor(corners[:, 0].min()), 0), max(math.floor(corners[:, 1].min()), 0)
        x1, y1 = min(math.ceil(corners[:, 0].max()), w), min(math.ceil(corners[:, 1].max()), h)
        if x1 <= x0 or y1 <= y0:
            return out
        m[0, 2] -= x0
        m[1, 2] -= y0
        src = _u8(cv2.warpAffine(head, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0)))
        a = np.ascontiguousarray(src[..., 3])
        sinv = _u8(cv2.cvtColor(cv2.subtract(np.full(a.shape, 255, np.uint8), a), cv2.COLOR_GRAY2RGBA))
        _Layer(src, sinv, x0, y0).draw(out)
        return out


def make_sprite_renderer(root: Path, size: tuple[int, int] = (512, 512)) -> SpriteRenderer:
    """Load the pack in ``root`` and build a renderer of ``size`` (width, height) px."""
    return SpriteRenderer(load_pack(root), size)
