"""Reading audio/video sync back from a recording (``avatar camera --record``, ``avatar render``).

The recorder stamps every video frame and every 20 ms of voice with the time it was emitted,
so the file itself says how the mouth moved against the voice. :func:`av_offset_s` finds the
lag that best lines the mouth's openness up with the voice's loudness envelope (positive: the
mouth follows the voice that much later). Built-in characters only (mouth measure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

ENVELOPE_HOP_S = 0.005  # s between envelope samples
ENVELOPE_WIN_S = 0.03  # s, RMS window of the envelope
MAX_LAG_S = 0.4  # s searched either way


@dataclass
class Recording:
    """A decoded recording: video frame times (s), mouth openness per frame, mono audio."""

    video_t: NDArray[np.float64]  # (N,) s, presentation times
    mouth: NDArray[np.float64]  # (N,) 0..~1 (NaN when not measured)
    audio: NDArray[np.float32]  # (S,) mono float in -1..1, starting at audio_start_s
    rate: int  # Hz
    audio_start_s: float
    size: tuple[int, int]  # (W, H)

    @property
    def fps(self) -> float:
        """Mean frame rate from the presentation times."""
        if len(self.video_t) < 2:
            return 0.0
        return float((len(self.video_t) - 1) / (self.video_t[-1] - self.video_t[0]))


def read_recording(path: Path, character: str | None = None, measure_mouth: bool = True) -> Recording:
    """Decode ``path``: frame times, mouth openness (``character``: a built-in name), audio."""
    from server.render.measure import mouth_openness

    times: list[float] = []
    mouth: list[float] = []
    size = (0, 0)
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            times.append(float(f.time or 0.0))
            size = (f.width, f.height)
            rgb = np.asarray(f.to_ndarray(format="rgb24"), np.uint8)
            mouth.append(float(mouth_openness(rgb, character)) if measure_mouth else float("nan"))
    chunks: list[NDArray[np.float32]] = []
    rate, start = 48_000, 0.0
    with av.open(str(path)) as c:
        if c.streams.audio:
            rate = int(c.streams.audio[0].rate or rate)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            first = True
            for af in c.decode(audio=0):
                if first:
                    start = float(af.time or 0.0)
                    first = False
                for out in resampler.resample(af):
                    chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return Recording(np.array(times), np.array(mouth), audio, rate, start, size)


def envelope(audio: NDArray[np.float32], rate: int, start_s: float = 0.0) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Loudness envelope: (times s, RMS) every :data:`ENVELOPE_HOP_S` over :data:`ENVELOPE_WIN_S`."""
    hop, win = int(rate * ENVELOPE_HOP_S), int(rate * ENVELOPE_WIN_S)
    if len(audio) < win:
        return np.zeros(0), np.zeros(0)
    sq = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    starts = np.arange(0, len(audio) - win, hop)
    rms = np.sqrt((sq[starts + win] - sq[starts]) / win)
    return start_s + (starts + win / 2) / rate, rms


def av_offset_s(rec: Recording) -> tuple[float, float]:
    """(lag s, correlation): the shift of the voice envelope that best matches the mouth
    (positive: the mouth moves that much after the voice)."""
    et, env = envelope(rec.audio, rec.rate, rec.audio_start_s)
    ok = np.isfinite(rec.mouth)
    t, m = rec.video_t[ok], rec.mouth[ok]
    if len(et) == 0 or len(t) < 10 or float(np.std(m)) == 0.0:
        return float("nan"), 0.0
    best = (float("nan"), -2.0)
    for lag in np.arange(-MAX_LAG_S, MAX_LAG_S + 1e-9, 0.005):
        e = np.interp(t - lag, et, env, left=0.0, right=0.0)
        if float(np.std(e)) == 0.0:
            continue
        r = float(np.corrcoef(m, e)[0, 1])
        if r > best[1]:
            best = (round(float(lag), 3), r)
    return best
