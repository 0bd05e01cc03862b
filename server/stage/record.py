"""Recording a stage: the program's already-encoded VP8 and Opus packets muxed into WebM or
Matroska (no re-encode), e.g. for a class's replay.

The recorder is an output like a viewer: it takes the stage's packets through its own two
mailboxes (the video one starts at a keyframe and asks for one; a disk that falls behind drops
its own frames and resyncs, never slowing the stage), and a writer thread muxes them. Times in
the file start at 0 with the first keyframe; audio and video keep the stage clock's relation,
so the file is in sync exactly as the viewers are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from server.errors import MediaError
from server.stage.outputs import PacketMailbox

log = logging.getLogger(__name__)

RECORD_VIDEO_MAILBOX = 60  # packets (2 s at 30 fps) the disk may fall behind before a resync
RECORD_AUDIO_MAILBOX = 150  # 20 ms packets (3 s)
SUFFIXES = (".webm", ".mkv")


class StageRecorder:
    """Writes one stage's program to ``path`` (.webm or .mkv). ``start()``, then ``await stop()``."""

    role = "record"
    alpha = False
    wants_audio = True

    def __init__(self, path: Path, width: int, height: int, fps: float, want_keyframe: Any) -> None:
        if path.suffix.lower() not in SUFFIXES:
            raise MediaError(f"a stage recording must be .webm or .mkv, got {path.name!r}")
        self.path = path
        self.width, self.height, self.fps = width, height, fps
        self.video = PacketMailbox(RECORD_VIDEO_MAILBOX, keyframes=True, want_keyframe=want_keyframe)
        self.audio = PacketMailbox(RECORD_AUDIO_MAILBOX)
        self.id = f"rec-{path.stem}"
        self._want_keyframe = want_keyframe
        self._q: queue.Queue[tuple[str, bytes, int, bool] | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.video_packets = 0
        self.audio_packets = 0
        self.error: str | None = None
        self.started = time.monotonic()
        self.closed = False

    def remb_bitrate(self) -> int | None:
        """A recorder has no bandwidth estimate."""
        return None

    def start(self) -> None:
        """Open the file and start taking packets."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._write, name=f"record-{self.path.name}", daemon=True)
        self._thread.start()
        self.video.open()
        self.audio.open()
        self._want_keyframe()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._drain("video", self.video)), loop.create_task(self._drain("audio", self.audio))]

    async def _drain(self, kind: str, box: PacketMailbox) -> None:
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError):
            while True:
                p = await box.get()
                try:
                    self._q.put_nowait((kind, bytes(p), int(p.pts or 0), bool(p.is_keyframe)))
                except queue.Full:  # the disk is far behind: drop (the mailbox resyncs video)
                    pass

    def _write(self) -> None:
        """(writer thread) Mux the packets as they come."""
        try:
            out = av.open(str(self.path), "w", format="webm" if self.path.suffix.lower() == ".webm" else "matroska")
        except (av.error.FFmpegError, OSError) as e:
            self.error = f"cannot write {self.path}: {e}"
            log.error("stage recording: %s", self.error)
            return
        try:
            vs: Any = out.add_stream("libvpx", rate=int(round(self.fps)))
            vs.width, vs.height = self.width, self.height
            aus: Any = out.add_stream("libopus", rate=48_000)
            aus.layout = "stereo"
            out.start_encoding()  # writes the header: the streams' time bases are final now
            vtb, atb = Fraction(vs.time_base), Fraction(aus.time_base)
            t0: float | None = None  # stage time (s) of the first keyframe
            while True:
                item = self._q.get()
                if item is None:
                    break
                kind, data, pts, key = item
                t = pts / (90_000 if kind == "video" else 48_000)
                if t0 is None:
                    if kind != "video" or not key:
                        continue
                    t0 = t
                if t < t0:
                    continue
                packet = av.Packet(data)
                if kind == "video":
                    packet.stream = vs
                    packet.time_base = vtb
                    packet.pts = packet.dts = int(round((t - t0) / vtb))
                    if key:
                        packet.is_keyframe = True
                    self.video_packets += 1
                else:
                    packet.stream = aus
                    packet.time_base = atb
                    packet.pts = packet.dts = int(round((t - t0) / atb))
                    self.audio_packets += 1
                out.mux(packet)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            self.error = f"writing {self.path} failed: {e}"
            log.error("stage recording: %s", self.error)
        finally:
            with contextlib.suppress(av.error.FFmpegError, OSError):
                out.close()

    async def stop(self) -> None:
        """Stop taking packets, finish the file. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.video.close()
        self.audio.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._q.put, None)
            await asyncio.to_thread(self._thread.join, 10.0)

    def stats(self) -> dict[str, Any]:
        """JSON-able state of the recording."""
        return {
            "file": self.path.name,
            "video_packets": self.video_packets,
            "audio_packets": self.audio_packets,
            "dropped": self.video.dropped + self.audio.dropped,
            "age_s": round(time.monotonic() - self.started, 1),
            "error": self.error,
        }
