"""Offline commands through exactly the same stages and clock logic as a live session.

The audio file is decoded and cut into 20 ms frames of 48 kHz stereo s16 — what the Opus
decoder hands a live session — and frame ``i`` "arrives" at ``(i + 1) * 20 ms`` on a
:class:`~server.clock.VirtualClock`. Video comes from the same :class:`AvatarVideoTrack`,
ticking on that clock, so offline output equals what a live session shows for the same audio.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from engines.spec import HOP_SECONDS, VISEMES
from server.clock import VirtualClock
from server.config import AppConfig
from server.errors import MediaError
from server.media.video_out import AvatarVideoTrack
from server.pipeline.runner import AvatarPipeline, SharedModels
from server.pipeline.types import VisemeFrame
from server.render.disclosure import with_disclosure

LIVE_RATE = 48_000  # Hz, what the Opus decoder delivers
LIVE_FRAME = 960  # samples per 20 ms frame at 48 kHz
FRAME_S = LIVE_FRAME / LIVE_RATE  # 0.02 s
TAIL_S = 0.3  # s of video after the audio ends, so the mouth visibly comes to rest


def _open(path: Path) -> av.container.InputContainer:
    if not Path(path).exists():
        raise MediaError(f"audio file not found: {path}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"cannot read audio file {path}: {e}") from e
    if not container.streams.audio:
        container.close()
        raise MediaError(f"{path} has no audio stream")
    return container


def audio_duration(path: Path) -> float:
    """Duration of the file's first audio stream, s (0 if unknown)."""
    with _open(path) as c:
        s = c.streams.audio[0]
        if s.duration is not None and s.time_base is not None:
            return float(s.duration * s.time_base)
        return float(c.duration / 1_000_000) if c.duration else 0.0


def live_frames(path: Path) -> Iterator[av.AudioFrame]:
    """Decode any audio file into 20 ms frames of 48 kHz stereo s16, (1, 2 * 960) interleaved.

    Every decoded sample comes out, in order; only the final partial frame is zero-padded to
    960 samples. A file with no samples yields no frames.
    """
    container = _open(path)
    try:
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=LIVE_RATE)
        fifo = av.AudioFifo()
        try:
            for frame in container.decode(audio=0):
                frame.pts = None
                for out in resampler.resample(frame):
                    fifo.write(out)
                yield from _whole_frames(fifo)
            # the resampler's flush can hand back more than one frame's worth (its delay)
            for out in resampler.resample(None):
                fifo.write(out)
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot decode audio file {path}: {e}") from e
        yield from _whole_frames(fifo)
        rest = fifo.samples
        if rest:  # 0 < rest < LIVE_FRAME
            last = fifo.read(rest)
            assert last is not None
            tail = last.to_ndarray()  # (1, 2 * rest) interleaved s16
            pad = np.zeros((1, 2 * LIVE_FRAME), np.int16)
            pad[:, : tail.shape[1]] = tail
            yield _plain(av.AudioFrame.from_ndarray(pad, format="s16", layout="stereo"))
    finally:
        container.close()


def _whole_frames(fifo: av.AudioFifo) -> Iterator[av.AudioFrame]:
    """Read every whole 960-sample frame the FIFO holds (leaves fewer than 960 samples)."""
    while fifo.samples >= LIVE_FRAME:
        chunk = fifo.read(LIVE_FRAME)
        assert chunk is not None
        yield _plain(chunk)


def _plain(frame: av.AudioFrame) -> av.AudioFrame:
    frame.sample_rate = LIVE_RATE
    frame.pts = None
    return frame


@dataclass(repr=False)
class OfflineResult:
    """What an offline run produced."""

    visemes: list[VisemeFrame]
    duration_s: float
    lookahead_hops: int
    model: str
    video_frames: int = 0
    latency_s: float | None = None  # median audio frame arrival → frame that reflects it, s (as live)

    def __repr__(self) -> str:  # short: asyncio formats task results into messages
        return (
            f"OfflineResult({len(self.visemes)} viseme frames, {self.duration_s:.2f} s, "
            f"lookahead {self.lookahead_hops} hops, model {self.model!r}, {self.video_frames} video frames)"
        )


async def run_offline(
    path: Path,
    cfg: AppConfig,
    models: SharedModels,
    *,
    avatar: str | None = None,
    on_video: Callable[[av.VideoFrame, int], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> OfflineResult:
    """Run the file through a session pipeline on a virtual clock.

    With ``on_video``, frames from the same video track as live sessions are handed over
    (with their index) at ``video.fps`` until the audio ends plus a short tail.
    """
    clock = VirtualClock(0.0)
    name = avatar or cfg.video.avatar
    if name == "auto":
        name = models.registry.default_name()
    size = (cfg.video.width, cfg.video.height)
    renderer = (
        with_disclosure(models.registry.create(name, size), models.registry.get(name).kind, cfg.video.disclosure)
        if on_video is not None else _NoRenderer(size)
    )
    pipeline = AvatarPipeline(models, cfg, cfg.seed, renderer)
    visemes: list[VisemeFrame] = []
    frames = live_frames(path)
    n_audio = 0

    def push_until(t: float) -> bool:
        """Push frames arriving at or before ``t``; False once the audio has ended."""
        nonlocal n_audio
        while (n_audio + 1) * FRAME_S <= t + 1e-9:
            frame = next(frames, None)
            if frame is None:
                visemes.extend(pipeline.flush(n_audio * FRAME_S))
                return False
            n_audio += 1
            visemes.extend(pipeline.push_frame(frame, n_audio * FRAME_S))
            if on_progress is not None and n_audio % 50 == 0:
                on_progress(n_audio * FRAME_S)
        return True

    if on_video is None:
        while push_until((n_audio + 1) * FRAME_S):
            pass
        return OfflineResult(visemes, n_audio * FRAME_S, pipeline.lookahead_hops, models.visemes.name)

    latencies: list[float] = []

    async def produce(t: float) -> tuple[np.ndarray, list[float]]:
        yuv, sources, _ = pipeline.produce(t)
        latencies.extend(t - s for s in sources)
        return yuv, sources

    track = AvatarVideoTrack(produce, clock, cfg.video.fps, None)
    index = 0
    audio_live = True
    end_t: float | None = None
    try:
        while True:
            t = index / cfg.video.fps
            if audio_live:
                audio_live = push_until(t)
                if not audio_live:
                    end_t = n_audio * FRAME_S + TAIL_S
            if end_t is not None and t > end_t:
                break
            frame = await track.recv()
            on_video(frame, index)
            index += 1
    finally:
        track.stop()
    if on_progress is not None:
        on_progress(n_audio * FRAME_S)
    latency = float(np.median(latencies)) if latencies else None
    return OfflineResult(visemes, n_audio * FRAME_S, pipeline.lookahead_hops, models.visemes.name, index, latency)


class _NoRenderer:
    """Used when only visemes are wanted: no pixels are drawn."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self._frame = np.zeros((size[1], size[0], 4), np.uint8)

    def render(self, state: Any) -> np.ndarray:
        return self._frame


# ------------------------------------------------------------------ outputs


def viseme_matrix(frames: list[VisemeFrame]) -> tuple[int, np.ndarray]:
    """Concatenate frames: (first hop, (n_hops, 15) weights); checks hops are consecutive."""
    if not frames:
        return 0, np.zeros((0, len(VISEMES)), np.float32)
    hop = frames[0].hop
    expected = hop
    for f in frames:
        if f.hop != expected:
            raise RuntimeError(f"viseme hops not consecutive: expected {expected}, got {f.hop}")
        expected += f.weights.shape[0]
    return hop, np.concatenate([f.weights for f in frames])


def shape_cues(weights: np.ndarray, duration: float) -> list[tuple[float, float, str]]:
    """(T, 15) per-hop viseme weights → Rhubarb shapes, runs merged: [(start s, end s, shape)].

    Each hop takes the shape with the largest summed weight of its visemes
    (:func:`engines.phonemes.rhubarb_decide`).
    """
    from engines.phonemes import RHUBARB_SHAPES, rhubarb_decide

    if weights.shape[0] == 0:
        return [(0.0, round(duration, 2), "X")]
    shapes = [RHUBARB_SHAPES[i] for i in rhubarb_decide(weights)]
    # 3-hop majority filter: a single-hop blip is not a mouth cue
    smooth = list(shapes)
    for i in range(1, len(shapes) - 1):
        if shapes[i - 1] == shapes[i + 1] != shapes[i]:
            smooth[i] = shapes[i - 1]
    cues: list[tuple[float, float, str]] = []
    start = 0
    for i in range(1, len(smooth) + 1):
        if i == len(smooth) or smooth[i] != smooth[start]:
            end = i * HOP_SECONDS if i < len(smooth) else max(duration, i * HOP_SECONDS)
            cues.append((round(start * HOP_SECONDS, 2), round(end, 2), smooth[start]))
            start = i
    return cues


def format_visemes(result: OfflineResult, fmt: str, sound_file: str) -> str:
    """Serialise visemes as ``json`` (ours), ``rhubarb-json`` or ``rhubarb-tsv``."""
    hop, w = viseme_matrix(result.visemes)
    if fmt == "json":
        doc: dict[str, Any] = {
            "sound_file": sound_file,
            "model": result.model,
            "lookahead_ms": result.lookahead_hops * 10,
            "hop_s": HOP_SECONDS,
            "first_hop": hop,
            "duration_s": round(result.duration_s, 3),
            "visemes": list(VISEMES),
            "frames": [
                {"t": round((hop + i) * HOP_SECONDS, 2), "viseme": VISEMES[int(row.argmax())], "weights": [round(float(x), 4) for x in row]}
                for i, row in enumerate(w)
            ],
        }
        return json.dumps(doc, indent=1)
    cues = shape_cues(w, result.duration_s)
    if fmt == "rhubarb-json":
        doc = {
            "metadata": {"soundFile": sound_file, "duration": round(result.duration_s, 2), "lookaheadMs": result.lookahead_hops * 10, "model": result.model},
            "mouthCues": [{"start": s, "end": e, "value": v} for s, e, v in cues],
        }
        return json.dumps(doc, indent=2)
    if fmt == "rhubarb-tsv":
        lines = [f"{s:.2f}\t{v}" for s, _, v in cues]
        lines.append(f"{cues[-1][1]:.2f}\tX")
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}; expected json, rhubarb-json or rhubarb-tsv")


class Mp4Writer:
    """H.264 video + AAC audio (the original file's audio) in an MP4.

    Encoding and muxing run in a writer thread (PyAV releases the GIL while encoding), fed by
    a bounded queue, so they overlap with rendering; the source audio is encoded there too.
    """

    _DONE = None

    def __init__(self, out: Path, size: tuple[int, int], fps: float, audio_source: Path | None = None) -> None:
        self.container = av.open(str(out), "w")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.video = self.container.add_stream("libx264", rate=self.fps)
        self.video.width, self.video.height = size
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": "18", "preset": "ultrafast"}
        self.audio = self.container.add_stream("aac", rate=LIVE_RATE)
        self.audio.layout = "stereo"
        self._queue: queue.Queue[tuple[av.VideoFrame, int] | None] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._audio_packets: list[av.Packet] = []
        self._audio_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mp4-writer", daemon=True)
        self._thread.start()
        self._audio_thread: threading.Thread | None = None
        if audio_source is not None:  # encoded alongside, muxed at close()
            self._audio_thread = threading.Thread(target=self._encode_audio, args=(audio_source,), name="mp4-audio", daemon=True)
            self._audio_thread.start()

    def add_video(self, frame: av.VideoFrame, index: int) -> None:
        """Queue one frame for position ``index`` (blocks while the writer is 8 frames behind)."""
        if self._error is not None:
            raise MediaError(f"MP4 writer failed: {self._error}") from self._error
        self._queue.put((frame, index))

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                frame, index = item
                frame.pts = index
                frame.time_base = 1 / self.fps
                for packet in self.video.encode(frame):
                    self.container.mux(packet)
            for packet in self.video.encode(None):
                self.container.mux(packet)
        except BaseException as e:  # reported to the producer and at close()
            self._error = e
            while self._queue.get() is not None:  # keep draining so the producer never blocks
                pass

    def _encode_audio(self, path: Path) -> None:
        try:
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=LIVE_RATE)
            samples = 0
            for frame in live_frames(path):
                for out in resampler.resample(frame):
                    out.time_base = Fraction(1, LIVE_RATE)  # stamped, so close() can shift them
                    out.pts = samples
                    samples += out.samples
                    self._audio_packets.extend(self.audio.encode(out))
            self._audio_packets.extend(self.audio.encode(None))
        except BaseException as e:  # reported at close()
            self._audio_error = e

    def close(self, audio_delay_s: float = 0.0) -> None:
        """Finish encoding, mux the audio ``audio_delay_s`` later than the video's start, close."""
        self._queue.put(self._DONE)
        self._thread.join()
        if self._audio_thread is not None:
            self._audio_thread.join()
        try:
            if self._error is None and self._audio_error is None:
                for packet in self._audio_packets:
                    if audio_delay_s and packet.pts is not None:
                        if packet.time_base is None:  # the encoder's: 1/48000
                            packet.time_base = Fraction(1, LIVE_RATE)
                        shift = int(round(audio_delay_s / packet.time_base))
                        packet.pts += shift
                        if packet.dts is not None:
                            packet.dts += shift
                    self.container.mux(packet)
        finally:
            self.container.close()
        for err in (self._error, self._audio_error):
            if err is not None:
                raise MediaError(f"MP4 writer failed: {err}") from err


def render_file(path: Path, out: Path, cfg: AppConfig, models: SharedModels, avatar: str | None, progress: bool = True) -> OfflineResult:
    """``avatar render``: audio file → MP4 with the avatar video and the original audio.

    The video runs for the decoded audio (whole 20 ms frames) plus ``TAIL_S``; a file with no
    samples gives just that tail of resting mouth, with no audio track. The audio is muxed
    delayed by the pipeline's own latency (each 20 ms frame's end + the median time until the
    frame that reflects it), the rule a live stage applies to its viewers: each sound plays
    with the frame that shows its mouth.
    """
    from tqdm import tqdm

    total = audio_duration(path)
    writer = Mp4Writer(out, (cfg.video.width, cfg.video.height), cfg.video.fps, audio_source=path)
    bar = tqdm(total=round(total, 1), unit="s", desc="render", disable=not progress, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")

    def on_progress(t: float) -> None:
        bar.n = round(min(t, total), 1)
        bar.refresh()

    result: OfflineResult | None = None
    try:
        result = asyncio.run(run_offline(path, cfg, models, avatar=avatar, on_video=writer.add_video, on_progress=on_progress))
    finally:
        delay = FRAME_S + result.latency_s if result is not None and result.latency_s is not None else 0.0
        writer.close(audio_delay_s=min(delay, TAIL_S))
        bar.close()
    return result
