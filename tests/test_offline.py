"""Offline commands: same stages and clock as a live session; formats; bad files."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from server.config import load_config
from server.offline import format_visemes, live_frames, run_offline, viseme_matrix
from server.pipeline.runner import AvatarPipeline, load_models
from server.stage.local import push_batch as _push_batch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def energy_cfg():  # type: ignore[no-untyped-def]
    return load_config(overrides={"visemes": {"model": "energy"}})


@pytest.fixture(scope="module")
def models(energy_cfg):  # type: ignore[no-untyped-def]
    return load_models(energy_cfg)


def test_live_batching_gives_identical_visemes_to_offline(speech_wav: Path, energy_cfg, models) -> None:  # type: ignore[no-untyped-def]
    """A live session pushes frames in irregular batches from its drain buffer: same result."""
    offline = asyncio.run(run_offline(speech_wav, energy_cfg, models))
    _, w_off = viseme_matrix(offline.visemes)
    frames = list(live_frames(speech_wav))
    pipe = AvatarPipeline(models, energy_cfg, energy_cfg.seed, models.registry.create(models.registry.default_name(), (128, 128)))
    rng = np.random.default_rng(0)
    live = []
    i = 0
    while i < len(frames):
        n = int(rng.integers(1, 6))
        live += _push_batch(pipe, [(f, (i + k + 1) * 0.02) for k, f in enumerate(frames[i : i + n])])
        i += n
    live += pipe.flush(len(frames) * 0.02)
    _, w_live = viseme_matrix(live)
    assert w_live.shape == w_off.shape and w_off.shape[0] > 300
    assert np.array_equal(w_live, w_off)


def test_render_and_visemes_agree_and_render_is_watchable(speech_wav: Path, tmp_path: Path, energy_cfg, models) -> None:  # type: ignore[no-untyped-def]
    from server.offline import Mp4Writer

    cfg = energy_cfg
    out = tmp_path / "out.mp4"
    writer = Mp4Writer(out, (cfg.video.width, cfg.video.height), cfg.video.fps, audio_source=speech_wav)
    res = asyncio.run(run_offline(speech_wav, cfg, models, on_video=writer.add_video))
    writer.close()
    plain = asyncio.run(run_offline(speech_wav, cfg, models))
    assert np.array_equal(viseme_matrix(res.visemes)[1], viseme_matrix(plain.visemes)[1])
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.width, v.height) == (512, 512)
        n = sum(1 for _ in c.decode(video=0))
    assert n == res.video_frames
    assert abs(n / 30 - (res.duration_s + 0.3)) < 0.1
    assert a.rate == 48_000


def test_visemes_formats(speech_wav: Path, energy_cfg, models) -> None:  # type: ignore[no-untyped-def]
    res = asyncio.run(run_offline(speech_wav, energy_cfg, models))
    doc = json.loads(format_visemes(res, "json", "x.wav"))
    assert doc["lookahead_ms"] == 0 and doc["model"] == "energy" and len(doc["visemes"]) == 15
    assert all(len(f["weights"]) == 15 for f in doc["frames"])
    rj = json.loads(format_visemes(res, "rhubarb-json", "x.wav"))
    cues = rj["mouthCues"]
    assert cues[0]["start"] == 0.0 and cues[0]["value"] == "X"  # leading silence
    assert {c["value"] for c in cues} <= set("ABCDEFGHX") and len({c["value"] for c in cues}) >= 3
    assert all(a["end"] == b["start"] for a, b in zip(cues, cues[1:], strict=False))
    assert cues[-1]["end"] == pytest.approx(rj["metadata"]["duration"], abs=0.02)
    tsv = format_visemes(res, "rhubarb-tsv", "x.wav").splitlines()
    assert tsv[0] == "0.00\tX" and tsv[-1].endswith("\tX")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_visemes_any_rate_and_channels(tmp_path: Path) -> None:
    # 44.1 kHz stereo float: any format PyAV reads is accepted
    t = np.arange(44_100) / 44_100
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.4)).astype(np.float32)
    wav = tmp_path / "stereo44.wav"
    import soundfile

    soundfile.write(str(wav), np.stack([x, x], axis=1), 44_100, subtype="FLOAT")
    r = _cli("visemes", str(wav), "--model", "energy", "--format", "rhubarb-tsv", "-o", str(tmp_path / "o.tsv"))
    assert r.returncode == 0, r.stderr
    assert "lookahead 0 ms" in r.stderr
    assert (tmp_path / "o.tsv").read_text().startswith("0.00\tX")


def test_cli_render_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "notaudio.wav"
    bad.write_text("this is not audio")
    r = _cli("render", str(bad), "-o", str(tmp_path / "x.mp4"), "--model", "energy", "-q")
    assert r.returncode == 2
    assert "notaudio.wav" in r.stderr and "Traceback" not in r.stderr


def test_audio_on_one_thread_while_frames_render_on_another(speech_wav: Path, energy_cfg, models) -> None:  # type: ignore[no-untyped-def]
    """A live session pushes audio on its event loop while its thread renders: the pipeline's
    mailbox hands every viseme hop and source time to the animator once, in order."""
    import threading

    frames = list(live_frames(speech_wav))
    pipe = AvatarPipeline(models, energy_cfg, energy_cfg.seed, models.registry.create(models.registry.default_name(), (128, 128)))
    pushed: list[float] = []
    seen: list[float] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def render_loop() -> None:
        t = 0.0
        try:
            while not done.is_set():
                _, sources, _ = pipe.produce(t)
                seen.extend(sources)
                t += 1 / 30
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    th = threading.Thread(target=render_loop)
    th.start()
    try:
        for i, f in enumerate(frames):
            for vf in _push_batch(pipe, [(f, (i + 1) * 0.02)]):
                pushed.extend(vf.sources)
    finally:
        done.set()
        th.join()
    assert not errors, errors
    seen.extend(pipe.produce(len(frames) * 0.02 + 1.0)[1])  # what was still in the mailbox
    assert seen == pushed and len(pushed) > 100
    assert pipe.animator.dropped_hops == 0
