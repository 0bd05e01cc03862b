"""The feature and viseme stages (thin adapters over engines/)."""

from __future__ import annotations

from collections import deque

import numpy as np

from engines.features import LogMelStream
from engines.predictor import VisemeModel, VisemeStream
from engines.spec import HOP_LENGTH, N_VISEMES, VISEME_INDEX
from server.config import VadConfig
from server.pipeline.types import FeatureFrame, VadChunk, VisemeFrame

_SIL = np.zeros(N_VISEMES, np.float32)
_SIL[VISEME_INDEX["sil"]] = 1.0


class FeatureStage:
    """Stage: :class:`VadChunk` → :class:`FeatureFrame` (causal log-mel, 10 ms hops)."""

    def __init__(self) -> None:
        self._mel = LogMelStream()

    def reset(self) -> None:
        """Forget buffered audio."""
        self._mel.reset()

    def push(self, item: VadChunk) -> list[FeatureFrame]:
        """Returns one frame with the hops this chunk completes (none if it completes none)."""
        first = self._mel.hops_emitted
        feats = self._mel.push(item.chunk.samples)
        if feats.shape[0] == 0:
            return []
        return [
            FeatureFrame(
                features=feats,
                hop=first,
                speaking=item.speaking,
                speech_prob=item.speech_prob,
                arrival=item.chunk.arrival,
            )
        ]


class VisemeStage:
    """Stage: :class:`FeatureFrame` → :class:`VisemeFrame` through a model stream.

    With ``vad.gate``, weights are pulled towards ``sil`` while the VAD says no speech (soft:
    by how far the probability is below ``threshold_on``), so noise does not move the mouth.
    Each output frame lists the arrival times of the audio whose hops it completes.
    """

    def __init__(self, model: VisemeModel, vad: VadConfig) -> None:
        self._stream: VisemeStream = model.stream()
        self._vad = vad
        self._next_hop = 0  # next hop to be predicted
        self._arrivals: deque[tuple[int, float]] = deque()  # (last hop + 1, arrival) per input frame
        self._last: FeatureFrame | None = None

    @property
    def lookahead_hops(self) -> int:
        """The model's lookahead, hops."""
        return self._stream.lookahead_hops

    def reset(self) -> None:
        """Reset the model stream and the hop counter."""
        self._stream.reset()
        self._next_hop = 0
        self._arrivals.clear()
        self._last = None

    def push(self, item: FeatureFrame) -> list[VisemeFrame]:
        """Predict; returns one frame for the hops that became predictable (maybe none)."""
        self._arrivals.append((item.hop + item.features.shape[0], item.arrival))
        self._last = item
        return self._emit(self._stream.push(item.features), item)

    def flush(self) -> list[VisemeFrame]:
        """End of input: predict the held-back lookahead hops."""
        if self._last is None:
            return []
        return self._emit(self._stream.flush(), self._last)

    def _emit(self, probs: np.ndarray, item: FeatureFrame) -> list[VisemeFrame]:
        n = probs.shape[0]
        if n == 0:
            return []
        hop = self._next_hop
        self._next_hop += n
        sources: list[float] = []
        while self._arrivals and self._arrivals[0][0] <= self._next_hop:
            sources.append(self._arrivals.popleft()[1])
        weights = probs.astype(np.float32, copy=True)
        if self._vad.gate and not item.speaking:
            g = float(np.clip(item.speech_prob / self._vad.threshold_on, 0.0, 1.0)) ** 2
            weights = g * weights + (1.0 - g) * _SIL
        return [
            VisemeFrame(
                weights=weights,
                hop=hop,
                speaking=item.speaking,
                speech_prob=item.speech_prob,
                arrival=item.arrival,
                sources=tuple(sources),
            )
        ]


def hop_time(hop: int) -> float:
    """Start time (s) of a hop in the 16 kHz stream."""
    return hop * HOP_LENGTH / 16_000
