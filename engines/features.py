"""Causal log-mel features at 10 ms hops, streaming and whole-sequence (bit-identical).

Frame ``t`` covers the WIN_LENGTH samples that end at sample ``(t + 1) * HOP_LENGTH``; the
stream starts with ``WIN_LENGTH - HOP_LENGTH`` zeros of history. So the features of a hop are
known as soon as its last sample has arrived: no lookahead.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numpy.typing import NDArray

from engines.spec import F_MAX, F_MIN, HOP_LENGTH, LOG_FLOOR, N_FFT, N_MELS, SAMPLE_RATE, WIN_LENGTH

HISTORY: int = WIN_LENGTH - HOP_LENGTH  # samples carried between hops (240 = 15 ms)


def _hz_to_mel(f: NDArray[np.float64]) -> NDArray[np.float64]:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: NDArray[np.float64]) -> NDArray[np.float64]:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@cache
def mel_filterbank() -> NDArray[np.float32]:
    """Triangular HTK-mel filters, shape (N_FFT // 2 + 1, N_MELS), area-normalised."""
    n_bins = N_FFT // 2 + 1
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, n_bins)
    mel_pts = np.linspace(_hz_to_mel(np.array(F_MIN)), _hz_to_mel(np.array(F_MAX)), N_MELS + 2)
    hz = _mel_to_hz(mel_pts)
    fb = np.zeros((n_bins, N_MELS), dtype=np.float64)
    for m in range(N_MELS):
        lo, mid, hi = hz[m], hz[m + 1], hz[m + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[:, m] = np.maximum(0.0, np.minimum(up, down)) * (2.0 / (hi - lo))
    return fb.astype(np.float32)


@cache
def _window() -> NDArray[np.float32]:
    return np.hanning(WIN_LENGTH + 1)[:-1].astype(np.float32)  # periodic Hann


def _frames_to_logmel(frames: NDArray[np.float32]) -> NDArray[np.float32]:
    """(n, WIN_LENGTH) float32 windows -> (n, N_MELS) float32 log-mel."""
    spec = np.fft.rfft(frames * _window(), n=N_FFT, axis=-1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    mel = power @ mel_filterbank()
    return np.log(mel + np.float32(LOG_FLOOR)).astype(np.float32)


def logmel(audio: NDArray[np.float32]) -> NDArray[np.float32]:
    """Whole-sequence features: (n_samples,) float32 at 16 kHz in [-1, 1] -> (n_samples // 160, N_MELS).

    Trailing samples that do not fill a hop are ignored (exactly as the stream holds them back).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D, got shape {audio.shape}")
    n_hops = audio.shape[0] // HOP_LENGTH
    padded = np.concatenate([np.zeros(HISTORY, np.float32), audio[: n_hops * HOP_LENGTH]])
    if n_hops == 0:
        return np.zeros((0, N_MELS), np.float32)
    idx = np.arange(WIN_LENGTH)[None, :] + HOP_LENGTH * np.arange(n_hops)[:, None]
    return _frames_to_logmel(padded[idx])


class LogMelStream:
    """Streaming version of :func:`logmel`: push any number of samples, get whole hops back."""

    def __init__(self) -> None:
        self._buf = np.zeros(HISTORY, np.float32)
        self.hops_emitted = 0  # hop index of the next frame

    def reset(self) -> None:
        """Forget all audio (back to the zero history of a new stream)."""
        self._buf = np.zeros(HISTORY, np.float32)
        self.hops_emitted = 0

    def push(self, samples: NDArray[np.float32]) -> NDArray[np.float32]:
        """(n,) float32 samples at 16 kHz -> (k, N_MELS) features for the hops they complete."""
        buf = np.concatenate([self._buf, np.asarray(samples, np.float32)])
        n_hops = (buf.shape[0] - HISTORY) // HOP_LENGTH
        if n_hops <= 0:
            self._buf = buf
            return np.zeros((0, N_MELS), np.float32)
        idx = np.arange(WIN_LENGTH)[None, :] + HOP_LENGTH * np.arange(n_hops)[:, None]
        out = _frames_to_logmel(buf[idx])
        self._buf = buf[n_hops * HOP_LENGTH :]
        self.hops_emitted += n_hops
        return out
