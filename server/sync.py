"""Audio/video sync as a viewer perceives it: the mouth's onset against the speech's onset.

For each utterance (speech after at least ``MIN_SILENCE_S`` of silence) the offset is the time
from the speech's onset in the audio to the onset of the mouth opening in the video, both on
one time line (a viewer's: each track's RTP timestamps mapped to the sender's wallclock through
its RTCP sender reports, as a browser lines them up; a file's: its presentation times). The
same measure on an ``avatar render`` of the same speech, which is in sync by construction,
gives the reference: a stream is in sync when its offsets match the render's.

Positive offsets: the mouth opens after the sound starts (audio early).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

HOP_S = 0.01  # s, loudness envelope step
SPEECH_ON = 0.3  # envelope level (0..1 of -50..-10 dBFS) that counts as speech
MIN_SILENCE_S = 0.4  # s of quiet before an onset counts as a new utterance
MOUTH_WINDOW_S = (-0.25, 0.6)  # s around a speech onset searched for the mouth's onset
MOUTH_RISE = 0.4  # fraction of the way from rest to the utterance's first peak that is "open"


def envelope(samples: NDArray[np.float64], rate: int) -> NDArray[np.float64]:
    """Loudness per 10 ms hop, (n,) in 0..1 (0 = -50 dBFS or less, 1 = -10 dBFS or more)."""
    hop = int(rate * HOP_S)
    n = samples.size // hop
    x = samples[: n * hop].reshape(n, hop)
    db = 10.0 * np.log10(np.mean(x * x, axis=1) + 1e-12)
    return np.clip((db + 50.0) / 40.0, 0.0, 1.0)


def speech_onsets(samples: NDArray[np.float64], rate: int, t0: float = 0.0) -> list[float]:
    """Onset times (s, ``t0`` = time of the first sample) of utterances in mono float audio."""
    env = envelope(samples, rate)
    quiet_hops = int(MIN_SILENCE_S / HOP_S)
    onsets: list[float] = []
    quiet = quiet_hops  # the start counts as after silence
    for i, v in enumerate(env):
        if v >= SPEECH_ON:
            if quiet >= quiet_hops:
                onsets.append(t0 + i * HOP_S)
            quiet = 0
        else:
            quiet += 1
    return onsets


def mouth_onset(times: NDArray[np.float64], mouth: NDArray[np.float64], onset: float) -> float | None:
    """When the mouth starts to open for the utterance starting at ``onset`` (s): the first frame
    in the window where openness passes ``MOUTH_RISE`` of the way from rest to its first peak."""
    lo, hi = onset + MOUTH_WINDOW_S[0], onset + MOUTH_WINDOW_S[1]
    before = mouth[(times >= onset - 0.6) & (times < lo)]
    inside = (times >= lo) & (times <= hi)
    if before.size < 3 or inside.sum() < 3:
        return None
    rest = float(np.median(before))
    peak = float(mouth[inside].max())
    if peak - rest < 0.05:
        return None  # the mouth did not visibly move
    level = rest + MOUTH_RISE * (peak - rest)
    idx = np.flatnonzero(inside & (mouth > level))
    if idx.size == 0:
        return None
    i = int(idx[0])
    if i == 0 or mouth[i] == mouth[i - 1]:
        return float(times[i])
    # linear interpolation between the frame below and the frame above the level
    frac = (level - mouth[i - 1]) / (mouth[i] - mouth[i - 1])
    return float(times[i - 1] + frac * (times[i] - times[i - 1]))


def av_offsets(
    samples: NDArray[np.float64], rate: int, audio_t0: float, times: NDArray[np.float64], mouth: NDArray[np.float64]
) -> list[tuple[float, float]]:
    """(speech onset s, mouth onset − speech onset s) for every utterance with a visible onset."""
    out: list[tuple[float, float]] = []
    for onset in speech_onsets(samples, rate, audio_t0):
        m = mouth_onset(times, mouth, onset)
        if m is not None:
            out.append((onset, m - onset))
    return out


def file_offsets(path: Path, mouth_fn: object) -> list[tuple[float, float]]:
    """The offsets of a recorded or rendered file (its presentation times)."""
    from collections.abc import Callable

    assert callable(mouth_fn)
    measure: Callable[[NDArray[np.uint8]], float] = mouth_fn
    times: list[float] = []
    mouth: list[float] = []
    chunks: list[NDArray[np.float64]] = []
    audio_t0: float | None = None
    rate = 48_000
    with av.open(str(path)) as f:
        for vframe in f.decode(video=0):
            times.append(float(vframe.time or 0.0))
            mouth.append(float(measure(np.asarray(vframe.to_ndarray(format="rgb24"), dtype=np.uint8))))
    with av.open(str(path)) as f:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for aframe in f.decode(audio=0):
            if audio_t0 is None:
                audio_t0 = float(aframe.time or 0.0)
            for out in resampler.resample(aframe):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.float64))
    if not chunks or not times:
        return []
    return av_offsets(np.concatenate(chunks), rate, audio_t0 or 0.0, np.asarray(times), np.asarray(mouth))
