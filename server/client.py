"""Headless WebRTC client: plays a WAV as its microphone, records and measures the avatar video.

It speaks the signaling protocol of ``docs/protocol.md`` exactly as the web page does:
WebSocket ``/ws`` (welcome, offer/answer, candidate, control, event, error, bye), a ``visemes``
data channel created before the offer, an audio track (sendonly) and a video transceiver
(recvonly).

Time axis: every time in the stats and in the recording is in seconds relative to ``t0``, the
monotonic-clock moment the first 20 ms microphone frame was handed to the RTP sender. Video
frames are stamped with their ARRIVAL time on that axis, so the MP4 shows the real audio-to-video
offset.

Usage (wired by the lead as ``avatar client``)::

    python -m server.client --url http://HOST:PORT --audio speech.wav --record out.mp4 --stats out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from numpy.typing import NDArray

from server.errors import AvatarError
from server.media.timing import last_sent, wall_ms, wire_rtp
from server.media.video_in import MarkerJitterBuffer, install_video

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MIC_RATE = 48_000  # Hz, what the client sends (Opus runs at 48 kHz)
MIC_FRAME = 960  # samples, 20 ms at 48 kHz
MIC_FRAME_S = MIC_FRAME / MIC_RATE  # 0.02 s
DEFAULT_TAIL_S = 1.5  # s of silence sent after the WAV ends (lets the pipeline flush)
MOUTH_ERROR = float("nan")
MAX_SENT_KEPT = 30_000  # microphone frames whose send time is kept (10 min)
REPORT_INTERVAL_S = 1.0  # s between the client's `frame_times` reports

MouthFn = Callable[[NDArray[np.uint8]], float]


class ClientError(AvatarError):
    """The call could not be made or ended badly; the message says why (server's text included)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------
# stats


def _percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of ``values`` or None when empty."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def min_window_fps(arrivals: Sequence[float], window_s: float = 1.0) -> float | None:
    """Fewest frames in any ``window_s`` window that starts at a frame, divided by ``window_s``.

    ``arrivals``: sorted arrival times (s). Windows start at each frame and must end before the
    last frame arrived (so the tail of the call does not count as a stall). None when the frames
    span less than one window.
    """
    a = np.asarray(arrivals, dtype=np.float64)
    if a.size < 2 or a[-1] - a[0] < window_s:
        return None
    starts = a[a <= a[-1] - window_s]
    ends = np.searchsorted(a, starts + window_s, side="left")
    counts = ends - np.searchsorted(a, starts, side="left")
    return float(counts.min() / window_s)


@dataclass
class FrameRecord:
    """One received video frame: arrival (s since t0, may be < 0) and mouth openness (or None)."""

    t: float
    mouth: float | None = None
    width: int = 0
    height: int = 0


@dataclass
class VisemeRecord:
    """One ``visemes`` data-channel message, summarized."""

    t: float  # s since t0 (arrival at the client)
    hop: int  # first 10 ms hop of the message (server's session clock)
    n: int  # number of hops (rows) it carries
    speaking: bool | None  # server VAD state
    prob: float | None  # server VAD probability
    top: str | None  # strongest viseme of the last row
    latency_p50: float | None  # ms, server-reported
    latency_p95: float | None  # ms


@dataclass
class ClientStats:
    """What one call measured. Times in s relative to the first audio sample sent (t0)."""

    url: str = ""
    session: str | None = None
    stage: str | None = None  # the stage id of the call (watch link /watch/<stage>)
    server_version: Any = None  # the welcome's `server` field
    audio_s: float = 0.0  # length of the WAV played
    duration_s: float = 0.0  # how long the microphone ran (WAV + tail)
    mic_frames_sent: int = 0
    connect_s: float | None = None  # offer sent -> first audio sample sent
    ws_rtt_ms: float | None = None  # ping/pong round trip on the signaling socket
    frames_received: int = 0
    fps_mean: float | None = None  # (frames - 1) / (last - first arrival)
    fps_min_1s: float | None = None  # fewest frames in any 1 s window
    first_frame_s: float | None = None  # first frame arrival (negative: before the audio)
    first_frame_after_audio_s: float | None = None  # first frame arriving at or after t0
    offer_to_first_frame_s: float | None = None  # offer sent -> first video frame arrived
    gap_ms_p50: float | None = None
    gap_ms_p95: float | None = None
    gap_ms_max: float | None = None
    server_latency_ms_p50: float | None = None  # from the last `event stats`
    server_latency_ms_p95: float | None = None
    # whole path: a microphone frame leaving this client -> the video frame reflecting it arriving here,
    # matched through the server's `frame_times` events (this client's clock only)
    whole_path_ms_p50: float | None = None
    whole_path_ms_p95: float | None = None
    whole_path_n: int = 0
    server_whole_path_ms_p50: float | None = None  # the same as the server computed it (sender reports), last `stats`
    server_whole_path_ms_p95: float | None = None
    server_whole_path_segments_ms: dict[str, Any] = field(default_factory=dict)  # segment -> {p50, p95, n}
    clock_offset_ms: float | None = None  # server wallclock − this client's, from the ping with the shortest round trip
    dc_latency_ms_p50: float | None = None  # median over data-channel messages of their p50
    dc_latency_ms_p95: float | None = None  # median over data-channel messages of their p95
    dc_messages: int = 0
    dc_hops: int = 0
    mouth_lag_s: float | None = None  # audio -> visible mouth delay (best cross-correlation)
    mouth_corr: float | None = None  # correlation of mouth openness and speech loudness there
    frame_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> frames received at that size
    server_stats_events: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # names of the events received, in order
    errors: list[dict[str, Any]] = field(default_factory=list)  # server error messages
    frames: list[FrameRecord] = field(default_factory=list)
    visemes: list[VisemeRecord] = field(default_factory=list)
    whole_path: list[float] = field(default_factory=list)  # ms per matched frame

    def finalize(self) -> None:
        """Compute the summary fields from ``frames`` and ``visemes``."""
        arr = sorted(f.t for f in self.frames)
        self.frames_received = len(arr)
        if arr:
            self.first_frame_s = arr[0]
            after = [t for t in arr if t >= 0.0]
            self.first_frame_after_audio_s = after[0] if after else None
        if len(arr) >= 2 and arr[-1] > arr[0]:
            self.fps_mean = (len(arr) - 1) / (arr[-1] - arr[0])
            gaps = np.diff(np.asarray(arr)) * 1000.0
            self.gap_ms_p50 = _percentile(gaps.tolist(), 50)
            self.gap_ms_p95 = _percentile(gaps.tolist(), 95)
            self.gap_ms_max = float(gaps.max())
        self.fps_min_1s = min_window_fps(arr)
        self.frame_sizes = dict(Counter(f"{f.width}x{f.height}" for f in self.frames))
        if self.connect_s is not None and self.first_frame_s is not None:
            self.offer_to_first_frame_s = self.connect_s + self.first_frame_s
        self.dc_messages = len(self.visemes)
        self.dc_hops = sum(v.n for v in self.visemes)
        p50s = [v.latency_p50 for v in self.visemes if v.latency_p50 is not None]
        p95s = [v.latency_p95 for v in self.visemes if v.latency_p95 is not None]
        self.dc_latency_ms_p50 = _percentile(p50s, 50)
        self.dc_latency_ms_p95 = _percentile(p95s, 50)
        for ev in reversed(self.server_stats_events):
            lat = ev.get("latency_ms")
            if isinstance(lat, dict):
                self.server_latency_ms_p50 = _num(lat.get("p50"))
                self.server_latency_ms_p95 = _num(lat.get("p95"))
                break
        self.whole_path_n = len(self.whole_path)
        self.whole_path_ms_p50 = _percentile(self.whole_path, 50)
        self.whole_path_ms_p95 = _percentile(self.whole_path, 95)
        for ev in reversed(self.server_stats_events):
            whole = ev.get("whole_path_ms")
            if isinstance(whole, dict) and _num(whole.get("p50")) is not None:
                self.server_whole_path_ms_p50 = _num(whole.get("p50"))
                self.server_whole_path_ms_p95 = _num(whole.get("p95"))
                segments = ev.get("whole_path_segments_ms")
                self.server_whole_path_segments_ms = dict(segments) if isinstance(segments, dict) else {}
                break

    def summary(self) -> dict[str, Any]:
        """The scalar fields only (no per-frame lists)."""
        d = asdict(self)
        for k in ("frames", "visemes", "server_stats_events", "events", "whole_path"):
            d.pop(k)
        return d

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-serializable (NaN mouth values become null)."""
        d = asdict(self)
        for f in d["frames"]:
            m = f["mouth"]
            if m is not None and not np.isfinite(m):
                f["mouth"] = None
        return d

    def mouth_series(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(arrival s, mouth openness) of the frames that were measured, both (n,) float64."""
        pts = [(f.t, f.mouth) for f in self.frames if f.mouth is not None and np.isfinite(f.mouth)]
        if not pts:
            return np.zeros(0), np.zeros(0)
        a = np.asarray(pts, dtype=np.float64)
        return a[:, 0], a[:, 1]


def _num(x: object) -> float | None:
    """``x`` as a float when it is a finite number, else None."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if np.isfinite(x) else None


def loudness_envelope(samples: NDArray[np.int16], rate: int = MIC_RATE) -> NDArray[np.float64]:
    """Speech loudness per 10 ms: (n_hops,) in 0..1 (0 = below -50 dBFS, 1 = -10 dBFS and up)."""
    hop = rate // 100
    n = samples.size // hop
    x = samples[: n * hop].astype(np.float64).reshape(n, hop) / 32768.0
    db = 10.0 * np.log10(np.mean(x * x, axis=1) + 1e-12)
    return np.clip((db + 50.0) / 40.0, 0.0, 1.0)


def mouth_audio_lag(
    samples: NDArray[np.int16],
    t: NDArray[np.float64],
    mouth: NDArray[np.float64],
    max_lag_s: float = 1.0,
) -> tuple[float | None, float | None]:
    """Delay (s) at which mouth openness best follows the sent audio's loudness, and that r.

    ``samples``: the sent mic audio (48 kHz int16, starting at t0); ``t``: frame arrival times
    (s since t0), ``mouth``: openness per frame, both (n,). Pearson correlation of the 10 ms
    loudness envelope shifted by 0..``max_lag_s`` against the mouth signal resampled on the
    same grid. (None, None) when either signal is flat.
    """
    env = loudness_envelope(samples)
    keep = t >= 0.0
    t, mouth = t[keep], mouth[keep]
    if t.size < 10 or np.ptp(mouth) == 0 or np.ptp(env) == 0:
        return None, None
    grid = np.arange(0.0, t[-1], 0.01)
    m = np.interp(grid, t, mouth)
    best: tuple[float, float] | None = None
    for lag in range(int(max_lag_s * 100) + 1):
        n = min(grid.size - lag, env.size)
        if n < 100:
            break
        a, b = m[lag : lag + n], env[:n]
        if np.std(a) == 0 or np.std(b) == 0:
            continue
        r = float(np.corrcoef(a, b)[0, 1])
        if best is None or r > best[1]:
            best = (lag / 100.0, r)
    return (best[0], best[1]) if best is not None else (None, None)


# --------------------------------------------------------------------------------------------
# audio


def load_audio(path: Path, rate: int = MIC_RATE) -> NDArray[np.int16]:
    """Decode any audio file PyAV reads to mono s16 at ``rate`` Hz: (n,) int16."""
    if not path.is_file():
        raise ClientError(f"audio file not found: {path}")
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise ClientError(f"no audio stream in {path}")
            rs = av.AudioResampler(format="s16", layout="mono", rate=rate)
            chunks: list[NDArray[np.int16]] = []
            for fr in c.decode(audio=0):
                for o in rs.resample(fr):
                    chunks.append(o.to_ndarray().reshape(-1).astype(np.int16))
            for o in rs.resample(None):
                chunks.append(o.to_ndarray().reshape(-1).astype(np.int16))
    except av.FFmpegError as e:
        raise ClientError(f"cannot decode audio file {path}: {e}") from e
    if not chunks:
        raise ClientError(f"audio file {path} has no samples")
    return np.concatenate(chunks)


class MicTrack(MediaStreamTrack):
    """The microphone: plays ``samples`` in real time as 20 ms mono 48 kHz s16 frames.

    Frame k is returned at ``t0 + k * 20 ms`` (t0 = when the RTP sender first asked), with
    ``pts = k * 960`` in a 1/48000 time base; after the samples run out it sends silence.
    ``on_send(samples, pts)`` sees each frame as it leaves.
    """

    kind = "audio"

    def __init__(
        self,
        samples: NDArray[np.int16],
        *,
        on_send: Callable[[NDArray[np.int16], int], None] | None = None,
    ) -> None:
        super().__init__()
        self._samples = samples
        self._pos = 0
        self._on_send = on_send
        self.t0: float | None = None
        self.started = asyncio.Event()
        self.frames_sent = 0
        self.sender: Any = None  # the RTCRtpSender sending this track (set by the client): see ``sent_ms``
        self.sent_ms: dict[int, float] = {}  # RTP timestamp on the wire -> wallclock ms its frame left this track
        self._last_out_ms: float | None = None
        self._last_count = 0

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, released on its pts's wall-clock time."""
        if self.readyState != "live":
            raise MediaStreamError
        self._note_sent()
        if self.t0 is None:
            self.t0 = time.monotonic()
        else:
            delay = self.t0 + self._pos / MIC_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.readyState != "live":
                raise MediaStreamError
        chunk = np.zeros(MIC_FRAME, np.int16)
        part = self._samples[self._pos : self._pos + MIC_FRAME]
        chunk[: part.size] = part
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = MIC_RATE
        frame.pts = self._pos
        frame.time_base = Fraction(1, MIC_RATE)
        if self._on_send is not None:
            self._on_send(chunk, self._pos)
        self._pos += MIC_FRAME
        self.frames_sent += 1
        self.started.set()
        self._last_out_ms = wall_ms()
        return frame

    def _note_sent(self) -> None:
        """The sender asks for the next frame once it has sent the last one: key that frame's
        time by the RTP timestamp it went out with."""
        sent = last_sent(self.sender) if self.sender is not None else None
        if sent is None or sent[2] == self._last_count or self._last_out_ms is None:
            return
        self._last_count = sent[2]
        self.sent_ms[sent[0]] = self._last_out_ms
        if len(self.sent_ms) > MAX_SENT_KEPT:
            del self.sent_ms[next(iter(self.sent_ms))]


# --------------------------------------------------------------------------------------------
# recording and measuring (off the event loop, so the arrival times stay honest)


class FrameWorker:
    """A thread that measures mouth openness and/or writes the MP4.

    Video frames arrive with their arrival time (s since t0); frames before t0 are measured but
    not recorded. Audio chunks arrive as sent. The container is opened at the first recorded
    video frame (its size fixes the video stream); audio before that is buffered.
    """

    def __init__(self, record: Path | None, mouth: MouthFn | None) -> None:
        self._record = record
        self._mouth = mouth
        self._q: queue.Queue[tuple[str, Any, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="avatar-client-frames", daemon=True)
        self._container: Any = None
        self._vstream: Any = None
        self._astream: Any = None
        self._pending_audio: list[tuple[NDArray[np.int16], int]] = []
        self._last_vpts = -1
        self._size: tuple[int, int] | None = None
        self.error: BaseException | None = None
        self._thread.start()

    def video(self, frame: av.VideoFrame, rec: FrameRecord, t: float | None) -> None:
        """Queue one received frame arriving ``t`` s after t0 (None: before t0, not recorded).

        ``rec.mouth`` is filled in by the thread.
        """
        self._q.put(("v", frame, (rec, t)))

    def audio(self, samples: NDArray[np.int16], pts: int) -> None:
        """Queue one sent microphone chunk: (960,) int16 at 48 kHz, ``pts`` in samples."""
        if self._record is not None:
            self._q.put(("a", samples.copy(), pts))

    def close(self) -> None:
        """Drain the queue, finish the file (blocking). Raises the thread's error, if any."""
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise ClientError(f"recording/measuring failed: {self.error}") from self.error

    def _run(self) -> None:
        try:
            while True:
                item = self._q.get()
                if item is None:
                    break
                if self.error is not None:
                    continue  # keep draining so the producers never block
                kind, a, b = item
                try:
                    if kind == "v":
                        self._on_video(a, *b)
                    else:
                        self._on_audio(a, b)
                except Exception as e:  # reported by close()
                    self.error = e
            self._finish()
        except Exception as e:  # pragma: no cover - reported by close()
            self.error = e

    def _on_video(self, frame: av.VideoFrame, rec: FrameRecord, t: float | None) -> None:
        if self._mouth is not None:
            rgb = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)  # (h, w, 3)
            rec.mouth = float(self._mouth(rgb))
        if self._record is None or t is None:
            return
        if self._container is None:
            self._open(frame.width, frame.height)
        assert self._size is not None
        w, h = self._size
        if (frame.width, frame.height) != (w, h) or frame.format.name != "yuv420p":
            frame = frame.reformat(width=w, height=h, format="yuv420p")
        pts = max(round(t * 1000.0), self._last_vpts + 1)
        self._last_vpts = pts
        out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
        out.pts = pts
        out.time_base = Fraction(1, 1000)
        for p in self._vstream.encode(out):
            self._container.mux(p)

    def _on_audio(self, samples: NDArray[np.int16], pts: int) -> None:
        if self._container is None:
            self._pending_audio.append((samples, pts))
            return
        self._encode_audio(samples, pts)

    def _encode_audio(self, samples: NDArray[np.int16], pts: int) -> None:
        fr = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        fr.sample_rate = MIC_RATE
        fr.pts = pts
        fr.time_base = Fraction(1, MIC_RATE)
        for p in self._astream.encode(fr):
            self._container.mux(p)

    def _open(self, width: int, height: int, *, video: bool = True) -> None:
        assert self._record is not None
        self._record.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._record), mode="w")
        if video:
            w, h = width - width % 2, height - height % 2
            self._size = (w, h)
            vs = self._container.add_stream("libx264", rate=30)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.time_base = Fraction(1, 1000)
            vs.codec_context.time_base = Fraction(1, 1000)
            vs.options = {"preset": "ultrafast", "crf": "20"}
            self._vstream = vs
        a = self._container.add_stream("aac", rate=MIC_RATE)
        a.layout = "mono"
        a.time_base = Fraction(1, MIC_RATE)
        self._astream = a
        for s, p in self._pending_audio:
            self._encode_audio(s, p)
        self._pending_audio.clear()

    def _finish(self) -> None:
        if self._record is None:
            return
        if self._container is None:
            if not self._pending_audio:
                return
            self._open(0, 0, video=False)  # no video arrived: audio-only file
        try:
            if self._vstream is not None:
                for p in self._vstream.encode(None):
                    self._container.mux(p)
            for p in self._astream.encode(None):
                self._container.mux(p)
        finally:
            self._container.close()


def load_mouth_measure() -> MouthFn:
    """``server.render.measure.mouth_openness`` (imported lazily: it pulls the renderer)."""
    try:
        from server.render.measure import mouth_openness
    except ImportError as e:
        raise ClientError(f"--measure-mouth needs server.render.measure.mouth_openness: {e}") from e
    fn: MouthFn = mouth_openness
    return fn


# --------------------------------------------------------------------------------------------
# signaling


def ws_url(url: str) -> str:
    """``http://h:p`` -> ``ws://h:p/ws`` (https -> wss); ws:// URLs get ``/ws`` if pathless."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ClientError(f"bad server URL {url!r}: expected http://HOST:PORT")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path = path + "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def http_base(url: str) -> str:
    """The http(s) base URL of the server (for /healthz, /stats)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def rtc_configuration(ice_servers: Sequence[str | dict[str, Any]] = (), policy: str = "all") -> RTCConfiguration:
    """An RTCConfiguration with exactly these ICE servers (none by default: no public STUN);
    ``policy``: ``"all"`` or ``"relay"`` (only TURN candidates, as the welcome's
    ``ice_transport_policy`` asks)."""
    if policy not in ("all", "relay"):
        raise ClientError(f"ICE transport policy must be 'all' or 'relay', got {policy!r}")
    servers: list[RTCIceServer] = []
    for s in ice_servers:
        if isinstance(s, str):
            servers.append(RTCIceServer(urls=s))
        else:
            servers.append(
                RTCIceServer(
                    urls=s["urls"], username=s.get("username"), credential=s.get("credential")
                )
            )
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy(policy))


def parse_candidate(c: dict[str, Any]) -> Any:
    """A protocol ``candidate`` object -> aiortc RTCIceCandidate (ValueError when malformed)."""
    text = c.get("candidate")
    if not isinstance(text, str) or not text:
        raise ValueError(f"candidate without text: {c!r}")
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    cand = candidate_from_sdp(text)
    cand.sdpMid = c.get("sdpMid")
    cand.sdpMLineIndex = c.get("sdpMLineIndex")
    return cand


class Signaling:
    """The JSON WebSocket: sends ``{"v": 1, ...}``, reads messages into a queue."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.closed = asyncio.Event()

    async def send(self, type_: str, **fields: Any) -> None:
        """Send one protocol message (no-op if the socket is already closed)."""
        if self.ws.closed:
            return
        await self.ws.send_str(json.dumps({"v": PROTOCOL_VERSION, "type": type_, **fields}))

    async def receive(self, wait_s: float) -> dict[str, Any] | None:
        """Next JSON message, or None when the socket closed. ClientError on garbage/timeout."""
        try:
            msg = await asyncio.wait_for(self.ws.receive(), wait_s)
        except TimeoutError as e:
            raise ClientError(f"no message from the server within {wait_s:.0f} s") from e
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                data = json.loads(msg.data)
            except json.JSONDecodeError as e:
                raise ClientError(f"server sent non-JSON text: {msg.data[:200]!r}") from e
            if not isinstance(data, dict):
                raise ClientError(f"server sent a non-object message: {msg.data[:200]!r}")
            return data
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            self.closed.set()
            return None
        if msg.type == aiohttp.WSMsgType.ERROR:
            self.closed.set()
            raise ClientError(f"signaling socket error: {self.ws.exception()}")
        raise ClientError(f"unexpected WebSocket message type {msg.type!r}")


def error_from(msg: dict[str, Any]) -> ClientError:
    """A ClientError carrying a server ``error`` message's code and text."""
    code = str(msg.get("code", "?"))
    fatal = " (fatal)" if msg.get("fatal") else ""
    return ClientError(f"server error {code}{fatal}: {msg.get('message', '')}", code=code)


# --------------------------------------------------------------------------------------------
# the call


class AvatarClient:
    """One call. Use :func:`run_client`; the pieces are public for tests that misbehave on purpose.

    ``start()`` connects and negotiates, ``wait_done()`` runs until the mic has played
    ``duration`` s (or the call fails), ``close()`` says bye and releases everything.
    """

    def __init__(
        self,
        url: str,
        audio: NDArray[np.int16],
        *,
        record: Path | None = None,
        measure_mouth: MouthFn | None = None,
        duration: float | None = None,
        avatar: str | None = None,
        emotion: str | None = None,
        ice_servers: Sequence[str | dict[str, Any]] = (),
        timeout: float = 20.0,
        token: str | None = None,
        insecure: bool = False,
    ) -> None:
        """``token``: an access token (the server's presenter token); ``insecure``: accept a
        self-signed or otherwise unverified HTTPS certificate."""
        self.url = url
        self.token = token
        self.insecure = insecure
        self.audio = audio
        self.duration = duration if duration is not None else audio.size / MIC_RATE + DEFAULT_TAIL_S
        if self.duration <= 0:
            raise ClientError(f"duration must be > 0 s, got {self.duration}")
        self.avatar = avatar
        self.emotion = emotion
        self.timeout = timeout
        self.stats = ClientStats(url=url, audio_s=audio.size / MIC_RATE)
        self._ice_servers = ice_servers  # given by the caller; the welcome's (minted TURN credentials) join them
        self._welcome_ice: list[dict[str, Any]] = []
        self._ice_policy = "all"
        self._http: aiohttp.ClientSession | None = None
        self.sig: Signaling | None = None
        self.pc: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        self._worker = (
            FrameWorker(record, measure_mouth)
            if record is not None or measure_mouth is not None
            else None
        )
        self.mic = MicTrack(audio, on_send=self._worker.audio if self._worker else None)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure: asyncio.Future[ClientError] | None = None
        self._bye_sent = False
        self._closed = False
        self._t_offer: float | None = None
        self._ping_sent: dict[int, float] = {}
        self._viseme_names: list[str] = []
        self.video_buffer: MarkerJitterBuffer | None = None  # the video receiver's buffer (make_pc)
        self._best_rtt_ms: float | None = None
        self._video_receiver: Any = None
        self._arrived: dict[int, float] = {}  # video RTP timestamp -> wallclock ms the frame arrived
        self._server_frames: list[dict[str, Any]] = []  # the `frame_times` entries received
        self._unreported: list[list[float | None]] = []  # [rtp, receive ms, present ms] not yet sent back

    # -- helpers ------------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def failure(self) -> ClientError | None:
        """The first failure seen so far (server error, lost connection), or None."""
        if self._failure is not None and self._failure.done():
            return self._failure.result()
        return None

    def _fail(self, err: ClientError) -> None:
        """Record the first failure; ``wait_done`` raises it."""
        if self._failure is not None and not self._failure.done():
            self._failure.set_result(err)

    def _rebase(self) -> None:
        """Turn the monotonic arrival times stored so far into s since t0."""
        t0 = self.mic.t0
        if t0 is None:  # no audio was ever sent: make the first frame/message time 0
            firsts = [f.t for f in self.stats.frames] + [v.t for v in self.stats.visemes]
            t0 = min(firsts) if firsts else 0.0
        for f in self.stats.frames:
            f.t -= t0
        for v in self.stats.visemes:
            v.t -= t0

    # -- setup --------------------------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Open the WebSocket and read ``welcome``; returns it."""
        self._failure = asyncio.get_running_loop().create_future()
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False) if self.insecure else None)
        url = ws_url(self.url) + (f"?token={self.token}" if self.token else "")
        try:
            ws = await self._http.ws_connect(
                url, timeout=aiohttp.ClientWSTimeout(ws_close=5.0), heartbeat=None
            )
        except aiohttp.WSServerHandshakeError as e:
            raise ClientError(f"the server refused the connection: HTTP {e.status} {e.message}", code=str(e.status)) from e
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ClientError(f"cannot connect to {ws_url(self.url)}: {e}") from e
        self.sig = Signaling(ws)
        msg = await self.sig.receive(self.timeout)
        if msg is None:
            raise ClientError("server closed the signaling socket before welcome")
        if msg.get("type") == "error":
            raise error_from(msg)
        if msg.get("type") != "welcome":
            raise ClientError(f"expected welcome, got {msg.get('type')!r}: {msg}")
        self.stats.session = msg.get("session")
        ice = msg.get("ice_servers")
        if isinstance(ice, list):
            self._welcome_ice = [s for s in ice if isinstance(s, dict) and s.get("urls")]
        self._ice_policy = "relay" if msg.get("ice_transport_policy") == "relay" else "all"
        self.stats.server_version = msg.get("server")
        stage = msg.get("stage")
        if isinstance(stage, dict) and isinstance(stage.get("id"), str):
            self.stats.stage = stage["id"]
            log.warning("stage %s: watch it at %s%s", stage["id"], http_base(self.url), stage.get("watch", ""))
        return msg

    def make_pc(self) -> RTCPeerConnection:
        """The peer connection: mic (sendonly), video (recvonly), ``visemes`` data channel."""
        pc = RTCPeerConnection(rtc_configuration([*self._ice_servers, *self._welcome_ice], self._ice_policy))
        self.pc = pc
        self.mic.sender = pc.addTransceiver(self.mic, direction="sendonly").sender
        self._video_receiver = pc.addTransceiver("video", direction="recvonly").receiver
        self.video_buffer = install_video(self._video_receiver)  # each frame at its last packet, not one frame later
        self.channel = pc.createDataChannel("visemes")
        self.channel.on("message", self._on_dc_message)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._spawn(self._consume_video(track), "client-video")

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "failed":
                self._fail(ClientError("WebRTC connection failed (ICE/DTLS)"))

        return pc

    async def negotiate(self, **offer_fields: Any) -> None:
        """Send the offer (ICE gathered), wait for the answer, apply it."""
        assert self.sig is not None
        pc = self.pc or self.make_pc()
        await pc.setLocalDescription(await pc.createOffer())
        fields: dict[str, Any] = {"sdp": pc.localDescription.sdp}
        if self.avatar is not None:
            fields["avatar"] = self.avatar
        if self.emotion is not None:
            fields["emotion"] = self.emotion
        fields.update(offer_fields)
        self._t_offer = time.monotonic()
        await self.sig.send("offer", **fields)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = await self.sig.receive(max(0.1, deadline - time.monotonic()))
            if msg is None:
                raise ClientError("server closed the signaling socket before answering the offer")
            kind = msg.get("type")
            if kind == "answer":
                sdp = msg.get("sdp")
                if not isinstance(sdp, str):
                    raise ClientError(f"answer without sdp: {msg}")
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
                break
            if kind == "error":
                raise error_from(msg)
            await self._handle(msg)
        self._spawn(self._read_signaling(), "client-signaling")

    async def start(self) -> None:
        """connect + negotiate + wait until the first microphone sample is sent."""
        await self.connect()
        self.make_pc()
        await self.negotiate()
        assert self._failure is not None
        started: asyncio.Future[Any] = asyncio.ensure_future(self.mic.started.wait())
        failure: asyncio.Future[Any] = self._failure
        try:
            done, _ = await asyncio.wait(
                {started, failure}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            started.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await started
        if failure in done:
            raise self._failure.result()
        if not self.mic.started.is_set():
            state = self.pc.connectionState if self.pc else "?"
            raise ClientError(
                f"media did not start within {self.timeout:.0f} s (connection state {state})"
            )
        assert self.mic.t0 is not None and self._t_offer is not None
        self.stats.connect_s = self.mic.t0 - self._t_offer
        await self.ping()
        self._spawn(self._report_frames(), "client-frame-times")

    async def _report_frames(self) -> None:
        """Every second: ping (the clock offset) and tell the server when its frames arrived."""
        assert self.sig is not None
        while not self._bye_sent:
            await asyncio.sleep(REPORT_INTERVAL_S)
            rows, self._unreported = self._unreported, []
            try:
                for i in range(0, len(rows), 300):
                    await self.sig.send("control", action="frame_times", frames=rows[i : i + 300], clock_offset_ms=self.stats.clock_offset_ms)
                await self.ping()
            except (ConnectionError, aiohttp.ClientError):
                return  # the socket is closing: the reader reports why

    async def ping(self) -> None:
        """Send a ``control ping``; the pong's round trip lands in ``stats.ws_rtt_ms``."""
        assert self.sig is not None
        t = len(self._ping_sent) + 1
        self._ping_sent[t] = wall_ms()
        await self.sig.send("control", action="ping", t=t)

    # -- running ------------------------------------------------------------------------------

    async def wait_done(self) -> None:
        """Run until ``duration`` s of microphone were sent; raises the first failure."""
        assert self._failure is not None and self.mic.t0 is not None
        remaining = self.mic.t0 + self.duration - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._failure), remaining)
        if self._failure.done():
            raise self._failure.result()

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if not isinstance(frame, av.VideoFrame):
                continue
            rec = FrameRecord(t=now, width=frame.width, height=frame.height)  # rebased at close
            self.stats.frames.append(rec)
            rtp = wire_rtp(self._video_receiver, frame.pts)
            if rtp is not None:
                arrived = wall_ms()
                self._arrived[rtp] = arrived
                self._unreported.append([rtp, arrived, arrived])  # aiortc presents nothing: arrival is both
            if self._worker is not None:
                t0 = self.mic.t0
                self._worker.video(frame, rec, None if t0 is None else now - t0)

    def _on_dc_message(self, message: str | bytes) -> None:
        now = time.monotonic()
        try:
            data = json.loads(message)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._fail(ClientError(f"non-JSON data-channel message: {message[:200]!r}"))
            return
        if not isinstance(data, dict) or data.get("type") != "visemes":
            return
        weights = data.get("weights") or []
        names = data.get("names")
        if isinstance(names, list):
            self._viseme_names = [str(n) for n in names]
        top = None
        if weights and isinstance(weights[-1], list) and weights[-1]:
            k = int(np.argmax(np.asarray(weights[-1], dtype=np.float64)))
            vn = self._viseme_names
            top = vn[k] if k < len(vn) else str(k)
        vad = data.get("vad") if isinstance(data.get("vad"), dict) else {}
        lat = data.get("latency_ms") if isinstance(data.get("latency_ms"), dict) else {}
        assert isinstance(vad, dict) and isinstance(lat, dict)
        hop = data.get("hop")
        self.stats.visemes.append(
            VisemeRecord(
                t=now,  # rebased at close
                hop=int(hop) if isinstance(hop, int) else -1,
                n=len(weights),
                speaking=bool(vad["speaking"]) if "speaking" in vad else None,
                prob=_num(vad.get("prob")),
                top=top,
                latency_p50=_num(lat.get("p50")),
                latency_p95=_num(lat.get("p95")),
            )
        )

    async def _read_signaling(self) -> None:
        assert self.sig is not None
        try:
            while True:
                msg = await self.sig.receive(3600.0)
                if msg is None:
                    if not self._bye_sent:
                        self._fail(ClientError("server closed the signaling socket mid-call"))
                    return
                await self._handle(msg)
        except ClientError as e:
            self._fail(e)

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "error":
            self.stats.errors.append(msg)
            self._fail(error_from(msg))
        elif kind == "event":
            name = str(msg.get("name"))
            data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
            assert isinstance(data, dict)
            self.stats.events.append(name)
            if name == "stats":
                self.stats.server_stats_events.append(data)
            elif name == "frame_times":
                frames = data.get("frames")
                if isinstance(frames, list):
                    self._server_frames.extend(f for f in frames if isinstance(f, dict))
            elif name == "pong":
                t = data.get("t", msg.get("t"))
                sent = self._ping_sent.get(t) if isinstance(t, int) else None
                if sent is not None:
                    now = wall_ms()
                    rtt = now - sent
                    if self.stats.ws_rtt_ms is None:
                        self.stats.ws_rtt_ms = rtt
                    server = _num(data.get("wall_ms"))
                    if server is not None and (self._best_rtt_ms is None or rtt < self._best_rtt_ms):
                        self._best_rtt_ms = rtt
                        self.stats.clock_offset_ms = server - (sent + now) / 2.0
            elif name == "session_closed" and not self._bye_sent:
                self._fail(ClientError(f"server closed the session: {data}"))
        elif kind == "candidate":
            c = msg.get("candidate")
            if isinstance(c, dict) and self.pc is not None:
                try:
                    await self.pc.addIceCandidate(parse_candidate(c))
                except ValueError as e:
                    log.warning("ignoring bad candidate from server: %s", e)
        elif kind == "bye":
            if not self._bye_sent:
                self._fail(ClientError("server said bye mid-call"))
        else:
            log.debug("ignoring server message %s", msg)

    def whole_path_samples(self) -> list[float]:
        """Per video frame the server said reflects one of our microphone frames: its arrival
        here − when that microphone frame left our track, ms (this client's clock only)."""
        out: list[float] = []
        for f in self._server_frames:
            rtp, mic = f.get("rtp"), f.get("mic_rtp")
            arrived = self._arrived.get(rtp) if isinstance(rtp, int) else None
            sent = self.mic.sent_ms.get(mic) if isinstance(mic, int) else None
            if arrived is not None and sent is not None:
                out.append(arrived - sent)
        return out

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self, *, bye: bool = True) -> None:
        """Send ``bye`` (unless told not to), close the pc and socket, await every task."""
        if self._closed:
            return
        self._closed = True
        self.stats.duration_s = time.monotonic() - self.mic.t0 if self.mic.t0 is not None else 0.0
        self.stats.mic_frames_sent = self.mic.frames_sent
        sig = self.sig
        if bye and sig is not None and not sig.ws.closed:
            self._bye_sent = True
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await sig.send("bye")
            # the reader task sees the server's close (or we give up after 3 s)
            readers = [t for t in self._tasks if t.get_name() == "client-signaling"]
            if readers:
                await asyncio.wait(readers, timeout=3.0)
        self.mic.stop()
        if self.pc is not None:
            await self.pc.close()
        if sig is not None:
            await sig.ws.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.close)
        self._rebase()
        self.stats.whole_path = self.whole_path_samples()
        self.stats.finalize()
        ts, ms = self.stats.mouth_series()
        if ts.size >= 30:
            self.stats.mouth_lag_s, self.stats.mouth_corr = mouth_audio_lag(self.audio, ts, ms)


async def run_client(
    url: str,
    audio: Path,
    record: Path | None,
    stats: Path | None,
    *,
    duration: float | None = None,
    avatar: str | None = None,
    emotion: str | None = None,
    ice_servers: Sequence[str | dict[str, Any]] = (),
    measure_mouth: bool = False,
    setup_s: float = 20.0,
    token: str | None = None,
    insecure: bool = False,
) -> ClientStats:
    """Make one call: play ``audio`` in real time, record/measure the avatar video.

    ``duration``: seconds of microphone to send (default: the WAV + 1.5 s of silence).
    Writes ``record`` (MP4, video at arrival times + the sent audio) and ``stats`` (JSON) when
    given (the stats file also after a failure). ``setup_s`` bounds each setup step (welcome, answer, media start). Raises
    :class:`ClientError` (server unreachable, server ``error``, failed
    connection, no media) after releasing everything.
    """
    samples = load_audio(Path(audio))
    mouth = load_mouth_measure() if measure_mouth else None
    client = AvatarClient(
        url,
        samples,
        record=record,
        measure_mouth=mouth,
        duration=duration,
        avatar=avatar,
        emotion=emotion,
        ice_servers=ice_servers,
        timeout=setup_s,
        token=token,
        insecure=insecure,
    )
    try:
        await client.start()
        await client.wait_done()
    finally:
        await client.close()
        if stats is not None:  # also after a failure: it holds the server's errors
            await asyncio.to_thread(write_stats, stats, client.stats)
    return client.stats


def write_stats(path: Path, stats: ClientStats) -> None:
    """Write ``stats`` as indented JSON to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats.to_json(), indent=1))


# --------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``avatar client`` options."""
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    parser.add_argument("--audio", type=Path, default=None, help="audio file played as the mic (a call)")
    parser.add_argument(
        "--watch", default=None, metavar="URL",
        help="watch a stage instead of making a call: http://HOST:PORT/watch/STAGE (WHEP); "
        "--record writes what a viewer receives, --duration how long (default 30 s)",
    )
    parser.add_argument("--record", type=Path, default=None, help="write the call to this MP4")
    parser.add_argument("--stats", type=Path, default=None, help="write stats JSON here")
    parser.add_argument(
        "--duration", type=float, default=None, help="s of mic to send (default: audio + 1.5 s)"
    )
    parser.add_argument("--avatar", default=None, help="avatar name (see /avatars)")
    parser.add_argument("--emotion", default=None, help="initial emotion")
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        dest="ice_servers",
        help="ICE server URL (repeatable; default none: host candidates only)",
    )
    parser.add_argument(
        "--measure-mouth",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="measure mouth openness in every received frame",
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="s to wait for setup steps")
    parser.add_argument("--token", default=None, help="access token (when the server requires one)")
    parser.add_argument("--insecure", action="store_true", help="accept a self-signed HTTPS certificate")


def main(args: argparse.Namespace) -> int:
    """Run one call (or watch a stage) from parsed arguments; prints the summary; exit code 0/1."""
    if args.watch is not None:
        from server.watch import run_watch

        try:
            ws = asyncio.run(run_watch(args.watch, args.duration or 30.0, args.record, args.stats, token=args.token, insecure=args.insecure))
        except ClientError as e:
            print(f"avatar client: {e}", file=sys.stderr)
            return 1
        print(json.dumps(ws.summary(), indent=1))
        return 0
    if args.audio is None:
        print("avatar client: give --audio FILE to make a call, or --watch URL to watch a stage", file=sys.stderr)
        return 2
    try:
        st = asyncio.run(
            run_client(
                args.url,
                args.audio,
                args.record,
                args.stats,
                duration=args.duration,
                avatar=args.avatar,
                emotion=args.emotion,
                ice_servers=tuple(args.ice_servers),
                measure_mouth=args.measure_mouth,
                setup_s=args.timeout,
                token=args.token,
                insecure=args.insecure,
            )
        )
    except ClientError as e:
        print(f"avatar client: {e}", file=sys.stderr)
        return 1
    print(json.dumps(st.summary(), indent=1))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m server.client", description=__doc__)
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
