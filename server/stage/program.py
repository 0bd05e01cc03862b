"""A stage's program, encoded once for every output that is not the speaker's own track.

- :class:`ProgramVideoEncoder`: one VP8 encoder in its own thread (libvpx releases the GIL,
  so it runs beside the session's renderer on the second core). Frames arrive as I420 planes
  after the speaker's track produced them; if the encoder is still busy the newer frame
  replaces the waiting one (a mailbox). Keyframes: when an output joins or asks (PLI/FIR),
  coalesced to at most one per ``key_min_gap_s``, and at least every ``key_interval_s``.
  Bitrate: the most constrained output's REMB estimate, never below a floor.
- :class:`ProgramAudio`: the source audio re-timed onto the stage clock: each 20 ms frame that
  arrived at ``a`` plays at ``a + delay``, where ``delay`` is the video's own latency (source
  audio in → the frame that reflects it out of the encoder), so each sample goes out with the
  frame that shows its mouth. The delay follows the measured latency, changed only while the
  source is silent (inaudible). One Opus encoder, 20 ms packets on the clock, silence when
  the source has nothing due.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import av
import numpy as np
from numpy.typing import NDArray

from server.clock import Clock
from server.media.video_out import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE
from server.media.vp8 import RenderedVp8Encoder

log = logging.getLogger(__name__)

AUDIO_RATE = 48_000  # Hz, Opus's clock and what aiortc's decoder delivers
AUDIO_FRAME = 960  # samples per 20 ms packet
AUDIO_FRAME_S = AUDIO_FRAME / AUDIO_RATE  # 0.02 s
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
AUDIO_BACKLOG_S = 2.0  # s of source audio kept waiting for its play-out time at most
AUDIO_LATE_S = 0.04  # s: a frame this far past its play-out time is dropped (catch up)
SILENT_RMS = 60.0  # s16 RMS under which a frame counts as silence (about -55 dBFS)
DELAY_STEP_S = 0.005  # s: the audio delay follows the video latency when it moved more than this
OPUS_BITRATE = 64_000  # bit/s, stereo voice


class _PacketVp8(RenderedVp8Encoder):
    """:class:`RenderedVp8Encoder`'s context and re-open rule, returning ``av.Packet`` s."""

    def __init__(self, cpu_used: int, max_bitrate: int, gop_frames: int) -> None:
        super().__init__(cpu_used, max_bitrate)
        self.gop_frames = gop_frames

    def encode_packets(self, frame: av.VideoFrame, force_keyframe: bool) -> list[av.Packet]:
        """Encode one frame (pts in 1/90000 s) → its packets, stamped like the frame."""
        pts = frame.pts  # PyAV's encode rebases the frame's pts onto the codec's time base
        c = self.codec
        now = float(frame.time) if frame.time is not None else 0.0
        rate = float(c.bit_rate or 0) if c is not None else 0.0
        if c is None or (frame.width, frame.height) != (c.width, c.height) or self._rate_change_due(rate, now):
            c = self.codec = self._open(frame.width, frame.height)
            c.gop_size = self.gop_frames
            self.opens += 1
            self._opened_at = now
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        packets = list(c.encode(frame))
        for p in packets:  # the time base first: PyAV rescales pts when it changes
            p.time_base = VIDEO_TIME_BASE
            p.pts = pts
            p.dts = pts
        return packets


class _PacketH264:
    """libx264 for viewers that take no VP8 (constrained baseline, no B-frames, zero latency):
    Annex B packets, which aiortc's H.264 sender packetizes."""

    def __init__(self, max_bitrate: int, gop_frames: int, fps: float) -> None:
        self.target_bitrate = max_bitrate
        self.gop_frames = gop_frames
        self.fps = fps
        self.codec: Any = None
        self.opens = 0

    def encode_packets(self, frame: av.VideoFrame, force_keyframe: bool) -> list[av.Packet]:
        """Encode one frame (pts in 1/90000 s) → its packets, stamped like the frame."""
        pts = int(frame.pts or 0)
        c = self.codec
        rate = float(c.bit_rate or 0) if c is not None else 0.0
        if c is None or (frame.width, frame.height) != (c.width, c.height) or abs(self.target_bitrate - rate) > 0.25 * rate:
            c = av.CodecContext.create("libx264", "w")
            c.width, c.height = frame.width, frame.height
            c.bit_rate = self.target_bitrate
            c.pix_fmt = "yuv420p"
            c.framerate = Fraction(int(round(self.fps)), 1)
            c.time_base = Fraction(1, int(round(self.fps)))
            c.gop_size = self.gop_frames
            c.max_b_frames = 0
            c.options = {"preset": "ultrafast", "tune": "zerolatency", "level": "31"}
            c.profile = "Baseline"
            self.codec = c
            self.opens += 1
        frame.pict_type = av.video.frame.PictureType.I if force_keyframe else av.video.frame.PictureType.NONE
        frame.pts = int(round(pts * self.fps / VIDEO_CLOCK_RATE))  # libx264 counts frames
        frame.time_base = Fraction(1, int(round(self.fps)))
        packets = list(c.encode(frame))
        for p in packets:
            p.time_base = VIDEO_TIME_BASE
            p.pts = pts
            p.dts = pts
        return packets


class ProgramVideoEncoder:
    """The stage's one video encoder (VP8, or H.264 for viewers that take nothing else);
    ``deliver(packet)`` is called on the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[av.Packet], None],
        *,
        fps: float,
        cpu_used: int,
        max_bitrate: int,
        min_bitrate: int,
        key_interval_s: float = 2.0,
        key_min_gap_s: float = 0.5,
        codec: str = "vp8",
    ) -> None:
        if codec not in ("vp8", "h264"):
            raise ValueError(f"stage video codec must be vp8 or h264, got {codec!r}")
        if not 0.0 < key_min_gap_s <= key_interval_s:
            raise ValueError(f"keyframe gap {key_min_gap_s!r} s must be in (0, keyframe interval {key_interval_s!r} s]")
        self._loop = loop
        self._deliver = deliver
        self.fps = fps
        gop = max(1, int(round(key_interval_s * fps)))
        self.codec = codec
        self._enc: _PacketVp8 | _PacketH264 = _PacketVp8(cpu_used, max_bitrate, gop) if codec == "vp8" else _PacketH264(max_bitrate, gop, fps)
        self.max_bitrate = max_bitrate
        self.min_bitrate = min(min_bitrate, max_bitrate)
        self.key_interval_s = key_interval_s
        self.key_min_gap_s = key_min_gap_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"program-{codec}")
        self._pending: tuple[NDArray[np.uint8], int] | None = None  # (I420 planes, pts 1/90000 s)
        self._busy = False
        self._key_wanted = False
        self._last_key_t = -math.inf  # stream time (s) of the last keyframe
        self.frames = 0  # frames encoded
        self.keyframes = 0
        self.key_requests = 0
        self.replaced = 0  # frames replaced by a newer one while the encoder was busy
        self.encode_ms = 0.0  # running mean encode time, ms
        self.closed = False

    # ------------------------------------------------------------ event-loop side

    def submit(self, yuv: NDArray[np.uint8], pts: int) -> None:
        """Offer the newest frame: I420 planes (H*3/2, W) uint8, ``pts`` in 1/90000 s."""
        if self.closed:
            return
        frame = (np.array(yuv, copy=True), pts)  # the renderer may reuse its buffer
        if self._busy:
            if self._pending is not None:
                self.replaced += 1
            self._pending = frame
            return
        self._start(frame)

    def request_keyframe(self) -> None:
        """An output joined or lost its picture (PLI/FIR): the next allowed frame is a key."""
        self.key_requests += 1
        self._key_wanted = True

    @property
    def target_bitrate(self) -> int:
        """The rate the encoder aims at, bit/s."""
        return int(self._enc.target_bitrate)

    def set_bitrate(self, estimate: int | None) -> None:
        """Follow the most constrained output's estimate (bit/s), clamped to [floor, ceiling]."""
        rate = self.max_bitrate if estimate is None else max(self.min_bitrate, min(int(estimate), self.max_bitrate))
        self._enc.target_bitrate = rate

    def _start(self, frame: tuple[NDArray[np.uint8], int]) -> None:
        self._busy = True
        fut = self._loop.run_in_executor(self._executor, self._encode, *frame)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[list[av.Packet]]) -> None:
        self._busy = False
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("stage VP8 encoder failed: %s", exc)
        else:
            for p in fut.result():
                self._deliver(p)
        if self._pending is not None and not self.closed:
            frame, self._pending = self._pending, None
            self._start(frame)

    # ------------------------------------------------------------ encoder thread

    def _encode(self, yuv: NDArray[np.uint8], pts: int) -> list[av.Packet]:
        t0 = time.perf_counter()
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        now = pts / VIDEO_CLOCK_RATE
        since = now - self._last_key_t
        force = since >= self.key_interval_s or (self._key_wanted and since >= self.key_min_gap_s)
        if force:
            self._key_wanted = False
        packets = self._enc.encode_packets(frame, force)
        if any(p.is_keyframe for p in packets):
            self._last_key_t = now
            self.keyframes += 1
        self.frames += 1
        ms = (time.perf_counter() - t0) * 1000.0
        self.encode_ms = ms if self.frames == 1 else 0.95 * self.encode_ms + 0.05 * ms
        return packets

    def close(self) -> None:
        """Stop encoding (a frame being encoded finishes in its thread and is discarded)."""
        self.closed = True
        self._pending = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        """JSON-able counters."""
        return {
            "frames": self.frames,
            "keyframes": self.keyframes,
            "key_requests": self.key_requests,
            "replaced": self.replaced,
            "encode_ms": round(self.encode_ms, 2),
            "bitrate_kbps": round(self.target_bitrate / 1000),
            "opens": self._enc.opens,
            "codec": self.codec,
        }


def s16_stereo(frame: av.AudioFrame) -> NDArray[np.int16]:
    """A decoded frame as interleaved 48 kHz stereo s16, shape (samples, 2)."""
    if frame.format.name != "s16" or frame.layout.name != "stereo" or frame.sample_rate != AUDIO_RATE:
        raise ValueError(
            f"stage audio must be 48 kHz stereo s16 (what the Opus decoder gives), got "
            f"{frame.sample_rate} Hz {frame.layout.name} {frame.format.name}"
        )
    pcm: NDArray[np.int16] = frame.to_ndarray().astype(np.int16, copy=False).reshape(-1, 2)
    return pcm


class ProgramAudio:
    """The source audio, delayed onto the stage clock and encoded to Opus once.

    ``push`` takes each source frame with its arrival time; :meth:`run` sends a 20 ms packet
    on every tick of the clock through ``deliver`` (silence when nothing is due), and hands the
    same 960 samples, before encoding, to each ``pcm_sinks`` callback ``sink(samples (960, 2)
    int16, index)`` (a local output such as a virtual microphone or a recorder).
    ``deliver=None``: no Opus encoding at all (only PCM sinks listen).
    ``video_latency_s()`` says how late (s) the video shows audio that arrived at a given
    moment (None until known); the delay follows it while the source is silent.
    """

    def __init__(
        self,
        clock: Clock,
        deliver: Callable[[av.Packet], None] | None,
        video_latency_s: Callable[[], float | None],
        initial_delay_s: float,
    ) -> None:
        if not 0.0 <= initial_delay_s <= AUDIO_BACKLOG_S:
            raise ValueError(f"audio delay {initial_delay_s!r} s outside 0..{AUDIO_BACKLOG_S} s")
        self._clock = clock
        self._deliver = deliver
        self.pcm_sinks: list[Callable[[NDArray[np.int16], int], None]] = []
        self._video_latency_s = video_latency_s
        self.delay_s = initial_delay_s
        self.origin: float | None = None  # clock time (s) of the stage's stream time 0 (the video's frame 0)
        self._queue: deque[tuple[float, NDArray[np.int16], bool]] = deque()  # (play-out time s, samples (n, 2), silent)
        self._carry: NDArray[np.int16] = np.zeros((0, 2), np.int16)  # samples of a frame not yet sent
        self._codec: Any = None
        self.packets = 0
        self.silent_packets = 0  # ticks with nothing due
        self.late_drops = 0  # speech frames dropped to catch up (AUDIO_LATE_S late)
        self.silent_skips = 0  # silent frames skipped to catch up (inaudible)
        self.overflow_drops = 0  # source frames dropped because the backlog was full
        self.delay_changes = 0
        self._silent = True  # the last played frame was silence

    def push(self, frame: av.AudioFrame, arrival: float) -> None:
        """One source frame that arrived at ``arrival`` (clock s)."""
        pcm = s16_stereo(frame)
        if len(self._queue) * AUDIO_FRAME_S >= AUDIO_BACKLOG_S:
            self._queue.popleft()
            self.overflow_drops += 1
        silent = float(np.sqrt(np.mean(pcm.astype(np.float32) ** 2))) < SILENT_RMS if pcm.size else True
        self._queue.append((arrival + self.delay_s, pcm, silent))

    def _follow_latency(self) -> None:
        target = self._video_latency_s()
        if target is None or not self._silent:
            return
        target = min(max(target, 0.0), AUDIO_BACKLOG_S / 2)
        if abs(target - self.delay_s) > DELAY_STEP_S:
            shift = target - self.delay_s
            self._queue = deque((due + shift, pcm, silent) for due, pcm, silent in self._queue)
            self.delay_s = target
            self.delay_changes += 1

    def _next_samples(self, now: float) -> NDArray[np.int16] | None:
        """960 samples due by ``now`` (None: nothing due)."""
        # Arrivals come in bursts, and one packet per tick never drains a backlog: a frame that is
        # late is dropped while it is silence (inaudible), and in speech once it is AUDIO_LATE_S late.
        while len(self._queue) > 1 and self._queue[0][0] < now - AUDIO_FRAME_S / 2:
            head = self._queue[0]
            if head[2]:
                self.silent_skips += 1
            elif head[0] < now - AUDIO_LATE_S:
                self.late_drops += 1
            else:
                break
            self._queue.popleft()
        parts = [self._carry] if len(self._carry) else []
        have = len(self._carry)
        while have < AUDIO_FRAME and self._queue and self._queue[0][0] <= now + AUDIO_FRAME_S / 2:
            pcm = self._queue.popleft()[1]
            parts.append(pcm)
            have += len(pcm)
        if have == 0:
            return None
        joined = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if have < AUDIO_FRAME:  # a partial frame: pad with silence
            out = np.zeros((AUDIO_FRAME, 2), np.int16)
            out[:have] = joined
            self._carry = np.zeros((0, 2), np.int16)
            return out
        self._carry = joined[AUDIO_FRAME:]
        return joined[:AUDIO_FRAME]

    def encode(self, samples: NDArray[np.int16], index: int) -> list[av.Packet]:
        """Encode 960 stereo samples as packet ``index`` (pts = index * 960 in 1/48000 s)."""
        if self._codec is None:
            codec: Any = av.CodecContext.create("libopus", "w")
            codec.bit_rate = OPUS_BITRATE
            codec.format = "s16"
            codec.layout = "stereo"
            codec.sample_rate = AUDIO_RATE
            codec.time_base = AUDIO_TIME_BASE
            codec.options = {"application": "voip", "frame_duration": "20"}
            self._codec = codec
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * AUDIO_FRAME
        frame.time_base = AUDIO_TIME_BASE
        packets = list(self._codec.encode(frame))
        for p in packets:  # libopus's pre-skip shifts its own stamps; ours follow the clock
            p.time_base = AUDIO_TIME_BASE  # first: PyAV rescales pts when the time base changes
            p.pts = index * AUDIO_FRAME
            p.dts = p.pts
        return packets

    async def run(self) -> None:
        """Send one packet per 20 ms tick until cancelled."""
        # packet k covers stream time k * 20 ms: the same time line as the video's frames (the
        # recording muxes both by it; RTP gets each track's own offset and sender reports)
        start = self.origin if self.origin is not None else self._clock.now()
        index = max(0, int((self._clock.now() - start) / AUDIO_FRAME_S) + 1)
        while True:
            target = start + index * AUDIO_FRAME_S
            await self._clock.sleep_until(target)
            now = self._clock.now()
            if now - target > 5 * AUDIO_FRAME_S:  # the loop stalled: skip the missed ticks
                index = int((now - start) / AUDIO_FRAME_S)
            self._follow_latency()
            samples = self._next_samples(now)
            if samples is None:
                self.silent_packets += 1
                samples = np.zeros((AUDIO_FRAME, 2), np.int16)
                self._silent = True
            else:
                self._silent = float(np.sqrt(np.mean(samples.astype(np.float32) ** 2))) < SILENT_RMS
            for sink in list(self.pcm_sinks):
                sink(samples, index)
            if self._deliver is not None:
                for p in self.encode(samples, index):
                    self.packets += 1
                    self._deliver(p)
            index += 1

    def stats(self) -> dict[str, Any]:
        """JSON-able counters."""
        return {
            "delay_ms": round(self.delay_s * 1000.0, 1),
            "packets": self.packets,
            "silent_packets": self.silent_packets,
            "late_drops": self.late_drops,
            "silent_skips": self.silent_skips,
            "overflow_drops": self.overflow_drops,
            "delay_changes": self.delay_changes,
            "queued_ms": round(len(self._queue) * AUDIO_FRAME_S * 1000.0),
        }
