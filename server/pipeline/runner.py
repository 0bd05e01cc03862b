"""The per-session chain, shared by live sessions and offline commands.

``AvatarPipeline.push_frame`` runs audio → resample → VAD → features → visemes → animation
targets; ``produce(t)`` samples the animation at stream time ``t``, renders and converts the
frame to I420. Both run in the session's single worker thread, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import av
import cv2
import numpy as np
from numpy.typing import NDArray

from engines.onnx_predictor import load_viseme_model as load_neural
from engines.predictor import VisemeModel
from server.config import AppConfig, animation_config
from server.errors import BackendError
from server.pipeline.ingest import ArrivedFrame, AudioIngest
from server.pipeline.stages import FeatureStage, VisemeStage
from server.pipeline.types import AnimationState, VisemeFrame
from server.pipeline.vad import SileroVad
from server.render.base import Renderer

log = logging.getLogger(__name__)


def load_viseme_model(name: str, engine: str = "auto") -> VisemeModel:
    """``energy`` → the heuristic baseline; ``default`` or a path → the trained network.

    A missing model file becomes a :class:`BackendError` (a clear CLI error, not a traceback).
    """
    try:
        return load_neural(name, engine=engine)
    except FileNotFoundError as e:
        raise BackendError(str(e)) from e


@dataclass
class SharedModels:
    """Loaded once per process and shared by every session."""

    vad: SileroVad
    visemes: VisemeModel
    registry: Any  # server.avatars.AvatarRegistry


def load_models(cfg: AppConfig) -> SharedModels:
    """Load the VAD, the viseme model and the avatar registry.

    OpenCV is limited to one thread: sessions already run in parallel worker threads, and
    OpenCV's own pool would oversubscribe the cores.
    """
    from server.avatars import AvatarRegistry

    cv2.setNumThreads(1)

    visemes = load_viseme_model(cfg.visemes.model, cfg.visemes.engine)
    log.info("viseme model: %s (lookahead %d ms)", visemes.name, visemes.lookahead_hops * 10)
    return SharedModels(vad=SileroVad(), visemes=visemes, registry=AvatarRegistry(cfg.avatars.data_dir))


def rgba_to_i420(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(H, W, 4) RGBA → (H * 3 // 2, W) I420 planes (OpenCV; several times faster than PyAV's)."""
    return np.asarray(cv2.cvtColor(rgba, cv2.COLOR_RGBA2YUV_I420), dtype=np.uint8)


class AvatarPipeline:
    """All per-session state of the audio→animation→frame chain."""

    def __init__(self, models: SharedModels, cfg: AppConfig, seed: int, renderer: Renderer) -> None:
        from server.pipeline.animation import Animator
        from server.pipeline.prosody import ProsodyTracker

        self.cfg = cfg
        self.ingest = AudioIngest()
        self.vad = models.vad.stream(cfg.vad)
        self.features = FeatureStage()
        self.visemes = VisemeStage(models.visemes, cfg.vad)
        self.prosody = ProsodyTracker()
        self.animator = Animator(animation_config(cfg), seed)
        self.renderer = renderer
        # Mailbox from the audio side (push_frame, any thread) to the animation side (sample):
        # viseme and prosody frames in arrival order. Only the consumer touches the animator,
        # so audio can be processed on the event loop while a frame renders in the session's
        # thread. Bounded (drops oldest) in case nothing samples, e.g. a client without video.
        self._inbox: deque[Any] = deque(maxlen=INBOX_FRAMES)
        self._pending_sources: list[float] = []
        self.audio_frames = 0
        self._last: tuple[AnimationState, NDArray[np.uint8]] | None = None  # last drawn state, frame
        self._last_renderer: Renderer | None = None
        self.reused_frames = 0  # frames not redrawn because nothing visibly moved

    @property
    def lookahead_hops(self) -> int:
        """The viseme model's lookahead, hops of 10 ms."""
        return self.visemes.lookahead_hops

    def reset(self) -> None:
        """Reset every stage (a new utterance stream)."""
        for stage in (self.ingest, self.vad, self.features, self.visemes, self.prosody, self.animator):
            stage.reset()
        self._inbox.clear()
        self._pending_sources.clear()
        self._last = None

    def push_frame(self, frame: av.AudioFrame, arrival: float) -> list[VisemeFrame]:
        """Run one decoded audio frame through the chain; returns the viseme frames it completed."""
        self.audio_frames += 1
        return self._run(self.ingest.push(ArrivedFrame(frame, arrival)))

    def flush(self, arrival: float) -> list[VisemeFrame]:
        """End of input (offline): drain the resampler and the model's lookahead."""
        out = self._run(self.ingest.flush(arrival))
        for vf in self.visemes.flush():
            self._accept(vf)
            out.append(vf)
        return out

    def _run(self, chunks: list[Any]) -> list[VisemeFrame]:
        out: list[VisemeFrame] = []
        for chunk in chunks:
            for pf in self.prosody.push(chunk):
                self._inbox.append(pf)
            for vc in self.vad.push(chunk):
                for ff in self.features.push(vc):
                    for vf in self.visemes.push(ff):
                        self._accept(vf)
                        out.append(vf)
        return out

    def _accept(self, vf: VisemeFrame) -> None:
        self._inbox.append(vf)

    def _drain_inbox(self) -> None:
        """Hand the frames pushed since the last sample to the animator (consumer side)."""
        while True:
            try:
                item = self._inbox.popleft()
            except IndexError:
                return
            if isinstance(item, VisemeFrame):
                self.animator.push(item)
                self._pending_sources.extend(item.sources)
            else:
                self.animator.push_prosody(item)

    def sample(self, t: float) -> tuple[AnimationState, list[float]]:
        """Animation state at stream time ``t`` (s) and the arrival times it newly reflects."""
        self._drain_inbox()
        state = self.animator.sample(t)
        sources, self._pending_sources = self._pending_sources, []
        return state, sources

    def produce(self, t: float) -> tuple[NDArray[np.uint8], list[float], AnimationState]:
        """Sample, render and convert: (I420 planes, newly reflected arrivals, state).

        When nothing drawn would move by more than :data:`REUSE_BELOW_PX` since the last
        rendered state (idle breathing and micro-motion between two ticks, a mouth at rest),
        the last frame is reused instead of drawing an identical picture again.
        """
        state, sources = self.sample(t)
        h = self.renderer.size[1]
        if (
            self._last is not None
            and self._last_renderer is self.renderer
            and state_change_px(self._last[0], state, h) < REUSE_BELOW_PX
        ):
            self.reused_frames += 1
            return self._last[1], sources, state
        yuv = rgba_to_i420(self.renderer.render(state))
        self._last = (state, yuv)
        self._last_renderer = self.renderer
        return yuv, sources, state


INBOX_FRAMES = 400  # viseme + prosody frames (~4 s of audio) kept for the animator between samples
REUSE_BELOW_PX = 0.25  # px: smaller changes of the picture are not drawn (a frame is reused)

# How far (as a fraction of the frame height) a drawn point can move per unit change of each
# AnimationState field: head turns move features ~0.3 H from the pivot, mouth parameters act
# on a mouth ~0.08 H wide, eyes, brows and gaze on ~0.03 H. Fields not listed (strings, flags)
# force a redraw on any change.
_PX_PER_UNIT: dict[str, float] = {
    "head_yaw": 0.3, "head_pitch": 0.3, "head_roll": 0.3, "head_dx": 1.0, "head_dy": 1.0,
    "jaw_open": 0.08, "mouth_width": 0.08, "lip_round": 0.08, "lips_pressed": 0.08,
    "lip_tuck": 0.08, "tongue_tip": 0.08, "teeth_show": 0.08, "smile": 0.08,
    "visemes": 0.08, "emotion_weights": 0.08,
    "eye_open_l": 0.03, "eye_open_r": 0.03, "brow_raise": 0.03, "brow_inner": 0.03,
    "gaze_x": 0.02, "gaze_y": 0.02, "breath": 0.02, "arousal": 0.02,
}
_IGNORED = frozenset({"t"})  # stream time itself draws nothing


def state_change_px(a: AnimationState, b: AnimationState, height: int) -> float:
    """Upper estimate of how far (px) anything drawn moves between states ``a`` and ``b``."""
    worst = 0.0
    for f in dataclasses.fields(AnimationState):
        name = f.name
        if name in _IGNORED:
            continue
        va, vb = getattr(a, name), getattr(b, name)
        scale = _PX_PER_UNIT.get(name)
        if scale is None:
            if va != vb:
                return float("inf")
            continue
        if isinstance(va, np.ndarray | tuple):
            d = float(np.abs(np.asarray(va, np.float64) - np.asarray(vb, np.float64)).sum())
        else:
            d = abs(float(va) - float(vb))
        worst = max(worst, d * scale * height)
    return worst
