"""Stages over real WebRTC: a speaker (headless client) and viewers over WHEP.

Runs inside the private network (``make test``): the server subprocess on 198.18.0.1, the
speaker plays speech, viewers subscribe with the headless WHEP viewer. Checks that viewers get
the avatar with audio at the stage's rate, that a joining viewer's first picture comes quickly,
that a stalled viewer changes nothing for the others, that everything is encoded once, and
the refusals (unknown stage, malformed SDP, a stage that ends while viewers watch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import pytest

from server.client import AvatarClient, load_audio
from server.watch import WatchClient, split_watch_url
from tests.server_proc import ServerProcess, get_json, model_args, wait_sessions

MIN_FPS = 25.0


@pytest.fixture(scope="module")
def server(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server on the private address, default config."""
    d = tmp_path_factory.mktemp("stage-server")
    srv = ServerProcess(netns, d / "server.log", ["--data-dir", str(d / "data"), *model_args()])
    srv.start()
    yield srv
    code = srv.stop()
    assert code in (0, -2, None), f"server exited with {code}:\n{srv.log_tail()}"
    log = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"the server logged a traceback:\n{srv.log_tail(120)}"


async def _speaker(base: str, wav: Path, seconds: float) -> tuple[AvatarClient, dict[str, object]]:
    speaker = AvatarClient(base, load_audio(wav), duration=seconds)
    welcome = await speaker.connect()
    speaker.make_pc()
    await speaker.negotiate()
    return speaker, welcome


def test_split_watch_url() -> None:
    assert split_watch_url("http://h:1/watch/abc") == ("http://h:1", "abc")
    assert split_watch_url("https://h/app/whep/abc") == ("https://h/app", "abc")
    assert split_watch_url("http://h:1/abc") == ("http://h:1", "abc")


async def test_viewers_watch_a_stage(server: ServerProcess, speech_wav: Path) -> None:
    base = server.url
    speaker, welcome = await _speaker(base, speech_wav, 14.0)
    stage = welcome["stage"]
    assert isinstance(stage, dict) and stage["watch"] == f"/watch/{stage['id']}", welcome
    viewers: list[WatchClient] = []
    try:
        await asyncio.sleep(1.0)  # the speaker's media is flowing
        viewers = [WatchClient(base + str(stage["watch"])) for _ in range(3)]
        await asyncio.gather(*(v.start() for v in viewers))
        for v in viewers:  # a joining viewer's first picture comes at once (keyframe on join)
            await asyncio.wait_for(v.first_frame.wait(), 5.0)
        assert all(v.stats.first_frame_s is not None and v.stats.first_frame_s < 1.5 for v in viewers), [v.stats.summary() for v in viewers]

        info = await get_json(base, f"/stages/{stage['id']}")
        assert info == {"stage": stage["id"], "live": True, "viewers": 3}

        # one viewer stalls for 4 s: the others keep the full rate
        stalled = viewers[2]
        stalled.running.clear()
        mark = len(viewers[0].stats.frames)
        await asyncio.sleep(4.0)
        stalled.running.set()
        during = viewers[0].stats.frames[mark:]
        assert len(during) >= 4.0 * MIN_FPS, f"viewer 0 got {len(during)} frames while viewer 2 stalled"
        await asyncio.sleep(3.0)  # the stalled one resumes (on a keyframe)

        stats = await get_json(base, "/stats")
        sess = [s for s in stats["sessions"] if s.get("stage") == stage["id"]]
        assert sess and sess[0]["viewers"] == 3, stats
        program = sess[0]["program"]
        # the viewers' audio is delayed by the video's own latency (source in → shared encoder out)
        lat = sess[0]["latency_ms"]["p50"]
        assert abs(program["audio_delay_ms"] - (lat + program["video"]["encode_ms"])) < 15.0, (lat, program)
        # encoded once for all viewers: the shared encoder made about one frame per tick
        assert program["video"]["frames"] <= sess[0]["frames"] + 1, program
        assert program["video"]["keyframes"] >= 1 and program["audio"]["packets"] > 100, program
        per = {p["viewer"]: p for p in program["per_viewer"]}
        assert len(per) == 3

        for v in viewers:
            s = v.stats
            print(s.summary())
            assert s.fps() >= MIN_FPS or v is stalled, s.summary()
            assert len(s.audio) >= 150, f"viewer got {len(s.audio)} audio frames: {s.summary()}"
            assert s.video_sr.pairs and s.audio_sr.pairs, "no RTCP sender reports reached the viewer"
        after = stalled.stats.frames[-1].t - stalled.stats.frames[0].t
        assert after > 6.0 and len(stalled.stats.frames) > 100, stalled.stats.summary()

        # a viewer leaves with DELETE
        await viewers[0].close()
        for _ in range(30):
            if (await get_json(base, f"/stages/{stage['id']}"))["viewers"] == 2:
                break
            await asyncio.sleep(0.1)
        assert (await get_json(base, f"/stages/{stage['id']}"))["viewers"] == 2
    finally:
        await speaker.close()
    # the stage ends while two viewers watch: they are told so
    for v in viewers[1:]:
        await asyncio.wait_for(v.ended.wait(), 5.0)
        assert v.stats.ended is not None and "ended" in v.stats.ended, v.stats.events
        await v.close()
    assert await wait_sessions(base, 0) == 0
    async with aiohttp.ClientSession() as http, http.get(f"{base}/stages/{stage['id']}") as r:
        assert r.status == 410 and "has ended" in await r.text()
    totals = (await get_json(base, "/stats"))["totals"]
    assert totals["pcs"] == 0, totals


async def test_whep_refusals(server: ServerProcess, speech_wav: Path) -> None:
    base = server.url
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/whep/nosuchstage", data="v=0\r\n", headers={"Content-Type": "application/sdp"}) as r:
            body = await r.text()
            assert r.status == 404 and "no stage 'nosuchstage'" in body, body
        speaker, welcome = await _speaker(base, speech_wav, 6.0)
        stage = welcome["stage"]
        assert isinstance(stage, dict)
        url = f"{base}/whep/{stage['id']}"
        try:
            async with http.post(url, data="hello", headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 415, await r.text()
            for bad in ("", "hello", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "v=0\r\n" + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n" * 3, "v=0\r\n" + "x" * 70000):
                async with http.post(url, data=bad, headers={"Content-Type": "application/sdp"}) as r:
                    body = await r.text()
                    assert r.status == 400, (r.status, body)
                    assert "bad_offer" in body and "aiortc" not in body and "Traceback" not in body and len(body) < 400, body
            async with http.delete(f"{url}/nosuchviewer") as r:
                assert r.status == 404, await r.text()
            async with http.patch(f"{url}/x", data="a=candidate") as r:
                assert r.status == 405
            stats = await get_json(base, "/stats")
            sess = [s for s in stats["sessions"] if s.get("stage") == stage["id"]]
            assert sess and sess[0]["viewers"] == 0, "a refused offer left a viewer behind"
        finally:
            await speaker.close()


async def test_record_a_stage(server: ServerProcess, speech_wav: Path) -> None:
    """The speaker's ``record`` control writes the program (the shared VP8 + Opus packets, no
    re-encode) to a WebM file that plays: video from a keyframe at the stage's rate, audio."""
    base = server.url
    speaker, _ = await _speaker(base, speech_wav, 10.0)
    try:
        await asyncio.sleep(1.0)
        assert speaker.sig is not None
        await speaker.sig.send("control", action="record", on=True)
        await asyncio.sleep(4.0)
        await speaker.sig.send("control", action="record", on=False)
        await asyncio.sleep(1.0)
        events = [e for e in speaker.stats.server_stats_events]
        assert events, "no stats from the server"
    finally:
        await speaker.close()
    recordings = sorted((server.log_path.parent / "data" / "recordings").glob("*.webm"))
    assert len(recordings) == 1, recordings
    with av.open(str(recordings[0])) as f:
        vs, aus = f.streams.video[0], f.streams.audio[0]
        assert vs.codec_context.name in ("vp8", "libvpx") and aus.codec_context.name in ("opus", "libopus")
        frames = [fr for fr in f.decode(video=0)]
    with av.open(str(recordings[0])) as f:
        audio = sum(fr.samples for fr in f.decode(audio=0))
    span = float(frames[-1].time - frames[0].time)
    assert 3.0 <= span <= 5.5 and len(frames) / span > MIN_FPS, (len(frames), span)
    assert abs(audio / 48_000 - span) < 0.5, (audio / 48_000, span)  # audio and video cover the same time
    assert frames[0].width == 512 and frames[0].key_frame


async def test_program_packets_keep_the_stage_clock() -> None:
    """The shared encoders stamp packets on the stage clock: VP8 at 90 kHz, 3000 ticks a frame
    at 30 fps (what RTP carries to every viewer), Opus at 48 kHz, 960 a packet."""
    import numpy as np

    from server.clock import MonotonicClock
    from server.stage.program import ProgramAudio, ProgramVideoEncoder

    got: list[av.Packet] = []
    enc = ProgramVideoEncoder(asyncio.get_running_loop(), got.append, fps=30, cpu_used=-12, max_bitrate=500_000, min_bitrate=150_000)
    try:
        for i in range(30, 34):  # from 1 s on (a stage's viewer may join late)
            enc.submit(np.zeros((768, 512), np.uint8), i * 3000)
            await asyncio.sleep(0.05)
    finally:
        enc.close()
    assert [p.pts for p in got] == [90_000, 93_000, 96_000, 99_000] and got[0].is_keyframe
    audio = ProgramAudio(MonotonicClock(), None, lambda: None, 0.05)
    packets = audio.encode(np.zeros((960, 2), np.int16), 7)
    assert [p.pts for p in packets] == [7 * 960] and packets[0].time_base == Fraction(1, 48_000)


async def test_avatar_client_watch_records(server: ServerProcess, speech_wav: Path, tmp_path: Path) -> None:
    """``avatar client --watch URL --record OUT.mp4``: a headless viewer from the command line."""
    import json
    import sys

    from tests.server_proc import ROOT

    speaker, welcome = await _speaker(server.url, speech_wav, 10.0)
    try:
        assert speaker.stats.stage == welcome["stage"]["id"]  # type: ignore[index]
        out, js = tmp_path / "watched.mp4", tmp_path / "watched.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "client", "--watch", f"{server.url}/watch/{speaker.stats.stage}",
            "--duration", "4", "--record", str(out), "--stats", str(js), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()[-2000:]
    finally:
        await speaker.close()
    summary = json.loads(js.read_text())
    assert summary["fps"] >= MIN_FPS and summary["audio_frames"] > 100, summary
    with av.open(str(out)) as f:
        assert f.streams.video and f.streams.audio
        n = sum(1 for _ in f.decode(video=0))
    assert n >= 3.0 * MIN_FPS, n


async def test_h264_only_viewer(server: ServerProcess, speech_wav: Path) -> None:
    """A viewer whose offer takes no VP8 (OBS's WHEP source, some hardware players) gets the
    program from a shared H.264 encoder instead; VP8 viewers are unaffected."""
    speaker, welcome = await _speaker(server.url, speech_wav, 10.0)
    stage = welcome["stage"]
    assert isinstance(stage, dict)
    h264 = WatchClient(server.url + str(stage["watch"]), video_codecs=("h264",))
    vp8 = WatchClient(server.url + str(stage["watch"]))
    try:
        await asyncio.sleep(0.5)
        await h264.start()
        await vp8.start()
        await asyncio.sleep(4.0)
        for v in (h264, vp8):
            assert v.stats.fps() >= MIN_FPS, v.stats.summary()
        stats = await get_json(server.url, "/stats")
        sess = next(s for s in stats["sessions"] if s.get("stage") == stage["id"])
        codecs = sorted(p["codec"] for p in sess["program"]["per_viewer"])
        assert codecs == ["h264", "vp8"], sess["program"]["per_viewer"]
        assert sess["program"]["h264_video"]["frames"] > 60, sess["program"]
    finally:
        await h264.close()
        await vp8.close()
        await speaker.close()


def test_program_audio_drains_bursts_in_silence() -> None:
    """Frames that arrive in pairs (a bursty link) build a backlog one-per-tick play-out never
    drains: late silent frames are skipped, so the delay returns to its target; speech is kept."""
    import numpy as np

    from server.clock import VirtualClock
    from server.stage.program import AUDIO_FRAME, ProgramAudio

    def frame(loud: bool) -> av.AudioFrame:
        x = (np.full((1, 2 * AUDIO_FRAME), 3000 if loud else 0, np.int16))
        f = av.AudioFrame.from_ndarray(x, format="s16", layout="stereo")
        f.sample_rate = 48_000
        return f

    clock = VirtualClock(0.0)
    audio = ProgramAudio(clock, None, lambda: None, 0.06)
    played_late: list[float] = []
    for k in range(200):  # 4 s; pairs of frames every 40 ms; speech in the first and third second
        t = k * 0.02
        loud = (k // 50) % 2 == 0
        if k % 2 == 1:
            audio.push(frame(loud), t)
            audio.push(frame(loud), t)
        clock.advance_to(t)
        before = len(audio._queue)
        out = audio._next_samples(t)
        if out is not None and before:
            played_late.append(len(audio._queue) * 0.02)
    assert audio.silent_skips > 0 and audio.late_drops == 0, (audio.silent_skips, audio.late_drops)
    assert max(played_late[-25:]) <= 0.1, played_late[-25:]  # the backlog stays bounded
