"""Streaming prosody: loudness, pitch and speaking rate per 10 ms hop of 16 kHz audio.

:class:`ProsodyTracker` is a pipeline stage (``push(AudioChunk) -> list[ProsodyFrame]``). For
every complete 10 ms hop it reports

- ``rms_db``: RMS level of the hop in dBFS (a full-scale square wave is 0 dB, a full-scale sine
  about -3 dB; digital silence is clamped to ``-100``);
- ``pitch_hz``: the fundamental frequency from a YIN tracker (cumulative mean normalised
  difference, Cheveigné & Kawahara 2002) integrated over 30 ms on audio low-passed at 1 kHz and
  decimated to 4 kHz, 0 when the hop is unvoiced; ``voicing`` is ``1 - d'(tau)`` (0..1);
- ``rate_sps``: speaking rate in syllables per second of active speech over the last 2 s,
  counted as prominent peaks of the band-limited (< 1 kHz) energy envelope (syllable nuclei).

The pitch window ends at the hop's last sample, so a hop's prosody is known as soon as its audio
has arrived (no lookahead), like the features in :mod:`engines.features`. The difference function
is updated incrementally (each hop adds its own 10 ms of squared lag differences and the oldest
hop's are dropped) and all hops of one push are analysed together, so the cost stays a few tens
of microseconds per hop.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray

from engines.spec import HOP_LENGTH, HOP_SECONDS, SAMPLE_RATE, exact_div
from server.pipeline.types import AudioChunk

DECIMATE: int = 4  # 16 kHz -> 4 kHz for the pitch tracker
PITCH_RATE: int = exact_div(SAMPLE_RATE, DECIMATE)  # 4000 Hz
PITCH_HOP: int = exact_div(HOP_LENGTH, DECIMATE)  # 40 samples at 4 kHz per 10 ms hop
F0_MIN: float = 65.0  # Hz, lowest pitch reported
F0_MAX: float = 450.0  # Hz, highest pitch reported
TAU_MIN: int = int(PITCH_RATE / F0_MAX)  # 8 samples at 4 kHz
TAU_MAX: int = int(math.ceil(PITCH_RATE / F0_MIN)) + 2  # 64 samples at 4 kHz (exclusive)
YIN_HOPS: int = 3  # hops (30 ms) in the difference function's integration window
_TAUS = np.arange(1, TAU_MAX, dtype=np.float64)  # lags 1..TAU_MAX-1
YIN_THRESHOLD: float = 0.2  # first dip of d' below this is taken as the period
VOICED_MAX_D: float = 0.35  # d' above this: unvoiced
LOWPASS_TAPS: int = 31  # FIR taps at 16 kHz, cut-off 1 kHz
SILENCE_DB: float = -100.0  # dBFS reported for digital silence
RATE_WINDOW_HOPS: int = 200  # 2 s window of the speaking-rate estimate
MIN_ACTIVE_HOPS: int = 30  # 0.3 s of active speech needed before a rate is reported
SYLLABLE_PROMINENCE_DB: float = 3.0  # a peak must rise this much above the valleys around it
MIN_SYLLABLE_HOPS: int = 10  # 100 ms: at most 10 syllables per second
ACTIVE_ABOVE_FLOOR_DB: float = 10.0  # band level above the noise floor that counts as speech
ACTIVE_MIN_DB: float = -60.0  # dBFS; quieter hops are never speech
FLOOR_RISE_DB: float = 0.01  # dB per hop the noise floor may rise (1 dB/s)


@dataclass(frozen=True, slots=True)
class ProsodyFrame:
    """Prosody of one 10 ms hop ``hop`` (it covers stream time [hop, hop + 1) × 10 ms)."""

    hop: int
    rms_db: float  # dBFS, RMS of the hop's 160 samples, >= -100
    pitch_hz: float  # Hz, fundamental frequency; 0.0 when unvoiced
    voicing: float  # 0..1, periodicity (1 - YIN d'); > ~0.65 is voiced
    voiced: bool  # pitch_hz is valid
    rate_sps: float  # syllables per second of active speech over the last 2 s; 0 if unknown
    active: bool  # band level is clearly above the tracked noise floor (speech-like energy)
    arrival: float  # s, monotonic arrival time of the chunk that completed the hop

    @property
    def t(self) -> float:
        """Stream time (s) of the start of the hop."""
        return self.hop * HOP_SECONDS


@cache
def _lowpass() -> NDArray[np.float32]:
    """(LOWPASS_TAPS,) Hamming-windowed sinc low-pass at 1 kHz for 16 kHz audio, unit DC gain."""
    n = np.arange(LOWPASS_TAPS) - (LOWPASS_TAPS - 1) / 2
    fc = 1000.0 / SAMPLE_RATE
    h = 2 * fc * np.sinc(2 * fc * n) * np.hamming(LOWPASS_TAPS)
    return (h / h.sum()).astype(np.float32)


def _db(power: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean-square power -> dB, clamped at :data:`SILENCE_DB`."""
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-30)), SILENCE_DB)


@cache
def _lag_index(n_hops: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Indices into a lag buffer (TAU_MAX - 1 history + n_hops * PITCH_HOP new samples).

    Returns ``now`` (n_new, 1) and ``past`` (n_new, TAU_MAX) with ``past[j, tau] = now[j] - tau``.
    """
    now = np.arange(TAU_MAX - 1, TAU_MAX - 1 + n_hops * PITCH_HOP)[:, None]
    return now, now - np.arange(TAU_MAX)[None, :]


def hop_differences(buf: NDArray[np.float64], n_hops: int) -> NDArray[np.float64]:
    """Per-hop YIN difference terms: (n,) 4 kHz samples -> (n_hops, TAU_MAX).

    ``buf`` holds ``TAU_MAX - 1`` samples of history followed by ``n_hops * PITCH_HOP`` new
    samples; row h, column tau is the sum over the new samples x_j of hop h of (x_j - x_{j-tau})^2.
    """
    now, past = _lag_index(n_hops)
    diff = (buf[now] - buf[past]).reshape(n_hops, PITCH_HOP, TAU_MAX)
    return np.einsum("hjt,hjt->ht", diff, diff)


def yin_pick(d: NDArray[np.float64]) -> tuple[list[float], list[float]]:
    """YIN period choice on (k, TAU_MAX) difference functions -> (pitch_hz, d'), k each.

    Takes the bottom of the first dip of the cumulative mean normalised difference d' below
    YIN_THRESHOLD (else its minimum) over lags [TAU_MIN, TAU_MAX - 2], refined by parabolic
    interpolation. ``pitch_hz`` is 0 where d' there exceeds VOICED_MAX_D.
    """
    dn = (d[:, 1:] * _TAUS / (np.cumsum(d[:, 1:], axis=1) + 1e-12)).tolist()  # d'[tau - 1]
    pitches: list[float] = []
    dmins: list[float] = []
    last = TAU_MAX - 2
    for row in dn:
        tau = -1
        for cand in range(TAU_MIN, last + 1):
            if row[cand - 1] < YIN_THRESHOLD:
                tau = cand
                while tau < last and row[tau] <= row[tau - 1]:
                    tau += 1  # walk down to the bottom of the dip
                break
        if tau < 0:
            seg = row[TAU_MIN - 1 : last]
            tau = TAU_MIN + seg.index(min(seg))
        y1 = row[tau - 1]
        dmins.append(min(max(y1, 0.0), 1.0))
        if y1 > VOICED_MAX_D or tau <= TAU_MIN or tau >= last:
            pitches.append(0.0)
            continue
        y0, y2 = row[tau - 2], row[tau]
        den = y0 - 2.0 * y1 + y2
        shift = 0.5 * (y0 - y2) / den if den > 1e-12 else 0.0
        pitches.append(PITCH_RATE / (tau + min(0.5, max(-0.5, shift))))
    return pitches, dmins


class ProsodyTracker:
    """Per-session streaming prosody stage: ``push(AudioChunk) -> list[ProsodyFrame]``.

    Chunks must be consecutive (``sample_index`` continues the previous chunk); a gap or an
    overlap restarts the analysis history at the new chunk (counted in ``discontinuities``).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all audio and statistics (a new stream)."""
        self._lp_hist = np.zeros(LOWPASS_TAPS - 1, np.float32)  # 16 kHz, filter history
        self._raw = np.zeros(0, np.float32)  # 16 kHz samples not yet forming a whole hop
        self._dec = np.zeros(TAU_MAX - 1, np.float64)  # 4 kHz history for the lags
        self._contrib = np.zeros((YIN_HOPS - 1, TAU_MAX))  # difference terms of the last hops
        self._next_index: int | None = None  # sample index expected next
        self._hop = 0  # index of the next hop
        self._floor_db = math.nan
        self._env_db = math.nan
        self._seek_peak = True
        self._peak_db = -math.inf
        self._peak_hop = 0
        self._valley_db = math.inf
        self._last_syllable_hop = -(10**9)
        self._syllables: deque[int] = deque()
        self._active_hist: deque[bool] = deque()
        self._active_count = 0
        self.discontinuities = 0

    def push(self, item: AudioChunk) -> list[ProsodyFrame]:
        """Consume one chunk; return one :class:`ProsodyFrame` per 10 ms hop it completes."""
        samples = np.asarray(item.samples, np.float32).reshape(-1)
        if self._next_index is not None and item.sample_index != self._next_index:
            self.discontinuities += 1
            self._lp_hist[:] = 0.0
            self._dec[:] = 0.0
            self._contrib[:] = 0.0
            self._raw = np.zeros(0, np.float32)
        if self._next_index is None or item.sample_index != self._next_index:
            self._hop = -(-item.sample_index // HOP_LENGTH)  # first whole hop in the chunk
            skip = self._hop * HOP_LENGTH - item.sample_index
            samples = samples[skip:]
        self._next_index = item.sample_index + int(item.samples.shape[0])
        raw = np.concatenate([self._raw, samples])
        n_hops = raw.shape[0] // HOP_LENGTH
        if n_hops == 0:
            self._raw = raw
            return []
        block = raw[: n_hops * HOP_LENGTH]
        self._raw = raw[n_hops * HOP_LENGTH :]
        # Low-pass at 1 kHz (FIR with carried history), decimate to 4 kHz, YIN.
        padded = np.concatenate([self._lp_hist, block])
        low = np.convolve(padded, _lowpass(), mode="valid").astype(np.float64)  # (n_hops * 160,)
        self._lp_hist = padded[-(LOWPASS_TAPS - 1) :]
        dec = np.concatenate([self._dec, low[DECIMATE - 1 :: DECIMATE]])
        self._dec = dec[-(TAU_MAX - 1) :]
        terms = np.concatenate([self._contrib, hop_differences(dec, n_hops)])
        self._contrib = terms[-(YIN_HOPS - 1) :]
        d = terms[YIN_HOPS - 1 :].copy()
        for lag in range(1, YIN_HOPS):
            d += terms[YIN_HOPS - 1 - lag : terms.shape[0] - lag]
        pitch, dmin = yin_pick(d)
        b64 = block.astype(np.float64).reshape(n_hops, HOP_LENGTH)
        rms_db = _db(np.einsum("ij,ij->i", b64, b64) / HOP_LENGTH)
        lowh = low.reshape(n_hops, HOP_LENGTH)
        band_db = _db(np.einsum("ij,ij->i", lowh, lowh) / HOP_LENGTH)
        out: list[ProsodyFrame] = []
        for i in range(n_hops):
            active = self._update_activity(float(band_db[i]))
            rate = self._update_rate(float(band_db[i]), active)
            voiced = pitch[i] > 0.0 and band_db[i] > ACTIVE_MIN_DB
            out.append(
                ProsodyFrame(
                    hop=self._hop,
                    rms_db=float(rms_db[i]),
                    pitch_hz=pitch[i] if voiced else 0.0,
                    voicing=1.0 - dmin[i] if band_db[i] > ACTIVE_MIN_DB else 0.0,
                    voiced=voiced,
                    rate_sps=rate,
                    active=active,
                    arrival=item.arrival,
                )
            )
            self._hop += 1
        return out

    def _update_activity(self, band_db: float) -> bool:
        """Track the noise floor of the < 1 kHz band; True if this hop is speech-like."""
        if math.isnan(self._floor_db):
            self._floor_db = band_db
        self._floor_db = min(band_db, self._floor_db + FLOOR_RISE_DB)
        return band_db > ACTIVE_MIN_DB and band_db > self._floor_db + ACTIVE_ABOVE_FLOOR_DB

    def _update_rate(self, band_db: float, active: bool) -> float:
        """Syllable-nucleus peak picking on the smoothed envelope; returns syllables/s."""
        hop = self._hop
        self._env_db = band_db if math.isnan(self._env_db) else 0.5 * self._env_db + 0.5 * band_db
        env = self._env_db
        if self._seek_peak:
            if env > self._peak_db:
                self._peak_db, self._peak_hop = env, hop
            elif env < self._peak_db - SYLLABLE_PROMINENCE_DB:
                if (
                    self._peak_db - self._valley_db >= SYLLABLE_PROMINENCE_DB
                    and self._peak_db > self._floor_db + ACTIVE_ABOVE_FLOOR_DB
                    and self._peak_hop - self._last_syllable_hop >= MIN_SYLLABLE_HOPS
                ):
                    self._syllables.append(self._peak_hop)
                    self._last_syllable_hop = self._peak_hop
                self._seek_peak = False
                self._valley_db = env
        else:
            if env < self._valley_db:
                self._valley_db = env
            elif env > self._valley_db + SYLLABLE_PROMINENCE_DB:
                self._seek_peak = True
                self._peak_db, self._peak_hop = env, hop
        self._active_hist.append(active)
        self._active_count += int(active)
        if len(self._active_hist) > RATE_WINDOW_HOPS:
            self._active_count -= int(self._active_hist.popleft())
        while self._syllables and self._syllables[0] <= hop - RATE_WINDOW_HOPS:
            self._syllables.popleft()
        if self._active_count < MIN_ACTIVE_HOPS:
            return 0.0
        return len(self._syllables) / (self._active_count * HOP_SECONDS)
