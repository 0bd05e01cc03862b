"""A low-latency receive path for the microphone: an adaptive jitter buffer for Opus RTP.

aiortc's audio ``RTCRtpReceiver`` holds a ``JitterBuffer(capacity=16, prefetch=4)``: a packet is
handed to the decoder only once four later packets have arrived, so every 20 ms frame waits
80 ms even on a loopback link without any jitter. After a lost packet it waits until the gap
falls out of its 16-slot window (320 ms), and since it releases at most one frame per arriving
packet the backlog it built then never drains.

:class:`AdaptiveJitterBuffer` releases each packet the moment it can be released in sequence
order, and holds packets back only behind a gap, for at most a *target delay* estimated from
what it measured (as WebRTC's NetEq sizes its buffer from measured delays). The consumer here
is not a sound card but the viseme pipeline, which takes frames whenever they come: holding
in-order packets would only add delay, so the one thing the buffer waits for is a missing
packet that may still arrive out of order:

* RFC 3550 interarrival jitter ``J += (|D| - J) / 16``, D the change in transit
  ``arrival - ts / rate`` between consecutive arrivals;
* reorder delay of a packet: how long after a later packet it arrived; its peak is held for
  ``PEAK_HOLD_S`` and then decays with half-life ``PEAK_HALF_LIFE_S``;
* target = clamp(max(``K_JITTER`` · J, ``PEAK_HEADROOM`` · peak reorder delay), 0,
  ``max_delay_ms``): a jittery or reordering link raises it at once, a clean one brings it
  back to ~0;
* a missing packet is given up ``target`` after the first later packet arrived (a sender
  that pauses is never "concealed"): it is replaced by an Opus packet-loss concealment frame
  (:func:`opus_plc_payload`: a TOC-only Opus packet, which libopus decodes through PyAV by
  extrapolating the last frames, so the decoded timeline stays continuous). Gaps longer than
  ``MAX_CONCEAL`` packets are skipped instead (counted as lost);
* a packet arriving after its slot was concealed is *late* and dropped; one already held or
  released is a *duplicate* and ignored; 16-bit sequence numbers and 32-bit timestamps are
  unwrapped; a jump of more than ``MAX_JUMP`` packets restarts the buffer (a new stream);
* at most ``capacity`` packets are held: a packet further ahead forces the oldest out.

:func:`install_audio` puts it into a peer connection's audio receivers in place of aiortc's
(``[audio] jitter = "adaptive"``), or wraps aiortc's own buffer to measure it
(``jitter = "aiortc"``). aiortc has no hook for this, so it replaces the receiver's private
jitter-buffer attribute, checking that the attributes it needs exist (aiortc >= 1.14).
It is idempotent per receiver.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from server.stats import RollingStats

K_JITTER = 2.0  # target >= this many RFC 3550 jitters ...
PEAK_HEADROOM = 1.25  # ... and >= this multiple of the peak reorder delay (one as late as the peak is in time)
PEAK_HOLD_S = 2.0  # s the peak reorder delay the target follows is held ...
PEAK_HALF_LIFE_S = 1.0  # s ... before it decays with this half-life
MAX_CONCEAL = 10  # longest gap (packets) filled with concealment; longer ones are skipped
MAX_JUMP = 1000  # sequence jump (packets, either way) treated as a new stream
DEFAULT_CAPACITY = 32  # packets held at most (640 ms of 20 ms Opus)
DEFAULT_MAX_DELAY_MS = 100.0  # ms, ceiling on the target ([audio] jitter_max_ms)
DEFAULT_FRAME_TICKS = 960  # RTP ticks per packet until measured (20 ms at 48 kHz)
EPS_S = 1e-9


def opus_frame_ticks(toc: int) -> int:
    """Samples at 48 kHz of one Opus frame with TOC byte ``toc`` (RFC 6716 §3.1)."""
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        return (480, 960, 1920, 2880)[config % 4]
    if config < 16:  # hybrid: 10, 20 ms
        return (480, 960)[config % 2]
    return (120, 240, 480, 960)[config % 4]  # CELT: 2.5, 5, 10, 20 ms


def opus_plc_payload(last: bytes, ticks: int) -> bytes:
    """An Opus packet of ``ticks`` (48 kHz samples) that libopus decodes as lost: frames of
    zero length with the configuration (mode, bandwidth, frame size) of the packet ``last``.
    RFC 6716 §3.2.1: a zero-length frame is decoded by packet-loss concealment."""
    toc = last[0] if last else 0xFC  # CELT fullband 20 ms stereo when nothing is known
    n = max(1, min(48, round(ticks / opus_frame_ticks(toc))))
    if n == 1:
        return bytes([toc & 0xFC])  # code 0: one frame, here of zero bytes
    return bytes([(toc & 0xFC) | 3, n])  # code 3, CBR, n frames of zero bytes


@dataclass(slots=True)
class Release:
    """One packet leaving the buffer, in sequence order."""

    seq: int  # extended (unwrapped) sequence number
    timestamp: int  # RTP timestamp, 32-bit
    payload: bytes  # Opus packet (a concealment packet when ``concealed``)
    concealed: bool
    arrival: float | None  # s, clock time it arrived (None: concealed)
    released: float  # s, clock time it left


@dataclass(slots=True)
class _Held:
    ts: int  # extended RTP timestamp
    payload: bytes
    arrival: float


def _unwrap(value: int, ref: int, bits: int) -> int:
    """``value`` (``bits`` wide) as the unwrapped number nearest to ``ref``."""
    mod = 1 << bits
    d = (value - ref) % mod
    if d >= mod >> 1:
        d -= mod
    return ref + d


class AdaptiveJitterBuffer:
    """The buffer, without I/O: :meth:`push` packets, and :meth:`poll` at :meth:`next_due`.

    Times are seconds of one monotonic clock the caller passes in; ``clock_rate`` is RTP ticks
    per second (48000 for Opus); ``max_delay_ms`` bounds the target delay, ``capacity`` the
    packets held.
    """

    def __init__(
        self,
        clock_rate: int = 48000,
        max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
        capacity: int = DEFAULT_CAPACITY,
        conceal: Callable[[bytes, int], bytes] = opus_plc_payload,
    ) -> None:
        if not 8000 <= clock_rate <= 192_000:
            raise ValueError(f"jitter buffer clock_rate {clock_rate!r} Hz outside 8000..192000")
        if not 0.0 <= max_delay_ms <= 1000.0:
            raise ValueError(f"jitter buffer max_delay_ms {max_delay_ms!r} outside 0..1000 ms")
        if not 4 <= capacity <= 1024:
            raise ValueError(f"jitter buffer capacity {capacity!r} packets outside 4..1024")
        self.rate = clock_rate
        self.max_delay_s = max_delay_ms / 1000.0
        self.capacity = capacity
        self._conceal = conceal
        self._held: dict[int, _Held] = {}
        self._next: int | None = None  # extended seq released next
        self._hi = 0  # highest extended seq seen
        self._hi_ts = 0  # extended timestamp of the highest seq
        self._ts0 = 0  # extended timestamp origin (media time 0)
        self._last_ts = 0  # extended timestamp of the last released packet
        self._last_payload = b""
        self._frame_ticks = DEFAULT_FRAME_TICKS
        self._concealed_at: dict[int, float] = {}  # recently concealed seq -> when its gap was seen (s)
        self._last_transit: float | None = None
        self._last_arrival_ts: int | None = None
        self.jitter_s = 0.0  # RFC 3550 interarrival jitter
        self._peak_s = 0.0
        self._peak_at = 0.0
        self.delay_ms = RollingStats(500)  # arrival -> release of the packets released
        self.max_delay_seen_ms = 0.0
        self.target_max_ms = 0.0  # the largest target so far
        self.received = 0
        self.released = 0
        self.late = 0
        self.duplicates = 0
        self.lost = 0
        self.concealed = 0
        self.overflows = 0
        self.restarts = 0

    # ------------------------------------------------------------------ estimates

    def target_ms(self, now: float) -> float:
        """The current target delay, ms."""
        return self._target(now) * 1000.0

    def _peak(self, now: float) -> float:
        """The peak reorder delay (s) held, then decaying, at ``now``."""
        return self._peak_s * 0.5 ** (max(0.0, now - self._peak_at - PEAK_HOLD_S) / PEAK_HALF_LIFE_S)

    def _target(self, now: float) -> float:
        peak = self._peak(now)
        return min(self.max_delay_s, max(K_JITTER * self.jitter_s, PEAK_HEADROOM * peak))

    def _measure(self, ts: int, now: float, reorder_s: float | None) -> None:
        """Update the RFC 3550 jitter with an arrival at ``now`` of timestamp ``ts``, and the
        peak reorder delay with ``reorder_s`` (s this packet came after a later one), if any."""
        transit = now - (ts - self._ts0) / self.rate
        if self._last_transit is not None and ts != self._last_arrival_ts:
            self.jitter_s += (abs(transit - self._last_transit) - self.jitter_s) / 16.0
        self._last_transit, self._last_arrival_ts = transit, ts
        if reorder_s is not None and reorder_s >= self._peak(now):
            self._peak_s, self._peak_at = reorder_s, now
        self.target_max_ms = max(self.target_max_ms, self.target_ms(now))

    # ------------------------------------------------------------------ input

    def push(self, seq: int, timestamp: int, payload: bytes, now: float) -> list[Release]:
        """One RTP packet (16-bit ``seq``, 32-bit ``timestamp``, Opus ``payload``) arrived at
        ``now`` (s); returns the packets released by it, in order."""
        out: list[Release] = []
        if self._next is None:
            self._reset(seq, timestamp)
        ext = _unwrap(seq & 0xFFFF, self._hi, 16)
        if abs(ext - self._hi) > MAX_JUMP:  # a new stream: flush what we hold, start over
            out.extend(self._flush(now))
            self.restarts += 1
            self._reset(seq, timestamp)
            ext = self._hi
        assert self._next is not None
        self.received += 1
        if ext in self._held or (ext < self._next and ext not in self._concealed_at):
            self.duplicates += 1
            return out
        ts = _unwrap(timestamp & 0xFFFFFFFF, self._hi_ts, 32)
        if ext < self._next:  # its slot was concealed already: late; it teaches the target most
            self._measure(ts, now, now - self._concealed_at[ext])
            self.late += 1
            return out
        later = [h.arrival for e, h in self._held.items() if e > ext]
        self._measure(ts, now, now - min(later) if later else None)
        if ext > self._hi:
            if ext - self._hi == 1 and ts > self._hi_ts:
                self._frame_ticks = ts - self._hi_ts
            self._hi, self._hi_ts = ext, ts
        while ext >= self._next + self.capacity:  # too far ahead: force the oldest out
            self.overflows += 1
            if not self._held:  # nothing to force out: skip straight to this packet
                self.lost += ext - self._next
                self._next = ext
                self._last_ts = ts - self._frame_ticks
                break
            out.extend(self._step(now, force=True))
        self._held[ext] = _Held(ts, payload, now)
        out.extend(self.poll(now))
        return out

    def _reset(self, seq: int, timestamp: int) -> None:
        self._held.clear()
        self._next = self._hi = seq & 0xFFFF
        self._hi_ts = self._ts0 = self._last_ts = timestamp & 0xFFFFFFFF
        self._last_ts -= self._frame_ticks
        self._last_transit = self._last_arrival_ts = None

    # ------------------------------------------------------------------ output

    def next_due(self, now: float) -> float | None:
        """Clock time (s) at which :meth:`poll` will give up waiting for the missing head
        packet, or None (nothing held behind a gap)."""
        if self._next is None or not self._held:
            return None
        if self._next in self._held:
            return now
        return min(h.arrival for h in self._held.values()) + self._target(now)

    def poll(self, now: float) -> list[Release]:
        """The packets due at ``now`` (s), concealment for the missing ones, in order."""
        out: list[Release] = []
        while self._held:
            step = self._step(now, force=False)
            if not step:
                break
            out.extend(step)
        return out

    def _step(self, now: float, *, force: bool) -> list[Release]:
        """Release (or conceal, or skip) the head packet if due (or ``force``)."""
        assert self._next is not None
        head = self._held.get(self._next)
        if head is not None:  # in order: at once
            del self._held[self._next]
            rel = Release(self._next, head.ts & 0xFFFFFFFF, head.payload, False, head.arrival, now)
            self._last_ts, self._last_payload = head.ts, head.payload
            self._next += 1
            self.released += 1
            delay = (now - head.arrival) * 1000.0
            self.delay_ms.add(delay)
            self.max_delay_seen_ms = max(self.max_delay_seen_ms, delay)
            return [rel]
        if not self._held:
            return []
        ts = self._last_ts + self._frame_ticks
        due = self.next_due(now)
        if not force and due is not None and now < due - EPS_S:
            return []
        gap = min(self._held) - self._next
        if gap > MAX_CONCEAL:  # a long gap: skip it, the decoder restarts from the next packet
            self.lost += gap
            first = min(self._held)
            self._last_ts = self._held[first].ts - self._frame_ticks
            self._next = first
            return self._step(now, force=True)
        self.lost += 1
        self.concealed += 1
        self._concealed_at[self._next] = min(h.arrival for h in self._held.values())  # when the gap was seen
        while len(self._concealed_at) > 64:
            del self._concealed_at[next(iter(self._concealed_at))]
        payload = self._conceal(self._last_payload, self._frame_ticks)
        rel = Release(self._next, ts & 0xFFFFFFFF, payload, True, None, now)
        self._last_ts = ts
        self._next += 1
        return [rel]

    def _flush(self, now: float) -> list[Release]:
        """Everything held, now, in order (missing ones skipped)."""
        out: list[Release] = []
        for ext in sorted(self._held):
            h = self._held.pop(ext)
            out.append(Release(ext, h.ts & 0xFFFFFFFF, h.payload, False, h.arrival, now))
            self.released += 1
            self.delay_ms.add((now - h.arrival) * 1000.0)
        return out

    def stats(self, now: float) -> dict[str, Any]:
        """JSON-able state: target delay (ms), jitter (ms), counts, release delay (ms)."""
        return {
            "mode": "adaptive",
            "target_ms": round(self.target_ms(now), 1),
            "target_max_ms": round(self.target_max_ms, 1),
            "jitter_ms": round(self.jitter_s * 1000.0, 2),
            "packet_ms": round(self._frame_ticks / 48.0, 1),  # the sender's Opus packet duration, as measured
            "held": len(self._held),
            "received": self.received,
            "released": self.released,
            "late": self.late,
            "duplicates": self.duplicates,
            "lost": self.lost,
            "concealed": self.concealed,
            "overflows": self.overflows,
            "restarts": self.restarts,
            "delay_ms": self.delay_ms.summary(),
            "delay_ms_max": round(self.max_delay_seen_ms, 1),
        }


# ---------------------------------------------------------------------- aiortc glue


class ReceiveJitter(Protocol):
    """What a session holds of its audio receiver's buffer."""

    def stats(self) -> dict[str, Any]: ...

    def arrival_of(self, timestamp: int) -> float | None:
        """When (``time.monotonic`` s) the packet with RTP ``timestamp`` arrived, if recent."""
        ...

    def close(self) -> None: ...


KEEP_ARRIVALS = 256  # packets whose arrival time is remembered (~5 s of 20 ms Opus), for the whole-path stamps


class _Arrivals:
    """The arrival times (``time.monotonic`` s) of the last :data:`KEEP_ARRIVALS` packets, by RTP timestamp."""

    def __init__(self) -> None:
        self._times: dict[int, float] = {}

    def add(self, timestamp: int, now: float) -> None:
        """The packet with RTP ``timestamp`` arrived at ``now`` (s); the first arrival counts."""
        self._times.setdefault(timestamp, now)
        if len(self._times) > KEEP_ARRIVALS:
            del self._times[next(iter(self._times))]

    def get(self, timestamp: int) -> float | None:
        """When the packet with RTP ``timestamp`` arrived (s), if it is among the recent ones."""
        return self._times.get(timestamp)


_PRIVATE = ("jitter_buffer", "decoder_queue", "decoder_thread", "codecs", "timestamp_mapper")


def _mangled(name: str) -> str:
    """The attribute name of ``RTCRtpReceiver``'s private ``__name``."""
    return f"_RTCRtpReceiver__{name}"


def _private(receiver: Any, name: str) -> Any:
    attr = _mangled(name)
    if not hasattr(receiver, attr):
        raise RuntimeError(f"aiortc's RTCRtpReceiver has no {attr!r}: this aiortc version is not supported by server/media/jitter.py")
    return getattr(receiver, attr)


class AdaptiveReceiverBuffer:
    """Stands in for an audio receiver's ``JitterBuffer``: ``add`` takes each depayloaded RTP
    packet and always returns ``(False, None)``; released packets (and concealment packets)
    go straight to the receiver's decoder queue, also from a timer when a held packet
    falls due. :meth:`close` cancels the timer."""

    def __init__(self, receiver: Any, max_delay_ms: float, loop: asyncio.AbstractEventLoop) -> None:
        for name in _PRIVATE:
            _private(receiver, name)
        self._receiver = receiver
        self._loop = loop
        self.buffer = AdaptiveJitterBuffer(48000, max_delay_ms)
        self._codec: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._arrivals = _Arrivals()

    @property
    def capacity(self) -> int:
        """Packets held at most (aiortc's buffer has this too)."""
        return self.buffer.capacity

    def add(self, packet: Any) -> tuple[bool, None]:
        """aiortc's ``JitterBuffer.add``: an RTP packet with its depayloaded ``_data``."""
        if self._closed:
            return False, None
        codec = _private(self._receiver, "codecs").get(packet.payload_type)
        if codec is not None:
            self._codec = codec
            if codec.clockRate != self.buffer.rate and self.buffer.received == 0:
                self.buffer.rate = int(codec.clockRate)
        data = getattr(packet, "_data", packet.payload)
        self._arrivals.add(packet.timestamp, time.monotonic())
        self._emit(self.buffer.push(packet.sequence_number, packet.timestamp, bytes(data), self._loop.time()))
        return False, None

    def _emit(self, releases: list[Release]) -> None:
        from aiortc.jitterbuffer import JitterFrame

        thread = _private(self._receiver, "decoder_thread")
        queue = _private(self._receiver, "decoder_queue")
        mapper = _private(self._receiver, "timestamp_mapper")
        for rel in releases:
            if thread is None or self._codec is None:
                continue
            frame = JitterFrame(data=rel.payload, timestamp=mapper.map(rel.timestamp))
            queue.put((self._codec, frame))
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            return
        now = self._loop.time()
        due = self.buffer.next_due(now)
        if due is not None:
            self._timer = self._loop.call_at(max(due, now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            self._emit(self.buffer.poll(self._loop.time()))

    def arrival_of(self, timestamp: int) -> float | None:
        """When (``time.monotonic`` s) the packet with RTP ``timestamp`` arrived, if recent."""
        return self._arrivals.get(timestamp)

    def stats(self) -> dict[str, Any]:
        """The buffer's :meth:`AdaptiveJitterBuffer.stats` now."""
        return self.buffer.stats(self._loop.time())

    def close(self) -> None:
        """Stop releasing (idempotent)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class MeasuredAiortcBuffer:
    """aiortc's own ``JitterBuffer`` unchanged, timing each packet from arrival to release."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._arrivals: dict[int, float] = {}  # RTP timestamp -> arrival (s)
        self.delay_ms = RollingStats(500)
        self.max_delay_seen_ms = 0.0
        self.received = 0
        self.released = 0
        self._recent = _Arrivals()

    @property
    def capacity(self) -> int:
        """aiortc's capacity (packets)."""
        return int(self.inner.capacity)

    def add(self, packet: Any) -> Any:
        """Delegates to aiortc's ``JitterBuffer.add``."""
        now = time.monotonic()
        self.received += 1
        self._arrivals.setdefault(packet.timestamp, now)
        self._recent.add(packet.timestamp, now)
        pli, frame = self.inner.add(packet)
        if frame is not None:
            arrival = self._arrivals.pop(frame.timestamp, None)
            self.released += 1
            if arrival is not None:
                d = (now - arrival) * 1000.0
                self.delay_ms.add(d)
                self.max_delay_seen_ms = max(self.max_delay_seen_ms, d)
        if len(self._arrivals) > 256:  # packets aiortc dropped: forget the oldest
            for ts in sorted(self._arrivals, key=self._arrivals.__getitem__)[:128]:
                del self._arrivals[ts]
        return pli, frame

    def arrival_of(self, timestamp: int) -> float | None:
        """When (``time.monotonic`` s) the packet with RTP ``timestamp`` arrived, if recent."""
        return self._recent.get(timestamp)

    def stats(self) -> dict[str, Any]:
        """Release delay (ms) and counts; the target is aiortc's fixed prefetch."""
        prefetch = int(getattr(self.inner, "_prefetch", 0))
        return {
            "mode": "aiortc",
            "target_ms": 20.0 * prefetch,
            "received": self.received,
            "released": self.released,
            "delay_ms": self.delay_ms.summary(),
            "delay_ms_max": round(self.max_delay_seen_ms, 1),
        }

    def close(self) -> None:
        """Nothing to stop."""


def install(receiver: Any, mode: str, max_delay_ms: float = DEFAULT_MAX_DELAY_MS) -> ReceiveJitter:
    """Give the audio ``receiver`` (an aiortc ``RTCRtpReceiver``) its jitter buffer: ``mode``
    "adaptive" (:class:`AdaptiveReceiverBuffer`) or "aiortc" (aiortc's, measured). Returns
    the buffer installed; a receiver that already has one of ours keeps it (idempotent).
    Call before media flows (after ``setRemoteDescription``)."""
    current = _private(receiver, "jitter_buffer")
    if isinstance(current, AdaptiveReceiverBuffer | MeasuredAiortcBuffer):
        return current
    new: AdaptiveReceiverBuffer | MeasuredAiortcBuffer
    if mode == "adaptive":
        new = AdaptiveReceiverBuffer(receiver, max_delay_ms, asyncio.get_running_loop())
    elif mode == "aiortc":
        new = MeasuredAiortcBuffer(current)
    else:
        raise ValueError(f"audio jitter mode {mode!r} is neither 'adaptive' nor 'aiortc'")
    setattr(receiver, _mangled("jitter_buffer"), new)
    return new


def install_audio(pc: Any, mode: str, max_delay_ms: float = DEFAULT_MAX_DELAY_MS) -> ReceiveJitter | None:
    """:func:`install` into the first audio receiver of the peer connection ``pc`` (the
    microphone); None when it has none."""
    for t in pc.getTransceivers():
        if t.kind == "audio":
            return install(t.receiver, mode, max_delay_ms)
    return None
