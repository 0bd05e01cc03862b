"""Whole-path latency: from the speaker's capture of a microphone frame to the moment the
speaker's client presents the avatar frame that reflects it.

The server knows, for each video frame it sends, which microphone audio it newly reflects
(the arrival times the pipeline hands back). :class:`WholePath` stamps that audio and that
frame along the way, on the server's wallclock (ms since 1970):

* the audio's RTP timestamp as it was on the wire (the receiver's frames count from the
  first one), mapped onto the sender's wallclock by its RTCP sender reports
  (:class:`SenderReports`): the *capture* time. A browser's report maps its RTP clock onto
  the moment the frame was captured; aiortc's onto the moment its packet was sent;
* the RTP packet's arrival at the server (the jitter buffer's stamp), the decoded frame
  leaving aiortc's receiver, the video frame leaving the avatar track, and its last RTP
  packet leaving the server together with the frame's RTP timestamp (90 kHz), read from
  aiortc's sender once it asks for the next frame.

The finished stamps go to the client (event ``frame_times``); the client answers with when it
received and presented those frames (control ``frame_times``), and :meth:`WholePath.report`
turns each match into the whole path and its segments (:data:`SEGMENTS`).

aiortc has no public hook for the RTP timestamps or the sender reports, so this reads the
same private attributes :mod:`server.media.jitter` relies on (aiortc >= 1.14); where they are
missing it measures nothing rather than failing the call.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiortc.rtp import RtcpSrPacket

from server.stats import RollingStats

NTP_EPOCH_OFFSET = 2_208_988_800  # s between 1900 (NTP) and 1970 (Unix)
MIC_RATE = 48_000  # Hz, the Opus RTP clock
KEEP_AUDIO = 512  # decoded microphone frames remembered (~10 s of 20 ms frames)
KEEP_FRAMES = 600  # sent video frames remembered for the client's report (~20 s at 30 fps)
MAX_PENDING = 300  # stamped frames waiting for the next ``frame_times`` event

# name -> what it spans; they add up to the whole path
SEGMENTS: dict[str, str] = {
    "uplink": "capture → the RTP packet arriving at the server (sender's encoder and packetisation, network)",
    "jitter_decode": "packet arrival → decoded audio leaving the server's receiver (jitter buffer, Opus decode)",
    "server": "decoded audio → the video frame reflecting it leaving the avatar track (pipeline, animation, rendering)",
    "encode_send": "frame out of the track → its last RTP packet sent (VP8 encode, packetisation)",
    "downlink": "last packet sent → the client receiving the frame (network, for aiortc also the client's decode)",
    "client": "frame received → presented (the client's jitter buffer, decode and compositing)",
}
WHOLE_PATH = "capture → presentation of the frame reflecting it (what a person sees)"


def ntp_to_unix(ntp: int) -> float:
    """A 64-bit NTP timestamp (s since 1900, 32.32 fixed point) → s since 1970."""
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / (1 << 32) - NTP_EPOCH_OFFSET


def wall_ms() -> float:
    """The wallclock now, ms since 1970."""
    return time.time() * 1000.0


def rtp_delta(a: int, b: int) -> int:
    """``a - b`` of two 32-bit RTP timestamps, the nearest way round (wraps handled)."""
    d = (a - b) % (1 << 32)
    return d - (1 << 32) if d >= 1 << 31 else d


@dataclass
class SenderReports:
    """The (NTP wallclock s since 1970, RTP timestamp) pairs of one track's RTCP sender reports."""

    pairs: list[tuple[float, int]] = field(default_factory=list)
    keep: int = 64  # pairs kept (the latest is the one used)

    def add(self, wall_s: float, rtp: int) -> None:
        """One sender report: the sender's clock read ``wall_s`` when its RTP clock read ``rtp``."""
        self.pairs.append((wall_s, int(rtp) & 0xFFFFFFFF))
        if len(self.pairs) > self.keep:
            del self.pairs[: len(self.pairs) - self.keep]

    def wallclock(self, rtp: int, rate: int) -> float | None:
        """The sender's wallclock (s since 1970) of RTP timestamp ``rtp`` at ``rate`` Hz (latest report)."""
        if not self.pairs:
            return None
        ntp, ref = self.pairs[-1]
        return ntp + rtp_delta(rtp, ref) / rate


def watch_sender_reports(receiver: Any, sr: SenderReports) -> None:
    """Record the RTCP sender reports an aiortc ``RTCRtpReceiver`` gets into ``sr`` (aiortc
    keeps only what it needs for its own receiver reports)."""
    original = receiver._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            sr.add(ntp_to_unix(int(info.ntp_timestamp)), int(info.rtp_timestamp))
        await original(packet)

    receiver._handle_rtcp_packet = handle


def wire_rtp(receiver: Any, pts: int | None) -> int | None:
    """The RTP timestamp on the wire of a frame an aiortc ``receiver`` decoded with ``pts``
    (aiortc's frames count from the first timestamp received); None when unknown."""
    if pts is None:
        return None
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    origin = getattr(mapper, "_origin", None)
    return None if origin is None else (int(origin) + int(pts)) & 0xFFFFFFFF


def last_sent(sender: Any) -> tuple[int, float, int] | None:
    """What an aiortc ``RTCRtpSender`` sent last: (RTP timestamp, wallclock ms it went out,
    packets sent so far); None before any packet (or if aiortc changed)."""
    count = getattr(sender, "_RTCRtpSender__packet_count", None)
    rtp = getattr(sender, "_RTCRtpSender__rtp_timestamp", None)
    ntp = getattr(sender, "_RTCRtpSender__ntp_timestamp", None)
    if not isinstance(count, int) or not isinstance(rtp, int) or not isinstance(ntp, int) or count == 0:
        return None
    return rtp, ntp_to_unix(ntp) * 1000.0, count


def _ms(x: float | None) -> float | None:
    """A time in ms rounded to 0.1 ms (None stays None)."""
    return None if x is None else round(x, 1)


@dataclass(slots=True)
class _Audio:
    mic_rtp: int | None  # RTP timestamp on the wire (48 kHz)
    arrival_ms: float | None  # its packet's arrival at the server (wallclock ms)
    decoded_ms: float  # the decoded frame leaving aiortc's receiver (wallclock ms)


@dataclass(slots=True)
class FrameStamp:
    """One sent video frame, the newest microphone frame it newly reflects (wallclock ms; the
    ``frame_times`` event's fields) and all of them (``reflected``: each is one whole-path sample)."""

    mic_rtp: int | None
    arrival_ms: float | None
    decoded_ms: float
    out_ms: float  # the frame leaving the avatar track
    rtp: int | None = None  # the frame's RTP timestamp (90 kHz), once sent
    sent_ms: float | None = None  # its last RTP packet sent
    reflected: list[_Audio] = field(default_factory=list)  # every microphone frame it newly reflects

    def event(self, capture_ms: float | None) -> dict[str, Any]:
        """The ``frame_times`` event's entry for this frame."""
        return {"rtp": self.rtp, "mic_rtp": self.mic_rtp, "capture_ms": _ms(capture_ms), "arrival_ms": _ms(self.arrival_ms),
                "decoded_ms": _ms(self.decoded_ms), "out_ms": _ms(self.out_ms), "sent_ms": _ms(self.sent_ms)}


class WholePath:
    """One call's stamps (see the module doc). Feed :meth:`audio` with each decoded microphone
    frame, :meth:`frame_out` with each video frame as it leaves the track, :meth:`report` with
    the client's ``frame_times``; :meth:`take_pending` gives the entries of the next event."""

    def __init__(self, receiver: Any = None, sender: Any = None, jitter: Any = None) -> None:
        self.receiver = receiver  # the microphone's RTCRtpReceiver
        self.sender = sender  # the avatar video's RTCRtpSender
        self.jitter = jitter  # the receive buffer (``arrival_of(rtp)``: packet arrival, monotonic s)
        self.mic_sr = SenderReports()
        if receiver is not None:
            watch_sender_reports(receiver, self.mic_sr)
        self._audio: OrderedDict[float, _Audio] = OrderedDict()
        self._frames: OrderedDict[int, FrameStamp] = OrderedDict()  # by video RTP timestamp
        self._last: FrameStamp | None = None  # returned to the sender, not yet known as sent
        self._last_count = 0
        self._pending: list[FrameStamp] = []
        self.whole = RollingStats()
        self.segments = {name: RollingStats() for name in SEGMENTS}
        self.clock_offset_ms: float | None = None  # the client's estimate of server − client clock
        self.unmatched = 0  # reported frames the server no longer (or never) knew
        self._early: list[list[float | None]] = []  # reported before the first sender report

    def audio(self, arrival: float, pts: int | None) -> None:
        """A decoded microphone frame with ``pts`` reached the session at ``arrival`` (its clock, s)."""
        now_ms = wall_ms()
        rtp = wire_rtp(self.receiver, pts)
        packet_ms: float | None = None
        if rtp is not None and self.jitter is not None and hasattr(self.jitter, "arrival_of"):
            mono = self.jitter.arrival_of(rtp)
            if mono is not None:
                packet_ms = now_ms - (time.monotonic() - mono) * 1000.0
        self._audio[arrival] = _Audio(rtp, packet_ms, now_ms)
        while len(self._audio) > KEEP_AUDIO:
            self._audio.popitem(last=False)

    def frame_out(self, sources: list[float]) -> None:
        """A video frame newly reflecting the audio that arrived at ``sources`` (session clock s)
        leaves the track now. The sender has sent the previous one by now: stamp it."""
        now_ms = wall_ms()
        self._stamp_sent()
        newest = self._audio.get(max(sources)) if sources else None
        reflected = [a for a in (self._audio.get(t) for t in sources) if a is not None and a.mic_rtp is not None]
        self._last = None if newest is None else FrameStamp(newest.mic_rtp, newest.arrival_ms, newest.decoded_ms, now_ms,
                                                            reflected=reflected)

    def _stamp_sent(self) -> None:
        sent = last_sent(self.sender) if self.sender is not None else None
        if sent is None:
            return
        rtp, sent_ms, count = sent
        frame, self._last = self._last, None
        if count == self._last_count:  # the previous frame was not sent (sender disabled)
            return
        self._last_count = count
        if frame is None or frame.mic_rtp is None:
            return
        frame.rtp, frame.sent_ms = rtp, sent_ms
        self._frames[rtp] = frame
        while len(self._frames) > KEEP_FRAMES:
            self._frames.popitem(last=False)
        self._pending.append(frame)
        if len(self._pending) > MAX_PENDING:
            del self._pending[: len(self._pending) - MAX_PENDING]

    def capture_ms(self, frame: FrameStamp) -> float | None:
        """The sender's capture time (its wallclock, ms) of ``frame``'s microphone audio, by
        the latest sender report; None before the first."""
        if frame.mic_rtp is None:
            return None
        wall = self.mic_sr.wallclock(frame.mic_rtp, MIC_RATE)
        return None if wall is None else wall * 1000.0

    def take_pending(self) -> list[dict[str, Any]]:
        """The ``frame_times`` entries of the frames sent since the last call."""
        out = [f.event(self.capture_ms(f)) for f in self._pending]
        self._pending = []
        return out

    def report(self, frames: list[list[float | None]], clock_offset_ms: float | None) -> int:
        """The client's ``[video RTP timestamp, receive ms | None, present ms]`` per frame (its
        wallclock) and its estimate of (server − client) clock, ms; returns frames matched."""
        if clock_offset_ms is not None:
            self.clock_offset_ms = clock_offset_ms
        off = self.clock_offset_ms or 0.0
        matched = 0
        rows, self._early = [*self._early, *frames], []
        for row in rows:
            rtp, receive, present = row
            frame = self._frames.get(int(rtp)) if rtp is not None else None
            if frame is not None and present is not None and not self.mic_sr.pairs:
                self._early.append(row)  # before the sender's first report: try again with the next
                continue
            capture = self.capture_ms(frame) if frame is not None else None
            if frame is None or present is None or capture is None or frame.sent_ms is None:
                self.unmatched += 1
                continue
            received = present if receive is None else receive
            # every microphone frame the video frame newly reflects: a sound waits for the next
            # video tick, so the newest alone would leave out up to a frame interval
            for a in frame.reflected or [_Audio(frame.mic_rtp, frame.arrival_ms, frame.decoded_ms)]:
                cap = self.mic_sr.wallclock(a.mic_rtp, MIC_RATE) if a.mic_rtp is not None else None
                if cap is None:
                    continue
                cap *= 1000.0
                arrival = a.decoded_ms if a.arrival_ms is None else a.arrival_ms
                self.whole.add(present - cap)
                parts = {
                    "uplink": arrival - off - cap,
                    "jitter_decode": a.decoded_ms - arrival,
                    "server": frame.out_ms - a.decoded_ms,
                    "encode_send": frame.sent_ms - frame.out_ms,
                    "downlink": received + off - frame.sent_ms,
                    "client": present - received,
                }
                for name, value in parts.items():
                    self.segments[name].add(value)
            matched += 1
            del self._frames[int(frame.rtp or 0)]  # a frame counts once
        if len(self._early) > KEEP_FRAMES:
            del self._early[: len(self._early) - KEEP_FRAMES]
        return matched

    def stats(self) -> dict[str, Any]:
        """``whole_path_ms`` {p50,p95,n}, ``whole_path_segments_ms`` {segment: {p50,p95,n}} and
        the clock offset used (ms)."""
        return {
            "whole_path_ms": self.whole.summary(),
            "whole_path_segments_ms": {name: s.summary() for name, s in self.segments.items()},
            "whole_path_clock_offset_ms": None if self.clock_offset_ms is None else round(self.clock_offset_ms, 1),
        }
