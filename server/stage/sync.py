"""Reading a recording back (``avatar camera --record``, ``avatar render``): frame times, the
mouth per frame, the audio.

The camera's recorder stamps every video frame and every 20 ms of voice with the time it was
emitted, so the file itself says how the mouth moved against the voice:
:func:`utterance_offsets` measures it per utterance with :mod:`server.sync` (mouth onset minus
speech onset, as for a stage's viewers); an ``avatar render`` of the same speech, in sync by
construction, is the reference. Built-in characters only (mouth measure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray


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


def utterance_offsets(rec: Recording) -> list[tuple[float, float]]:
    """(speech onset s, mouth onset − speech onset s) per utterance of the recording
    (:func:`server.sync.av_offsets`: positive, the mouth opens after the sound starts)."""
    from server.sync import av_offsets

    ok = np.isfinite(rec.mouth)
    return av_offsets(rec.audio.astype(np.float64), rec.rate, rec.audio_start_s, rec.video_t[ok], rec.mouth[ok])
