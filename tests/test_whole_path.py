"""Whole-path latency (server/media/timing.py): the sender-report clock mapping and the stamps
of one frame on fake aiortc objects, then a real call over WebRTC (run in the netns:
``tests/netns_run.sh .venv/bin/python -m pytest -q tests/test_whole_path.py``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.client import AvatarClient, load_audio
from server.media.timing import (
    NTP_EPOCH_OFFSET,
    SEGMENTS,
    SenderReports,
    WholePath,
    ntp_to_unix,
    rtp_delta,
)
from tests.server_proc import ServerProcess, get_json, model_args


def ntp_of(unix_s: float) -> int:
    """s since 1970 → a 64-bit NTP timestamp."""
    t = unix_s + NTP_EPOCH_OFFSET
    sec = int(t)
    return (sec << 32) | int((t - sec) * (1 << 32))


def test_ntp_and_rtp_arithmetic() -> None:
    assert ntp_to_unix(ntp_of(1_800_000_000.25)) == pytest.approx(1_800_000_000.25, abs=1e-6)
    assert rtp_delta(5, 2**32 - 5) == 10  # across the wrap
    assert rtp_delta(2**32 - 5, 5) == -10


def test_sender_report_maps_rtp_to_the_senders_clock() -> None:
    sr = SenderReports()
    assert sr.wallclock(1234, 48_000) is None  # nothing before the first report
    sr.add(1_800_000_000.0, 2**32 - 48_000)  # one second before the RTP clock wraps
    assert sr.wallclock(2**32 - 48_000, 48_000) == pytest.approx(1_800_000_000.0)
    assert sr.wallclock(0, 48_000) == pytest.approx(1_800_000_001.0)  # after the wrap
    assert sr.wallclock(2**32 - 96_000, 48_000) == pytest.approx(1_799_999_999.0)  # before the report
    sr.add(1_800_000_010.0, 9 * 48_000 + 480)  # the latest report wins (the sender's clock drifted 10 ms)
    assert sr.wallclock(9 * 48_000, 48_000) == pytest.approx(1_800_000_009.99)


class FakeMapper:
    def __init__(self, origin: int) -> None:
        self._origin = origin


class FakeReceiver:
    """The private attributes of aiortc's RTCRtpReceiver that timing.py reads."""

    def __init__(self, origin: int) -> None:
        self._RTCRtpReceiver__timestamp_mapper = FakeMapper(origin)
        self.rtcp: list[Any] = []

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        self.rtcp.append(packet)


class FakeSender:
    def __init__(self) -> None:
        self._RTCRtpSender__packet_count = 0
        self._RTCRtpSender__rtp_timestamp = 0
        self._RTCRtpSender__ntp_timestamp = 0

    def sent(self, rtp: int, unix_s: float, packets: int = 3) -> None:
        self._RTCRtpSender__packet_count += packets
        self._RTCRtpSender__rtp_timestamp = rtp
        self._RTCRtpSender__ntp_timestamp = ntp_of(unix_s)


class FakeJitter:
    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}

    def arrival_of(self, timestamp: int) -> float | None:
        return self.arrivals.get(timestamp)


async def test_whole_path_stamps_one_frame_and_splits_it_into_segments() -> None:
    from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

    origin = 2**32 - 960  # the microphone's first RTP timestamp: the next frame's wraps
    receiver, sender, jit = FakeReceiver(origin), FakeSender(), FakeJitter()
    path = WholePath(receiver, sender, jit)
    now = time.time()
    off = 7.0  # the client (which is the sender) has a clock 7 ms behind the server's
    capture = now - 0.100 - off / 1000  # it captured frame pts=960 100 ms ago, by its clock ...
    # ... its sender report says so (it reached us through the receiver's RTCP handler)
    sr = RtcpSrPacket(ssrc=1, sender_info=RtcpSenderInfo(ntp_timestamp=ntp_of(capture), rtp_timestamp=0, packet_count=1, octet_count=1))
    await receiver._handle_rtcp_packet(sr)
    assert receiver.rtcp == [sr] and path.mic_sr.pairs
    jit.arrivals[0] = time.monotonic() - 0.060  # its packet arrived 60 ms ago
    path.audio(arrival=10.0, pts=960)  # decoded now; (origin + 960) % 2**32 == 0 on the wire
    path.frame_out([9.99, 10.0])  # a frame reflecting it leaves the track now
    assert path.take_pending() == []  # not sent yet
    sent_at = time.time() + 0.005
    sender.sent(rtp=123_456, unix_s=sent_at)
    path.frame_out([])  # the next frame: the sender sent the previous one
    (entry,) = path.take_pending()
    assert entry["rtp"] == 123_456 and entry["mic_rtp"] == 0
    assert entry["capture_ms"] == pytest.approx(capture * 1000, abs=0.2)
    assert entry["decoded_ms"] - entry["arrival_ms"] == pytest.approx(60, abs=5)
    assert entry["sent_ms"] == pytest.approx(sent_at * 1000, abs=0.2)
    # the client: received 20 ms after the send, presented 15 ms later (its clock)
    receive = sent_at * 1000 + 20 - off
    present = receive + 15
    assert path.report([[123_456, receive, present], [999, receive, present]], off) == 1
    assert path.unmatched == 1
    st = path.stats()
    whole = st["whole_path_ms"]["p50"]
    assert whole == pytest.approx(present - capture * 1000, abs=0.2)
    seg = {k: v["p50"] for k, v in st["whole_path_segments_ms"].items()}
    assert set(seg) == set(SEGMENTS)
    assert seg["uplink"] == pytest.approx(40, abs=5)  # 100 ms ago captured, arrived 60 ms ago
    assert seg["jitter_decode"] == pytest.approx(60, abs=5)
    assert seg["downlink"] == pytest.approx(20, abs=0.2)
    assert seg["client"] == pytest.approx(15, abs=0.2)
    assert sum(seg.values()) == pytest.approx(whole, abs=0.6)
    assert st["whole_path_clock_offset_ms"] == off
    assert path.report([[123_456, receive, present]], off) == 0  # a frame counts once


async def test_an_unsent_frame_is_not_stamped() -> None:
    receiver, sender = FakeReceiver(0), FakeSender()
    path = WholePath(receiver, sender, None)
    path.audio(arrival=1.0, pts=0)
    path.frame_out([1.0])
    path.frame_out([])  # the sender has sent nothing yet
    sender.sent(rtp=5, unix_s=time.time())
    path.frame_out([])
    sender._RTCRtpSender__rtp_timestamp = 99  # a frame it did not send (no new packets): nothing learnt
    path.frame_out([])
    assert path.take_pending() == []


# --------------------------------------------------------------------------------------------
# a real call


@pytest.fixture(scope="module")
def server(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("server")
    srv = ServerProcess(netns, d / "server.log", ["--data-dir", str(d / "data"), *model_args()])
    srv.start()
    yield srv
    code = srv.stop()
    assert code in (0, -2, None), f"server exited with {code}:\n{srv.log_tail()}"


async def test_whole_path_over_a_real_call(server: ServerProcess, speech_wav: Path) -> None:
    client = AvatarClient(server.url, load_audio(speech_wav), duration=12.0)
    try:
        await client.start()
        await asyncio.sleep(8.0)  # aiortc's sender reports come every 0.5..1.5 s
        stats = await get_json(server.url, "/stats")
        await client.wait_done()
    finally:
        await client.close()
    (sess,) = [s for s in stats["sessions"] if s["session"] == client.stats.session]
    st = client.stats
    summary = json.dumps({**st.summary(), "server": {k: sess.get(k) for k in ("latency_ms", "whole_path_ms", "whole_path_segments_ms")}}, indent=1)
    print(summary)
    whole, server_lat = sess["whole_path_ms"], sess["latency_ms"]
    assert whole["n"] >= 100, summary  # ~30 frames a second reported back
    assert 0 < whole["p50"] < 1000 and whole["p95"] < 1000, summary
    assert whole["p50"] > server_lat["p50"], summary  # it contains the server's part
    segs = sess["whole_path_segments_ms"]
    assert set(segs) == set(SEGMENTS), summary
    assert abs(sum(s["p50"] for s in segs.values()) - whole["p50"]) < 0.3 * whole["p50"], summary
    assert all(s["p50"] > -5 for s in segs.values()), summary  # same clock: no segment runs backwards
    # the client's own figure: its microphone frame leaving its track → the frame reflecting it arriving
    assert st.whole_path_n >= 100 and st.whole_path_ms_p50 is not None and st.whole_path_ms_p95 is not None, summary
    assert 0 < st.whole_path_ms_p50 < 1000, summary
    assert st.server_whole_path_ms_p50 is not None, summary
    assert abs(st.whole_path_ms_p50 - st.server_whole_path_ms_p50) < 35, summary
    assert st.clock_offset_ms is not None and abs(st.clock_offset_ms) < 20, summary  # one machine, one clock


async def test_frames_reported_before_the_first_sender_report_count_once_it_comes() -> None:
    receiver, sender = FakeReceiver(0), FakeSender()
    path = WholePath(receiver, sender, None)
    path.audio(arrival=1.0, pts=960)
    path.frame_out([1.0])
    sent = time.time()
    sender.sent(rtp=7, unix_s=sent)
    path.frame_out([])
    assert path.report([[7, sent * 1000 + 10, sent * 1000 + 20]], 0.0) == 0  # no report from the sender yet
    assert path.whole.count == 0
    path.mic_sr.add(sent - 0.05, 960)  # its first report: rtp 960 was captured 50 ms before the send
    assert path.report([], None) == 1
    st = path.stats()
    assert st["whole_path_ms"]["p50"] == pytest.approx(70, abs=0.5) and path.unmatched == 0
