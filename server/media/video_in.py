"""Receiving video in aiortc without a frame of added delay (``avatar client``, the headless viewer).

aiortc's video ``JitterBuffer`` hands a frame to the decoder only when the first packet of the
*next* frame arrives (a new RTP timestamp), so every received frame waits one frame interval
(33 ms at 30 fps) although its last packet carries the RTP marker bit (RFC 7741: set on the last
packet of a VP8 frame). :class:`MarkerJitterBuffer` releases a frame as soon as its packets from
the first to the marked one are all in; without a marker (lost, or a sender that sets none) it
falls back to aiortc's rule.
"""

from __future__ import annotations

from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame

VIDEO_CAPACITY = 512  # packets, as aiortc's own video buffer


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video buffer, releasing each frame at its marked last packet."""

    def __init__(self, capacity: int = VIDEO_CAPACITY) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self.early = 0  # frames released at their marker, before the next frame began

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if self._origin is None:
            return None
        packets = []
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                break
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                break  # the oldest frame has no marked last packet: aiortc's rule below
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                self.early += 1
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)  # type: ignore[attr-defined]
        return super()._remove_frame(sequence_number)


def install_video(receiver: Any) -> MarkerJitterBuffer:
    """Replace a video ``RTCRtpReceiver``'s jitter buffer (before any packet arrived)."""
    attr = "_RTCRtpReceiver__jitter_buffer"
    if not isinstance(getattr(receiver, attr, None), JitterBuffer):
        raise RuntimeError(f"aiortc's RTCRtpReceiver has no {attr!r}: this aiortc version is not supported by server/media/video_in.py")
    buf = MarkerJitterBuffer()
    setattr(receiver, attr, buf)
    return buf
