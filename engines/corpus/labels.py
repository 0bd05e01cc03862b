"""Phones with sample times -> per-hop viseme labels (the convention shared with evaluation).

Hop ``t``'s label is the viseme of the phone covering sample ``t * HOP_LENGTH + HOP_LENGTH // 2``
(the centre of the hop's newest 10 ms) of the 16 kHz audio; samples outside every phone are
``sil``. A phone with several visemes (diphthongs) is split into equal parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from engines.spec import HOP_LENGTH, VISEME_INDEX


@dataclass(frozen=True)
class Segment:
    """A viseme over samples [start, end) at 16 kHz."""

    viseme: str
    start: int
    end: int


def split_phone(start: int, end: int, visemes: Sequence[str]) -> list[Segment]:
    """One phone over [start, end) with k visemes -> k segments of (nearly) equal length."""
    if end < start:
        raise ValueError(f"phone ends before it starts: [{start}, {end})")
    k = len(visemes)
    if k == 0:
        raise ValueError("a phone needs at least one viseme")
    edges = [start + round((end - start) * i / k) for i in range(k + 1)]
    return [Segment(v, edges[i], edges[i + 1]) for i, v in enumerate(visemes)]


def phones_to_segments(
    phones: Sequence[tuple[str, int, int]], mapper: Callable[[str], tuple[str, ...]]
) -> list[Segment]:
    """(name, start, end) phones -> viseme segments through ``mapper`` (name -> visemes)."""
    out: list[Segment] = []
    for name, start, end in phones:
        out.extend(split_phone(start, end, mapper(name)))
    return out


def segments_to_labels(segments: Sequence[Segment], n_samples: int) -> NDArray[np.int8]:
    """Segments -> (n_samples // HOP_LENGTH,) int8 viseme indices (``sil`` outside segments)."""
    n_hops = n_samples // HOP_LENGTH
    labels = np.full(n_hops, VISEME_INDEX["sil"], np.int8)
    if n_hops == 0 or not segments:
        return labels
    centres = np.arange(n_hops) * HOP_LENGTH + HOP_LENGTH // 2
    for seg in segments:
        if seg.end <= seg.start:
            continue
        lo = int(np.searchsorted(centres, seg.start, side="left"))
        hi = int(np.searchsorted(centres, seg.end, side="left"))
        if hi > lo:
            labels[lo:hi] = VISEME_INDEX[seg.viseme]
    return labels


def shift_segments(segments: Sequence[Segment], offset: int, scale: float = 1.0) -> list[Segment]:
    """Segments with times ``round(t * scale) + offset`` (speed change, added leading silence)."""
    return [
        Segment(s.viseme, round(s.start * scale) + offset, round(s.end * scale) + offset)
        for s in segments
    ]


STOP_VISEMES = frozenset({"PP", "DD", "kk", "CH"})


def attach_closures(
    segments: Sequence[Segment],
    audio: NDArray[np.float32],
    max_samples: int = 1280,
    silence_rms: float = 1e-3,
) -> list[Segment]:
    """Give a stop the silent closure before it (as TIMIT's ``cl``/``vcl`` take the stop's viseme).

    espeak-ng reports a stop where its release starts; the silent closure before it falls in the
    previous phone or pause. For every stop (PP DD kk CH) the silent 5 ms blocks (RMS below
    ``silence_rms``) immediately before it, at most ``max_samples`` (80 ms at 16 kHz), move to
    the stop. ``audio`` is the clean synthesized audio the segments refer to.
    """
    out = list(segments)
    block = 80
    for k in range(1, len(out)):
        seg = out[k]
        if seg.viseme not in STOP_VISEMES or seg.end <= seg.start:
            continue
        j = k - 1
        while j > 0 and out[j].end <= out[j].start:  # skip zero-length phones
            j -= 1
        prev = out[j]
        start = seg.start
        limit = max(prev.start + 1, seg.start - max_samples)
        while start - block >= limit:
            w = audio[start - block : start]
            if float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) >= silence_rms:
                break
            start -= block
        if start < seg.start:
            out[j] = Segment(prev.viseme, prev.start, start)
            for m in range(j + 1, k):  # zero-length phones in between move along
                out[m] = Segment(out[m].viseme, start, start)
            out[k] = Segment(seg.viseme, start, seg.end)
    return out


def aligned_segments(
    phones: Sequence[tuple[str, int, int]], audio: NDArray[np.float32], mapper: Callable[[str], tuple[str, ...]]
) -> list[Segment]:
    """Phones with sample times over ``audio`` -> the corpus' viseme segments: mapped through
    ``mapper`` (:func:`phones_to_segments`), stop closures attached (:func:`attach_closures`)."""
    return attach_closures(phones_to_segments(phones, mapper), audio)
