"""A headless viewer of a stage over WHEP: ``avatar client --watch URL/watch/STAGE``.

It subscribes like any WHEP player (``POST /whep/{stage}`` with a receive-only offer,
``DELETE`` on leave), opens the ``stage`` data channel for events and reactions, and records
what a viewer receives: every video and audio frame's arrival time and RTP timestamp, and the
sender reports (RTCP SR) that map each track's RTP clock onto the sender's wallclock, which is
how a browser lines audio up with video. ``--record OUT.mp4`` writes the received program.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtcpSrPacket
from numpy.typing import NDArray

from server.client import ClientError, FrameRecord, FrameWorker, rtc_configuration

log = logging.getLogger(__name__)

NTP_EPOCH_OFFSET = 2_208_988_800  # s between 1900 (NTP) and 1970 (Unix)


def split_watch_url(url: str) -> tuple[str, str]:
    """``http://host:port/watch/STAGE`` (or ``.../whep/STAGE``, ``.../STAGE``) → (base, stage)."""
    parts = urlsplit(url)  # (a ?token=... query is the caller's: see token_of_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"bad watch URL {url!r}: expected http(s)://host:port/watch/STAGE")
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ClientError(f"bad watch URL {url!r}: it names no stage")
    stage = path[-1]
    prefix = path[:-1]
    if prefix and prefix[-1] in ("watch", "whep", "obs"):
        prefix = prefix[:-1]
    base = f"{parts.scheme}://{parts.netloc}" + ("/" + "/".join(prefix) if prefix else "")
    return base, stage


def token_of_url(url: str) -> str | None:
    """The ``token`` query parameter of a watch link, if it has one."""
    from urllib.parse import parse_qs

    values = parse_qs(urlsplit(url).query).get("token")
    return values[0] if values else None


@dataclass
class SenderReports:
    """The (NTP wallclock s, RTP timestamp) pairs of one track's RTCP sender reports."""

    pairs: list[tuple[float, int]] = field(default_factory=list)

    def wallclock(self, rtp: int, rate: int) -> float | None:
        """The sender's wallclock (s since 1970) of RTP timestamp ``rtp`` (latest report)."""
        if not self.pairs:
            return None
        ntp, ref = self.pairs[-1]
        delta = (rtp - ref) % (1 << 32)
        if delta >= 1 << 31:
            delta -= 1 << 32
        return ntp + delta / rate


@dataclass
class WatchStats:
    """What one viewer received."""

    stage: str
    frames: list[FrameRecord] = field(default_factory=list)
    video_pts: list[int] = field(default_factory=list)  # RTP timestamps (90 kHz) of the frames
    audio: list[tuple[float, int, int]] = field(default_factory=list)  # (arrival s, RTP ts 48 kHz, samples)
    first_frame_s: float | None = None  # s from the WHEP POST to the first decoded frame
    connect_s: float | None = None  # s from the POST to the answer
    events: list[dict[str, Any]] = field(default_factory=list)
    ended: str | None = None  # the stage's "ended" reason, if it ended while watching
    video_sr: SenderReports = field(default_factory=SenderReports)
    audio_sr: SenderReports = field(default_factory=SenderReports)

    def fps(self, skip_s: float = 1.0) -> float:
        """Mean received frame rate after the first ``skip_s`` s of video."""
        ts = [f.t for f in self.frames]
        if len(ts) < 2:
            return 0.0
        t0 = ts[0] + skip_s
        kept = [t for t in ts if t >= t0]
        if len(kept) < 2 or kept[-1] == kept[0]:
            return 0.0
        return (len(kept) - 1) / (kept[-1] - kept[0])

    def summary(self) -> dict[str, Any]:
        """JSON-able headline numbers."""
        return {
            "stage": self.stage,
            "video_frames": len(self.frames),
            "audio_frames": len(self.audio),
            "fps": round(self.fps(), 2),
            "first_frame_s": None if self.first_frame_s is None else round(self.first_frame_s, 3),
            "connect_s": None if self.connect_s is None else round(self.connect_s, 3),
            "ended": self.ended,
            "events": len(self.events),
        }


def _watch_sender_reports(pc: RTCPeerConnection, reports: dict[str, SenderReports]) -> None:
    """Record each receiver's RTCP SR (aiortc keeps only what it needs for its own reports)."""
    for transceiver in pc.getTransceivers():
        receiver: RTCRtpReceiver = transceiver.receiver
        sr = reports[transceiver.kind]
        original = receiver._handle_rtcp_packet

        async def handle(packet: Any, original: Any = original, sr: SenderReports = sr) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                ntp = info.ntp_timestamp
                wall = (ntp >> 32) + (ntp & 0xFFFFFFFF) / (1 << 32) - NTP_EPOCH_OFFSET
                sr.pairs.append((wall, int(info.rtp_timestamp)))
            await original(packet)

        receiver._handle_rtcp_packet = handle  # type: ignore[method-assign]


class WatchClient:
    """One viewer: ``await start()``, ``await watch(seconds)``, and always ``await close()``."""

    def __init__(self, url: str, *, record: Path | None = None, audio: bool = True, timeout: float = 20.0,
                 measure_sync: bool = False, video_codecs: tuple[str, ...] | None = None,
                 token: str | None = None, insecure: bool = False) -> None:
        """``measure_sync``: measure the mouth in every frame and keep the received audio, for
        :meth:`sync_offsets` (costs a decode and a measure per frame). ``video_codecs``: offer
        only these (e.g. ``("h264",)``, as a player without VP8 would)."""
        self.video_codecs = video_codecs
        self.token = token or token_of_url(url)
        self.insecure = insecure
        self.base, self.stage = split_watch_url(url)
        self.stats = WatchStats(stage=self.stage)
        self.want_audio = audio
        self.timeout = timeout
        self.pc: RTCPeerConnection | None = None
        self.channel: Any = None
        self.location: str | None = None
        self._http: aiohttp.ClientSession | None = None
        mouth = None
        if measure_sync:
            from server.client import load_mouth_measure

            mouth = load_mouth_measure()
        self._worker = FrameWorker(record, mouth) if record is not None or mouth is not None else None
        self.audio_pcm: list[tuple[int, NDArray[np.int16]]] | None = [] if measure_sync else None  # (RTP ts, mono)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._t_post: float | None = None
        self.ended = asyncio.Event()
        self.first_frame = asyncio.Event()
        self.running = asyncio.Event()  # cleared: stop reading the tracks (a stalled viewer)
        self.running.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Subscribe (POST the offer, apply the answer). Raises :class:`ClientError`."""
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False) if self.insecure else None)
        pc = self.pc = RTCPeerConnection(rtc_configuration(()))
        video = pc.addTransceiver("video", direction="recvonly")
        if self.video_codecs is not None:
            wanted = {f"video/{c.lower()}" for c in self.video_codecs} | {"video/rtx"}
            caps = RTCRtpReceiver.getCapabilities("video")
            video.setCodecPreferences([c for c in (caps.codecs if caps else []) if c.mimeType.lower() in wanted])
        if self.want_audio:
            pc.addTransceiver("audio", direction="recvonly")
        self.channel = pc.createDataChannel("stage")
        self.channel.on("message", self._on_message)
        _watch_sender_reports(pc, {"video": self.stats.video_sr, "audio": self.stats.audio_sr})

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._spawn(self._consume(track), f"watch-{track.kind}")

        await pc.setLocalDescription(await pc.createOffer())
        self._t_post = time.monotonic()
        try:
            async with self._http.post(
                f"{self.base}/whep/{self.stage}", data=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp", **self._auth()}, timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as r:
                body = await r.text()
                if r.status != 201:
                    raise ClientError(f"WHEP subscribe to stage {self.stage} refused: HTTP {r.status}: {body[:300]}", code=str(r.status))
                self.location = r.headers.get("Location")
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ClientError(f"cannot reach {self.base}/whep/{self.stage}: {e}") from e
        self.stats.connect_s = time.monotonic() - self._t_post
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _on_message(self, message: str | bytes) -> None:
        try:
            msg = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(msg, dict):
            self.stats.events.append(msg)
            if msg.get("type") == "ended":
                self.stats.ended = str(msg.get("reason"))
                self.ended.set()

    def react(self, kind: str) -> None:
        """Send a reaction (applause, laugh, heart, surprise, question) to the stage."""
        self._send({"type": "reaction", "kind": kind})

    def comment(self, text: str) -> None:
        """Send a short comment to the speaker."""
        self._send({"type": "comment", "text": text})

    def _send(self, msg: dict[str, Any]) -> None:
        if self.channel is None or self.channel.readyState != "open":
            raise ClientError("the stage channel is not open yet")
        self.channel.send(json.dumps(msg))

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            await self.running.wait()
            try:
                frame = await track.recv()
            except MediaStreamError:
                if track.kind == "video":
                    self.ended.set()
                return
            now = time.monotonic()
            if isinstance(frame, av.VideoFrame):
                rec = FrameRecord(t=now, width=frame.width, height=frame.height)
                self.stats.frames.append(rec)
                self.stats.video_pts.append(int(frame.pts or 0))
                if self.stats.first_frame_s is None and self._t_post is not None:
                    self.stats.first_frame_s = now - self._t_post
                    self.first_frame.set()
                if self._worker is not None:
                    self._worker.video(frame, rec, now - (self._t_post or now))
            elif isinstance(frame, av.AudioFrame):
                self.stats.audio.append((now, int(frame.pts or 0), frame.samples))
                if self.audio_pcm is not None:
                    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                    self.audio_pcm.append((int(frame.pts or 0), np.ascontiguousarray(pcm[:, 0])))
                if self._worker is not None:
                    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                    self._worker.audio(np.ascontiguousarray(pcm[:, 0]).astype(np.int16), int(frame.pts or 0))

    def sync_offsets(self) -> list[tuple[float, float]]:
        """(speech onset, mouth onset − speech onset) in s per utterance, on the sender's
        wallclock as a browser would line the two tracks up (RTCP sender reports)."""
        from server.sync import av_offsets

        vsr, asr = self.stats.video_sr, self.stats.audio_sr
        vorigin, aorigin = self._rtp_origin("video"), self._rtp_origin("audio")
        if self.audio_pcm is None or not self.audio_pcm or not vsr.pairs or not asr.pairs or vorigin is None or aorigin is None:
            return []
        times, mouth = [], []
        for rec, pts in zip(self.stats.frames, self.stats.video_pts, strict=True):
            t = vsr.wallclock((pts + vorigin) % (1 << 32), 90_000)
            if t is not None and rec.mouth is not None:
                times.append(t)
                mouth.append(rec.mouth)
        chunks = sorted(self.audio_pcm, key=lambda c: c[0])
        first = chunks[0][0]
        total = (chunks[-1][0] - first) % (1 << 32) + chunks[-1][1].size
        buf = np.zeros(total, np.float64)  # lost packets stay silent: the time line holds
        for ts, pcm in chunks:
            k = (ts - first) % (1 << 32)
            buf[k : k + pcm.size] = pcm[: max(0, total - k)] / 32768.0
        t0 = asr.wallclock((first + aorigin) % (1 << 32), 48_000)
        assert t0 is not None
        return av_offsets(buf, 48_000, t0, np.asarray(times), np.asarray(mouth))

    def _rtp_origin(self, kind: str) -> int | None:
        """The first RTP timestamp of the ``kind`` track: aiortc's frames count from it."""
        if self.pc is None:
            return None
        for t in self.pc.getTransceivers():
            if t.kind == kind:
                mapper = getattr(t.receiver, "_RTCRtpReceiver__timestamp_mapper", None)
                origin = getattr(mapper, "_origin", None)
                return int(origin) if origin is not None else None
        return None

    async def watch(self, seconds: float) -> None:
        """Receive for ``seconds`` (or until the stage ends)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), seconds)

    async def close(self, *, leave: bool = True) -> None:
        """``DELETE`` the subscription (unless told not to), close everything."""
        if leave and self.location and self._http is not None and not self.ended.is_set():
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self._http.delete(self.base + self.location, headers=self._auth(), timeout=aiohttp.ClientTimeout(total=5)):
                    pass
        if self.pc is not None:
            await self.pc.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.close)
            self._worker = None


async def run_watch(url: str, seconds: float, record: Path | None, stats: Path | None, *,
                    token: str | None = None, insecure: bool = False) -> WatchStats:
    """Watch a stage for ``seconds``; write ``record`` (MP4) and ``stats`` (JSON) if given."""
    client = WatchClient(url, record=record, token=token, insecure=insecure)
    try:
        await client.start()
        await client.watch(seconds)
    finally:
        await client.close()
        if stats is not None:
            await asyncio.to_thread(_write_json, stats, client.stats.summary())
    return client.stats


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
