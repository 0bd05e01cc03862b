"""Typed items that flow between the stages of the audio path.

One time axis runs through the chain: ``sample_index`` at 16 kHz since the stream started
(``hop`` = sample_index // 160). ``arrival`` is the monotonic clock time (s) at which the audio
that completed the item reached the server; it is only used to measure latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from engines.spec import N_VISEMES

In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)


class Stage(Protocol[In_contra, Out_co]):
    """A synchronous stage: push one item, get zero or more items out."""

    def push(self, item: In_contra) -> Sequence[Out_co]:  # pragma: no cover - protocol
        """Consume one item; return what it completes."""
        ...

    def reset(self) -> None:  # pragma: no cover - protocol
        """Drop all per-session state."""
        ...


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Mono 16 kHz audio. ``samples``: (n,) float32 in [-1, 1]."""

    samples: NDArray[np.float32]
    sample_index: int  # index of samples[0] in the 16 kHz stream
    arrival: float  # s, monotonic clock, when the source frame arrived


@dataclass(frozen=True, slots=True)
class VadChunk:
    """An :class:`AudioChunk` annotated with the VAD's latest decision (no extra delay)."""

    chunk: AudioChunk
    speech_prob: float  # latest silero probability, 0..1
    speaking: bool  # hysteresis state


@dataclass(frozen=True, slots=True)
class FeatureFrame:
    """Log-mel hops. ``features``: (n, N_MELS) float32, first hop index ``hop``."""

    features: NDArray[np.float32]
    hop: int
    speaking: bool
    speech_prob: float
    arrival: float


@dataclass(frozen=True, slots=True)
class VisemeFrame:
    """Viseme probabilities for consecutive hops. ``weights``: (n, N_VISEMES) float32.

    ``arrival`` is the arrival time of the newest audio these predictions depend on
    (lookahead included), so ``now - arrival`` is the latency of reflecting it.
    """

    weights: NDArray[np.float32]
    hop: int
    speaking: bool
    speech_prob: float
    arrival: float
    sources: tuple[float, ...] = ()  # arrival times (s) of the audio frames whose hops this completes


EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "surprised", "thinking")


@dataclass(frozen=True, slots=True)
class AnimationState:
    """Everything a renderer needs to draw one frame; every avatar kind renders this.

    Ranges are documented per field; renderers must clamp, never fail, on out-of-range values.
    """

    t: float = 0.0  # s, stream time of this state
    visemes: NDArray[np.float32] = field(
        default_factory=lambda: np.eye(1, N_VISEMES, 0, dtype=np.float32)[0]
    )  # (N_VISEMES,) smoothed weights, sum ≈ 1 (sprite renderers pick the strongest)
    jaw_open: float = 0.0  # 0 closed .. 1 wide open (aa)
    mouth_width: float = 0.0  # -1 puckered (U) .. 0 neutral .. 1 spread (E, I)
    lip_round: float = 0.0  # 0 .. 1 rounded lips (O, U)
    lips_pressed: float = 0.0  # 0 .. 1 lips pressed together (PP)
    lip_tuck: float = 0.0  # 0 .. 1 lower lip under upper teeth (FF)
    tongue_tip: float = 0.0  # 0 .. 1 tongue tip visible between teeth (TH), behind teeth (DD, nn)
    teeth_show: float = 0.0  # 0 .. 1 how much teeth show (SS, CH, E, I)
    smile: float = 0.0  # -1 frown .. 1 smile (mouth corners)
    eye_open_l: float = 1.0  # 0 closed .. 1 open .. 1.3 wide (surprise)
    eye_open_r: float = 1.0
    gaze_x: float = 0.0  # -1 left .. 1 right (viewer's view)
    gaze_y: float = 0.0  # -1 up .. 1 down
    brow_raise: float = 0.0  # -1 lowered/frown .. 1 raised
    brow_inner: float = 0.0  # -1 angry (inner down) .. 1 sad/worried (inner up)
    head_yaw: float = 0.0  # rad, + turns to viewer's right
    head_pitch: float = 0.0  # rad, + nods down
    head_roll: float = 0.0  # rad, + tilts clockwise
    head_dx: float = 0.0  # fraction of frame width
    head_dy: float = 0.0  # fraction of frame height
    breath: float = 0.0  # 0 .. 1 chest rise
    emotion: str = "neutral"  # dominant emotion (one of EMOTIONS)
    emotion_weights: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # per EMOTIONS, sum 1
    arousal: float = 0.0  # 0 calm .. 1 animated (from prosody)
    speaking: bool = False  # VAD state
    listening: bool = False  # silent and attentive (listening pose)
