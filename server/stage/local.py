"""A local stage: a microphone on this machine drives the same pipeline as a live session.

- :class:`AudioFeed`: the bounded drop-oldest buffer between arriving source audio and
  :class:`~server.pipeline.runner.AvatarPipeline`, and the task that empties it (small batches
  on the event loop, large catch-up batches in the worker thread). Live sessions
  (:mod:`server.session`) and the local stage both use it.
- Microphones, each an async iterator of 20 ms 48 kHz stereo s16 ``av.AudioFrame`` s:
  :class:`FileMic` (a file played in real time, then silence), :class:`PulseMic` (PulseAudio
  or PipeWire through a ``parec`` subprocess), :class:`PortAudioMic` (sounddevice).
  :func:`open_mic` picks one. A microphone that fails raises :class:`~server.errors.DeviceError`
  naming its device.
- :class:`LocalStage`: the source, the pipeline, an :class:`AvatarVideoTrack` whose ``recv``
  the caller's output loop awaits (the track owns the video clock), and a
  :class:`~server.stage.program.ProgramAudio` (no Opus) that hands the voice, delayed by the
  video's measured latency, to local PCM sinks (a virtual microphone, a recorder).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import subprocess
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
from numpy.typing import NDArray

from server.clock import Clock
from server.config import AppConfig
from server.errors import DeviceError
from server.media.video_out import AvatarVideoTrack
from server.offline import LIVE_FRAME, LIVE_RATE, live_frames
from server.pipeline.runner import AvatarPipeline, SharedModels
from server.pipeline.types import EMOTIONS, VisemeFrame
from server.render.base import Renderer
from server.render.disclosure import with_disclosure
from server.stage.program import AUDIO_BACKLOG_S, ProgramAudio
from server.stats import FpsMeter, RollingStats

log = logging.getLogger(__name__)

FRAME_BYTES = LIVE_FRAME * 2 * 2  # one 20 ms frame of 48 kHz stereo s16, bytes
INLINE_AUDIO_FRAMES = 3  # 20 ms audio frames processed on the event loop; larger batches go to the thread
MIC_START_TIMEOUT_S = 5.0  # s a microphone may take to deliver its first frame
MIC_SILENT_TIMEOUT_S = 2.0  # s without a frame from a running microphone: it is gone
MIC_RETRY_S = 2.0  # s between attempts to reopen a lost microphone
INITIAL_AUDIO_DELAY_S = 0.1  # s, the voice's delay until the video latency is measured

OnVisemes = Callable[[list[VisemeFrame]], None]


# ------------------------------------------------------------------ audio feed (shared with sessions)


def push_batch(pipeline: AvatarPipeline, batch: list[tuple[av.AudioFrame, float]]) -> list[VisemeFrame]:
    """Run (frame, arrival s) pairs through ``pipeline``; returns the viseme frames completed."""
    out: list[VisemeFrame] = []
    for frame, arrival in batch:
        out.extend(pipeline.push_frame(frame, arrival))
    return out


class AudioFeed:
    """Arrived source frames → the pipeline: a bounded buffer (drops the oldest) and its task."""

    def __init__(self, maxlen: int) -> None:
        self._buf: deque[tuple[av.AudioFrame, float]] = deque(maxlen=maxlen)
        self._ready = asyncio.Event()
        self.frames = 0  # frames put
        self.drops = 0  # frames dropped because the buffer was full

    def put(self, frame: av.AudioFrame, arrival: float) -> None:
        """One 20 ms frame that arrived at ``arrival`` (clock s); never blocks."""
        if len(self._buf) == self._buf.maxlen:
            self.drops += 1
        self._buf.append((frame, arrival))
        self.frames += 1
        self._ready.set()

    async def run(self, pipeline: AvatarPipeline, executor: ThreadPoolExecutor, on_visemes: OnVisemes | None = None) -> None:
        """Feed ``pipeline`` until cancelled; ``on_visemes`` gets the viseme frames of each batch."""
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._buf:
                batch = list(self._buf)
                self._buf.clear()
                if len(batch) <= INLINE_AUDIO_FRAMES:
                    # ~0.3 ms per 20 ms frame: cheaper here than a thread hand-off, and never
                    # queued behind a frame render (the pipeline's mailbox makes this safe)
                    frames = push_batch(pipeline, batch)
                else:  # catching up after a stall: keep the event loop free
                    frames = await loop.run_in_executor(executor, push_batch, pipeline, batch)
                if frames and on_visemes is not None:
                    on_visemes(frames)


# ------------------------------------------------------------------ microphones


def pcm_frame(pcm: NDArray[np.int16]) -> av.AudioFrame:
    """(960, 2) int16 samples → a 20 ms 48 kHz stereo s16 frame (what a live session receives)."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, np.int16).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = LIVE_RATE
    return frame


def level_dbfs(frame: av.AudioFrame) -> float:
    """RMS level of a s16 frame, dBFS (-120 for digital silence)."""
    x = frame.to_ndarray().astype(np.float32)
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    return 20.0 * math.log10(rms / 32768.0) if rms > 0 else -120.0


class Mic(Protocol):
    """A microphone: ``frames()`` yields 20 ms 48 kHz stereo s16 frames as they are captured."""

    device: str

    def frames(self) -> AsyncIterator[av.AudioFrame]:
        """Captured frames, in real time; raises :class:`DeviceError` when the device fails."""
        ...

    async def close(self) -> None:
        """Stop capturing (idempotent)."""
        ...


class FileMic:
    """An audio file as the microphone, in real time on ``clock``: frame ``i`` is released
    ``(i + 1) * 20 ms`` after the first; after the file, silence (``loop``: the file again)."""

    def __init__(self, path: Path, clock: Clock, loop: bool = False) -> None:
        self.path = Path(path)
        self.device = f"file {self.path}"
        self._clock = clock
        self._loop = loop
        probe: Any = live_frames(self.path)  # a generator; fail now (MediaError naming the file) if it is unreadable
        try:
            next(probe, None)
        finally:
            probe.close()
        self.started_at: float | None = None  # clock time of the first frame's start
        self.ended_at: float | None = None  # clock time the file's audio ended

    async def frames(self) -> AsyncIterator[av.AudioFrame]:
        """The file's frames, then silence (or the file again), one per 20 ms."""
        start = self.started_at = self._clock.now()
        silence = np.zeros((LIVE_FRAME, 2), np.int16)
        i = 0
        while True:
            for frame in live_frames(self.path):
                i += 1
                await self._clock.sleep_until(start + i * LIVE_FRAME / LIVE_RATE)
                yield frame
            if self.ended_at is None:
                self.ended_at = start + i * LIVE_FRAME / LIVE_RATE
            if self._loop:
                continue
            while True:
                i += 1
                await self._clock.sleep_until(start + i * LIVE_FRAME / LIVE_RATE)
                yield pcm_frame(silence)

    async def close(self) -> None:
        """Nothing to release."""


def pulse_available() -> bool:
    """True when ``parec``/``pactl`` exist and a PulseAudio or PipeWire server answers."""
    if shutil.which("parec") is None or shutil.which("pactl") is None:
        return False
    try:
        return subprocess.run(["pactl", "info"], capture_output=True, timeout=5.0, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pulse_names(kind: str) -> list[str]:
    """Names of the PulseAudio ``kind`` ("sources", "sinks", "modules") from ``pactl list short``."""
    out = subprocess.run(["pactl", "list", "short", kind], capture_output=True, text=True, timeout=5.0, check=False)
    return [line.split("\t")[1] for line in out.stdout.splitlines() if len(line.split("\t")) > 1]


class PulseMic:
    """A PulseAudio/PipeWire source captured by a ``parec`` subprocess (``device`` None: the
    default source). Raw 48 kHz stereo s16 in 20 ms reads."""

    def __init__(self, device: str | None, latency_ms: int = 20) -> None:
        self.device = device or "default"
        self._name = device
        self._latency_ms = latency_ms
        self._proc: asyncio.subprocess.Process | None = None
        self.delivered = 0

    def check(self) -> None:
        """Raise :class:`DeviceError` if the named source does not exist."""
        if self._name is None:
            return
        sources = pulse_names("sources")
        if self._name not in sources:
            raise DeviceError(
                f"no microphone {self._name!r}: PulseAudio sources are {', '.join(sources) or 'none'} "
                "(`pactl list short sources`)"
            )

    async def _start(self) -> asyncio.subprocess.Process:
        cmd = ["parec", "--raw", "--format=s16le", f"--rate={LIVE_RATE}", "--channels=2",
               f"--latency-msec={self._latency_ms}", "--client-name=avatar-camera"]
        if self._name is not None:
            cmd.append(f"--device={self._name}")
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as e:
            raise DeviceError(f"cannot start parec for microphone {self.device!r}: {e}") from e
        self._proc = proc
        return proc

    async def _why(self, proc: asyncio.subprocess.Process) -> str:
        """parec's own words, once it has exited (or been stopped)."""
        await self._stop()
        err = b""
        if proc.stderr is not None:
            with contextlib.suppress(Exception):
                err = await asyncio.wait_for(proc.stderr.read(), 1.0)
        text = " ".join(err.decode(errors="replace").split())
        return text or f"parec exited with status {proc.returncode}"

    async def frames(self) -> AsyncIterator[av.AudioFrame]:
        """Captured frames; :class:`DeviceError` when parec fails or stops delivering."""
        proc = await self._start()
        assert proc.stdout is not None
        timeout = MIC_START_TIMEOUT_S
        try:
            while True:
                try:
                    data = await asyncio.wait_for(proc.stdout.readexactly(FRAME_BYTES), timeout)
                except asyncio.IncompleteReadError as e:
                    why = await self._why(proc)
                    if self.delivered == 0:
                        raise DeviceError(f"microphone {self.device!r} cannot be opened: {why}") from e
                    raise DeviceError(f"microphone {self.device!r} was disconnected: {why}") from e
                except TimeoutError as e:
                    await self._stop()
                    if self.delivered == 0:
                        raise DeviceError(f"microphone {self.device!r} delivered no audio in {timeout:.0f} s (busy?)") from e
                    raise DeviceError(f"microphone {self.device!r} was disconnected (no audio for {timeout:.0f} s)") from e
                timeout = MIC_SILENT_TIMEOUT_S
                self.delivered += 1
                yield pcm_frame(np.frombuffer(data, np.int16).reshape(-1, 2))
        finally:
            await self._stop()

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def close(self) -> None:
        """Stop parec and reap it."""
        await self._stop()


class PortAudioMic:
    """A PortAudio input (sounddevice) at 48 kHz stereo s16, 20 ms blocks (``device`` None:
    the default input; a name substring or an index as sounddevice takes them)."""

    def __init__(self, device: str | None) -> None:
        self.device = device or "default"
        self._dev: int | str | None = int(device) if device is not None and device.isdigit() else device
        self._stream: Any = None
        self.overflows = 0

    def check(self) -> None:
        """Raise :class:`DeviceError` if PortAudio is missing or has no such input."""
        sd = _sounddevice()
        try:
            sd.check_input_settings(device=self._dev, channels=2, dtype="int16", samplerate=LIVE_RATE)
        except Exception as e:  # sounddevice raises ValueError and PortAudioError
            names = [d["name"] for d in sd.query_devices() if d.get("max_input_channels", 0) > 0]
            raise DeviceError(f"no usable microphone {self.device!r} ({e}); inputs: {', '.join(names) or 'none'}") from e

    async def frames(self) -> AsyncIterator[av.AudioFrame]:
        """Captured frames; :class:`DeviceError` when the stream fails or goes quiet."""
        sd = _sounddevice()
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[bytes] = asyncio.Queue(maxsize=50)

        def put(data: bytes) -> None:
            if q.full():
                q.get_nowait()
            q.put_nowait(data)

        def callback(indata: Any, frames: int, time_info: Any, status: Any) -> None:  # PortAudio's thread
            if status.input_overflow:
                self.overflows += 1
            loop.call_soon_threadsafe(put, bytes(indata))

        try:
            self._stream = sd.RawInputStream(samplerate=LIVE_RATE, blocksize=LIVE_FRAME, device=self._dev, channels=2,
                                             dtype="int16", callback=callback)
            self._stream.start()
        except Exception as e:
            await self.close()
            raise DeviceError(f"microphone {self.device!r} cannot be opened (busy or missing?): {e}") from e
        timeout = MIC_START_TIMEOUT_S
        try:
            while True:
                try:
                    data = await asyncio.wait_for(q.get(), timeout)
                except TimeoutError as e:
                    raise DeviceError(f"microphone {self.device!r} was disconnected (no audio for {timeout:.0f} s)") from e
                timeout = MIC_SILENT_TIMEOUT_S
                yield pcm_frame(np.frombuffer(data, np.int16).reshape(-1, 2))
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop and close the PortAudio stream."""
        stream, self._stream = self._stream, None
        close_stream(stream)


def close_stream(stream: Any) -> None:
    """Stop and close a sounddevice stream (None: nothing), whatever state it is in."""
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.stop()
        with contextlib.suppress(Exception):
            stream.close()


def _sounddevice() -> Any:
    try:
        import sounddevice
    except (ImportError, OSError) as e:  # OSError: the PortAudio library itself is missing
        raise DeviceError(
            f"PortAudio is not available ({e}): `pip install sounddevice` (Linux: also `apt install libportaudio2`), "
            "or use PulseAudio/PipeWire (parec)"
        ) from e
    return sounddevice


def open_mic(device: str | None, backend: str, mic_file: Path | None, clock: Clock) -> Mic:
    """The microphone to use: ``mic_file`` if given, else ``backend`` ("auto": PulseAudio when a
    server answers, else PortAudio). Raises :class:`DeviceError` naming the device."""
    if mic_file is not None:
        return FileMic(mic_file, clock)
    if backend not in ("auto", "pulse", "portaudio"):
        raise DeviceError(f"unknown microphone backend {backend!r}; expected auto, pulse or portaudio")
    if backend == "pulse" or (backend == "auto" and pulse_available()):
        if backend == "pulse" and not pulse_available():
            raise DeviceError("no PulseAudio/PipeWire server answers `pactl info` (and parec is needed); try --mic-backend portaudio")
        pm = PulseMic(device)
        pm.check()
        return pm
    pa = PortAudioMic(device)
    pa.check()
    return pa


# ------------------------------------------------------------------ the stage


PcmSink = Callable[[NDArray[np.int16], int], None]


class LocalStage:
    """One local source driving one avatar. ``await start()``, iterate :meth:`frames`, and
    always ``await close()``.

    ``output_latency_s``: how long the voice's outputs hold audio before it is heard (a virtual
    microphone's buffer); the voice is delayed by the video latency minus that.
    """

    def __init__(
        self, cfg: AppConfig, models: SharedModels, clock: Clock, mic: Mic, avatar: str | None = None,
        output_latency_s: float = 0.0,
    ) -> None:
        self.cfg = cfg
        self.models = models
        self.clock = clock
        self.mic = mic
        name = avatar or cfg.video.avatar
        self.avatar = models.registry.default_name() if name == "auto" else name
        self.size = (cfg.video.width, cfg.video.height)
        self.fps = cfg.video.fps
        self.output_latency_s = output_latency_s
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-stage")
        self.pipeline: AvatarPipeline | None = None
        self.track: AvatarVideoTrack | None = None
        self.feed = AudioFeed(cfg.audio.queue_frames)
        self.voice = ProgramAudio(clock, None, self._voice_delay, INITIAL_AUDIO_DELAY_S)
        self.latency = RollingStats()
        self.meter = FpsMeter()
        self.emotion = "neutral"
        self.mic_dbfs = -120.0  # level of the last captured frame
        self.mic_state = "starting"  # starting | live | lost: <why>
        self.mic_losses = 0
        self.frames_out = 0
        self._renderers: dict[str, Renderer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._first_frame = asyncio.Event()
        self.failed: BaseException | None = None
        self.closed = False

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Build the renderer and pipeline; start capturing (waits for the first mic frame,
        raising :class:`DeviceError` if the microphone cannot be opened)."""
        loop = asyncio.get_running_loop()
        renderer = await loop.run_in_executor(self.executor, self._renderer_for, self.avatar)
        self.pipeline = AvatarPipeline(self.models, self.cfg, self.cfg.seed, renderer)
        self.track = AvatarVideoTrack(self._produce, self.clock, self.fps, self._on_frame)
        self._spawn(self.feed.run(self.pipeline, self.executor), "feed")
        self._spawn(self.voice.run(), "voice")
        capture = self._spawn(self._capture(), "capture")
        first = asyncio.ensure_future(self._first_frame.wait())
        done, _ = await asyncio.wait({first, capture}, return_when=asyncio.FIRST_COMPLETED)
        if first not in done:
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            exc = capture.exception() if not capture.cancelled() else None
            raise exc if exc is not None else DeviceError(f"microphone {self.mic.device!r} stopped before its first frame")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"local-stage:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.failed is None:
            self.failed = task.exception()
            if self.mic_state != "starting":  # start() reports a failure before the first frame
                log.error("local stage: %s failed: %s", task.get_name(), task.exception())

    async def close(self) -> None:
        """Stop the track, cancel and await every task, release the microphone. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.track is not None:
            self.track.stop()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.mic.close()
        self.executor.shutdown(wait=True, cancel_futures=True)

    # ---------------------------------------------------------------- audio

    async def _capture(self) -> None:
        """Mic frames → the pipeline's feed and the delayed voice. A microphone lost after it
        started is reopened every :data:`MIC_RETRY_S` (the avatar idles meanwhile)."""
        while True:
            try:
                async for frame in self.mic.frames():
                    arrival = self.clock.now()
                    self.mic_dbfs = level_dbfs(frame)
                    if self.mic_state != "live":
                        if self.mic_state.startswith("lost"):
                            log.warning("microphone %r is back", self.mic.device)
                        self.mic_state = "live"
                        self._first_frame.set()
                    self.feed.put(frame, arrival)
                    self.voice.push(frame, arrival)
                return
            except DeviceError as e:
                if not self._first_frame.is_set():
                    raise
                if not self.mic_state.startswith("lost"):
                    self.mic_losses += 1
                    log.warning("%s; showing the idle avatar, retrying every %.0f s", e, MIC_RETRY_S)
                self.mic_state = f"lost: {e}"
                self.mic_dbfs = -120.0
                await asyncio.sleep(MIC_RETRY_S)

    def video_latency_s(self) -> float | None:
        """Median mic frame captured → camera frame reflecting it, s (None before any)."""
        p50 = self.latency.summary()["p50"]
        return None if p50 is None else p50 / 1000.0

    def _voice_delay(self) -> float | None:
        lat = self.video_latency_s()
        if lat is None:
            return None
        return min(max(lat - self.output_latency_s, 0.0), AUDIO_BACKLOG_S / 2)

    def add_voice_sink(self, sink: PcmSink) -> None:
        """``sink(samples (960, 2) int16, index)`` gets the delayed voice every 20 ms."""
        self.voice.pcm_sinks.append(sink)

    # ---------------------------------------------------------------- video

    async def frames(self) -> AsyncGenerator[tuple[NDArray[np.uint8], float], None]:
        """(I420 planes (H * 3 / 2, W) uint8, clock time s it left the track), on the video clock."""
        assert self.track is not None, "start() first"
        while not self.closed:
            if self.failed is not None:
                raise self.failed
            frame = await self.track.recv()
            yield np.asarray(frame.to_ndarray(), np.uint8), self.clock.now()

    async def _produce(self, t: float) -> tuple[NDArray[np.uint8], list[float]]:
        assert self.pipeline is not None
        loop = asyncio.get_running_loop()
        yuv, sources, _ = await loop.run_in_executor(self.executor, self.pipeline.produce, t)
        return yuv, sources

    def _on_frame(self, now: float, sources: list[float]) -> None:
        self.frames_out += 1
        self.meter.tick(now)
        for s in sources:
            self.latency.add((now - s) * 1000.0)

    # ---------------------------------------------------------------- controls

    def _renderer_for(self, name: str) -> Renderer:
        """``name``'s renderer at the stage's size, built once (worker thread), with the
        disclosure badge where ``[video] disclosure`` asks for one."""
        r = self._renderers.get(name)
        if r is None:
            registry = self.models.registry  # the 'AI avatar' badge as [video] disclosure asks (as in sessions)
            r = with_disclosure(registry.create(name, self.size), registry.get(name).kind, self.cfg.video.disclosure)
            self._renderers = {name: r}  # drop the others: one avatar shows at a time
        return r

    async def set_avatar(self, name: str) -> None:
        """Switch avatar live (built in the worker thread). Raises AvatarError for an unknown name."""
        renderer = await asyncio.get_running_loop().run_in_executor(self.executor, self._renderer_for, name)
        assert self.pipeline is not None
        self.pipeline.renderer = renderer
        self.avatar = name

    async def set_emotion(self, emotion: str, intensity: float = 1.0) -> None:
        """Blend to ``emotion`` (one of EMOTIONS or "auto"); ValueError names a bad one."""
        if emotion not in (*EMOTIONS, "auto"):
            raise ValueError(f"emotion must be one of {', '.join((*EMOTIONS, 'auto'))}, got {emotion!r}")
        assert self.pipeline is not None and self.track is not None
        t = self.track.frames / self.fps
        await asyncio.get_running_loop().run_in_executor(
            self.executor, self.pipeline.animator.set_emotion, emotion, intensity, None, t
        )
        self.emotion = emotion

    def avatar_names(self) -> list[str]:
        """Every avatar the registry knows, in its order."""
        return [a.name for a in self.models.registry.list()]

    def stats(self) -> dict[str, Any]:
        """JSON-able statistics."""
        return {
            "avatar": self.avatar,
            "emotion": self.emotion,
            "size": list(self.size),
            "fps": round(self.meter.fps(), 2),
            "frames": self.frames_out,
            "skipped_ticks": self.track.skipped if self.track is not None else 0,
            "latency_ms": self.latency.summary(),
            "voice_delay_ms": round(self.voice.delay_s * 1000.0, 1),
            "voice": self.voice.stats(),
            "mic": {"device": self.mic.device, "state": self.mic_state, "dbfs": round(self.mic_dbfs, 1),
                    "frames": self.feed.frames, "drops": self.feed.drops, "losses": self.mic_losses},
        }

