"""ProsodyTracker: level, YIN pitch on synthetic tones and a real espeak vowel, speaking rate."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from engines.spec import SAMPLE_RATE
from server.pipeline.prosody import ProsodyFrame, ProsodyTracker
from server.pipeline.types import AudioChunk


def run(x: NDArray[np.float32], chunks: tuple[int, ...] = (320,), start: int = 0) -> list[ProsodyFrame]:
    """Push ``x`` through a fresh tracker in chunks cycling through the given sizes."""
    tr = ProsodyTracker()
    out: list[ProsodyFrame] = []
    i, k = 0, 0
    while i < len(x):
        n = chunks[k % len(chunks)]
        out += tr.push(AudioChunk(x[i : i + n], start + i, arrival=i / SAMPLE_RATE))
        i, k = i + n, k + 1
    return out


def harmonic(f0: NDArray[np.float64] | float, seconds: float, rms: float = 0.1) -> NDArray[np.float32]:
    """A 5-harmonic voiced buzz with fundamental ``f0`` (Hz, scalar or per sample), scaled to ``rms``."""
    n = int(seconds * SAMPLE_RATE)
    f = np.broadcast_to(np.asarray(f0, np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    x = sum(np.sin(k * phase + k) / k for k in range(1, 6))
    x = np.asarray(x, np.float64)
    return (x * rms / np.sqrt(np.mean(x * x))).astype(np.float32)


def load16k(path: Path) -> NDArray[np.float32]:
    """Decode and resample an audio file to 16 kHz mono float32."""
    with av.open(str(path)) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        parts = [o.to_ndarray().reshape(-1) for fr in c.decode(audio=0) for o in rs.resample(fr)]
        parts += [o.to_ndarray().reshape(-1) for o in rs.resample(None)]
    return np.concatenate(parts).astype(np.float32)


def reference_f0(x: NDArray[np.float32], lo: float = 60.0, hi: float = 400.0) -> float:
    """Independent check: long-window (200 ms) autocorrelation peak with parabolic refinement."""
    seg = x.astype(np.float64) - x.mean()
    ac = np.correlate(seg, seg, "full")[len(seg) - 1 :]
    a, b = int(SAMPLE_RATE / hi), int(SAMPLE_RATE / lo)
    tau = a + int(np.argmax(ac[a:b]))
    y0, y1, y2 = ac[tau - 1], ac[tau], ac[tau + 1]
    shift = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    return SAMPLE_RATE / (tau + shift)


@pytest.mark.parametrize("f0", [150.0, 220.0])
def test_finds_synthetic_tone_pitch(f0: float) -> None:
    out = run(harmonic(f0, 1.0), chunks=(320, 123, 512, 7))
    assert [p.hop for p in out] == list(range(100))
    steady = out[10:]
    assert all(p.voiced for p in steady)
    pitch = np.array([p.pitch_hz for p in steady])
    assert np.all(np.abs(pitch / f0 - 1) < 0.015), (pitch.min(), pitch.max())


def test_follows_a_glide_and_reports_level() -> None:
    f = np.linspace(120.0, 300.0, SAMPLE_RATE)  # 1 s glide
    out = run(harmonic(f, 1.0, rms=0.25))
    for p in out[10::15]:
        true = f[min(len(f) - 1, (p.hop + 1) * 160 - 1)]
        assert abs(p.pitch_hz / true - 1) < 0.04, (p.hop, p.pitch_hz, true)
    sine = (0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(8000) / SAMPLE_RATE)).astype(np.float32)
    assert all(abs(p.rms_db - 20 * np.log10(0.5 / np.sqrt(2))) < 0.01 for p in run(sine))


def test_silence_and_noise_are_unvoiced() -> None:
    silent = run(np.zeros(SAMPLE_RATE, np.float32))
    assert all(not p.voiced and p.pitch_hz == 0.0 and p.rms_db == -100.0 for p in silent)
    noise = np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE).astype(np.float32) * 0.1
    out = run(noise)
    assert np.mean([p.voiced for p in out]) < 0.05


def espeak_vowel(path: Path, pitch: int) -> NDArray[np.float32]:
    """A sustained /A:/ from espeak-ng at pitch setting ``pitch`` (0..99), as 16 kHz float32."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.fail("espeak-ng is not installed (make test installs it)")
    subprocess.run([exe, "-v", "en-us", "-p", str(pitch), "-w", str(path), "[[A:::::]]"], check=True)
    return load16k(path)


@pytest.mark.parametrize("pitch_setting", [30, 80])
def test_finds_pitch_of_real_espeak_vowel(tmp_path: Path, pitch_setting: int) -> None:
    x = espeak_vowel(tmp_path / "ah.wav", pitch_setting)
    out = run(x)
    loud = [p.hop for p in out if p.rms_db > -40.0]
    assert loud[-1] - loud[0] >= 25, "espeak vowel shorter than expected"
    mid = (loud[0] + loud[-1]) // 2
    ref = reference_f0(x[(mid - 8) * 160 : (mid + 8) * 160])
    assert 70.0 < ref < 300.0
    core = out[mid - 8 : mid + 8]
    assert np.mean([p.voiced for p in core]) >= 0.9
    tracked = float(np.median([p.pitch_hz for p in core if p.voiced]))
    assert abs(tracked / ref - 1) < 0.03, (tracked, ref)


def test_higher_espeak_voice_tracks_higher(tmp_path: Path) -> None:
    medians = []
    for setting in (20, 90):
        out = run(espeak_vowel(tmp_path / f"s{setting}.wav", setting))
        medians.append(np.median([p.pitch_hz for p in out if p.voiced]))
    assert medians[1] > 1.2 * medians[0]


@pytest.mark.parametrize("syllables_per_s", [3.0, 5.0])
def test_speaking_rate_counts_syllable_peaks(syllables_per_s: float) -> None:
    secs = 4.0
    n = int(secs * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    env = np.clip(np.sin(np.pi * t * syllables_per_s), 0, None) ** 2  # one burst per syllable
    pitch = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    x = (harmonic(pitch, secs, rms=0.2) * env).astype(np.float32)
    x += np.random.default_rng(1).standard_normal(n).astype(np.float32) * 1e-3
    out = run(x)
    rate = out[-1].rate_sps
    assert abs(rate - syllables_per_s) < 0.2 * syllables_per_s + 0.3, rate
    assert all(p.rate_sps == 0.0 for p in run(np.zeros(SAMPLE_RATE, np.float32)))


def test_hops_follow_sample_index_and_reset() -> None:
    x = harmonic(180.0, 0.5)
    out = run(x, start=1600)  # stream starts at hop 10
    assert out[0].hop == 10 and out[-1].hop == 10 + len(out) - 1
    assert abs(out[0].t - 0.1) < 1e-9
    tr = ProsodyTracker()
    a = tr.push(AudioChunk(x, 0, 0.0))
    gap = tr.push(AudioChunk(x[:800], 16000, 0.0))  # a gap: restarts at the new position
    assert tr.discontinuities == 1 and gap[0].hop == 100
    tr.reset()
    b = tr.push(AudioChunk(x, 0, 0.0))
    assert [(p.pitch_hz, p.rms_db) for p in a] == [(p.pitch_hz, p.rms_db) for p in b]
