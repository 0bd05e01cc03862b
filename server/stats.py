"""Latency and frame-rate bookkeeping (bounded memory)."""

from __future__ import annotations

from collections import deque

import numpy as np


class RollingStats:
    """The last ``maxlen`` samples of a quantity (ms), with percentiles."""

    def __init__(self, maxlen: int = 3000) -> None:
        self._values: deque[float] = deque(maxlen=maxlen)
        self.count = 0  # all samples ever added
        self._cached: dict[str, float | None] | None = None
        self._cached_at = 0

    def add(self, value: float) -> None:
        """Record one sample."""
        self._values.append(value)
        self.count += 1

    def extend(self, values: list[float]) -> None:
        """Record several samples."""
        for v in values:
            self.add(v)

    def percentile(self, q: float) -> float | None:
        """q-th percentile (0..100) of the kept samples, or None when empty."""
        if not self._values:
            return None
        return float(np.percentile(np.fromiter(self._values, float), q))

    def summary(self) -> dict[str, float | None]:
        """``{"p50", "p95", "n"}`` rounded to 0.1 (recomputed at most every 16 new samples)."""
        if self._cached is not None and self.count - self._cached_at < 16:
            return self._cached
        self._cached = self._summary()
        self._cached_at = self.count
        return self._cached

    def _summary(self) -> dict[str, float | None]:
        p50, p95 = self.percentile(50), self.percentile(95)
        return {
            "p50": None if p50 is None else round(p50, 1),
            "p95": None if p95 is None else round(p95, 1),
            "n": float(len(self._values)),
        }


class FpsMeter:
    """Frames per second over a sliding window of frame times (s)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._times: deque[float] = deque()
        self._window = window_s

    def tick(self, t: float) -> None:
        """A frame went out at time ``t``."""
        self._times.append(t)
        while self._times and t - self._times[0] > self._window:
            self._times.popleft()

    def fps(self) -> float:
        """Frames per second over the window (0 with fewer than 2 frames)."""
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0
