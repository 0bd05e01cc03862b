"""Augmentation that mirrors real microphones and the WebRTC path, keeping labels aligned.

Every step transforms (audio at 16 kHz, viseme segments in samples) and is applied with its own
probability; all randomness comes from the ``numpy.random.Generator`` passed in, so a corpus is
reproducible from its seed. Steps that move time (leading silence, speed change, the Opus codec
delay, reverberation's direct-path delay) move or rescale the segments too.

Real noise and room impulse responses are READ from ``AugmentConfig.dev_speech`` (the shared
dev-speech folder) at generation time; they are never copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from numpy.typing import NDArray
from scipy.signal import butter, fftconvolve, lfilter, resample_poly, sosfiltfilt

from engines.corpus.labels import Segment, shift_segments
from engines.spec import SAMPLE_RATE

Audio = NDArray[np.float32]
DEFAULT_DEV_SPEECH = Path(__file__).resolve().parents[3] / "shared" / "data" / "dev-speech"


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation step."""

    dev_speech: Path = DEFAULT_DEV_SPEECH
    p_speed: float = 0.4
    speed_range: tuple[float, float] = (0.85, 1.18)  # playback-rate factor (>1: faster)
    p_pitch: float = 0.4
    pitch_semitones: tuple[float, float] = (-3.0, 3.0)
    lead_silence_s: tuple[float, float] = (0.05, 0.8)
    trail_silence_s: tuple[float, float] = (0.05, 0.6)
    p_reverb: float = 0.35
    p_real_rir: float = 0.5  # of reverberated utterances, fraction using the real RIRs
    rt60_s: tuple[float, float] = (0.15, 0.8)
    p_eq: float = 0.5
    p_bandlimit: float = 0.35
    p_noise: float = 0.75
    snr_db: tuple[float, float] = (0.0, 35.0)
    noise_kinds: tuple[tuple[str, float], ...] = (("real", 0.4), ("colored", 0.35), ("babble", 0.25))
    p_opus: float = 0.2
    opus_kbps: tuple[int, int] = (12, 32)
    gain_db: tuple[float, float] = (-30.0, 6.0)
    mic_floor_db: tuple[float, float] = (-90.0, -65.0)  # always: no real microphone is digital zero
    babble_pool: int = 12


@dataclass
class NoiseBank:
    """Real noise recordings and RIRs (read from disk) plus clean speech for babble."""

    noises: list[Audio] = field(default_factory=list)
    rirs: list[Audio] = field(default_factory=list)
    speech: list[Audio] = field(default_factory=list)  # recent clean utterances (babble)

    @classmethod
    def load(cls, dev_speech: Path) -> NoiseBank:
        """Read ``noise/*.wav`` and ``rir/*.wav`` (16 kHz mono) under ``dev_speech``."""
        bank = cls()
        for sub, dest in (("noise", bank.noises), ("rir", bank.rirs)):
            folder = dev_speech / sub
            if not folder.is_dir():
                raise FileNotFoundError(f"augmentation needs {folder} (set --dev-speech)")
            for f in sorted(folder.glob("*.wav")):
                x, sr = sf.read(f, dtype="float32", always_2d=True)
                if sr != SAMPLE_RATE:
                    raise ValueError(f"{f}: sample rate {sr}, expected {SAMPLE_RATE}")
                dest.append(x.mean(axis=1).astype(np.float32))
        return bank

    def remember(self, audio: Audio, limit: int) -> None:
        """Keep ``audio`` for babble (the ``limit`` most recent)."""
        self.speech.append(audio)
        del self.speech[:-limit]


def _rms(x: Audio) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def _active_rms(x: Audio) -> float:
    """RMS over the loudest half of 10 ms frames (speech level, ignoring pauses)."""
    n = x.shape[0] // 160
    if n < 2:
        return _rms(x)
    e = np.mean(np.square(x[: n * 160].reshape(n, 160), dtype=np.float64), axis=1)
    e = np.sort(e)[n // 2 :]
    return float(np.sqrt(e.mean() + 1e-20))


def speed(audio: Audio, segs: list[Segment], factor: float) -> tuple[Audio, list[Segment]]:
    """Play ``factor`` times faster (pitch moves too, as tape speed): labels rescaled by 1/factor."""
    frac = Fraction(factor).limit_denominator(64)
    up, down = frac.denominator, frac.numerator  # new length = n * up / down
    y = resample_poly(audio, up, down).astype(np.float32)
    return y, shift_segments(segs, 0, up / down)


def pitch_shift(audio: Audio, semitones: float) -> Audio:
    """Shift pitch AND formants by ``semitones``, keeping duration (labels unchanged).

    Resampling moves every frequency (a shorter or longer vocal tract and a higher or lower
    voice); WSOLA then stretches back to the original length without changing the spectrum.
    """
    factor = float(2.0 ** (semitones / 12.0))
    frac = Fraction(factor).limit_denominator(64)
    # Resampling by down/up raises pitch by frac and shortens by 1/frac.
    y = resample_poly(audio, frac.denominator, frac.numerator).astype(np.float32)
    return wsola(y, audio.shape[0])


def wsola(x: Audio, n_out: int, win: int = 480, tol: int = 120) -> Audio:
    """Time-stretch ``x`` to ``n_out`` samples (WSOLA, Hann overlap-add at 50 %)."""
    hop = win // 2
    if x.shape[0] < win + 2 * tol + 2 or n_out < win:
        return np.interp(np.linspace(0, x.shape[0] - 1, n_out), np.arange(x.shape[0]), x).astype(np.float32)
    window = np.hanning(win).astype(np.float32)
    out = np.zeros(n_out + win, np.float32)
    norm = np.zeros(n_out + win, np.float32)
    rate = (x.shape[0] - win) / max(n_out - win, 1)
    xp = np.concatenate([x, np.zeros(win + 2 * tol, np.float32)])
    prev = 0
    for k, o in enumerate(range(0, n_out, hop)):
        nominal = int(round(o * rate))
        if k == 0:
            best = nominal
        else:
            # Continue the natural continuation of the previous frame as closely as possible.
            target = xp[prev + hop : prev + hop + win]
            lo = max(0, nominal - tol)
            seg = xp[lo : nominal + tol + win]
            if seg.shape[0] < win or target.shape[0] < win:
                best = nominal
            else:
                c = np.correlate(seg, target, mode="valid")
                best = lo + int(np.argmax(c))
        frame = xp[best : best + win]
        out[o : o + win] += frame * window
        norm[o : o + win] += window
        prev = best
    return (out[:n_out] / np.maximum(norm[:n_out], 1e-3)).astype(np.float32)


def synthetic_rir(rng: np.random.Generator, rt60: float) -> Audio:
    """Exponentially decaying noise room response with a unit direct path at sample 0."""
    n = int(min(rt60 * 1.2, 1.0) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: int(0.003 * SAMPLE_RATE)] = 0.0  # first reflections after ~3 ms
    tail = lfilter([1.0], [1.0, -0.4], tail)  # air absorption: darker tail
    rir = tail * float(rng.uniform(0.2, 0.6)) / (np.abs(tail).max() + 1e-9)
    rir[0] = 1.0
    return rir.astype(np.float32)


def reverb(audio: Audio, rir: Audio) -> Audio:
    """Convolve with ``rir`` aligned on its direct path (its peak), so labels need no shift."""
    peak = int(np.argmax(np.abs(rir)))
    y = fftconvolve(audio, rir)[peak : peak + audio.shape[0]]
    return (y * (_active_rms(audio) / max(_active_rms(y), 1e-9))).astype(np.float32)


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> Audio:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.arange(n // 2 + 1, dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (-exponent / 2.0)
    x = np.fft.irfft(spec, n=n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def _crop_loop(src: Audio, n: int, rng: np.random.Generator) -> Audio:
    if src.shape[0] >= n:
        start = int(rng.integers(0, src.shape[0] - n + 1))
        return src[start : start + n]
    reps = int(np.ceil(n / src.shape[0]))
    return np.tile(src, reps)[:n]


def make_noise(rng: np.random.Generator, n: int, kind: str, bank: NoiseBank) -> Audio:
    """Unit-RMS noise of ``kind`` ("real", "colored", "babble") and length ``n``."""
    if kind == "real" and bank.noises:
        x = _crop_loop(bank.noises[int(rng.integers(len(bank.noises)))], n, rng)
    elif kind == "babble" and len(bank.speech) >= 3:
        k = int(rng.integers(3, min(7, len(bank.speech)) + 1))
        idx = rng.choice(len(bank.speech), size=k, replace=False)
        x = np.zeros(n, np.float32)
        for i in idx:
            s = bank.speech[int(i)]
            x += _crop_loop(s, n, rng) / max(_active_rms(s), 1e-6)
    else:
        x = colored_noise(rng, n, float(rng.uniform(0.0, 2.0)))
    return (x / max(_rms(x), 1e-9)).astype(np.float32)


def random_eq(rng: np.random.Generator, audio: Audio, bandlimit: bool, eq: bool) -> Audio:
    """Zero-phase band-limiting (telephone-ish to wideband) and a random spectral tilt/peak."""
    y = audio.astype(np.float64)
    nyq = SAMPLE_RATE / 2
    if bandlimit:
        lo = float(rng.uniform(60.0, 350.0))
        hi = float(rng.uniform(3400.0, 7500.0))
        sos = butter(4, [lo / nyq, hi / nyq], btype="band", output="sos")
        y = sosfiltfilt(sos, y)
    if eq:
        # a peaking or shelving band boosted/cut by up to 8 dB: mix with a band-passed copy
        fc = float(np.exp(rng.uniform(np.log(200.0), np.log(5000.0))))
        bw = fc * float(rng.uniform(0.3, 1.0))
        lo, hi = max(fc - bw / 2, 30.0), min(fc + bw / 2, nyq * 0.95)
        sos = butter(2, [lo / nyq, hi / nyq], btype="band", output="sos")
        band = sosfiltfilt(sos, y)
        g = 10.0 ** (float(rng.uniform(-8.0, 8.0)) / 20.0)
        y = y + (g - 1.0) * band
    return y.astype(np.float32)


def _opus_encode_decode(audio48: NDArray[np.float32], bitrate: int) -> NDArray[np.float32]:
    """Raw libopus round trip at 48 kHz mono (20 ms frames) through PyAV; output not re-aligned."""
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48_000
    enc.layout = "mono"
    enc.format = "s16"
    enc.bit_rate = bitrate
    enc.open()
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate = 48_000
    dec.layout = "mono"
    pcm = (np.clip(audio48, -1.0, 1.0) * 32767.0).astype(np.int16)
    n = enc.frame_size or 960
    out: list[NDArray[np.float32]] = []

    def decode(packets: list[av.Packet]) -> None:
        for pk in packets:
            for fr in dec.decode(pk):
                arr = fr.to_ndarray().reshape(-1)
                if fr.sample_rate != 48_000:
                    raise RuntimeError(f"opus decoder returned {fr.sample_rate} Hz, expected 48000")
                scale = 32768.0 if arr.dtype == np.int16 else 1.0
                out.append(arr.astype(np.float32) / scale)

    for i in range(0, pcm.shape[0], n):
        chunk = pcm[i : i + n]
        if chunk.shape[0] < n:
            chunk = np.pad(chunk, (0, n - chunk.shape[0]))
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = i
        decode(enc.encode(frame))
    decode(enc.encode(None))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@cache
def opus_delay_samples() -> int:
    """The Opus round trip's delay in 16 kHz samples, measured by cross-correlating a test signal."""
    rng = np.random.default_rng(1234)
    x = lfilter([1.0], [1.0, -0.8], rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    x *= 0.2 / _rms(x)
    y = _opus_roundtrip_raw(x, 32_000)
    n = x.shape[0]
    c = fftconvolve(y[: n + 2000], x[::-1])[n - 1 :]
    return int(np.argmax(c[:2000]))


def _opus_roundtrip_raw(audio: Audio, bitrate: int) -> Audio:
    up = resample_poly(audio, 3, 1).astype(np.float32)
    dec = _opus_encode_decode(up, bitrate)
    return resample_poly(dec, 1, 3).astype(np.float32)


def opus_roundtrip(audio: Audio, bitrate: int) -> Audio:
    """Opus encode/decode at ``bitrate`` b/s, re-aligned (codec delay removed), same length."""
    y = _opus_roundtrip_raw(audio, bitrate)
    d = opus_delay_samples()
    y = y[d : d + audio.shape[0]]
    if y.shape[0] < audio.shape[0]:
        y = np.pad(y, (0, audio.shape[0] - y.shape[0]))
    return y.astype(np.float32)


def augment(
    audio: Audio, segs: list[Segment], rng: np.random.Generator, cfg: AugmentConfig, bank: NoiseBank
) -> tuple[Audio, list[Segment], dict[str, float | str]]:
    """Clean 16 kHz speech + segments -> augmented audio, segments and a log of what was done."""
    log: dict[str, float | str] = {}
    x = audio.astype(np.float32)
    if rng.random() < cfg.p_speed:
        f = float(rng.uniform(*cfg.speed_range))
        x, segs = speed(x, segs, f)
        log["speed"] = f
    if rng.random() < cfg.p_pitch:
        st = float(rng.uniform(*cfg.pitch_semitones))
        x = pitch_shift(x, st)
        log["pitch"] = st
    lead = int(rng.uniform(*cfg.lead_silence_s) * SAMPLE_RATE)
    trail = int(rng.uniform(*cfg.trail_silence_s) * SAMPLE_RATE)
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(trail, np.float32)])
    segs = shift_segments(segs, lead)
    level = _active_rms(x)
    if rng.random() < cfg.p_reverb:
        if bank.rirs and rng.random() < cfg.p_real_rir:
            rir = bank.rirs[int(rng.integers(len(bank.rirs)))]
            log["reverb"] = "real"
        else:
            rt60 = float(rng.uniform(*cfg.rt60_s))
            rir = synthetic_rir(rng, rt60)
            log["reverb"] = rt60
        x = reverb(x, rir)
    bl, eq = rng.random() < cfg.p_bandlimit, rng.random() < cfg.p_eq
    if bl or eq:
        x = random_eq(rng, x, bl, eq)
        x *= level / max(_active_rms(x), 1e-9)
        log["eq"] = f"bandlimit={bl} eq={eq}"
    if rng.random() < cfg.p_noise:
        kinds, weights = zip(*cfg.noise_kinds, strict=True)
        w = np.asarray(weights, np.float64)
        kind = str(kinds[int(rng.choice(len(kinds), p=w / w.sum()))])
        snr = float(rng.uniform(*cfg.snr_db))
        noise = make_noise(rng, x.shape[0], kind, bank)
        x = x + noise * (level / 10.0 ** (snr / 20.0))
        log["noise"] = kind
        log["snr_db"] = snr
    # microphone self-noise
    floor = 10.0 ** (float(rng.uniform(*cfg.mic_floor_db)) / 20.0)
    # normalise speech to a nominal -20 dBFS before the random gain
    x = x * (0.1 / max(level, 1e-9))
    x = x + rng.standard_normal(x.shape[0]).astype(np.float32) * np.float32(floor)
    if rng.random() < cfg.p_opus:
        kbps = int(rng.integers(cfg.opus_kbps[0], cfg.opus_kbps[1] + 1))
        x = opus_roundtrip(x, kbps * 1000)
        log["opus_kbps"] = kbps
    g = float(rng.uniform(*cfg.gain_db))
    x = np.clip(x * np.float32(10.0 ** (g / 20.0)), -1.0, 1.0).astype(np.float32)
    log["gain_db"] = g
    return x, segs, log
