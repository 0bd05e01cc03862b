"""Representative :class:`AnimationState` values per viseme and emotion (sheets, tests).

``VISEME_TARGETS`` is the per-viseme target shape of the continuous mouth parameters; the
animation blends these targets by the live viseme weights (``mouth_params``), so renderers and
animation agree on what each viseme looks like.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from engines.spec import N_VISEMES, VISEME_INDEX, VISEMES
from server.pipeline.types import EMOTIONS, AnimationState

MOUTH_PARAMS: tuple[str, ...] = (
    "jaw_open", "mouth_width", "lip_round", "lips_pressed", "lip_tuck", "tongue_tip", "teeth_show",
)


def _t(jaw: float, width: float, rnd: float, pressed: float, tuck: float, tongue: float, teeth: float) -> Mapping[str, float]:
    return MappingProxyType(dict(zip(MOUTH_PARAMS, (jaw, width, rnd, pressed, tuck, tongue, teeth), strict=True)))


# viseme -> target mouth parameters (ranges as in AnimationState)
VISEME_TARGETS: Mapping[str, Mapping[str, float]] = MappingProxyType({
    #        jaw   width  round  press  tuck  tongue teeth
    "sil": _t(0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),  # relaxed, lips together
    "PP": _t(0.00, 0.05, 0.00, 1.00, 0.00, 0.00, 0.00),  # lips pressed
    "FF": _t(0.10, 0.10, 0.00, 0.00, 1.00, 0.00, 0.70),  # upper teeth on the lower lip
    "TH": _t(0.22, 0.05, 0.00, 0.00, 0.00, 1.00, 0.50),  # tongue tip between the teeth
    "DD": _t(0.30, 0.15, 0.00, 0.00, 0.00, 0.80, 0.45),  # tongue behind the upper teeth
    "kk": _t(0.42, 0.10, 0.00, 0.00, 0.00, 0.00, 0.30),  # open, tongue back
    "CH": _t(0.10, -0.25, 0.50, 0.00, 0.00, 0.00, 1.00),  # flared lips, teeth together
    "SS": _t(0.05, 0.40, 0.00, 0.00, 0.00, 0.00, 1.00),  # spread, teeth together
    "nn": _t(0.16, 0.00, 0.00, 0.00, 0.00, 0.90, 0.20),  # slightly open, tongue up behind teeth
    "RR": _t(0.22, -0.40, 0.60, 0.00, 0.00, 0.25, 0.25),  # rounded, slightly open
    "aa": _t(1.00, 0.15, 0.00, 0.00, 0.00, 0.00, 0.30),  # wide open
    "E": _t(0.45, 0.60, 0.00, 0.00, 0.00, 0.00, 0.65),  # spread, half open, teeth
    "I": _t(0.22, 0.90, 0.00, 0.00, 0.00, 0.00, 0.85),  # wide spread, teeth
    "O": _t(0.62, -0.50, 0.85, 0.00, 0.00, 0.00, 0.10),  # round open
    "U": _t(0.22, -0.95, 1.00, 0.00, 0.00, 0.00, 0.00),  # small pucker
})

# emotion -> representative non-mouth fields (what the animation aims at for that emotion)
EMOTION_TARGETS: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "neutral": MappingProxyType({"smile": 0.1, "brow_raise": 0.0, "brow_inner": 0.0, "eye_open": 1.0, "gaze_x": 0.0, "gaze_y": 0.0}),
    "happy": MappingProxyType({"smile": 0.8, "brow_raise": 0.25, "brow_inner": 0.0, "eye_open": 0.9, "gaze_x": 0.0, "gaze_y": 0.0}),
    "sad": MappingProxyType({"smile": -0.6, "brow_raise": -0.1, "brow_inner": 0.8, "eye_open": 0.8, "gaze_x": 0.0, "gaze_y": 0.3}),
    "angry": MappingProxyType({"smile": -0.3, "brow_raise": -0.6, "brow_inner": -0.9, "eye_open": 0.9, "gaze_x": 0.0, "gaze_y": 0.0}),
    "surprised": MappingProxyType({"smile": 0.0, "brow_raise": 1.0, "brow_inner": 0.3, "eye_open": 1.25, "gaze_x": 0.0, "gaze_y": 0.0}),
    "thinking": MappingProxyType({"smile": -0.05, "brow_raise": 0.2, "brow_inner": 0.2, "eye_open": 0.95, "gaze_x": 0.45, "gaze_y": -0.5}),
})


def mouth_params(weights: NDArray[np.floating]) -> dict[str, float]:
    """Mouth parameters for a viseme mix: ``weights`` (N_VISEMES,) → weighted sum of targets."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != N_VISEMES:
        raise ValueError(f"viseme weights must have {N_VISEMES} entries, got shape {w.shape}")
    w = np.clip(np.nan_to_num(w), 0.0, None)
    total = float(w.sum())
    if total > 0.0:
        w = w / total
    return {p: float(sum(w[i] * VISEME_TARGETS[v][p] for i, v in enumerate(VISEMES))) for p in MOUTH_PARAMS}


def viseme_pose(name: str, emotion: str = "neutral", **overrides: float) -> AnimationState:
    """A still pose showing viseme ``name`` with ``emotion`` (fields may be overridden)."""
    if name not in VISEME_INDEX:
        raise KeyError(f"unknown viseme {name!r}; known: {list(VISEMES)}")
    if emotion not in EMOTIONS:
        raise KeyError(f"unknown emotion {emotion!r}; known: {list(EMOTIONS)}")
    vis = np.zeros(N_VISEMES, np.float32)
    vis[VISEME_INDEX[name]] = 1.0
    e = EMOTION_TARGETS[emotion]
    fields: dict[str, object] = dict(VISEME_TARGETS[name])
    fields.update(
        visemes=vis,
        smile=e["smile"],
        brow_raise=e["brow_raise"],
        brow_inner=e["brow_inner"],
        eye_open_l=e["eye_open"],
        eye_open_r=e["eye_open"],
        gaze_x=e["gaze_x"],
        gaze_y=e["gaze_y"],
        emotion=emotion,
        emotion_weights=tuple(1.0 if x == emotion else 0.0 for x in EMOTIONS),
        speaking=name != "sil",
    )
    fields.update(overrides)
    return AnimationState(**fields)  # type: ignore[arg-type]
