"""Outputs' side of the fan-out: per-output mailboxes and the tracks that drain them.

Every output owns a :class:`PacketMailbox` per medium. The stage's encoders put each encoded
packet into every mailbox; a mailbox holds at most a few packets and never blocks the producer:

- audio (Opus frames decode independently): the oldest packet is dropped when it is full;
- video (VP8 deltas depend on the frames before them): when it is full the whole backlog is
  dropped and the mailbox waits for the next keyframe, asking the encoder for one, so a viewer
  that stalls resumes with a clean picture instead of a smeared one, and never holds back the
  others.

:class:`EncodedTrack` is an aiortc track whose ``recv`` returns these ``av.Packet`` s: aiortc's
RTP sender then only packetizes them (no encode per viewer).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

VIDEO_MAILBOX = 4  # packets (~133 ms at 30 fps) a video output may fall behind before it resyncs
AUDIO_MAILBOX = 10  # 20 ms Opus packets (200 ms) an audio output may fall behind


class PacketMailbox:
    """A bounded mailbox of encoded packets for one output (event-loop thread only).

    ``keyframes``: the medium has inter-frame dependencies (video): on overflow the backlog is
    dropped and packets are skipped until a keyframe, after calling ``want_keyframe()``.
    """

    def __init__(self, maxlen: int, *, keyframes: bool = False, want_keyframe: Callable[[], None] | None = None) -> None:
        if maxlen < 1:
            raise ValueError(f"mailbox size must be >= 1 packet, got {maxlen}")
        self._q: deque[av.Packet] = deque()
        self._maxlen = maxlen
        self._keyframes = keyframes
        self._want_keyframe = want_keyframe
        self._ready = asyncio.Event()
        self.waiting_for_key = keyframes  # a video output starts on a keyframe
        self.dropped = 0  # packets this output lost to its own slowness
        self.delivered = 0  # packets handed to the output
        self.closed = False

    def put(self, packet: av.Packet) -> None:
        """Offer one packet (never blocks, never raises)."""
        if self.closed:
            return
        if self._keyframes:
            if self.waiting_for_key and not packet.is_keyframe:
                self.dropped += 1
                return
            self.waiting_for_key = False
            if len(self._q) >= self._maxlen:
                self.dropped += len(self._q) + 1
                self._q.clear()
                self.waiting_for_key = True
                if self._want_keyframe is not None:
                    self._want_keyframe()
                return
        elif len(self._q) >= self._maxlen:
            self._q.popleft()
            self.dropped += 1
        self._q.append(packet)
        self._ready.set()

    async def get(self) -> av.Packet:
        """The next packet; raises :class:`MediaStreamError` once closed and empty."""
        while not self._q:
            if self.closed:
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        self.delivered += 1
        return self._q.popleft()

    def open(self, start: list[av.Packet] | None = None) -> None:
        """Start taking packets; a video mailbox starts at a keyframe: ``start`` (a keyframe and
        the frames after it, put at once even beyond the size) or the next one to come."""
        self.closed = False
        self._q.clear()
        if start:
            self._q.extend(start)
            self.waiting_for_key = False
            self._ready.set()
        else:
            self.waiting_for_key = self._keyframes

    def __len__(self) -> int:
        return len(self._q)

    def close(self) -> None:
        """No more packets: a waiting ``get`` raises :class:`MediaStreamError`."""
        self.closed = True
        self._q.clear()
        self._ready.set()


class EncodedTrack(MediaStreamTrack):
    """An aiortc track of pre-encoded packets taken from one :class:`PacketMailbox`."""

    def __init__(self, kind: str, mailbox: PacketMailbox) -> None:
        super().__init__()
        if kind not in ("audio", "video"):
            raise ValueError(f"track kind must be audio or video, got {kind!r}")
        self.kind = kind
        self.mailbox = mailbox

    async def recv(self) -> av.Packet:
        """The next encoded packet (aiortc packetizes it without encoding)."""
        if self.readyState != "live":
            raise MediaStreamError
        return await self.mailbox.get()

    def stop(self) -> None:
        """End the track and its mailbox."""
        self.mailbox.close()
        super().stop()
