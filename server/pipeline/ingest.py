"""Audio ingestion: decoded frames of any rate/layout/format → 16 kHz mono float32 chunks."""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from engines.spec import SAMPLE_RATE
from server.errors import MediaError
from server.pipeline.types import AudioChunk


@dataclass(frozen=True, slots=True)
class ArrivedFrame:
    """A decoded audio frame (e.g. Opus → 48 kHz stereo s16, 20 ms) and when it arrived (s)."""

    frame: av.AudioFrame
    arrival: float


class AudioIngest:
    """Stage: :class:`ArrivedFrame` → :class:`AudioChunk` (16 kHz mono float32).

    Uses PyAV's resampler (libswresample); it is rebuilt if the input format changes
    mid-stream. The 16 kHz sample index is continuous: gaps in the input are not filled.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._in_fmt: tuple[str, str, int] | None = None
        self._next_index = 0

    def reset(self) -> None:
        """Drop resampler state and restart the sample index at 0."""
        self._resampler = None
        self._in_fmt = None
        self._next_index = 0

    def push(self, item: ArrivedFrame) -> list[AudioChunk]:
        """Resample one frame; returns 0 or 1 chunk (the resampler may hold samples back)."""
        frame = item.frame
        if not isinstance(frame, av.AudioFrame):
            raise MediaError(f"expected an audio frame, got {type(frame).__name__}")
        fmt = (frame.format.name, frame.layout.name, int(frame.sample_rate))
        if self._resampler is None or fmt != self._in_fmt:
            # keep the channels and average them ourselves: libswresample's downmix sums
            # stereo at -3 dB, so a mono mic sent as stereo (Opus) would gain +3 dB
            self._resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=SAMPLE_RATE)
            self._in_fmt = fmt
        frame.pts = None  # the resampler must not try to fill timestamp gaps
        parts = [_mono(f) for f in self._resampler.resample(frame)]
        return self._emit(parts, item.arrival)

    def flush(self, arrival: float) -> list[AudioChunk]:
        """End of input: return what the resampler still holds."""
        if self._resampler is None:
            return []
        parts = [_mono(f) for f in self._resampler.resample(None)]
        self._resampler = None
        return self._emit(parts, arrival)

    def _emit(self, parts: list[np.ndarray], arrival: float) -> list[AudioChunk]:
        if not parts:
            return []
        samples = np.concatenate(parts).astype(np.float32, copy=False)
        if samples.size == 0:
            return []
        chunk = AudioChunk(samples=samples, sample_index=self._next_index, arrival=arrival)
        self._next_index += samples.size
        return [chunk]


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """Planar float frame (channels, n) → (n,) channel mean."""
    planes = frame.to_ndarray()
    return planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]
