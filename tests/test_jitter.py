"""server/media/jitter.py: the adaptive audio jitter buffer with a fake clock and fake packets,
Opus concealment through PyAV, and its installation into aiortc's audio receiver."""

from __future__ import annotations

import asyncio
import fractions
import random

import av
import numpy as np
import pytest

from server.media import jitter
from server.media.jitter import AdaptiveJitterBuffer, Release, opus_frame_ticks, opus_plc_payload

FRAME_S = 0.02
TICKS = 960
OPUS = bytes([0xFC, 1, 2, 3])  # CELT fullband 20 ms stereo, code 0


class Feed:
    """20 ms packets of one stream sent at ``FRAME_S`` intervals from ``seq0``/``ts0``."""

    def __init__(self, buf: AdaptiveJitterBuffer, seq0: int = 1000, ts0: int = 123_456, t0: float = 10.0) -> None:
        self.buf, self.seq0, self.ts0, self.t0 = buf, seq0, ts0, t0
        self.out: list[Release] = []
        self.now = 0.0  # the fake clock: time of the last event

    def sent_at(self, i: int) -> float:
        return self.t0 + i * FRAME_S

    def push(self, i: int, at: float) -> list[Release]:
        """Packet ``i`` arrives at clock time ``at``: poll up to then, then push."""
        self.poll(at)
        rel = self.buf.push((self.seq0 + i) & 0xFFFF, (self.ts0 + i * TICKS) & 0xFFFFFFFF, OPUS + bytes([i & 0xFF]), at)
        self.out.extend(rel)
        return rel

    def poll(self, until: float) -> None:
        """Run the buffer's timer up to ``until`` as the receiver's event loop would."""
        t = self.now
        while (due := self.buf.next_due(t)) is not None and due <= until:
            t = max(t, due)
            rel = self.buf.poll(t)
            if not rel:
                break
            self.out.extend(rel)
        self.now = max(self.now, until)

    def run(self, arrivals: list[tuple[int, float]]) -> None:
        for i, at in sorted(arrivals, key=lambda x: x[1]):
            self.push(i, at)

    def seqs(self) -> list[int]:
        return [(r.seq - self.seq0) for r in self.out]


def test_in_order_without_jitter_releases_at_once() -> None:
    buf = AdaptiveJitterBuffer()
    f = Feed(buf)
    for i in range(200):
        rel = f.push(i, f.sent_at(i) + 0.005)
        assert [r.seq for r in rel] == [f.seq0 + i], i  # released by its own arrival
        assert rel[0].released == rel[0].arrival
    assert buf.target_ms(f.sent_at(200)) < 1e-6
    st = buf.stats(f.sent_at(200))
    assert st["delay_ms"]["p95"] == 0.0 and st["delay_ms_max"] == 0.0
    assert (st["late"], st["lost"], st["concealed"], st["duplicates"], st["held"]) == (0, 0, 0, 0, 0)


def test_reordering_within_the_window_is_put_back_in_order() -> None:
    buf = AdaptiveJitterBuffer()
    f = Feed(buf)
    # a link that delays every 10th packet by 25 ms, 5 ms behind the next: the first such swap teaches the buffer
    arrivals = [(i, f.sent_at(i) + (0.025 if i % 10 == 5 else 0.0)) for i in range(100)]
    f.run(arrivals)
    f.poll(f.sent_at(200))
    seqs = f.seqs()
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) == 100
    late = buf.late
    assert late <= 1, f"only the first swap may arrive after its slot was concealed, {late} did"
    assert all(not r.concealed for r in f.out[20:]), "later swaps are waited for, not concealed"
    assert 6.0 <= buf.target_ms(f.sent_at(99)) <= 35.0


def test_loss_is_concealed_in_place() -> None:
    buf = AdaptiveJitterBuffer()
    f = Feed(buf)
    for i in range(20):
        if i not in (7, 12, 13):
            f.push(i, f.sent_at(i))
    assert f.seqs() == list(range(20))
    concealed = [r for r in f.out if r.concealed]
    assert [r.seq - f.seq0 for r in concealed] == [7, 12, 13]
    assert [r.timestamp for r in concealed] == [(f.ts0 + i * TICKS) & 0xFFFFFFFF for i in (7, 12, 13)]
    assert all(r.payload == bytes([0xFC]) for r in concealed)  # a TOC-only Opus packet: PLC
    assert (buf.lost, buf.concealed, buf.late) == (3, 3, 0)
    f.push(7, f.sent_at(21))  # the "lost" packet after all: too late, dropped
    assert buf.late == 1 and f.seqs() == list(range(20))


def test_a_pause_is_not_concealed_and_a_long_gap_is_skipped() -> None:
    buf = AdaptiveJitterBuffer()
    f = Feed(buf)
    f.push(0, f.sent_at(0))
    f.poll(f.sent_at(50))  # the sender paused: nothing held, nothing concealed
    assert buf.concealed == 0 and f.seqs() == [0]
    f.push(40, f.sent_at(40))  # 39 packets missing: skipped, not concealed for 780 ms
    assert f.seqs() == [0, 40] and buf.concealed == 0 and buf.lost == 39


def test_jitter_raises_the_target_and_it_decays_back() -> None:
    buf = AdaptiveJitterBuffer(max_delay_ms=100.0)
    f = Feed(buf)
    rng = random.Random(3)
    for i in range(250):  # 5 s clean, 30 ms jitter
        f.push(i, f.sent_at(i) + rng.uniform(0.0, 0.030))
    f.poll(f.sent_at(260))
    during = buf.target_ms(f.sent_at(250))
    assert 10.0 <= during <= 60.0, during
    assert buf.late <= 3, buf.stats(f.sent_at(250))
    for i in range(250, 750):  # 10 s without jitter
        f.push(i, f.sent_at(i))
    after = buf.target_ms(f.sent_at(750))
    assert after < 1.0, after
    seqs = f.seqs()
    assert seqs == sorted(seqs)


def test_target_is_bounded_and_capacity_forces_the_oldest_out() -> None:
    buf = AdaptiveJitterBuffer(max_delay_ms=60.0, capacity=8)
    f = Feed(buf)
    f.push(0, f.sent_at(0))
    f.push(2, f.sent_at(2))  # 1 missing: concealed at once (nothing learned yet)
    f.push(1, f.sent_at(2) + 0.5)  # half a second behind 2: late, and the target is clamped
    assert buf.late == 1 and buf.target_ms(f.sent_at(26)) == pytest.approx(60.0)
    assert buf.stats(f.sent_at(26))["target_max_ms"] == 60.0
    for i in range(4, 30):  # 3 never comes: 4.. wait 60 ms for it, then it is concealed
        f.push(i, f.sent_at(i) + 0.5)
    assert f.seqs() == list(range(30)) and f.out[3].concealed
    assert f.out[4].released - f.out[4].arrival == pytest.approx(0.06)
    assert f.out[8].released - f.out[8].arrival < 0.001  # arrived after the gap was filled
    buf2 = AdaptiveJitterBuffer(max_delay_ms=0.0, capacity=8)
    g = Feed(buf2)
    g.push(0, g.sent_at(0))
    g.push(2, g.sent_at(2))  # 1 missing, due at once (target 0): concealed now
    assert g.seqs() == [0, 1, 2]
    for i in range(4, 20):  # 3 never arrives and the buffer is held up by nothing
        g.push(i, g.sent_at(i))
    assert g.seqs() == list(range(20))
    buf3 = AdaptiveJitterBuffer(max_delay_ms=100.0, capacity=4)
    h = Feed(buf3)
    h.push(0, h.sent_at(0))
    h.push(2, h.sent_at(2))
    h.push(1, h.sent_at(2) + 0.08)  # teach a 100 ms target (1.25 x 80 ms) ...
    for i in range(4, 30):  # ... for 3, which never comes: five 20 ms packets would wait ...
        h.push(i, h.sent_at(i) + 0.08)
        assert len(buf3._held) <= 4  # ... but only four fit
    assert buf3.overflows == 1 and h.seqs() == list(range(30)) and h.out[3].concealed


def test_duplicates_are_ignored() -> None:
    buf = AdaptiveJitterBuffer()
    f = Feed(buf)
    for i in range(10):
        f.push(i, f.sent_at(i))
        f.push(i, f.sent_at(i) + 0.001)
    assert f.seqs() == list(range(10)) and buf.duplicates == 10 and buf.late == 0


def test_sequence_and_timestamp_wrap() -> None:
    buf = AdaptiveJitterBuffer()
    f = Feed(buf, seq0=65530, ts0=(1 << 32) - 3 * TICKS)
    for i in range(20):
        if i != 8:  # seq 65538 & 0xFFFF = 2 is lost, after the wrap
            f.push(i, f.sent_at(i))
    assert f.seqs() == list(range(20))
    assert buf.target_ms(f.sent_at(20)) < 1e-6 and buf.restarts == 0
    assert [r.concealed for r in f.out].count(True) == 1
    assert f.out[8].timestamp == (f.ts0 + 8 * TICKS) & 0xFFFFFFFF


def test_a_new_stream_restarts_the_buffer() -> None:
    buf = AdaptiveJitterBuffer()
    f = Feed(buf)
    for i in range(5):
        f.push(i, f.sent_at(i))
    rel = buf.push(30_000, 42, OPUS, f.sent_at(6))
    assert [r.seq for r in rel] == [30_000] and buf.restarts == 1 and buf.lost == 0


def test_config_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="max_delay_ms 2000"):
        AdaptiveJitterBuffer(max_delay_ms=2000)
    with pytest.raises(ValueError, match="capacity 2 "):
        AdaptiveJitterBuffer(capacity=2)


def test_opus_plc_payload_conceals_through_pyav() -> None:
    assert opus_frame_ticks(0xFC) == 960 and opus_frame_ticks(0x08) == 960 and opus_frame_ticks(0xE0) == 120
    assert opus_plc_payload(bytes([0x78, 9]), 960) == bytes([0x78])  # hybrid SWB 20 ms: one frame
    assert opus_plc_payload(bytes([0xE0]), 960) == bytes([0xE3, 8])  # CELT 2.5 ms: eight frames
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame

    enc, dec = OpusEncoder(), OpusDecoder()
    tone = (np.sin(2 * np.pi * 220 * np.arange(48000) / 48000) * 8000).astype(np.int16)
    decoded = []
    for i in range(10):
        pcm = np.repeat(tone[i * TICKS : (i + 1) * TICKS], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * TICKS, fractions.Fraction(1, 48000)
        payloads, ts = enc.encode(frame)
        for p in payloads:
            data = opus_plc_payload(p, TICKS) if i == 6 else p
            decoded += [(i, f.samples, int(np.abs(f.to_ndarray()).max())) for f in dec.decode(JitterFrame(data, ts))]
    assert [d[1] for d in decoded] == [TICKS] * 10  # the concealed frame has the right length
    assert decoded[6][2] > 1000, "PLC continues the tone instead of silence"


async def test_installs_into_aiortc_audio_receiver_idempotently() -> None:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        t = pc.addTransceiver("audio", direction="recvonly")
        a = jitter.install(t.receiver, "adaptive", 80.0)
        assert jitter.install(t.receiver, "adaptive", 80.0) is a
        assert jitter._private(t.receiver, "jitter_buffer") is a
        assert a.stats()["mode"] == "adaptive" and a.stats()["target_ms"] == 0.0
        assert jitter.install_audio(pc, "adaptive") is a
        a.close()
        a.close()
        t2 = pc.addTransceiver("audio", direction="recvonly")
        m = jitter.install(t2.receiver, "aiortc")
        assert m.stats() == {"mode": "aiortc", "target_ms": 80.0, "received": 0, "released": 0,
                             "delay_ms": {"p50": None, "p95": None, "n": 0.0}, "delay_ms_max": 0.0}
        with pytest.raises(ValueError, match="'netEq'"):
            jitter.install(pc.addTransceiver("audio").receiver, "netEq")
    finally:
        await pc.close()
        await asyncio.sleep(0)
