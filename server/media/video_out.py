"""The avatar video track: paced by presentation timestamps from an injected clock.

At each tick it renders the LATEST animation state (a mailbox, not a queue): a slow stage
degrades lip sync, never stalls or delays the video. If rendering falls more than two frames
behind the clock, ticks are skipped instead of letting latency build up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from numpy.typing import NDArray

from server.clock import Clock

VIDEO_CLOCK_RATE = 90_000  # Hz, RTP video timestamp clock
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)

Produce = Callable[[float], Awaitable[tuple[NDArray[np.uint8], list[float]]]]
OnFrame = Callable[[float, list[float]], None]
OnTick = Callable[[float, float, int], None]


class AvatarVideoTrack(MediaStreamTrack):
    """A video track whose frames come from ``produce(stream_time_s)`` → (I420 planes, sources).

    ``on_frame(out_time, sources)`` is called as each frame leaves, with the arrival times of
    the audio it newly reflects (for the audio-in → frame-out latency). ``on_tick(now, late_s,
    skipped)`` is called at each tick before rendering: how late (s) the track got to it after
    its target time (≤ 0: on time) and how many ticks it skipped to get there (for
    :class:`server.media.adapt.FrameRateGuard`).
    """

    kind = "video"

    def __init__(
        self, produce: Produce, clock: Clock, fps: float, on_frame: OnFrame | None = None, on_tick: OnTick | None = None
    ) -> None:
        super().__init__()
        self._produce = produce
        self._clock = clock
        self._fps = fps
        self._on_frame = on_frame
        self._on_tick = on_tick
        self._start: float | None = None
        self._index = -1
        self.frames = 0  # frames returned
        self.skipped = 0  # ticks skipped because rendering fell behind

    async def recv(self) -> av.VideoFrame:
        """Wait for the next tick, render, return the frame."""
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock.now()
        late, skipped = 0.0, 0
        if self._start is None:
            self._start = now
            self._index = 0
        else:
            self._index += 1
            target = self._start + self._index / self._fps
            late = now - target
            if now > target + 2.0 / self._fps:
                behind = int((now - self._start) * self._fps)
                skipped = behind - self._index
                self.skipped += skipped
                self._index = behind
                target = self._start + self._index / self._fps
            await self._clock.sleep_until(target)
        if self._on_tick is not None:
            self._on_tick(now, late, skipped)
        if self.readyState != "live":
            raise MediaStreamError
        yuv, sources = await self._produce(self._index / self._fps)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = int(round(self._index * VIDEO_CLOCK_RATE / self._fps))
        frame.time_base = VIDEO_TIME_BASE
        self.frames += 1
        if self._on_frame is not None:
            self._on_frame(self._clock.now(), sources)
        return frame
