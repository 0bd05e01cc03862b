"""The per-session chain, shared by live sessions and offline commands.

``AvatarPipeline.push_frame`` runs audio → resample → VAD → features → visemes → animation
targets; ``produce(t)`` samples the animation at stream time ``t``, renders and converts the
frame to I420. Both run in the session's single worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import av
import cv2
import numpy as np
from numpy.typing import NDArray

from engines.predictor import EnergyVisemeModel, VisemeModel
from server.config import AppConfig, animation_config
from server.errors import BackendError
from server.pipeline.ingest import ArrivedFrame, AudioIngest
from server.pipeline.stages import FeatureStage, VisemeStage
from server.pipeline.types import AnimationState, VisemeFrame
from server.pipeline.vad import SileroVad
from server.render.base import Renderer

log = logging.getLogger(__name__)


def load_viseme_model(name: str, engine: str = "auto") -> VisemeModel:
    """``energy`` → the heuristic baseline; ``default`` or a path → the trained network."""
    if name == "energy":
        return EnergyVisemeModel()
    try:
        from engines.onnx_predictor import load_viseme_model as load_neural
    except ImportError as e:  # pragma: no cover - packaging error
        raise BackendError(f"neural viseme models unavailable: {e}") from e
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
        self._pending_sources: list[float] = []
        self.audio_frames = 0

    @property
    def lookahead_hops(self) -> int:
        """The viseme model's lookahead, hops of 10 ms."""
        return self.visemes.lookahead_hops

    def reset(self) -> None:
        """Reset every stage (a new utterance stream)."""
        for stage in (self.ingest, self.vad, self.features, self.visemes, self.prosody, self.animator):
            stage.reset()
        self._pending_sources.clear()

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
                self.animator.push_prosody(pf)
            for vc in self.vad.push(chunk):
                for ff in self.features.push(vc):
                    for vf in self.visemes.push(ff):
                        self._accept(vf)
                        out.append(vf)
        return out

    def _accept(self, vf: VisemeFrame) -> None:
        self.animator.push(vf)
        self._pending_sources.extend(vf.sources)

    def sample(self, t: float) -> tuple[AnimationState, list[float]]:
        """Animation state at stream time ``t`` (s) and the arrival times it newly reflects."""
        state = self.animator.sample(t)
        sources, self._pending_sources = self._pending_sources, []
        return state, sources

    def produce(self, t: float) -> tuple[NDArray[np.uint8], list[float], AnimationState]:
        """Sample, render and convert: (I420 planes, newly reflected arrivals, state)."""
        state, sources = self.sample(t)
        rgba = self.renderer.render(state)
        return rgba_to_i420(rgba), sources, state
