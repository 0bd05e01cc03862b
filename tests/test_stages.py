"""Unit tests of the audio-path stages: ingest, VAD, features, visemes."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from engines.features import logmel
from engines.predictor import EnergyVisemeModel
from engines.spec import N_MELS, N_VISEMES, VISEME_INDEX
from server.config import VadConfig
from server.errors import MediaError
from server.offline import live_frames
from server.pipeline.ingest import ArrivedFrame, AudioIngest
from server.pipeline.stages import FeatureStage, VisemeStage
from server.pipeline.types import AudioChunk, VadChunk
from server.pipeline.vad import SileroVad


def _stereo_frame(samples: np.ndarray, rate: int = 48_000) -> av.AudioFrame:
    inter = np.repeat((samples * 32767).astype(np.int16)[None, :], 2, axis=0).T.reshape(1, -1)
    f = av.AudioFrame.from_ndarray(np.ascontiguousarray(inter), format="s16", layout="stereo")
    f.sample_rate = rate
    return f


def test_ingest_resamples_48k_stereo_to_16k_mono_with_continuous_index() -> None:
    ing = AudioIngest()
    t = np.arange(960 * 50) / 48_000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    chunks = []
    for i in range(50):
        chunks += ing.push(ArrivedFrame(_stereo_frame(tone[i * 960 : (i + 1) * 960]), arrival=i * 0.02))
    total = sum(c.samples.size for c in chunks)
    assert abs(total - 16_000) <= 64  # resampler delay only
    idx = 0
    for c in chunks:
        assert c.sample_index == idx and c.samples.dtype == np.float32
        idx += c.samples.size
    x = np.concatenate([c.samples for c in chunks])[2000:]
    spectrum = np.abs(np.fft.rfft(x))
    peak_hz = spectrum.argmax() * 16_000 / x.size
    assert abs(peak_hz - 440) < 5
    assert 0.3 < np.abs(x).max() < 0.6


def test_ingest_survives_a_format_change_midstream() -> None:
    ing = AudioIngest()
    ing.push(ArrivedFrame(_stereo_frame(np.zeros(960)), 0.0))
    mono = av.AudioFrame.from_ndarray(np.zeros((1, 441), np.int16), format="s16", layout="mono")
    mono.sample_rate = 22_050
    out = ing.push(ArrivedFrame(mono, 0.02))
    assert all(c.samples.dtype == np.float32 for c in out)


def test_ingest_rejects_non_audio() -> None:
    with pytest.raises(MediaError, match="expected an audio frame"):
        AudioIngest().push(ArrivedFrame(av.VideoFrame(16, 16, "yuv420p"), 0.0))  # type: ignore[arg-type]


def _chunks(audio: np.ndarray, size: int = 320) -> list[AudioChunk]:
    return [AudioChunk(audio[i : i + size], i, i / 16_000) for i in range(0, audio.size, size)]


def _load16k(path: Path) -> np.ndarray:
    ing = AudioIngest()
    parts = []
    for f in live_frames(path):
        parts += [c.samples for c in ing.push(ArrivedFrame(f, 0.0))]
    return np.concatenate(parts)


def test_vad_speech_vs_silence_with_hysteresis(speech_wav: Path) -> None:
    audio = _load16k(speech_wav)
    vad = SileroVad().stream(VadConfig())
    flags = [vc.speaking for c in _chunks(audio) for vc in vad.push(c)]
    t = np.arange(len(flags)) * 0.02
    assert not any(f for f, tt in zip(flags, t, strict=True) if tt < 0.5)  # leading silence
    assert np.mean([f for f, tt in zip(flags, t, strict=True) if 0.9 < tt < 1.8]) > 0.8  # first sentence
    assert not flags[-1]  # trailing silence ends speech
    # hysteresis: no flicker shorter than the hangover inside a sentence
    changes = sum(1 for a, b in zip(flags, flags[1:], strict=False) if a != b)
    assert changes <= 12


def test_vad_reset_and_no_delay() -> None:
    vad = SileroVad().stream(VadConfig())
    c = AudioChunk(np.zeros(100, np.float32), 0, 0.0)
    out = vad.push(c)
    assert len(out) == 1 and out[0].chunk is c  # passed on at once, not held for a full window
    vad.reset()
    assert vad.prob == 0.0 and not vad.speaking


def test_feature_stage_matches_whole_sequence_features() -> None:
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(16_000)).astype(np.float32)
    fs = FeatureStage()
    frames = [ff for c in _chunks(audio, 333) for ff in fs.push(VadChunk(c, 0.9, True))]
    hops = [f.hop for f in frames]
    assert hops == sorted(hops) and hops[0] == 0
    streamed = np.concatenate([f.features for f in frames])
    assert streamed.shape == (100, N_MELS)
    assert np.abs(streamed - logmel(audio)).max() < 1e-4


def test_viseme_stage_gates_to_silence_and_tracks_sources() -> None:
    rng = np.random.default_rng(1)
    quiet = 1e-4 * rng.standard_normal(4800)
    loud = 0.3 * rng.standard_normal(3200)
    audio = np.concatenate([quiet, loud]).astype(np.float32)
    fs = FeatureStage()
    vs = VisemeStage(EnergyVisemeModel(), VadConfig())
    loud_not_speaking = []
    for c in _chunks(audio):
        for ff in fs.push(VadChunk(c, 0.0, False)):
            loud_not_speaking += vs.push(ff)
    w = np.concatenate([f.weights for f in loud_not_speaking])
    assert w.shape[1] == N_VISEMES
    assert np.allclose(w[:, VISEME_INDEX["sil"]], 1.0)  # gated: noise does not move the mouth
    assert all(len(f.sources) == 1 for f in loud_not_speaking)  # zero lookahead: each frame completes its own audio
    vs2 = VisemeStage(EnergyVisemeModel(), VadConfig(gate=False))
    fs2 = FeatureStage()
    out = [vf for c in _chunks(audio) for ff in fs2.push(VadChunk(c, 0.0, False)) for vf in vs2.push(ff)]
    w2 = np.concatenate([f.weights for f in out])
    assert w2[30:, VISEME_INDEX["sil"]].mean() < 0.5  # ungated: the burst opens the mouth
    assert np.allclose(w2.sum(axis=1), 1.0, atol=1e-4)


def test_live_frames_rejects_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(MediaError, match="broken.wav"):
        list(live_frames(bad))
    with pytest.raises(MediaError, match="not found"):
        list(live_frames(tmp_path / "missing.wav"))
