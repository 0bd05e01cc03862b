"""VP8 encoding tuned for rendered avatar frames.

aiortc's ``Vp8Encoder`` is set up for camera video: libvpx's temporal denoiser at
``noise-sensitivity`` 4, ``cpu-used`` -6, and a target bitrate that starts at 500 kbit/s and
follows the receiver's REMB estimate up to 1.5 Mbit/s, re-opening the encoder (a keyframe) at
every >10 % step. Rendered frames carry no sensor noise, so the denoiser is pure cost, and a
flat-shaded 512² avatar is at ~45 dB PSNR by 400 kbit/s: the higher rates only buy encode time
(measured with ``bench/vp8_settings.py``, ``ava``, one thread: aiortc's settings 3.3 ms per
frame at 400 kbit/s and 3.9 ms at 1.5 Mbit/s; denoiser off and ``cpu-used`` -12: 2.1 ms at
400 kbit/s, 44.7 dB). :class:`RenderedVp8Encoder` keeps every other aiortc setting (CBR,
``lag-in-frames`` 0, keyframes on request, REMB lowering the rate) and changes those three:
denoiser off, ``cpu_used``, and a ceiling on the target bitrate.

It also changes when a new REMB estimate re-opens the encoder. libvpx through FFmpeg cannot change
its rate in place (setting ``bit_rate`` on an open context does nothing), and every re-open
starts with a keyframe: for ``ava`` at 512², 500 kbit/s, the fresh context's first frame took
11 ms and 5.5 KB against 2.3 ms and 2.0 KB for a delta frame, and the frame after it 9.5 KB.
aiortc re-opens at every >10 % step: in 16 ten-second ``bench/latency.py`` calls (4 sessions
at a time) that was 4.3 re-opens per call, up to four of them within 1.2 s while the estimate
fell, exactly when the link is short of bandwidth; with this rule 3.1 (interleaved runs,
2026-11-22 05:04–05:06 UTC). Here the rate follows a drop below ``DOWN_STEP`` of the running rate
at once (congestion must be relieved now), but a rise only past ``UP_STEP`` once the running rate
has held for ``UP_HOLD_S`` of stream time.

aiortc has no hook to choose an encoder, so :func:`install` wraps the ``get_encoder`` that
``aiortc.rtcrtpsender`` looked up, returning this encoder for VP8 and aiortc's own for
everything else. It is idempotent and affects only the process that calls it (the session
workers, or the server in in-process mode).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import av
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase

DENOISE_OFF = "0"  # libvpx noise-sensitivity: 0 = temporal denoiser off
DEFAULT_CPU_USED = -12  # libvpx cpu-used for real-time VP8: -16..16, larger magnitude = faster
DEFAULT_MAX_BITRATE = 500_000  # bit/s, ceiling on the REMB-driven target (aiortc's start rate)
DOWN_STEP = 0.8  # re-open at once when the target falls below this fraction of the running rate
UP_STEP = 1.25  # re-open for a higher target only above this multiple of the running rate ...
UP_HOLD_S = 5.0  # s of stream time (frame timestamps) ... and once the running rate is this old


class RenderedVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder with the temporal denoiser off, a chosen ``cpu_used`` and a
    ``max_bitrate`` (bit/s) ceiling on the target bitrate the receiver's REMB asks for."""

    def __init__(self, cpu_used: int = DEFAULT_CPU_USED, max_bitrate: int = DEFAULT_MAX_BITRATE) -> None:
        super().__init__()
        if not -16 <= cpu_used <= 16:
            raise ValueError(f"VP8 cpu_used {cpu_used!r} outside -16..16")
        if not 50_000 <= max_bitrate <= 10_000_000:
            raise ValueError(f"VP8 max_bitrate {max_bitrate!r} bit/s outside 50 kbit/s..10 Mbit/s")
        self.cpu_used = cpu_used
        self.max_bitrate = max_bitrate
        self.target_bitrate = min(super().target_bitrate, max_bitrate)
        self.remb_seen = False  # set once the receiver's REMB (or a stage) sets the target
        self.own_codec: Any = None  # the context this class opened (aiortc's would differ)
        self.options: dict[str, str] = {}  # the libvpx options it was given
        self.opens = 0  # encoder (re-)opens so far, each one a keyframe
        self._opened_at: float | None = None  # stream time (s) of the frame the context opened at

    @property
    def target_bitrate(self) -> int:
        """Target bitrate, bit/s (set by aiortc from the receiver's REMB; capped here)."""
        rate: int = Vp8Encoder.target_bitrate.fget(self)  # type: ignore[attr-defined]
        return rate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        cap = getattr(self, "max_bitrate", DEFAULT_MAX_BITRATE)
        Vp8Encoder.target_bitrate.fset(self, min(int(bitrate), cap))  # type: ignore[attr-defined]
        if hasattr(self, "remb_seen"):
            self.remb_seen = True

    def _open(self, width: int, height: int) -> Any:
        """A libvpx context like aiortc's (CBR, real-time, no lag) with our two options."""
        rate = self.target_bitrate
        codec: Any = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height = width, height
        codec.bit_rate = rate
        codec.pix_fmt = "yuv420p"
        codec.gop_size = 3000  # keyframes only when the receiver asks (PLI/FIR)
        codec.qmin, codec.qmax = 2, 56
        self.options = {
            "bufsize": str(rate),  # rc_buf_sz = 1000 ms
            "cpu-used": str(self.cpu_used),
            "deadline": "realtime",
            "lag-in-frames": "0",
            "minrate": str(rate),  # minrate = maxrate = bit_rate: CBR
            "maxrate": str(rate),
            "noise-sensitivity": DENOISE_OFF,
            "overshoot-pct": "15",
            "partitions": "0",
            "static-thresh": "1",
            "undershoot-pct": "100",
        }
        codec.options = dict(self.options)
        codec.thread_count = number_of_threads(width * height, multiprocessing.cpu_count())
        self.own_codec = codec
        return codec

    def _rate_change_due(self, rate: float, now: float) -> bool:
        """Whether the REMB target is far enough from the running ``rate`` (bit/s) to pay a
        keyframe for it at stream time ``now`` (s)."""
        target = float(self.target_bitrate)
        if target < DOWN_STEP * rate:
            return True
        held = self._opened_at is None or now - self._opened_at >= UP_HOLD_S
        return target > UP_STEP * rate and held

    def encode(self, frame: av.frame.Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        """Encode one frame → (RTP payloads, RTP timestamp); (re)opens the context with our
        options on a size change, or on a bitrate change that passes :meth:`_rate_change_due`."""
        assert isinstance(frame, av.VideoFrame)
        c = self.codec
        now = float(frame.time) if frame.time is not None else 0.0
        rate = float(c.bit_rate or 0) if c is not None else 0.0
        if c is None or (frame.width, frame.height) != (c.width, c.height) or self._rate_change_due(rate, now):
            c = self.codec = self._open(frame.width, frame.height)
            self.opens += 1
            self._opened_at = now
        # the rest of aiortc's Vp8Encoder.encode, whose own >10 % rule would re-open the
        # context with aiortc's options whenever the target and the running rate differ
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        data = b"".join(bytes(p) for p in c.encode(frame))  # stamps an unstamped frame
        payloads = self._packetize(data, self.picture_id)
        if frame.pts is None or frame.time_base is None:
            raise ValueError(f"VP8 frame still without a timestamp (pts {frame.pts!r}, time base {frame.time_base!r})")
        timestamp = convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)
        self.picture_id = (self.picture_id + 1) % (1 << 15)
        return payloads, timestamp


def install(cpu_used: int = DEFAULT_CPU_USED, max_bitrate: int = DEFAULT_MAX_BITRATE) -> None:
    """Make aiortc's RTP senders in this process encode VP8 with :class:`RenderedVp8Encoder`."""
    import aiortc.rtcrtpsender as sender

    current = sender.get_encoder
    original = getattr(current, "__wrapped__", current)

    def get_encoder(codec: Any) -> Any:
        if str(getattr(codec, "mimeType", "")).lower() == "video/vp8":
            return RenderedVp8Encoder(cpu_used, max_bitrate)
        return original(codec)

    get_encoder.__wrapped__ = original  # type: ignore[attr-defined]
    sender.get_encoder = get_encoder
