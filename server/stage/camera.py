"""``avatar camera``: a local stage whose outputs are a virtual camera, a virtual microphone
and a recording, with live controls from the terminal.

- :class:`VirtualCamera`: pyvirtualcam (v4l2loopback on Linux, OBS Virtual Camera on Windows
  and macOS) fed I420 frames at the configured size, on the video track's clock.
- :class:`PulseVirtualMic`: a PulseAudio/PipeWire null sink "Avatar microphone" (its monitor is
  the microphone a call app picks) written by a ``pacat`` subprocess; unloaded on exit.
  :class:`PortAudioVirtualMic`: an output device such as VB-Cable (Windows) or BlackHole (macOS).
- :class:`Recorder`: an MP4 of what the camera and the virtual microphone emitted, each frame
  and each 20 ms of voice stamped with the time it was emitted (so sync can be read from it).
- :func:`run_camera`: opens the devices (failures are one clear :class:`DeviceError`), runs
  the :class:`~server.stage.local.LocalStage` and its outputs until Ctrl-C, ``q`` or
  ``--seconds``, and closes everything it started.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import av
import numpy as np
from numpy.typing import NDArray

from server.clock import Clock, MonotonicClock
from server.config import AppConfig
from server.errors import AvatarError, DeviceError, MediaError
from server.offline import LIVE_FRAME, LIVE_RATE
from server.pipeline.types import EMOTIONS
from server.stage.local import (
    LocalStage,
    Mic,
    _sounddevice,
    close_stream,
    open_mic,
    pulse_available,
    pulse_names,
)
from server.stage.program import SILENT_RMS

log = logging.getLogger(__name__)

VMIC_SINK = "avatar_mic"
VMIC_DESCRIPTION = "Avatar microphone"
VMIC_LATENCY_MS = 30  # pacat's playback buffer, ms: the voice is delayed this much less
VMIC_MAX_BUFFER_S = 0.5  # s of voice a PortAudio cable's queue holds before frames are dropped
VMIC_PIPE_FRAMES = 4  # 20 ms frames pacat's stdin pipe holds at most (the kernel rounds up to pages)
VMIC_STARTUP_S = 3.0  # s after pacat starts during which dropped frames count as its start-up
STATUS_TTY_S = 0.5  # s between status line updates on a terminal
STATUS_LOG_S = 5.0  # s between status lines when stderr is not a terminal
VIRTUAL_AUDIO_NAMES = ("CABLE Input", "VB-Audio", "BlackHole", "Loopback Audio", "Soundflower")


def camera_install_hint() -> str:
    """How to get a virtual camera on this platform (one line)."""
    system = platform.system()
    if system == "Linux":
        return ('install v4l2loopback: `sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback devices=1 '
                'video_nr=10 card_label="Avatar camera" exclusive_caps=1`, or start OBS Studio\'s Virtual Camera once')
    return "install OBS Studio (28 or newer) and start its Virtual Camera once (Start Virtual Camera, then Stop)"


class VirtualCamera:
    """A pyvirtualcam camera taking I420 frames (H * 3 / 2, W) uint8 at ``fps``.

    ``device`` None: the first available one; ``backend`` None: every built-in backend is tried.
    """

    def __init__(self, width: int, height: int, fps: float, device: str | None = None, backend: str | None = None) -> None:
        try:
            import pyvirtualcam
        except ImportError as e:
            raise DeviceError(f"pyvirtualcam is not installed ({e}): `pip install 'avatar-server[camera]'`") from e
        if backend is not None and backend not in pyvirtualcam.camera.BACKENDS:
            known = ", ".join(sorted(pyvirtualcam.camera.BACKENDS)) or "none on this platform"
            raise DeviceError(f"unknown virtual camera backend {backend!r}; known: {known}")
        what = f"virtual camera {device!r}" if device else "virtual camera"
        try:
            self._cam: Any = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.I420, device=device, backend=backend)
        except Exception as e:  # pyvirtualcam raises RuntimeError with one line per backend
            why = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
            if "busy" in why.lower():
                raise DeviceError(f"{what} is busy (another program is writing to it: close it, or pick another --camera): {why}") from e
            if not pyvirtualcam.camera.BACKENDS:
                why = "no virtual camera backend for this platform"
            raise DeviceError(f"no {what} ({why}); {camera_install_hint()}; or only record with --record FILE.mp4 --no-camera") from e
        self.device = str(self._cam.device)
        self.backend = str(self._cam.backend)
        self.size = (width, height)
        self.frames = 0

    def send(self, yuv: NDArray[np.uint8]) -> None:
        """Send one I420 frame; :class:`DeviceError` naming the device if it fails."""
        try:
            self._cam.send(yuv.reshape(-1))
        except Exception as e:
            raise DeviceError(f"virtual camera {self.device} failed (removed or reconfigured?): {e}") from e
        self.frames += 1

    def close(self) -> None:
        """Release the device (idempotent)."""
        cam, self._cam = self._cam, None
        if cam is not None:
            with contextlib.suppress(Exception):
                cam.close()


# ------------------------------------------------------------------ virtual microphones


def _silent(samples: NDArray[np.int16]) -> bool:
    """True for a frame quieter than ProgramAudio's silence threshold (about -55 dBFS)."""
    return float(np.sqrt(np.mean(samples.astype(np.float32) ** 2))) < SILENT_RMS


class PulseVirtualMic:
    """The voice into a PulseAudio/PipeWire null sink :data:`VMIC_SINK` ("Avatar microphone");
    call apps pick its monitor as their microphone. :meth:`load` creates the sink and starts
    ``pacat`` (early: a fresh null sink plays nothing for its first ~2 s), :meth:`write` hands
    it frames without ever blocking, :meth:`unload` ends pacat and removes the sink."""

    def __init__(self, latency_ms: int = VMIC_LATENCY_MS) -> None:
        self.device = f"{VMIC_DESCRIPTION} (PulseAudio sink {VMIC_SINK}; microphone: Monitor of {VMIC_DESCRIPTION})"
        self.latency_s = latency_ms / 1000.0
        self._latency_ms = latency_ms
        self.module: int | None = None  # the null sink's module index, if we loaded it
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._started = 0.0  # time.monotonic() pacat started
        self.written = 0  # 20 ms frames handed to pacat
        self.dropped = 0  # frames dropped while pacat was behind
        self.startup_dropped = 0  # frames dropped in pacat's first VMIC_STARTUP_S (a fresh sink plays nothing for ~2 s)
        self.shed = 0  # silent frames left out while a backlog waited in the pipe
        self.lost: str | None = None

    def load(self) -> None:
        """Create the null sink (reused, and left in place, if it already exists); start pacat."""
        if not pulse_available():
            raise DeviceError("no PulseAudio/PipeWire server answers `pactl info`: the virtual microphone needs one "
                              "(`apt install pulseaudio-utils` and a running PulseAudio or PipeWire)")
        if VMIC_SINK in pulse_names("sinks"):
            log.warning("the PulseAudio sink %s already exists: using it (not removed on exit)", VMIC_SINK)
        else:
            out = subprocess.run(
                ["pactl", "load-module", "module-null-sink", f"sink_name={VMIC_SINK}", f"rate={LIVE_RATE}", "channels=2",
                 f"sink_properties='device.description=\"{VMIC_DESCRIPTION}\"'"],  # quoted twice: modargs, then proplist
                capture_output=True, text=True, timeout=10.0, check=False,
            )
            if out.returncode != 0 or not out.stdout.strip().isdigit():
                raise DeviceError(f"cannot create the virtual microphone sink {VMIC_SINK}: {(out.stderr or out.stdout).strip()}")
            self.module = int(out.stdout.strip())
        try:
            self._proc = subprocess.Popen(
                ["pacat", "--playback", "--raw", "--format=s16le", f"--rate={LIVE_RATE}", "--channels=2",
                 f"--latency-msec={self._latency_ms}", f"--device={VMIC_SINK}", "--client-name=avatar-camera",
                 "--stream-name=Avatar voice"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except OSError as e:
            self.unload()
            raise DeviceError(f"cannot start pacat for the virtual microphone: {e}") from e
        assert self._proc.stdin is not None
        fd = self._fd = self._proc.stdin.fileno()
        self._started = time.monotonic()
        os.set_blocking(fd, False)
        # A small pipe: what waits in it is heard that much later. Up to VMIC_PIPE_FRAMES ride
        # out the jitter of our ticks and of pacat's reads; any backlog is shed in the pauses
        # (see write), and a frame that does not fit is dropped, never delayed.
        # A one-frame write (3840 bytes < PIPE_BUF) is atomic: all of it or EAGAIN.
        with contextlib.suppress(AttributeError, OSError):
            import fcntl

            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), VMIC_PIPE_FRAMES * LIVE_FRAME * 4)

    def _queued(self) -> int:
        """Bytes waiting in pacat's pipe (0 where the platform cannot say)."""
        try:
            import fcntl
            import termios

            buf = array.array("i", [0])
            fcntl.ioctl(self._fd, termios.FIONREAD, buf)  # type: ignore[arg-type]
            return int(buf[0])
        except (ImportError, OSError, TypeError):
            return 0

    async def start(self) -> None:
        """Nothing more to start (pacat runs since :meth:`load`)."""

    async def stop(self) -> None:
        """Nothing to stop before :meth:`unload`."""

    def write(self, samples: NDArray[np.int16], index: int) -> None:
        """One 20 ms frame (960, 2) int16 of the delayed voice (a ProgramAudio PCM sink)."""
        if self._fd is None or self._proc is None or self.lost is not None:
            return
        if self._queued() >= LIVE_FRAME * 4 and _silent(samples):
            self.shed += 1  # a late tick left a backlog: drop silence to catch up, inaudibly
            return
        try:
            os.write(self._fd, np.ascontiguousarray(samples, np.int16).tobytes())
            self.written += 1
        except BlockingIOError:
            if time.monotonic() - self._started < VMIC_STARTUP_S:
                self.startup_dropped += 1
            else:
                self.dropped += 1
        except OSError as e:  # BrokenPipeError: pacat is gone
            self.lost = f"pacat stopped ({e}; status {self._proc.poll()})"
            log.error("virtual microphone %s: %s", VMIC_SINK, self.lost)

    def unload(self) -> None:
        """End pacat (reaped) and remove the null sink if :meth:`load` created it (idempotent)."""
        proc, self._proc, self._fd = self._proc, None, None
        if proc is not None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        module, self.module = self.module, None
        if module is not None:
            out = subprocess.run(["pactl", "unload-module", str(module)], capture_output=True, text=True, timeout=10.0, check=False)
            if out.returncode != 0:
                log.warning("could not unload the virtual microphone (module %d): %s", module, out.stderr.strip())

    def stats(self) -> dict[str, Any]:
        """JSON-able counters."""
        return {"device": self.device, "written": self.written, "dropped": self.dropped, "shed": self.shed,
                "startup_dropped": self.startup_dropped, "lost": self.lost, "latency_ms": self._latency_ms}


class PortAudioVirtualMic:
    """The voice into a PortAudio output that loops back as a microphone: VB-Cable's "CABLE
    Input" (Windows), BlackHole (macOS), or the output named by ``device``."""

    def __init__(self, device: str | None = None) -> None:
        sd = _sounddevice()
        outputs = [(i, d["name"]) for i, d in enumerate(sd.query_devices()) if d.get("max_output_channels", 0) >= 2]
        wanted = (device,) if device else VIRTUAL_AUDIO_NAMES
        found = [(i, n) for i, n in outputs if any(w.lower() in n.lower() for w in wanted)]
        if not found:
            raise DeviceError(
                f"no virtual audio cable found (looked for {', '.join(wanted)} among the outputs "
                f"{', '.join(n for _, n in outputs) or 'none'}): install VB-Cable (Windows, vb-audio.com/Cable) or "
                "BlackHole 2ch (macOS, `brew install blackhole-2ch`), or on Linux use PulseAudio/PipeWire"
            )
        self._index, name = found[0]
        self.device = f"{name} (pick its recording side as the call app's microphone)"
        self.latency_s = 0.0
        self._buf: deque[bytes] = deque(maxlen=int(VMIC_MAX_BUFFER_S / 0.02))
        self._stream: Any = None
        self.written = 0
        self.dropped = 0
        self.lost: str | None = None

    def load(self) -> None:
        """Nothing to create: the cable is a driver."""

    def unload(self) -> None:
        """Nothing to remove."""

    async def start(self) -> None:
        """Open the output stream (its callback plays what :meth:`write` queued)."""
        sd = _sounddevice()
        silence = bytes(LIVE_FRAME * 4)

        def callback(outdata: Any, frames: int, time_info: Any, status: Any) -> None:  # PortAudio's thread
            data = self._buf.popleft() if self._buf else silence
            outdata[:] = data[: len(outdata)].ljust(len(outdata), b"\0")

        try:
            self._stream = sd.RawOutputStream(samplerate=LIVE_RATE, blocksize=LIVE_FRAME, device=self._index,
                                              channels=2, dtype="int16", callback=callback, latency="low")
            self._stream.start()
            self.latency_s = float(self._stream.latency)
        except Exception as e:
            raise DeviceError(f"virtual microphone {self.device!r} cannot be opened: {e}") from e

    def write(self, samples: NDArray[np.int16], index: int) -> None:
        """One 20 ms frame (960, 2) int16 of the delayed voice."""
        if self._stream is None:
            return
        if len(self._buf) == self._buf.maxlen:
            self.dropped += 1
        self._buf.append(np.ascontiguousarray(samples, np.int16).tobytes())
        self.written += 1

    async def stop(self) -> None:
        """Stop and close the stream."""
        stream, self._stream = self._stream, None
        close_stream(stream)

    def stats(self) -> dict[str, Any]:
        """JSON-able counters."""
        return {"device": self.device, "written": self.written, "dropped": self.dropped, "lost": self.lost}


VirtualMic = PulseVirtualMic | PortAudioVirtualMic


def open_virtual_mic(device: str | None = None) -> VirtualMic:
    """PulseAudio/PipeWire's null sink when a server answers, else a PortAudio virtual cable."""
    if device is None and (platform.system() == "Linux" or pulse_available()):
        return PulseVirtualMic()  # its load() says clearly when no server answers
    return PortAudioVirtualMic(device)


# ------------------------------------------------------------------ recording


class Recorder:
    """An MP4 (H.264 + AAC stereo) of the emitted outputs, in a writer thread.

    Video frames keep their emission time (ms resolution); the voice is placed at the time
    each 20 ms frame was emitted (gaps filled with silence, overlaps trimmed). Times are s
    since the first emitted video frame; anything emitted before it is left out.
    """

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container: Any = av.open(str(self.path), "w")
        except (OSError, av.error.FFmpegError) as e:
            raise MediaError(f"cannot write the recording {self.path}: {e}") from e
        v = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        v.width, v.height = size
        v.pix_fmt = "yuv420p"
        v.time_base = Fraction(1, 1000)
        v.codec_context.time_base = Fraction(1, 1000)
        v.options = {"preset": "ultrafast", "crf": "20", "tune": "zerolatency"}
        self._v = v
        a = self._container.add_stream("aac", rate=LIVE_RATE)
        a.layout = "stereo"
        a.time_base = Fraction(1, LIVE_RATE)
        self._a = a
        self._q: queue.Queue[tuple[str, NDArray[Any], float] | None] = queue.Queue(maxsize=120)
        self._last_vpts = -1
        self._next_sample = 0  # audio samples written so far
        self.video_frames = 0
        self.audio_s = 0.0
        self.dropped = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="camera-recorder", daemon=True)
        self._thread.start()

    def video(self, yuv: NDArray[np.uint8], t: float) -> None:
        """One I420 frame emitted at ``t`` s (dropped if the writer is 4 s behind)."""
        self._put(("v", yuv, t))

    def audio(self, samples: NDArray[np.int16], t: float) -> None:
        """20 ms of voice (960, 2) int16 emitted at ``t`` s."""
        self._put(("a", samples.copy(), t))

    def _put(self, item: tuple[str, NDArray[Any], float]) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self.error is not None:
                continue
            kind, data, t = item
            try:
                if kind == "v":
                    self._video(data, t)
                else:
                    self._audio(data, t)
            except Exception as e:  # reported by close()
                self.error = e
        if self.error is None:
            try:
                for s in (self._v, self._a):
                    for p in s.encode(None):
                        self._container.mux(p)
            except Exception as e:
                self.error = e

    def _video(self, yuv: NDArray[np.uint8], t: float) -> None:
        pts = max(round(t * 1000.0), self._last_vpts + 1)
        self._last_vpts = pts
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = pts
        frame.time_base = Fraction(1, 1000)
        for p in self._v.encode(frame):
            self._container.mux(p)
        self.video_frames += 1

    def _audio(self, samples: NDArray[np.int16], t: float) -> None:
        start = round(t * LIVE_RATE)
        if start + len(samples) <= self._next_sample:
            return
        if start < self._next_sample:  # overlaps what is written (or before the first frame): trim
            samples = samples[self._next_sample - start:]
        elif start > self._next_sample + LIVE_FRAME // 2:  # a gap (a stall): silence up to it
            self._encode_audio(np.zeros((start - self._next_sample, 2), np.int16))
        self._encode_audio(samples)

    def _encode_audio(self, samples: NDArray[np.int16]) -> None:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = LIVE_RATE
        frame.pts = self._next_sample
        frame.time_base = Fraction(1, LIVE_RATE)
        for p in self._a.encode(frame):
            self._container.mux(p)
        self._next_sample += len(samples)
        self.audio_s = self._next_sample / LIVE_RATE

    def close(self) -> None:
        """Finish the file (blocks until the writer is done); MediaError if writing failed."""
        if self._container is None:  # closed already
            return
        self._q.put(None)
        self._thread.join()
        with contextlib.suppress(Exception):
            self._container.close()
        self._container = None
        if self.error is not None:
            raise MediaError(f"recording {self.path} failed: {self.error}") from self.error

    def stats(self) -> dict[str, Any]:
        """JSON-able counters."""
        return {"path": str(self.path), "video_frames": self.video_frames, "audio_s": round(self.audio_s, 2), "dropped": self.dropped}


# ------------------------------------------------------------------ terminal


class Keys:
    """Single key presses from an interactive stdin (cbreak mode, restored on close)."""

    def __init__(self, on_key: Callable[[str], None], stream: TextIO = sys.stdin) -> None:
        self._on_key = on_key
        self._stream = stream
        self._saved: Any = None
        self._fd: int | None = None
        self._started = 0.0  # time.monotonic() pacat started

    def start(self) -> bool:
        """Start listening; False when stdin is not a terminal (or on Windows)."""
        try:
            import termios
            import tty
        except ImportError:
            return False
        if not _is_tty(self._stream):
            return False
        fd = self._stream.fileno()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._read)
        return True

    def _read(self) -> None:
        import os

        assert self._fd is not None
        data = os.read(self._fd, 32).decode(errors="ignore")
        for ch in data:
            self._on_key(ch)

    def close(self) -> None:
        """Stop listening and restore the terminal."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        import termios

        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, self._saved)


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


KEYS_HELP = ("keys: " + " ".join(f"{i + 1}={e}" for i, e in enumerate(EMOTIONS)) +
             " 0=auto  a/A=next/previous avatar  q=quit")


def level_bar(dbfs: float, width: int = 10) -> str:
    """A meter for a level in dBFS: -60 dBFS empty, 0 full."""
    n = int(round(min(max((dbfs + 60.0) / 60.0, 0.0), 1.0) * width))
    return "#" * n + "." * (width - n)


def status_line(stats: dict[str, Any]) -> str:
    """One line: fps, latency, voice delay, mic level and state, avatar, emotion."""
    lat = stats["latency_ms"]["p50"]
    mic = stats["mic"]
    state = "" if mic["state"] == "live" else f" [{str(mic['state'])[:60]}]"
    return (f"{stats['fps']:5.1f} fps | latency {'-' if lat is None else f'{lat:.0f}'} ms | voice +{stats['voice_delay_ms']:.0f} ms"
            f" | mic {level_bar(mic['dbfs'])} {mic['dbfs']:6.1f} dBFS{state} | {stats['avatar']} | {stats['emotion']}")


# ------------------------------------------------------------------ the command


@dataclass
class CameraOptions:
    """What ``avatar camera`` was asked to do."""

    mic: str | None = None  # microphone device (None: the default)
    mic_backend: str = "auto"  # auto | pulse | portaudio
    mic_file: Path | None = None  # a file played in real time as the microphone
    camera: str | None = None  # virtual camera device (None: the first one)
    camera_backend: str | None = None  # pyvirtualcam backend (None: any)
    no_camera: bool = False  # no virtual camera at all (record only)
    avatar: str | None = None
    virtual_mic: bool = False
    virtual_mic_device: str | None = None  # PortAudio output for the voice (Windows/macOS)
    record: Path | None = None
    seconds: float | None = None  # stop after this long (None: until Ctrl-C or q)
    stats: Path | None = None  # write final statistics (JSON) here
    quiet: bool = False


class CameraRun:
    """One ``avatar camera`` run's outputs and loops (see :func:`run_camera`)."""

    def __init__(self, opts: CameraOptions, stage: LocalStage, cam: VirtualCamera | None, vmic: VirtualMic | None,
                 rec: Recorder | None, clock: Clock, err: TextIO) -> None:
        self.opts, self.stage, self.cam, self.vmic, self.rec, self.clock = opts, stage, cam, vmic, rec, clock
        self.err = err
        self.stop = asyncio.Event()
        self._started = asyncio.Event()  # the first frame was emitted
        self.t0: float | None = None  # clock time of the first emitted frame
        self.emitted: deque[float] = deque(maxlen=100_000)  # clock times frames reached the outputs
        self.failure: BaseException | None = None
        self._tty = _is_tty(err)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._controls: asyncio.Task[Any] | None = None

    async def run(self) -> None:
        """Until stopped: frames to the camera and the recording, the voice to its sinks."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: no signal handlers
                loop.add_signal_handler(sig, self.stop.set)
        keys = Keys(self._on_key)
        try:
            if self.vmic is not None:
                await self.vmic.start()
                self.stage.add_voice_sink(self.vmic.write)
            if self.rec is not None:
                self.stage.add_voice_sink(self._record_voice)
            await self.stage.start()
            if not self.opts.quiet:
                self.err.write("avatar camera: live (Ctrl-C to stop)\n")
                if keys.start():
                    self.err.write(KEYS_HELP + "\n")
                self.err.flush()
            video = self._spawn(self._video(), "video")
            self._spawn(self._status(), "status")
            waits: set[asyncio.Future[Any]] = {video, asyncio.ensure_future(self.stop.wait())}
            if self.opts.seconds is not None:
                waits.add(asyncio.ensure_future(self._deadline(self.opts.seconds)))
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for p in pending:
                if p is not video:
                    p.cancel()
            await asyncio.gather(*(p for p in pending if p is not video), return_exceptions=True)
            if video in done and not video.cancelled() and video.exception() is not None:
                self.failure = video.exception()
        finally:
            keys.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stage.close()
            if self.vmic is not None:
                await self.vmic.stop()
            if self._tty and not self.opts.quiet:
                self.err.write("\n")
        if self.failure is not None:
            raise self.failure

    async def _deadline(self, seconds: float) -> None:
        await self._started.wait()
        assert self.t0 is not None
        await self.clock.sleep_until(self.t0 + seconds)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"camera:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _video(self) -> None:
        async for yuv, t in self.stage.frames():
            if self.t0 is None:
                self.t0 = t
                self._started.set()
            if self.cam is not None:
                self.cam.send(yuv)
            if self.rec is not None:
                self.rec.video(yuv, t - self.t0)
            self.emitted.append(t)

    def _record_voice(self, samples: NDArray[np.int16], index: int) -> None:
        """The voice as the virtual microphone emits it: when written plus its buffer's latency."""
        if self.t0 is not None and self.rec is not None:
            out_latency = self.vmic.latency_s if self.vmic is not None else 0.0
            self.rec.audio(samples, self.clock.now() + out_latency - self.t0)

    async def _status(self) -> None:
        every = STATUS_TTY_S if self._tty else STATUS_LOG_S
        while True:
            await asyncio.sleep(every)
            if self.opts.quiet:
                continue
            line = status_line(self.stage.stats())
            if self.vmic is not None and self.vmic.lost:
                line += f" | virtual mic lost: {self.vmic.lost}"
            self.err.write(("\r\x1b[K" + line) if self._tty else line + "\n")
            self.err.flush()

    def _on_key(self, ch: str) -> None:
        if ch in ("q", "\x1b"):
            self.stop.set()
            return
        if ch == "0" or (ch.isdigit() and 1 <= int(ch) <= len(EMOTIONS)):
            emotion = "auto" if ch == "0" else EMOTIONS[int(ch) - 1]
            self._control(self.stage.set_emotion(emotion))
        elif ch in ("a", "A"):
            names = self.stage.avatar_names()
            i = names.index(self.stage.avatar) if self.stage.avatar in names else -1
            self._control(self.stage.set_avatar(names[(i + (1 if ch == "a" else -1)) % len(names)]))
        elif ch in ("h", "?"):
            self.err.write(("\r\x1b[K" if self._tty else "") + KEYS_HELP + "\n")

    def _control(self, coro: Any) -> None:
        """Run one control at a time (a key pressed while one is applied is ignored)."""
        if self._controls is not None and not self._controls.done():
            coro.close()
            return

        async def apply() -> None:
            try:
                await coro
            except (AvatarError, ValueError) as e:
                self.err.write(f"\n{e}\n")

        self._controls = self._spawn(apply(), "control")

    def stats(self) -> dict[str, Any]:
        """The run's final statistics (JSON-able)."""
        times = np.array(self.emitted)
        gaps = np.diff(times) if len(times) > 1 else np.zeros(0)
        return {
            **self.stage.stats(),
            "camera": None if self.cam is None else {"device": self.cam.device, "backend": self.cam.backend, "frames": self.cam.frames},
            "emitted_frames": int(len(times)),
            "emitted_fps": round(float((len(times) - 1) / (times[-1] - times[0])), 2) if len(times) > 1 and times[-1] > times[0] else 0.0,
            "frame_gap_ms": {"p50": round(float(np.median(gaps)) * 1000, 1), "max": round(float(gaps.max()) * 1000, 1)} if len(gaps) else None,
            "virtual_mic": None if self.vmic is None else self.vmic.stats(),
            "record": None if self.rec is None else self.rec.stats(),
        }


def run_camera(cfg: AppConfig, opts: CameraOptions, models_loader: Callable[[AppConfig], Any], err: TextIO = sys.stderr) -> dict[str, Any]:
    """``avatar camera``: open the devices, run until stopped, close everything; returns the
    final statistics. Raises :class:`DeviceError` (one clear line) when a device fails."""
    clock = MonotonicClock()
    mic: Mic = open_mic(opts.mic, opts.mic_backend, opts.mic_file, clock)
    cam: VirtualCamera | None = None
    if not opts.no_camera:
        try:
            cam = VirtualCamera(cfg.video.width, cfg.video.height, cfg.video.fps, opts.camera, opts.camera_backend)
        except DeviceError as e:
            if opts.record is None or opts.camera is not None:
                raise
            err.write(f"avatar camera: {e}\navatar camera: recording to {opts.record} only\n")
    if cam is None and opts.record is None and not opts.virtual_mic:
        raise DeviceError("nothing to send the avatar to: no virtual camera, no --virtual-mic and no --record FILE.mp4")
    vmic: VirtualMic | None = None
    rec: Recorder | None = None
    try:
        if opts.virtual_mic:
            vmic = open_virtual_mic(opts.virtual_mic_device)
            vmic.load()
        models = models_loader(cfg)
        if opts.avatar is not None:
            models.registry.get(opts.avatar)  # AvatarNotFound names it, before any device starts
        if opts.record is not None:
            rec = Recorder(opts.record, (cfg.video.width, cfg.video.height), cfg.video.fps)
        stage = LocalStage(cfg, models, clock, mic, opts.avatar, vmic.latency_s if vmic is not None else 0.0)
        if not opts.quiet:
            where = f"{cam.device} ({cam.backend})" if cam is not None else "no virtual camera"
            err.write(f"avatar camera: {stage.avatar} at {cfg.video.width}x{cfg.video.height} {cfg.video.fps:g} fps -> {where}; "
                      f"microphone: {mic.device}" + (f"; voice -> {vmic.device}" if vmic is not None else "")
                      + (f"; recording {opts.record}" if rec is not None else "") + "\n")
            err.flush()
        run = CameraRun(opts, stage, cam, vmic, rec, clock, err)
        t_start = time.monotonic()
        asyncio.run(run.run())
        if rec is not None:
            rec.close()  # raises MediaError if the file could not be written
        stats = run.stats()
        stats["wall_s"] = round(time.monotonic() - t_start, 2)
    finally:
        try:
            if rec is not None:
                with contextlib.suppress(MediaError):  # already closed, or failing with the error above
                    rec.close()
        finally:
            if vmic is not None:
                vmic.unload()
            if cam is not None:
                cam.close()
    if opts.stats is not None:
        opts.stats.write_text(json.dumps(stats, indent=1))
    if not opts.quiet:
        lat = stats["latency_ms"]["p50"]
        err.write(f"avatar camera: {stats['emitted_frames']} frames ({stats['emitted_fps']:.1f} fps), mic->frame latency p50 "
                  f"{'-' if lat is None else f'{lat:.0f}'} ms, voice delayed {stats['voice_delay_ms']:.0f} ms\n")
    return stats
