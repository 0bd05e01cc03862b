"""`avatar visemes` / `avatar render` on generated files of any length, rate, layout and container.

Property-based (hypothesis, derandomized and without an example database, so every run tries the
same files): WAV, FLAC, Ogg/Opus, MP3 and M4A written with PyAV's encoders, 0 samples to 4 s,
8-96 kHz, 1-6 channels, silence, a tone or noise. The models are loaded once (``energy_models``).
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from server.config import AppConfig, load_config
from server.errors import MediaError
from server.offline import (
    FRAME_S,
    LIVE_FRAME,
    LIVE_RATE,
    TAIL_S,
    format_visemes,
    live_frames,
    render_file,
    run_offline,
)
from server.pipeline.runner import SharedModels, load_models
from tests.audio_files import FORMATS, decoded_samples, write_audio

LOSSLESS = ("wav", "flac")
# derandomize: the same examples on every run and machine; no database: nothing carried between runs
PROPERTY = settings(derandomize=True, database=None, deadline=None, print_blob=False, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def small_cfg() -> AppConfig:
    """Energy model (no ONNX session per run), 128x128 video: every stage, less pixel work."""
    return load_config(overrides={"visemes": {"model": "energy"}, "video": {"width": 128, "height": 128}})


@pytest.fixture(scope="module")
def energy_models(small_cfg: AppConfig) -> SharedModels:
    """Loaded once for every example of the module."""
    return load_models(small_cfg)


def _signal(n: int, channels: int, rate: int, kind: str, seed: int) -> np.ndarray:
    """(n, channels) float32: silence, a 220 Hz tone or noise (a different phase/level per channel)."""
    if kind == "silence":
        return np.zeros((n, channels), np.float32)
    t = np.arange(n)[:, None] / rate
    if kind == "tone":
        return (0.3 * np.sin(2 * np.pi * 220 * t + np.arange(channels))).astype(np.float32)
    return np.random.default_rng(seed).normal(0, 0.1, (n, channels)).astype(np.float32)


def _file(tmp: Path, fmt: str, rate: int, channels: int, n: int, kind: str) -> tuple[Path, int]:
    return write_audio(tmp / "in", _signal(n, channels, rate, kind, n), rate, fmt)


def _check_visemes(path: Path, cfg: AppConfig, models: SharedModels, fmt: str, n: int, rate: int, kind: str) -> float:
    """Run `avatar visemes`' code on ``path`` and check its timeline; the run's duration, s."""
    res = asyncio.run(run_offline(path, cfg, models))
    # the 20 ms frames cover what the file decodes to, to within one frame ...
    _check_visemes_duration(path, res.duration_s)
    decoded = decoded_samples(path)[0]
    # ... and the input written into it (lossy encoders add priming and padding after it)
    assert res.duration_s >= n / rate - FRAME_S - 1e-9, (res, n, rate)
    if fmt in LOSSLESS:
        assert res.duration_s <= n / rate + FRAME_S + 1e-9, (res, n, rate)
    cues = json.loads(format_visemes(res, "rhubarb-json", path.name))["mouthCues"]
    assert cues[0]["start"] == 0.0
    assert all(a["end"] == b["start"] and a["start"] <= a["end"] for a, b in zip(cues, cues[1:], strict=False))
    assert cues[-1]["end"] == pytest.approx(res.duration_s, abs=FRAME_S), (cues[-1], res)
    if kind == "silence" or decoded == 0:
        assert {c["value"] for c in cues} == {"X"}, cues
    doc = json.loads(format_visemes(res, "json", path.name))
    assert len(doc["frames"]) == sum(f.weights.shape[0] for f in res.visemes)
    tsv = format_visemes(res, "rhubarb-tsv", path.name).splitlines()
    assert tsv[0].startswith("0.00\t") and tsv[-1].endswith("\tX")
    return res.duration_s


def _check_visemes_duration(path: Path, duration_s: float) -> None:
    """The run's audio, s, is what the file decodes to, to within one 20 ms frame."""
    decoded, rate = decoded_samples(path)
    assert abs(duration_s - decoded / rate) <= FRAME_S + 1e-9, (duration_s, decoded, rate)


def _expect_media_error_if_empty(packets: int, fmt: str, path: Path, run: Callable[[], Any]) -> bool:
    """A lossy file with no audio packet is a bare header ffmpeg cannot open as audio: the same
    clear MediaError naming the file as any non-audio file. True when that was the case."""
    if packets > 0 or fmt in LOSSLESS:
        return False
    with pytest.raises(MediaError, match=path.name):
        run()
    return True


KINDS = ["silence", "tone", "noise"]


def _cases(max_s: float) -> Any:
    """Keyword arguments (fmt, rate Hz, channels, n samples, kind): up to ``max_s`` seconds, or a
    handful of samples (the resampler's delay)."""
    return st.sampled_from(sorted(FORMATS)).flatmap(
        lambda fmt: st.integers(8_000, 96_000).flatmap(
            lambda rate: st.fixed_dictionaries(
                {
                    "fmt": st.just(fmt),
                    "rate": st.just(rate),
                    "channels": st.integers(1, 6),
                    "n": st.one_of(st.integers(0, 64), st.integers(0, int(max_s * rate))),
                    "kind": st.sampled_from(KINDS),
                }
            )
        )
    )


@settings(PROPERTY, max_examples=30)
@given(case=_cases(4.0))
# the issue's file: 16 kHz mono 16-bit WAV of 23,681 samples (more than one frame after the flush)
@example(case=dict(fmt="wav", rate=16_000, channels=1, n=23_681, kind="tone"))
@example(case=dict(fmt="wav", rate=16_000, channels=1, n=961, kind="noise"))
@example(case=dict(fmt="wav", rate=16_000, channels=1, n=0, kind="silence"))  # an empty file: silence cues
@example(case=dict(fmt="flac", rate=44_100, channels=2, n=0, kind="silence"))
@example(case=dict(fmt="wav", rate=48_000, channels=1, n=LIVE_FRAME, kind="tone"))
@example(case=dict(fmt="wav", rate=96_000, channels=6, n=3 * 96_000 + 1, kind="noise"))
@example(case=dict(fmt="m4a", rate=8_000, channels=6, n=8_000, kind="tone"))
@example(case=dict(fmt="opus", rate=44_100, channels=2, n=44_100, kind="noise"))
@example(case=dict(fmt="mp3", rate=22_050, channels=2, n=22_050 // 3, kind="tone"))
# around the resampler's delay (its filter holds back the first few input samples)
@example(case=dict(fmt="wav", rate=8_000, channels=1, n=1, kind="tone"))
@example(case=dict(fmt="wav", rate=8_000, channels=1, n=16, kind="tone"))
@example(case=dict(fmt="wav", rate=16_000, channels=2, n=17, kind="noise"))
@example(case=dict(fmt="wav", rate=44_100, channels=1, n=33, kind="tone"))
@example(case=dict(fmt="wav", rate=96_000, channels=1, n=50, kind="noise"))
@example(case=dict(fmt="flac", rate=11_025, channels=3, n=64, kind="tone"))
def test_visemes_on_any_file(small_cfg: AppConfig, energy_models: SharedModels, case: dict[str, Any]) -> None:
    fmt, rate, channels, n, kind = (case[k] for k in ("fmt", "rate", "channels", "n", "kind"))
    with tempfile.TemporaryDirectory(prefix="visemes-") as d:
        path, packets = _file(Path(d), fmt, rate, channels, n, kind)
        run = lambda: asyncio.run(run_offline(path, small_cfg, energy_models))  # noqa: E731
        if not _expect_media_error_if_empty(packets, fmt, path, run):
            _check_visemes(path, small_cfg, energy_models, fmt, n, rate, kind)


@settings(PROPERTY, max_examples=8)
@given(case=_cases(2.0))
@example(case=dict(fmt="wav", rate=16_000, channels=1, n=23_681, kind="tone"))
@example(case=dict(fmt="wav", rate=16_000, channels=1, n=0, kind="silence"))
@example(case=dict(fmt="m4a", rate=96_000, channels=5, n=5, kind="noise"))
@example(case=dict(fmt="opus", rate=8_000, channels=1, n=8_000, kind="tone"))
def test_render_on_any_file(small_cfg: AppConfig, energy_models: SharedModels, case: dict[str, Any]) -> None:
    """`avatar render`: an MP4 whose video runs for the audio plus the documented tail."""
    fmt, rate, channels, n, kind = (case[k] for k in ("fmt", "rate", "channels", "n", "kind"))
    with tempfile.TemporaryDirectory(prefix="render-") as d:
        path, packets = _file(Path(d), fmt, rate, channels, n, kind)
        out = Path(d) / "out.mp4"
        run = lambda: render_file(path, out, small_cfg, energy_models, None, progress=False)  # noqa: E731
        if _expect_media_error_if_empty(packets, fmt, path, run):
            return
        res = run()
        fps = small_cfg.video.fps
        _check_visemes_duration(path, res.duration_s)
        # the video runs for the audio plus the tail (the resting mouth), to within one frame
        assert abs(res.video_frames / fps - (res.duration_s + TAIL_S)) <= 1 / fps + 1e-9, res
        with av.open(str(out)) as c:
            assert sum(1 for _ in c.decode(video=0)) == res.video_frames
            audio = c.streams.audio
            if res.duration_s > 0:  # the file's own audio, resampled as a live session hears it
                assert audio and audio[0].rate == LIVE_RATE
            else:  # nothing to mux: the tail of a resting mouth, no audio track
                assert not audio


@settings(PROPERTY, phases=[Phase.explicit])  # the 960 explicit examples below
@given(r=st.integers(0, LIVE_FRAME - 1))
def test_live_frames_keep_every_sample_at_48k(r: int) -> None:
    """At 48 kHz stereo nothing is resampled: the frames are the file's samples, in order, the
    last frame zero-padded, for every remainder of the length modulo 960 (and 0-2 whole frames)."""
    n = (r % 3) * LIVE_FRAME + r
    x = np.random.default_rng(r).integers(-30_000, 30_000, (n, 2), dtype=np.int16)
    with tempfile.TemporaryDirectory(prefix="frames-") as d:
        path = Path(d) / "x.wav"
        import soundfile

        soundfile.write(str(path), x, LIVE_RATE, subtype="PCM_16")
        frames = [f.to_ndarray().reshape(-1, 2) for f in live_frames(path)]
    assert len(frames) == -(-n // LIVE_FRAME)
    assert all(f.shape == (LIVE_FRAME, 2) for f in frames)
    got = np.concatenate(frames) if frames else np.zeros((0, 2), np.int16)
    assert np.array_equal(got[:n], x) and not got[n:].any()


for _r in range(LIVE_FRAME):  # every remainder modulo 960, as explicit examples
    test_live_frames_keep_every_sample_at_48k = example(r=_r)(test_live_frames_keep_every_sample_at_48k)


def test_cli_on_the_issue_file_and_an_empty_file(tmp_path: Path) -> None:
    """The commands themselves (in-process): the issue's 23,681-sample 16 kHz WAV, a 0-sample WAV."""
    from server.cli import main

    for n in (23_681, 0):
        wav = tmp_path / f"n{n}.wav"
        import soundfile

        soundfile.write(str(wav), _signal(n, 1, 16_000, "tone", 0)[:, 0], 16_000, subtype="PCM_16")
        tsv = tmp_path / f"n{n}.tsv"
        assert main(["visemes", str(wav), "--model", "energy", "--format", "rhubarb-tsv", "-o", str(tsv)]) == 0
        assert tsv.read_text().startswith("0.00\t")
        mp4 = tmp_path / f"n{n}.mp4"
        assert main(["render", str(wav), "-o", str(mp4), "--model", "energy", "--size", "128x128", "-q"]) == 0
        with av.open(str(mp4)) as c:
            frames = sum(1 for _ in c.decode(video=0))
        audio_s = math.ceil(n * 3 / LIVE_FRAME) * FRAME_S  # 48 kHz samples in whole frames
        assert abs(frames / 30 - (audio_s + TAIL_S)) <= 1 / 30 + 1e-9, (n, frames)
    assert tsv.read_text() == "0.00\tX\n0.00\tX\n"  # the empty file: one silence cue


@pytest.mark.parametrize("content", [b"", b"this is not audio", b"RIFF\x00\x00\x00\x00WAVEfmt "])
def test_not_audio_is_a_media_error_naming_the_file(tmp_path: Path, small_cfg: AppConfig, energy_models: SharedModels, content: bytes) -> None:
    bad = tmp_path / "notaudio.wav"
    bad.write_bytes(content)
    with pytest.raises(MediaError, match="notaudio.wav"):
        asyncio.run(run_offline(bad, small_cfg, energy_models))
    with pytest.raises(MediaError, match="notaudio.wav"):
        render_file(bad, tmp_path / "x.mp4", small_cfg, energy_models, None, progress=False)
