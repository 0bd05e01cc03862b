"""The viseme predictor interface: one shared model, one stream object per session.

A :class:`VisemeModel` is loaded once (weights, inference sessions) and shared by every
session; :meth:`VisemeModel.stream` returns a :class:`VisemeStream` that owns all per-session
state. Streams are not thread-safe; one session drives its stream from one thread.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from engines.spec import HOP_SECONDS, N_MELS, N_VISEMES, VISEME_INDEX


class VisemeStream(Protocol):
    """Per-session streaming state of a viseme model."""

    @property
    def lookahead_hops(self) -> int:
        """How many future 10 ms hops the model sees before it predicts a hop."""
        ...

    def push(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """(n, N_MELS) log-mel hops, in order -> (m, N_VISEMES) probabilities, rows sum to 1.

        Rows are for consecutive hops starting at the first hop not yet predicted; while the
        lookahead fills, m < n; afterwards m == n.
        """
        ...

    def flush(self) -> NDArray[np.float32]:
        """End of input: predict the held-back last ``lookahead_hops`` hops (silence padding)."""
        ...

    def reset(self) -> None:
        """Forget everything: the next push starts a new utterance stream."""
        ...


class VisemeModel(Protocol):
    """A loaded viseme model shared by all sessions."""

    @property
    def name(self) -> str:
        """Short name used in configs and logs (``energy``, ``onnx:visemes.onnx``...)."""
        ...

    @property
    def lookahead_hops(self) -> int:
        """Future context in hops of 10 ms."""
        ...

    def stream(self) -> VisemeStream:
        """A new per-session stream with zeroed state."""
        ...


def lookahead_seconds(model: VisemeModel) -> float:
    """The model's lookahead in seconds."""
    return model.lookahead_hops * HOP_SECONDS


# --------------------------------------------------------------------------------------------
# The `energy` baseline: no training, zero lookahead.


class EnergyVisemeModel:
    """Heuristic baseline: opening from loudness, rounding and sibilance from band balance.

    Loudness is measured against an adaptive noise floor, so a quiet microphone still opens the
    mouth. It knows nothing about phonemes: expect roughly right opening and wrong shapes.
    """

    name = "energy"
    lookahead_hops = 0

    def stream(self) -> EnergyVisemeStream:
        """A new per-session stream."""
        return EnergyVisemeStream()


class EnergyVisemeStream:
    """Per-session state of :class:`EnergyVisemeModel` (noise floor and peak trackers)."""

    lookahead_hops = 0
    _FLOOR_RISE = 0.002  # nats per hop the floor may rise (≈0.2 nats/s)
    _PEAK_DECAY = 0.003  # nats per hop the speech peak decays

    def __init__(self) -> None:
        self._floor = float("nan")
        self._peak = float("nan")

    def reset(self) -> None:
        """Forget the noise floor and peak."""
        self._floor = float("nan")
        self._peak = float("nan")

    def flush(self) -> NDArray[np.float32]:
        """Nothing is held back (zero lookahead)."""
        return np.zeros((0, N_VISEMES), np.float32)

    def push(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """(n, N_MELS) log-mel -> (n, N_VISEMES) heuristic probabilities."""
        feats = np.asarray(features, np.float32)
        if feats.ndim != 2 or feats.shape[1] != N_MELS:
            raise ValueError(f"features must be (n, {N_MELS}), got {feats.shape}")
        out = np.zeros((feats.shape[0], N_VISEMES), np.float32)
        for i, row in enumerate(feats):
            out[i] = self._one(row)
        return out

    def _one(self, row: NDArray[np.float32]) -> NDArray[np.float32]:
        power = np.exp(row.astype(np.float64))
        total = float(np.log(power.sum() + 1e-12))
        if np.isnan(self._floor):
            self._floor = total
            self._peak = total + 4.0
        self._floor = min(total, self._floor + self._FLOOR_RISE)
        self._peak = max(total, self._peak - self._PEAK_DECAY, self._floor + 4.0)
        level = np.clip((total - self._floor - 1.5) / max(self._peak - self._floor - 1.5, 1e-3), 0, 1)
        low = power[:8].sum()  # < ~450 Hz
        mid = power[8:22].sum()  # ~450-2000 Hz
        high = power[28:].sum()  # > ~3500 Hz
        tot = low + mid + high + 1e-12
        hi_ratio, lo_ratio, mid_ratio = high / tot, low / tot, mid / tot
        w = np.zeros(N_VISEMES, np.float64)
        speech = float(level)
        w[VISEME_INDEX["sil"]] = 1.0 - speech
        open_ = speech * (1.0 - hi_ratio)
        w[VISEME_INDEX["SS"]] = speech * hi_ratio * 1.2
        w[VISEME_INDEX["aa"]] = open_ * mid_ratio * speech
        w[VISEME_INDEX["E"]] = open_ * mid_ratio * (1 - speech) + 0.3 * open_ * hi_ratio
        w[VISEME_INDEX["O"]] = open_ * lo_ratio * speech
        w[VISEME_INDEX["U"]] = open_ * lo_ratio * (1 - speech)
        w[VISEME_INDEX["nn"]] = 0.3 * speech * lo_ratio * (1 - speech)
        w = np.maximum(w, 0) + 1e-6
        return (w / w.sum()).astype(np.float32)
