"""Clocks: the video track owns pacing, and its clock is injected (real or virtual)."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time source in seconds."""

    def now(self) -> float:
        """Current time, s."""
        ...

    async def sleep_until(self, t: float) -> None:
        """Return once ``now() >= t``."""
        ...


class MonotonicClock:
    """The process's monotonic clock (``time.monotonic``)."""

    def now(self) -> float:
        """Current time, s."""
        return time.monotonic()

    async def sleep_until(self, t: float) -> None:
        """Sleep until ``t`` (returns at once if it has passed)."""
        delay = t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class VirtualClock:
    """A clock that only moves when told to: offline rendering and deterministic tests."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def now(self) -> float:
        """Current virtual time, s."""
        return self._t

    def advance_to(self, t: float) -> None:
        """Move time forward to ``t`` (never backward)."""
        if t < self._t:
            raise ValueError(f"virtual clock cannot go back from {self._t} to {t}")
        self._t = t

    async def sleep_until(self, t: float) -> None:
        """Jump to ``t`` at once (virtual time passes instantly)."""
        if t > self._t:
            self._t = t
        await asyncio.sleep(0)
