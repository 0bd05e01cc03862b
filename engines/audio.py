"""Reading audio files: anything PyAV decodes → 16 kHz mono float32 (the models' input rate)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

from engines.spec import SAMPLE_RATE


def decode_audio(path: Path | str, fmt: str | None = None) -> NDArray[np.float32]:
    """Any audio file PyAV reads (``fmt``: container format for raw codecs) -> (n,) float32 16 kHz mono.

    Channels are mixed by libswresample; raises ValueError naming the file when it holds no
    audio stream or no samples.
    """
    chunks = []
    with av.open(str(path), format=fmt) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise ValueError(f"{path}: no audio samples")
    return np.ascontiguousarray(np.concatenate(chunks), np.float32)
