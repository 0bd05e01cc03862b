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

DENOISE_OFF = "0"  # libvpx noise-sensitivity: 0 = temporal denoiser off
DEFAULT_CPU_USED = -12  # libvpx cpu-used for real-time VP8: -16..16, larger magnitude = faster
DEFAULT_MAX_BITRATE = 500_000  # bit/s, ceiling on the REMB-driven target (aiortc's start rate)


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
        self.own_codec: Any = None  # the context this class opened (aiortc's would differ)
        self.options: dict[str, str] = {}  # the libvpx options it was given

    @property
    def target_bitrate(self) -> int:
        """Target bitrate, bit/s (set by aiortc from the receiver's REMB; capped here)."""
        rate: int = Vp8Encoder.target_bitrate.fget(self)  # type: ignore[attr-defined]
        return rate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        cap = getattr(self, "max_bitrate", DEFAULT_MAX_BITRATE)
        Vp8Encoder.target_bitrate.fset(self, min(int(bitrate), cap))  # type: ignore[attr-defined]

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

    def encode(self, frame: av.frame.Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        """Encode one frame → (RTP payloads, RTP timestamp); (re)opens the context on a size or
        >10 % bitrate change exactly when aiortc would, but with our options."""
        assert isinstance(frame, av.VideoFrame)
        c = self.codec
        rate = float(c.bit_rate or 0) if c is not None else 0.0
        if c is None or (frame.width, frame.height) != (c.width, c.height) or abs(self.target_bitrate - rate) > 0.1 * rate:
            self.codec = self._open(frame.width, frame.height)
        return super().encode(frame, force_keyframe)


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
