"""Unit tests: config loading, signaling message validation, the paced video track."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from server.clock import VirtualClock
from server.config import load_config
from server.errors import ConfigError, ProtocolError
from server.media.video_out import VIDEO_CLOCK_RATE, AvatarVideoTrack
from server.signaling import parse_message
from server.stats import FpsMeter, RollingStats


def test_default_config_loads_with_documented_defaults() -> None:
    cfg = load_config()
    assert cfg.server.ice_servers == ()  # no public STUN server unless configured
    assert cfg.video.fps == 30.0 and (cfg.video.width, cfg.video.height) == (512, 512)
    assert cfg.visemes.engine == "auto"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[video]\nfps = 500\n", "video.fps must be in 1..60, got 500"),
        ("[vad]\nthreshold_on = 0.3\nthreshold_off = 0.6\n", "vad.threshold_off"),
        ("[server]\nprot = 1\n", "unknown key server.prot"),
        ("[nonsense]\n", "unknown config section 'nonsense'"),
        ("[visemes]\nengine = 'magic'\n", "visemes.engine must be one of"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_config_errors_name_key_and_value(tmp_path: Path, toml: str, needle: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(".", r"\.")):
        load_config(p)


def test_config_ice_servers_parsed(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[server]\nice_servers = [{urls = "stun:example.org:3478"}]\n')
    cfg = load_config(p)
    assert cfg.server.ice_servers[0].urls == ("stun:example.org:3478",)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        (json.dumps({"type": "offer"}), "bad_version"),
        (json.dumps({"v": 2, "type": "offer"}), "bad_version"),
        (json.dumps({"v": 1, "type": "launch_missiles"}), "unknown_type"),
        (json.dumps({"v": 1, "type": "control", "pad": "x" * 300_000}), "too_large"),
    ],
)
def test_parse_message_errors(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_message(text, 262_144)
    assert e.value.code == code and str(e.value)


def test_parse_message_ok() -> None:
    assert parse_message(json.dumps({"v": 1, "type": "bye"}), 1024)["type"] == "bye"


async def test_video_track_paces_by_pts_on_injected_clock() -> None:
    clock = VirtualClock(100.0)
    seen: list[float] = []

    async def produce(t: float) -> tuple[np.ndarray, list[float]]:
        seen.append(t)
        return np.zeros((48, 32), np.uint8), [clock.now() - 0.01]

    latencies: list[float] = []
    track = AvatarVideoTrack(produce, clock, 30.0, lambda now, src: latencies.extend(now - s for s in src))
    frames = [await track.recv() for _ in range(10)]
    assert [f.pts for f in frames] == [round(i * VIDEO_CLOCK_RATE / 30) for i in range(10)]
    assert clock.now() == pytest.approx(100.0 + 9 / 30)  # slept exactly until each tick
    assert seen == pytest.approx([i / 30 for i in range(10)])
    assert latencies == pytest.approx([0.01] * 10)


async def test_video_track_skips_ticks_instead_of_building_latency() -> None:
    clock = VirtualClock(0.0)

    async def slow_produce(t: float) -> tuple[np.ndarray, list[float]]:
        clock.advance_to(clock.now() + 0.1)  # rendering takes 3 frame periods
        return np.zeros((48, 32), np.uint8), []

    ticks: list[tuple[float, float, int]] = []
    track = AvatarVideoTrack(slow_produce, clock, 30.0, on_tick=lambda now, late, skipped: ticks.append((now, late, skipped)))
    frames = [await track.recv() for _ in range(6)]
    pts_s = [f.pts / VIDEO_CLOCK_RATE for f in frames]
    # timestamps follow the clock (lag stays bounded) rather than one tick per frame
    assert pts_s[-1] >= clock.now() - 0.1 - 2 / 30
    assert track.skipped > 0
    # every tick is reported with how late it started (each render takes 0.1 s) and its skips
    assert len(ticks) == 6 and ticks[0][1:] == (0.0, 0)
    assert all(late > 0.05 for _, late, _ in ticks[1:]) and sum(s for *_, s in ticks) == track.skipped
    track.stop()
    from aiortc.mediastreams import MediaStreamError

    with pytest.raises(MediaStreamError):
        await track.recv()


def test_rolling_stats_and_fps() -> None:
    r = RollingStats(maxlen=100)
    assert r.summary()["p50"] is None
    r.extend([float(i) for i in range(200)])
    assert r.summary()["p50"] == pytest.approx(149.5)
    m = FpsMeter()
    for i in range(61):
        m.tick(i / 30)
    assert m.fps() == pytest.approx(30.0)


def test_state_change_estimate_decides_frame_reuse() -> None:
    import dataclasses

    from server.pipeline.runner import REUSE_BELOW_PX, state_change_px
    from server.pipeline.types import AnimationState

    a = AnimationState()
    assert state_change_px(a, dataclasses.replace(a, t=5.0), 512) == 0.0  # time alone draws nothing
    tiny = dataclasses.replace(a, breath=a.breath + 0.01, head_roll=0.0005)
    assert state_change_px(a, tiny, 512) < REUSE_BELOW_PX
    assert state_change_px(a, dataclasses.replace(a, jaw_open=0.1), 512) > REUSE_BELOW_PX
    assert state_change_px(a, dataclasses.replace(a, emotion="happy"), 512) == float("inf")
    v = a.visemes.copy()
    v[0], v[10] = 0.5, 0.5
    assert state_change_px(a, dataclasses.replace(a, visemes=v), 512) > REUSE_BELOW_PX


def test_answer_asks_for_the_configured_audio_ptime() -> None:
    from server.protocol import with_audio_ptime

    sdp = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
           "a=rtpmap:111 opus/48000/2\r\na=ptime:20\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
           "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\n")
    out = with_audio_ptime(sdp, 10)
    sections = out.split("m=")[1:]
    assert [("a=ptime:10" in m, "a=ptime:20" in m) for m in sections] == [(True, False), (False, False), (True, False)]
    assert out.endswith("a=ptime:10\r\n") and "\r\n\r\n" not in out and out.count("\n") == out.count("\r\n")
    assert with_audio_ptime(out, 10) == out  # idempotent


def test_playout_delay_extension_negotiated_and_written() -> None:
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unpack_header_extensions

    from server.media import playout

    offer = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\n"
             "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
             "a=extmap:6/recvonly http://www.webrtc.org/experiments/rtp-hdrext/playout-delay\r\n")
    assert playout.offered_id(offer) == 6  # the video section's id, not the audio one's
    assert playout.offered_id(offer.replace("playout-delay", "other")) is None
    answer = playout.answer_with_extension("v=0\r\nm=audio 9 X 111\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\nm=application 9 X\r\n", 6)
    video = answer.split("m=")[2]
    assert video.endswith(f"a=extmap:6 {playout.PLAYOUT_DELAY_URI}\r\n") and answer.count("playout-delay") == 1
    assert playout.value(0, 0) == b"\x00\x00\x00" and playout.value(100, 400) == bytes([0x00, 0xA0, 0x28])
    with pytest.raises(ValueError, match="50, 10"):
        playout.value(50, 10)

    class FakeSender:  # a fake of aiortc's RTCRtpSender: just its per-sender header-extension map
        def __init__(self) -> None:
            self._RTCRtpSender__rtp_header_extensions_map = HeaderExtensionsMap()

    sender = FakeSender()
    playout.install(sender, 6, 0)
    data = RtpPacket(payload_type=96, sequence_number=1, timestamp=0, ssrc=1, payload=b"x").serialize(
        sender._RTCRtpSender__rtp_header_extensions_map)
    assert data[0] & 0x10  # the header-extension bit
    profile, length = int.from_bytes(data[12:14], "big"), int.from_bytes(data[14:16], "big")
    assert (6, b"\x00\x00\x00") in unpack_header_extensions(profile, data[16:16 + 4 * length])
