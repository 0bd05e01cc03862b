"""Give a finished session's memory back to the operating system.

What a finished session leaves behind is not live data but two kinds of garbage. (1) Reference
cycles: a peer connection, its transceivers and our callbacks refer to each other, so a session's
buffers (video frames, encoder state, jitter buffers) are freed only by a full garbage
collection, which CPython runs rarely when few Python objects are allocated. (2) Freed heap:
glibc's allocator keeps freed blocks in its arenas instead of returning them. Together a worker
grew by ~18 MB per finished call and never came down (``bench/memory.py``: 278 → 731 MB over 30
calls). :class:`HeapTrimmer` runs a full collection and then ``malloc_trim(0)`` a moment after
sessions end (coalescing bursts); the trim runs on the executor. The collection is cheap because
a worker freezes what it loaded at start (:func:`gc.freeze`), so only objects made since are
traversed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` or None (musl, macOS, Windows: nothing to do there)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _load_trim()


def trim_heap() -> float | None:
    """Return free heap memory to the OS now; the time it took in ms (None: not available here)."""
    if _TRIM is None:
        return None
    t0 = time.perf_counter()
    _TRIM(0)
    return (time.perf_counter() - t0) * 1e3


class HeapTrimmer:
    """Runs :func:`trim_heap` on the default executor ``delay_s`` after the last :meth:`soon`
    (a burst of closing sessions gives one trim). Owns its task: :meth:`close` cancels and
    awaits it."""

    def __init__(self, delay_s: float = 2.0) -> None:
        if delay_s < 0:
            raise ValueError(f"heap trim delay must be >= 0 s, got {delay_s!r}")
        self.delay_s = delay_s
        self.trims = 0  # trims done
        self._task: asyncio.Task[None] | None = None

    def soon(self) -> None:
        """Schedule a trim (restarting the delay if one is pending)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        await asyncio.sleep(self.delay_s)
        t0 = time.perf_counter()
        found = gc.collect()  # the finished sessions' cycles (and the buffers they hold)
        gc_ms = (time.perf_counter() - t0) * 1e3
        ms = await asyncio.get_running_loop().run_in_executor(None, trim_heap)
        self.trims += 1
        log.info("memory of finished sessions released: %d objects in cycles collected in %.1f ms, heap trim %s",
                 found, gc_ms, "n/a" if ms is None else f"{ms:.1f} ms")

    async def close(self) -> None:
        """Cancel a pending trim and wait for it to finish."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
