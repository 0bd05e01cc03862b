"""End to end over real WebRTC: server subprocess on 198.18.0.1, the headless client plays speech.

Run inside the private network: ``tests/netns_run.sh .venv/bin/python -m pytest -q tests/test_e2e.py``.
Checks the received video rate, that the avatar's mouth follows the speech (closed in the known
silences, open while speaking, allowing for latency), the recording, the stats file, and that
the server releases everything after the client leaves.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from server.client import ClientStats, load_audio, loudness_envelope, run_client
from tests.server_proc import ServerProcess, get_json, model_args, wait_sessions

MIN_FPS = 25.0
OPEN = 0.1  # mouth_openness above which the mouth counts as open
LATENCY_ALLOWANCE_S = 0.5  # s: audio -> visible mouth, generous (model lookahead + smoothing + network)


@pytest.fixture(scope="module")
def server(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server on the private address, default config, photo data in a temp dir."""
    d = tmp_path_factory.mktemp("server")
    srv = ServerProcess(netns, d / "server.log", ["--data-dir", str(d / "data"), *model_args()])
    srv.start()
    yield srv
    code = srv.stop()
    assert code in (0, -2, None), f"server exited with {code}:\n{srv.log_tail()}"


def speech_segments(samples: NDArray[np.int16], min_gap_s: float = 0.3) -> list[tuple[float, float]]:
    """(start, end) s of the speech in the sent audio (48 kHz), pauses shorter than ``min_gap_s`` bridged."""
    active = loudness_envelope(samples) > 0.25  # louder than -40 dBFS per 10 ms
    segs: list[list[float]] = []
    for i in np.flatnonzero(active):
        t = i / 100.0
        if segs and t - segs[-1][1] <= min_gap_s:
            segs[-1][1] = t + 0.01
        else:
            segs.append([t, t + 0.01])
    return [(round(float(a), 2), round(float(b), 2)) for a, b in segs if b - a >= 0.1]


def window_values(st: ClientStats, windows: list[tuple[float, float]]) -> NDArray[np.float64]:
    """Mouth openness of the frames that arrived inside any of ``windows`` (s since t0)."""
    t, m = st.mouth_series()
    keep = np.zeros(t.size, bool)
    for a, b in windows:
        keep |= (t >= a) & (t <= b)
    return m[keep]


async def test_call_end_to_end(server: ServerProcess, speech_wav: Path, tmp_path: Path) -> None:
    base = server.url
    assert await wait_sessions(base, 0) == 0
    before = (await get_json(base, "/stats"))["totals"]
    for key in ("pcs", "tasks", "loop_tasks"):
        assert key in before, f"/stats totals lacks {key!r}: {before}"

    listing = await get_json(base, "/avatars")
    builtins = [a["name"] for a in listing["avatars"] if a["kind"] == "built-in"]
    assert builtins, f"no built-in avatar to measure the mouth of: {listing}"
    avatar = listing["default"] if listing["default"] in builtins else builtins[0]

    rec, js = tmp_path / "call.mp4", tmp_path / "call.json"
    st = await run_client(base, speech_wav, rec, js, avatar=avatar, measure_mouth=True)
    summary = json.dumps(st.summary(), indent=1)
    print(summary)

    # -- video rate ---------------------------------------------------------------------------
    assert st.fps_mean is not None and st.fps_mean >= MIN_FPS, summary
    span = st.duration_s - max(st.first_frame_s or 0.0, 0.0)
    assert st.frames_received >= MIN_FPS * span * 0.95, summary
    assert st.gap_ms_max is not None and st.gap_ms_max < 500, summary

    # -- the server's viseme stream and stats events ---------------------------------------
    # every 10 ms hop of the sent audio comes back once, in order (the last few may be in flight)
    assert st.dc_hops >= 0.8 * 2 * st.mic_frames_sent, summary
    # coalesced to one message per visemes.channel_interval_ms (40 ms = every 2nd 20 ms frame)
    assert 0.25 * st.mic_frames_sent <= st.dc_messages <= 0.7 * st.mic_frames_sent, summary
    hops = [(v.hop, v.n) for v in st.visemes]
    assert hops[0][0] < 100, f"first viseme message only at hop {hops[0]}"  # channel opens late at most
    gaps = [(a, b) for a, b in zip(hops, hops[1:], strict=False) if b[0] != a[0] + a[1]]
    assert not gaps, f"viseme hops not contiguous: {gaps[:5]}"
    assert st.dc_latency_ms_p50 is not None and 0 < st.dc_latency_ms_p50 < 1000, summary
    assert "stats" in st.events and st.server_latency_ms_p50 is not None, summary
    assert st.errors == [], summary
    assert st.ws_rtt_ms is not None, summary
    vad = [v for v in st.visemes if v.speaking is not None]
    assert any(v.speaking for v in vad) and not all(v.speaking for v in vad), "VAD never changed state"

    # -- the mouth follows the speech ---------------------------------------------------------
    samples = load_audio(speech_wav)
    segs = speech_segments(samples)
    assert len(segs) >= 2, f"fixture should hold two sentences, found {segs}"
    speech_w = [(round(a + 0.15, 2), round(b + 0.15, 2)) for a, b in segs]
    bounds = [0.0, *[x for seg in segs for x in seg], round(st.duration_s, 2)]
    silence_w = []
    for i in range(0, len(bounds), 2):
        a, b = bounds[i], bounds[i + 1]
        lo = a if i == 0 else a + LATENCY_ALLOWANCE_S  # the mouth may still be closing
        if b - lo >= 0.25:
            silence_w.append((round(lo, 2), b))
    sp, si = window_values(st, speech_w), window_values(st, silence_w)
    assert sp.size >= 30 and si.size >= 20, f"too few measured frames: speech {sp.size}, silence {si.size}"
    open_ref = float(np.percentile(sp, 90))
    closed = float(np.percentile(si, 90))
    detail = (
        f"speech windows {speech_w}: p90 {open_ref:.4f} mean {sp.mean():.4f} "
        f"open {np.mean(sp > OPEN):.2f} of frames; "
        f"silence windows {silence_w}: p90 {closed:.4f} mean {si.mean():.4f} open {np.mean(si > OPEN):.2f}"
    )
    print(detail)
    assert open_ref > 0, detail
    assert closed < 0.35 * open_ref, "mouth not closed in the silences: " + detail
    assert sp.mean() > 2.0 * si.mean() + 0.05 * open_ref, "mouth not open while speaking: " + detail
    # mouth_openness: 0 closed .. 1 wide-open "aa"; 0.1 is a visibly open mouth
    assert float(np.mean(sp > OPEN)) >= 0.4, "mouth rarely open while speaking: " + detail
    assert float(np.mean(si > OPEN)) <= 0.05, "mouth open in the silences: " + detail
    assert st.mouth_corr is not None and st.mouth_corr > 0.4, summary
    assert st.mouth_lag_s is not None and 0.0 < st.mouth_lag_s <= LATENCY_ALLOWANCE_S, summary

    # -- the recording ------------------------------------------------------------------------
    with av.open(str(rec)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        vs = c.streams.video[0]
        assert (vs.codec_context.width, vs.codec_context.height) == (st.frames[-1].width, st.frames[-1].height)
        n_video = sum(1 for _ in c.decode(video=0))
    recorded = sum(1 for f in st.frames if f.t >= 0.0)
    assert abs(n_video - recorded) <= 2, (n_video, recorded)
    with av.open(str(rec)) as c:
        audio_s = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].codec_context.sample_rate
    assert abs(audio_s - st.mic_frames_sent * 0.02) < 0.2, (audio_s, st.mic_frames_sent)

    # -- the stats file -----------------------------------------------------------------------
    data = json.loads(js.read_text())
    assert data["frames_received"] == st.frames_received == len(data["frames"])
    assert {"t", "mouth"} <= set(data["frames"][0])
    for key in ("fps_mean", "fps_min_1s", "first_frame_s", "gap_ms_p50", "gap_ms_p95", "gap_ms_max",
                "server_latency_ms_p50", "server_latency_ms_p95", "dc_messages"):
        assert data[key] is not None, key

    # -- full clean-up on the server ---------------------------------------------------------
    assert await wait_sessions(base, 0) == 0, "session still listed after the client left"
    deadline = time.monotonic() + 10.0
    while True:
        after = (await get_json(base, "/stats"))["totals"]
        settled = after["pcs"] == 0 and after["tasks"] == 0 and after["loop_tasks"] <= before["loop_tasks"]
        if settled or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert after["sessions"] == 0 and after["pcs"] == 0 and after["tasks"] == 0, after
    assert after["loop_tasks"] <= before["loop_tasks"], f"event-loop tasks leaked: before {before}, after {after}"


async def test_server_error_is_a_clear_client_error(server: ServerProcess, speech_wav: Path) -> None:
    from server.client import ClientError

    with pytest.raises(ClientError, match="unknown_avatar.*no-such-avatar-xyz") as info:
        await run_client(server.url, speech_wav, None, None, avatar="no-such-avatar-xyz")
    assert info.value.code == "unknown_avatar"
    assert await wait_sessions(server.url, 0) == 0


async def test_unreachable_server_is_a_clear_error(netns: str, speech_wav: Path) -> None:
    from server.client import ClientError
    from tests.server_proc import free_port

    port = free_port(netns)
    with pytest.raises(ClientError, match=f"cannot connect to ws://{netns}:{port}/ws"):
        await run_client(f"http://{netns}:{port}", speech_wav, None, None)
