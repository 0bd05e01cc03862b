"""The headless client's pieces that need no server: pacing, stats, recording, URL handling."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from server.client import (
    MIC_FRAME,
    MIC_RATE,
    ClientError,
    ClientStats,
    FrameRecord,
    FrameWorker,
    MicTrack,
    http_base,
    load_audio,
    min_window_fps,
    mouth_audio_lag,
    parse_candidate,
    ws_url,
)


def test_ws_url() -> None:
    assert ws_url("http://198.18.0.1:8080") == "ws://198.18.0.1:8080/ws"
    assert ws_url("http://h:1/") == "ws://h:1/ws"
    assert ws_url("https://h/app") == "wss://h/app/ws"
    assert ws_url("ws://h:1/ws") == "ws://h:1/ws"
    assert http_base("ws://h:1/ws") == "http://h:1"
    with pytest.raises(ClientError, match="ftp://h"):
        ws_url("ftp://h")
    with pytest.raises(ClientError, match="bad server URL"):
        ws_url("h:8080")


def test_min_window_fps_finds_the_stall() -> None:
    steady = np.arange(0, 5, 1 / 30)
    assert min_window_fps(steady.tolist()) == pytest.approx(30, abs=1)
    stalled = np.concatenate([steady[steady < 2.0], steady[steady >= 2.5]])  # 0.5 s without frames
    assert min_window_fps(stalled.tolist()) == pytest.approx(15, abs=1)
    assert min_window_fps([0.0, 0.5]) is None


def test_stats_finalize() -> None:
    st = ClientStats()
    st.frames = [FrameRecord(t=-0.1 + i / 30) for i in range(90)]
    st.frames[50].t += 0.0  # keep order
    st.finalize()
    assert st.frames_received == 90
    assert st.first_frame_s == pytest.approx(-0.1)
    assert st.first_frame_after_audio_s == pytest.approx(-0.1 + 3 / 30)
    assert st.fps_mean == pytest.approx(30)
    assert st.gap_ms_p50 == pytest.approx(1000 / 30)
    assert st.gap_ms_max == pytest.approx(1000 / 30)
    assert st.to_json()["frames"][0]["t"] == pytest.approx(-0.1)
    # frames counted per received size (the overload guard sends some smaller)
    for f in st.frames[:60]:
        f.width = f.height = 512
    for f in st.frames[60:]:
        f.width = f.height = 384
    st.finalize()
    assert st.frame_sizes == {"512x512": 60, "384x384": 30}


def test_mouth_audio_lag_recovers_a_known_delay() -> None:
    rng = np.random.default_rng(0)
    sec = 6.0
    env = np.zeros(int(sec * 100))
    for start in (50, 180, 330, 470):  # four 0.8 s "words"
        env[start : start + 80] = 1.0
    audio = (rng.standard_normal(int(sec * MIC_RATE)) * 0.3 * np.repeat(env, MIC_RATE // 100) * 32767).astype(np.int16)
    t = np.arange(0, sec, 1 / 30)
    hop = np.clip(((t - 0.23) * 100).astype(int), 0, env.size - 1)
    mouth = np.where(t >= 0.23, env[hop], 0.0)
    lag, r = mouth_audio_lag(audio, t, mouth)
    assert lag == pytest.approx(0.23, abs=0.04)
    assert r is not None and r > 0.8
    assert mouth_audio_lag(audio, t, np.zeros_like(t)) == (None, None)


def test_load_audio_resamples_to_48k_mono(tmp_path: Path) -> None:
    x = np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000).astype(np.float32) * 0.5
    sf.write(str(tmp_path / "a.wav"), np.stack([x, x], 1), 16000, subtype="PCM_16")
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == np.int16 and y.ndim == 1
    assert abs(y.size - 48000) < 200
    assert 0.4 * 32767 < np.abs(y).max() < 0.6 * 32767
    with pytest.raises(ClientError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(ClientError, match="bad.wav"):
        load_audio(tmp_path / "bad.wav")


async def test_mic_track_paces_20ms_frames_then_silence() -> None:
    samples = (np.arange(MIC_FRAME * 3 + 100) % 1000).astype(np.int16)
    sent: list[int] = []
    mic = MicTrack(samples, on_send=lambda s, pts: sent.append(pts))
    frames, returned = [], []
    for _ in range(6):
        frames.append(await mic.recv())
        returned.append(time.monotonic())
    assert mic.t0 is not None and mic.started.is_set()
    for k, (f, at) in enumerate(zip(frames, returned, strict=True)):
        assert f.pts == k * MIC_FRAME and f.sample_rate == MIC_RATE and f.samples == MIC_FRAME
        assert at >= mic.t0 + k * 0.02 - 1e-3  # never early: real time
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    assert np.array_equal(pcm[: samples.size], samples)
    assert not pcm[samples.size :].any()  # silence after the file ends
    assert sent == [k * MIC_FRAME for k in range(6)]
    mic.stop()
    with pytest.raises(Exception):  # noqa: B017 - aiortc's MediaStreamError
        await mic.recv()


def test_frame_worker_writes_arrival_timed_mp4(tmp_path: Path) -> None:
    out = tmp_path / "rec.mp4"
    seen: list[int] = []

    def mouth(rgb: np.ndarray) -> float:
        seen.append(rgb.shape[0])
        return float(rgb[..., 0].mean())

    w = FrameWorker(out, mouth)
    recs = []
    for k in range(50):  # 1 s of audio
        w.audio(np.full(MIC_FRAME, 1000 if k % 10 < 5 else 0, np.int16), k * MIC_FRAME)
    arrivals = [-0.05, 0.1, 0.2, 0.25, 0.5, 0.9]  # irregular; the first is before t0
    for i, t in enumerate(arrivals):
        img = np.full((64, 96, 3), 40 * i, np.uint8)
        rec = FrameRecord(t=t)
        recs.append(rec)
        w.video(av.VideoFrame.from_ndarray(img, format="rgb24"), rec, t if t >= 0 else None)
    w.close()
    assert seen == [64] * len(arrivals) and all(r.mouth is not None for r in recs)
    with av.open(str(out)) as c:
        vs = c.streams.video[0]
        assert (vs.codec_context.width, vs.codec_context.height) == (96, 64)
        times = [float(f.time) for f in c.decode(video=0) if f.time is not None]
    assert times == pytest.approx([t for t in arrivals if t >= 0], abs=0.002)
    with av.open(str(out)) as c:
        n = sum(f.samples for f in c.decode(audio=0))
    assert abs(n - 50 * MIC_FRAME) < 2048


def test_parse_candidate() -> None:
    c = parse_candidate(
        {"candidate": "candidate:1 1 UDP 2122252543 198.18.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    )
    assert c.ip == "198.18.0.1" and c.port == 50000 and c.sdpMid == "0"
    with pytest.raises(ValueError, match="candidate without text"):
        parse_candidate({"sdpMid": "0"})
