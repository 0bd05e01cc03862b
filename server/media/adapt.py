"""Keep the frame rate when the machine is overloaded: render smaller, then come back.

This is WebRTC's "maintain-framerate" degradation, decided on the sending side: a frame that
is late or never sent is worse for lip sync than a slightly softer one, so when a session's
video track stops keeping pace (ticks skipped, or most ticks starting late) its frames are
rendered and encoded at ``scale`` × the configured size (0.75: 384×384 for 512×512, ~45 %
less render + VP8 work). After ``up_after_s`` without overload the full size comes back; if
the overload returns soon after that, the next try waits twice as long (up to
``max_up_after_s``), so a machine that cannot carry the full size does not flip every few
seconds.

Pure logic: the video track reports every tick (its time, how late it started, how many
ticks it skipped) and :class:`FrameRateGuard` answers whether the scale changed. Times are
seconds on the track's (injected) clock.
"""

from __future__ import annotations

from collections import deque

# Defaults (s, or a share of ticks)
GRACE_S = 1.5  # s after the first tick in which nothing is judged (connection start-up, first keyframe)
WINDOW_S = 1.0  # s of ticks the late share is taken over
LATE_SHARE = 0.5  # share of the window's ticks starting > half a frame late that means overload
SKIP_WINDOW_S = 2.0  # s over which skipped ticks are counted
SKIPS_DOWN = 3  # skipped ticks within SKIP_WINDOW_S that mean overload
UP_AFTER_S = 10.0  # s without overload before the full size is tried again
MAX_UP_AFTER_S = 80.0  # s, ceiling of the doubling wait


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) × ``scale``, rounded to even pixels (I420 needs even sides), ≥ 64 px."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale!r}")

    def side(n: int) -> int:
        return max(64, 2 * round(n * scale / 2))

    return (side(width), side(height)) if scale < 1.0 else (width, height)


class FrameRateGuard:
    """Per-session decision between the full and the reduced render size.

    ``tick(now, late_s, skipped)`` at every video tick; :attr:`scale` is 1.0 or ``reduced``
    (set ``reduced`` to 1.0 and it never changes the scale again, but keeps counting).
    Counters: ``downs`` and ``ups`` (scale changes), ``late_ticks``.
    """

    def __init__(
        self,
        fps: float,
        scale: float,
        *,
        grace_s: float = GRACE_S,
        window_s: float = WINDOW_S,
        late_share: float = LATE_SHARE,
        skip_window_s: float = SKIP_WINDOW_S,
        skips_down: int = SKIPS_DOWN,
        up_after_s: float = UP_AFTER_S,
        max_up_after_s: float = MAX_UP_AFTER_S,
    ) -> None:
        if not 1.0 <= fps <= 240.0:
            raise ValueError(f"fps must be in 1..240, got {fps!r}")
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"scale must be in (0, 1], got {scale!r}")
        if not 0.0 < late_share <= 1.0:
            raise ValueError(f"late_share must be in (0, 1], got {late_share!r}")
        if skips_down < 1:
            raise ValueError(f"skips_down must be >= 1, got {skips_down!r}")
        if not 0.0 < up_after_s <= max_up_after_s:
            raise ValueError(f"need 0 < up_after_s <= max_up_after_s, got {up_after_s!r}, {max_up_after_s!r}")
        self.fps = fps
        self.reduced = scale
        self.grace_s = grace_s
        self.window_s = window_s
        self.late_share = late_share
        self.skip_window_s = skip_window_s
        self.skips_down = skips_down
        self.base_up_after_s = up_after_s
        self.max_up_after_s = max_up_after_s
        self.up_after_s = up_after_s  # current wait (doubles when an up-step fails soon)
        self.downs = 0
        self.ups = 0
        self.late_ticks = 0  # ticks that started more than half a frame late, all time
        self._reduced_now = False
        self._start: float | None = None
        self._changed_at = -1e18  # time of the last scale change
        self._up_at = -1e18  # time of the last step up
        self._ticks: deque[tuple[float, bool, int]] = deque()  # (time, late, skipped) since the last change

    @property
    def scale(self) -> float:
        """The render scale now: 1.0 or the reduced one."""
        return self.reduced if self._reduced_now else 1.0

    def tick(self, now: float, late_s: float, skipped: int = 0) -> bool:
        """One video tick at ``now`` that started ``late_s`` after its target time, after
        skipping ``skipped`` ticks. Returns True when :attr:`scale` changed."""
        if skipped < 0:
            raise ValueError(f"skipped must be >= 0, got {skipped!r}")
        late = late_s > 0.5 / self.fps
        self.late_ticks += int(late)
        if self._start is None:
            self._start = now
        if self.reduced >= 1.0 or now - self._start < self.grace_s:
            return False
        ticks = self._ticks
        ticks.append((now, late, skipped))
        horizon = now - max(self.window_s, self.skip_window_s)
        while ticks and ticks[0][0] < horizon:
            ticks.popleft()
        if self._overloaded(now):
            if self._reduced_now:
                self._changed_at = now  # still overloaded at the small size: restart the wait
                ticks.clear()
                return False
            # an up-step that failed soon: wait twice as long before the next one
            if now - self._up_at < self.up_after_s:
                self.up_after_s = min(2.0 * self.up_after_s, self.max_up_after_s)
            else:
                self.up_after_s = self.base_up_after_s
            self._set(True, now)
            self.downs += 1
            return True
        if self._reduced_now and now - self._changed_at >= self.up_after_s:
            self._set(False, now)
            self._up_at = now
            self.ups += 1
            return True
        return False

    def _overloaded(self, now: float) -> bool:
        recent_skips = sum(s for t, _, s in self._ticks if t >= now - self.skip_window_s)
        if recent_skips >= self.skips_down:
            return True
        window = [late for t, late, _ in self._ticks if t >= now - self.window_s]
        # judge the late share only over a (nearly) full window
        return len(window) >= 0.8 * self.window_s * self.fps and sum(window) >= self.late_share * len(window)

    def _set(self, reduced: bool, now: float) -> None:
        self._reduced_now = reduced
        self._changed_at = now
        self._ticks.clear()
