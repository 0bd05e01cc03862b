"""Audio files of any length, rate, channel count and container, written with PyAV's encoders."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# container format -> (file suffix, encoder, sample format, rates it takes (None: any), most channels)
FORMATS: dict[str, tuple[str, str, str, tuple[int, ...] | None, int]] = {
    "wav": (".wav", "pcm_s16le", "s16", None, 8),
    "flac": (".flac", "flac", "s16", None, 8),
    "opus": (".ogg", "libopus", "flt", (48_000, 24_000, 16_000, 12_000, 8_000), 2),
    "mp3": (".mp3", "libmp3lame", "fltp", (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000), 2),
    "m4a": (".m4a", "aac", "fltp", (7_350, 8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 64_000, 88_200, 96_000), 6),
}
LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def codec_rate(fmt: str, rate: int) -> int:
    """The rate, Hz, the ``fmt`` file is written at: ``rate`` if its encoder takes it, else the nearest it takes."""
    rates = FORMATS[fmt][3]
    return rate if rates is None else min(rates, key=lambda r: (abs(r - rate), r))


def codec_channels(fmt: str, channels: int) -> int:
    """Channels the ``fmt`` file is written with: ``channels``, capped at what the encoder takes."""
    return min(channels, FORMATS[fmt][4])


def write_audio(path: Path, audio: np.ndarray, rate: int, fmt: str) -> tuple[Path, int]:
    """Encode ``audio``, (samples, channels) float32 in -1..1 at ``rate`` Hz, as ``fmt`` into ``path``.

    The encoder's rate and channel count are :func:`codec_rate` / :func:`codec_channels`; PyAV's
    resampler converts to them. Returns (``path`` with the format's suffix, audio packets written):
    an encoder handed too few samples writes no packet, and then the file is a bare header.
    """
    if audio.ndim != 2 or not 1 <= audio.shape[1] <= 8:
        raise ValueError(f"audio must be (samples, 1..8 channels), got shape {audio.shape}")
    suffix, codec, sample_fmt, _, _ = FORMATS[fmt]
    path = path.with_suffix(suffix)
    out_rate, out_ch = codec_rate(fmt, rate), codec_channels(fmt, audio.shape[1])
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=out_rate)
        assert isinstance(stream, av.AudioStream)
        stream.layout = LAYOUTS[out_ch]
        stream.format = sample_fmt
        resampler = av.AudioResampler(format=sample_fmt, layout=LAYOUTS[out_ch], rate=out_rate)
        block = 4096
        frames: list[av.AudioFrame] = []
        for start in range(0, audio.shape[0], block):
            chunk = np.ascontiguousarray(audio[start : start + block].astype(np.float32))
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout=LAYOUTS[audio.shape[1]])
            frame.sample_rate = rate
            frames.extend(resampler.resample(frame))
        frames.extend(resampler.resample(None))
        container.start_encoding()  # the header, even when no frame follows (a 0-sample file)
        packets = 0
        for item in [*frames, None]:  # None: the encoder's flush
            if item is not None:
                item.pts = None
            out = stream.encode(item)
            packets += len(out)
            container.mux(out)
    return path, packets


def decoded_samples(path: Path) -> tuple[int, int]:
    """(samples, rate Hz) that PyAV decodes from ``path``'s first audio stream."""
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].rate
        return sum(f.samples for f in c.decode(audio=0)), rate
