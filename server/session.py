"""One live session: one RTCPeerConnection, one worker thread, its pipeline and its tasks.

Audio is always drained into a bounded drop-oldest buffer; a processing task runs the audio
stages (~0.3 ms per 20 ms frame) on the event loop, or in the session's thread for a large
catch-up batch, and hands viseme frames to the animator through the pipeline's bounded
mailbox. Rendering runs in the session's single worker thread, so the event loop never blocks
on it, audio never waits behind a frame, and latency never builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from engines.spec import VISEMES
from server import turn
from server.clock import Clock
from server.config import AppConfig
from server.errors import AvatarError, ProtocolError
from server.media import jitter, playout, vp8
from server.media.adapt import FrameRateGuard, scaled_size
from server.media.timing import WholePath
from server.media.video_out import AvatarVideoTrack
from server.pipeline.runner import AvatarPipeline, SharedModels, rgba_to_i420
from server.pipeline.types import VisemeFrame
from server.protocol import avatar_error, check_offer_sdp, excerpt, with_audio_ptime
from server.render.base import Renderer
from server.render.disclosure import with_disclosure
from server.stage import Stage
from server.stage.local import AudioFeed
from server.stats import FpsMeter, RollingStats

log = logging.getLogger(__name__)

SendJson = Callable[[dict[str, Any]], Awaitable[None]]


class Session:
    """A live call. Create, ``await handle_offer(...)``, and always ``await close()``."""

    def __init__(
        self, sid: str, cfg: AppConfig, models: SharedModels, clock: Clock, seed: int, send: SendJson,
        stage_id: str | None = None,
    ) -> None:
        self.sid = sid
        self.stage_id = stage_id or sid
        self.stage: Stage | None = None  # the program and its viewers, once the offer is accepted
        self.cfg = cfg
        self.models = models
        self.clock = clock
        self.seed = seed
        self._send = send
        vp8.install(cfg.video.vp8_cpu_used, cfg.video.max_bitrate_kbps * 1000)  # idempotent; rendered frames need no denoiser
        # TURN credentials of its own ("<expiry>:<sid>.server"), so the server's side can relay too
        servers = turn.ice_servers(cfg.server, sid + turn.SERVER_SUFFIX, time.time())
        ice = [RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"session-{sid}")
        self.pipeline: AvatarPipeline | None = None
        self.video: AvatarVideoTrack | None = None
        self.avatar: str | None = None
        # render size under CPU overload (server/media/adapt.py): the guard decides, _rescale applies
        self.guard = FrameRateGuard(cfg.video.fps, cfg.video.adapt_scale if cfg.video.adapt else 1.0)
        self.scale = 1.0  # the scale the pipeline's renderer draws at now
        self.scaled_frames = 0  # frames sent at a reduced scale
        self._renderers: dict[tuple[str, int, int], Renderer] = {}  # the current avatar's, per size (worker thread only)
        self._matte_renderer: Renderer | None = None  # draws without background, for alpha outputs (worker thread)
        self._matte_key: tuple[str, int, int] | None = None
        self._rescaling: asyncio.Task[None] | None = None
        self.channel: Any = None  # the `visemes` RTCDataChannel, if the client opened one
        self.tasks: set[asyncio.Task[Any]] = set()
        self._audio = AudioFeed(cfg.audio.queue_frames)  # drained audio → the pipeline (drops the oldest)
        self.jitter: jitter.ReceiveJitter | None = None  # the mic receiver's jitter buffer (server/media/jitter.py)
        self.latency = RollingStats()
        self.path = WholePath()  # whole-path stamps (server/media/timing.py), wired to the pc by the offer
        self.fps = FpsMeter()
        self.created = time.monotonic()
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        self._sent_names = False
        self._dc_pending: list[VisemeFrame] = []  # hops waiting for the next data-channel message
        self._dc_last_sent = -1e9  # clock time of the last visemes message, s
        self._dc_timer: asyncio.TimerHandle | None = None
        self.on_closed: Callable[[Session], Awaitable[None]] | None = None
        self.connected_once = False  # the peer connection reached "connected" (connect deadline)

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self.spawn(self._drain_audio(track), "drain-audio")
            else:
                self.spawn(self._blackhole(track), "drain-video")

        @self.pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label == "visemes":
                self.channel = channel

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            state = self.pc.connectionState
            log.info("session %s: connection %s", self.sid, state)
            self.connected_once |= state == "connected"
            if state in ("failed", "closed"):
                self.close_soon()

    # ---------------------------------------------------------------- tasks

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task owned by this session (cancelled and awaited on close)."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.sid}:{name}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: task %s failed", self.sid, task.get_name(), exc_info=task.exception())
            self.close_soon()

    # ---------------------------------------------------------------- signaling

    async def handle_offer(self, sdp: str, avatar: str | None) -> str:
        """Apply the client's offer, attach the avatar track; returns the answer SDP."""
        if self.pc.remoteDescription is not None:
            raise ProtocolError("state", "this session already has an offer; open a new connection to renegotiate")
        check_offer_sdp(sdp)  # refuses, in our words, what aiortc would fail on
        name = avatar or self.cfg.video.avatar
        registry = self.models.registry
        if name == "auto":
            name = registry.default_name()
        loop = asyncio.get_running_loop()
        size = (self.cfg.video.width, self.cfg.video.height)
        try:
            renderer = await loop.run_in_executor(self.executor, self._renderer_for, name, size)
        except AvatarError as e:
            raise avatar_error(name, e) from None
        self.avatar = name
        self.pipeline = AvatarPipeline(self.models, self.cfg, self.seed, renderer)
        self.video = AvatarVideoTrack(self._produce, self.clock, self.cfg.video.fps, self._on_frame, self._on_tick)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            self.pc.addTrack(self.video)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as e:  # aiortc raises ValueError and others; its text stays in our log
            self.pipeline = None
            self.video = None
            log.info("session %s: offer refused by aiortc: %s", self.sid, excerpt(str(e)))
            raise ProtocolError("bad_offer", "the offer cannot be applied (unsupported or inconsistent SDP)") from None
        self.jitter = jitter.install_audio(self.pc, self.cfg.audio.jitter, self.cfg.audio.jitter_max_ms)
        mic = next((t.receiver for t in self.pc.getTransceivers() if t.kind == "audio"), None)
        out = next((s for s in self.pc.getSenders() if s.track is self.video), None)
        self.path = WholePath(mic, out, self.jitter)
        self.stage = Stage(self.stage_id, self.cfg, self.clock, self._video_latency_s, self._on_audience)
        if self.cfg.publish.enabled:
            self.spawn(self.stage.publish(self.cfg.publish), "publish")
        if self.cfg.stage.record:
            await self.set_recording(True)
        self.spawn(self._process_audio(), "process-audio")
        self.spawn(self._stats_loop(), "stats")
        if self.cfg.server.frame_times_interval_ms > 0:
            self.spawn(self._frame_times_loop(), "frame-times")
        self.spawn(self._connect_deadline(), "connect-deadline")
        answer = with_audio_ptime(str(self.pc.localDescription.sdp), self.cfg.audio.mic_ptime_ms)
        ext_id = playout.offered_id(sdp) if self.cfg.video.playout_delay_ms >= 0 else None
        if ext_id is not None:  # the browser shows each frame once decoded (server/media/playout.py)
            sender = next(s for s in self.pc.getSenders() if s.track is self.video)
            playout.install(sender, ext_id, self.cfg.video.playout_delay_ms)
            answer = playout.answer_with_extension(answer, ext_id)
        return answer

    async def _connect_deadline(self) -> None:
        """End a call whose peer connection never connects (it would hold a session slot)."""
        limit = self.cfg.server.connect_timeout_s
        await asyncio.sleep(limit)
        if not self.connected_once:
            log.info("session %s: not connected %g s after the answer; closing", self.sid, limit)
            msg = f"the peer connection did not connect within {limit:g} s of the answer (ICE candidates or network?)"
            await self._send({"v": 1, "type": "error", "code": "connect_timeout", "message": msg, "fatal": True})
            self.close_soon()

    async def add_candidate(self, cand: dict[str, Any] | None) -> None:
        """A trickled remote ICE candidate (None: end of candidates)."""
        if cand is None or not cand.get("candidate"):
            return
        if self.pc.remoteDescription is None:
            raise ProtocolError("state", "candidate before offer")
        try:
            text = str(cand["candidate"])
            c = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
            c.sdpMid = cand.get("sdpMid")
            c.sdpMLineIndex = cand.get("sdpMLineIndex")
        except Exception:
            raise ProtocolError("bad_candidate", f"candidate.candidate is not an ICE candidate line, got {excerpt(cand['candidate'])}") from None
        try:
            await self.pc.addIceCandidate(c)
        except Exception as e:
            log.info("session %s: candidate refused by aiortc: %s", self.sid, excerpt(str(e)))
            raise ProtocolError("bad_candidate", f"the candidate cannot be used, got {excerpt(cand['candidate'])}") from None

    async def set_avatar(self, name: str) -> None:
        """Switch avatar live (the renderer is built in the worker thread)."""
        if self.pipeline is None:
            raise ProtocolError("state", "set_avatar before offer")
        scale = self.scale
        size = scaled_size(self.cfg.video.width, self.cfg.video.height, scale)
        loop = asyncio.get_running_loop()
        try:
            renderer = await loop.run_in_executor(self.executor, self._renderer_for, name, size)
        except AvatarError as e:
            raise avatar_error(name, e) from None
        self.pipeline.renderer = renderer
        self.avatar = name
        self.scale = scale
        self._request_rescale()  # the guard may have moved while the renderer was built

    def _renderer_for(self, name: str, size: tuple[int, int]) -> Renderer:
        """``name``'s renderer at ``size``, built once (in the session's worker thread); the
        renderers of other avatars are dropped."""
        key = (name, *size)
        renderer = self._renderers.get(key)
        if renderer is None:
            renderer = with_disclosure(self.models.registry.create(name, size), self.models.registry.get(name).kind, self.cfg.video.disclosure)
            self._renderers = {k: r for k, r in self._renderers.items() if k[0] == name}
            self._renderers[key] = renderer
        return renderer

    def _on_tick(self, now: float, late_s: float, skipped: int) -> None:
        if self.guard.tick(now, late_s, skipped):
            self._request_rescale()

    def _request_rescale(self) -> None:
        if self.guard.scale != self.scale and (self._rescaling is None or self._rescaling.done()):
            self._rescaling = self.spawn(self._rescale(), "rescale")

    async def _rescale(self) -> None:
        """Give the pipeline a renderer at the guard's scale (built off the event loop)."""
        loop = asyncio.get_running_loop()
        while self.pipeline is not None and self.avatar is not None and self.guard.scale != self.scale:
            scale, name = self.guard.scale, self.avatar
            size = scaled_size(self.cfg.video.width, self.cfg.video.height, scale)
            try:
                renderer = await loop.run_in_executor(self.executor, self._renderer_for, name, size)
            except Exception as e:  # a renderer that cannot be built smaller: stay as we are
                log.warning("session %s: no %s renderer at %dx%d (%s); not adapting the size", self.sid, name, *size, e)
                self.guard.reduced = 1.0  # the guard keeps counting (stats) but never asks for a change again
                return
            if name != self.avatar:  # switched avatar meanwhile: build that one's instead
                continue
            self.pipeline.renderer = renderer
            log.info("session %s: rendering at %dx%d (scale %.2f: %s)", self.sid, *size, scale,
                     "overloaded" if scale < 1.0 else "load back to normal")
            self.scale = scale

    async def set_emotion(self, emotion: str, intensity: float, blend_s: float) -> None:
        """Blend towards an emotion (validated by the animator)."""
        if self.pipeline is None:
            raise ProtocolError("state", "set_emotion before offer")
        t = self.video.frames / self.cfg.video.fps if self.video else 0.0
        try:
            # in the session's worker thread, which owns the animator (never on the event loop)
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self.pipeline.animator.set_emotion, emotion, intensity, blend_s, t
            )
        except ValueError as e:
            raise ProtocolError("bad_control", str(e)) from e

    # ---------------------------------------------------------------- media

    async def _blackhole(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def _drain_audio(self, track: MediaStreamTrack) -> None:
        """Always drain: frames go into the bounded buffer, the oldest is dropped when full."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            arrival = self.clock.now()
            self.path.audio(arrival, frame.pts)
            self._audio.put(frame, arrival)
            if self.stage is not None:
                self.stage.audio_frame(frame, arrival)

    async def _process_audio(self) -> None:
        assert self.pipeline is not None
        await self._audio.run(self.pipeline, self.executor, self._send_visemes)

    @property
    def audio_frames(self) -> int:
        """Source audio frames received."""
        return self._audio.frames

    @property
    def audio_drops(self) -> int:
        """Source audio frames dropped because the pipeline fell behind."""
        return self._audio.drops

    async def _produce(self, t: float) -> tuple[np.ndarray, list[float]]:
        assert self.pipeline is not None
        loop = asyncio.get_running_loop()
        alpha = self.stage is not None and self.stage.wants_alpha
        yuv, sources, matte = await loop.run_in_executor(self.executor, self._produce_sync, t, alpha)
        if self.scale < 1.0:
            self.scaled_frames += 1
        if self.stage is not None:  # the same frame, for the stage's viewers (encoded once)
            index = int(round(t * self.cfg.video.fps))
            self.stage.video_frame(yuv, index)
            if matte is not None:
                self.stage.alpha_frame(matte, index)
        return yuv, sources

    def _produce_sync(self, t: float, alpha: bool) -> tuple[np.ndarray, list[float], np.ndarray | None]:
        """(worker thread) The frame at stream time ``t``; with ``alpha`` also the same state
        drawn without background, packed colour | matte side by side (I420, twice the width)."""
        assert self.pipeline is not None
        yuv, sources, state = self.pipeline.produce(t)
        if not alpha or self.avatar is None:
            return yuv, sources, None
        w, h = self.pipeline.renderer.size
        key = (self.avatar, w, h)
        renderer = self._matte_renderer if self._matte_key == key else None
        if renderer is None:
            registry = self.models.registry
            renderer = with_disclosure(registry.create(self.avatar, (w, h), transparent=True), registry.get(self.avatar).kind, self.cfg.video.disclosure)
            self._matte_renderer, self._matte_key = renderer, key
        return yuv, sources, rgba_to_i420(pack_matte(renderer.render(state)))

    def _video_latency_s(self) -> float | None:
        """Median source audio in → frame out latency so far, s (None before any)."""
        p50 = self.latency.summary()["p50"]
        return None if p50 is None else p50 / 1000.0

    def _on_audience(self, event: dict[str, Any]) -> None:
        """A viewer's reaction or comment: shown on the speaker's page; a reaction also moves
        the avatar's face (``[animation] audience_reactions``)."""
        async def send() -> None:
            pipeline = self.pipeline
            if event.get("type") == "reaction" and pipeline is not None and self.video is not None:
                t = self.video.frames / self.cfg.video.fps
                # in the session's worker thread, which owns the animator
                moved = await asyncio.get_running_loop().run_in_executor(self.executor, pipeline.animator.react, str(event["kind"]), t)
                event["animated"] = bool(moved)
            await self._send({"v": 1, "type": "event", "name": "audience", "data": event})

        self.spawn(send(), "audience")

    def record_dir(self) -> Path:
        """Where this server writes stage recordings."""
        d = self.cfg.stage.record_dir
        return Path(os.path.expanduser(d)) if d else self.cfg.avatars.data_dir / "recordings"

    async def set_recording(self, on: bool) -> dict[str, Any]:
        """Start or stop recording the stage; returns what the speaker is told."""
        if self.stage is None:
            raise ProtocolError("state", "record before offer")
        if on:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            rec = await self.stage.start_recording(self.record_dir() / f"{stamp}-{self.stage_id}.webm")
            return {"recording": True, "file": rec.path.name}
        done = await self.stage.stop_recording()
        return {"recording": False, **({"file": done["file"], "video_packets": done["video_packets"]} if done else {})}

    async def stage_request(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        """A request for this session's stage: ``whep_offer`` (sdp), ``whep_delete`` (viewer), ``info``."""
        stage = self.stage
        if stage is None or self.closed:
            raise ProtocolError("stage_not_live", f"the stage {self.stage_id} has not started yet: the speaker has not started the call")
        if action == "whep_offer":
            vid, sdp = await stage.add_viewer(str(data.get("sdp", "")), alpha=bool(data.get("alpha")))
            return {"viewer": vid, "sdp": sdp}
        if action == "whep_delete":
            if not await stage.remove_viewer(str(data.get("viewer", ""))):
                raise ProtocolError("unknown_viewer", f"no viewer {str(data.get('viewer', ''))[:40]!r} on stage {self.stage_id}")
            return {}
        if action == "info":
            return stage.stats()
        raise ProtocolError("bad_request", f"unknown stage request {action[:40]!r}")

    def _on_frame(self, now: float, sources: list[float]) -> None:
        self.fps.tick(now)
        for s in sources:
            self.latency.add((now - s) * 1000.0)
        self.path.frame_out(sources)

    def frame_times(self, frames: list[list[float | None]], clock_offset_ms: float | None) -> None:
        """The client's receive and presentation times of our frames (control ``frame_times``)."""
        self.path.report(frames, clock_offset_ms)

    def _send_visemes(self, frames: list[VisemeFrame]) -> None:
        """Queue hops for the data channel; send at most one message per ``channel_interval_ms``.

        Hops ready sooner wait (a timer sends them if no more audio comes), so every hop is
        sent exactly once and in order, at most ``channel_interval_ms`` after it was ready.
        """
        ch = self.channel
        if ch is None or ch.readyState != "open" or self.pipeline is None:
            return
        self._dc_pending.extend(frames)
        interval = self.cfg.visemes.channel_interval_ms / 1000.0
        wait = self._dc_last_sent + interval - self.clock.now()
        if wait <= 0.0:
            self._flush_visemes()
        elif self._dc_timer is None:
            self._dc_timer = asyncio.get_running_loop().call_later(wait, self._flush_visemes)

    def _flush_visemes(self) -> None:
        """Send the queued hops as one ``visemes`` message."""
        if self._dc_timer is not None:
            self._dc_timer.cancel()
            self._dc_timer = None
        frames, self._dc_pending = self._dc_pending, []
        ch = self.channel
        if not frames or ch is None or ch.readyState != "open" or self.pipeline is None:
            return
        self._dc_last_sent = self.clock.now()
        weights = np.concatenate([f.weights for f in frames])
        msg: dict[str, Any] = {
            "type": "visemes",
            "hop": frames[0].hop,
            "hop_s": 0.01,
            "server_t": round(self._dc_last_sent, 4),
            "weights": np.round(weights, 3).tolist(),
            "vad": {"prob": round(frames[-1].speech_prob, 3), "speaking": frames[-1].speaking},
            "lookahead_ms": self.pipeline.lookahead_hops * 10,
            "latency_ms": self.latency.summary(),
        }
        if not self._sent_names:
            msg["names"] = list(VISEMES)
            self._sent_names = True
        try:
            ch.send(json.dumps(msg))
        except Exception as e:  # a closing channel must not kill the session
            log.debug("session %s: visemes channel send failed: %s", self.sid, e)

    async def _frame_times_loop(self) -> None:
        """Tell the client, every ``frame_times_interval_ms``, when the frames it got were made."""
        while True:
            await asyncio.sleep(self.cfg.server.frame_times_interval_ms / 1000.0)
            frames = self.path.take_pending()
            if frames:
                await self._send({"v": 1, "type": "event", "name": "frame_times", "data": {"frames": frames}})

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.server.stats_interval_s)
            await self._send({"v": 1, "type": "event", "name": "stats", "data": self.stats()})

    # ---------------------------------------------------------------- stats & close

    def stats(self) -> dict[str, Any]:
        """JSON-able per-session statistics."""
        return {
            "session": self.sid,
            "avatar": self.avatar,
            "state": self.pc.connectionState,
            "age_s": round(time.monotonic() - self.created, 1),
            "fps": round(self.fps.fps(), 2),
            "frames": self.video.frames if self.video else 0,
            "skipped_ticks": self.video.skipped if self.video else 0,
            "reused_frames": self.pipeline.reused_frames if self.pipeline else 0,
            "scale": self.scale,
            "scaled_frames": self.scaled_frames,
            "adapt": {"downs": self.guard.downs, "ups": self.guard.ups, "late_ticks": self.guard.late_ticks},
            "audio_frames": self.audio_frames,
            "audio_drops": self.audio_drops,
            "jitter": self.jitter.stats() if self.jitter is not None else None,
            "latency_ms": self.latency.summary(),
            **self.path.stats(),
            "lookahead_ms": self.pipeline.lookahead_hops * 10 if self.pipeline else None,
            "tasks": len(self.tasks),
            "stage": self.stage_id,
            "viewers": len(self.stage.viewers) if self.stage is not None else 0,
            "program": self.stage.stats() if self.stage is not None else None,
        }

    def close_soon(self) -> None:
        """Schedule :meth:`close` (from callbacks that cannot await)."""
        if self._closing is None and not self.closed:
            self._closing = asyncio.get_running_loop().create_task(self.close(), name=f"{self.sid}:close")

    async def close(self) -> None:
        """Stop media, cancel and await every task, close the peer connection. Idempotent."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        tasks = [t for t in self.tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._dc_timer is not None:
            self._dc_timer.cancel()
            self._dc_timer = None
        if self.stage is not None:
            await self.stage.close("the speaker has left: the stage has ended")
        if self.video is not None:
            self.video.stop()
        if self.jitter is not None:
            self.jitter.close()
        await self.pc.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.on_closed is not None:
            await self.on_closed(self)
        log.info("session %s closed", self.sid)


def sessions_summary(sessions: list[Session], **extra: Any) -> dict[str, Any]:
    """Stats of the sessions one process runs: per-session stats (with ``extra`` fields added),
    open peer connections, session-owned tasks and all tasks on this process's event loop."""
    return {
        "sessions": [{**s.stats(), **extra} for s in sessions],
        "pcs": sum(1 for s in sessions if s.pc.connectionState != "closed"),
        "tasks": sum(len(s.tasks) for s in sessions),
        "loop_tasks": len(asyncio.all_tasks()),
    }


def pack_matte(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) premultiplied RGBA → (H, 2W, 4) opaque: the colour on the left, the alpha as
    grey on the right (WebRTC carries no alpha; the OBS page puts it back together)."""
    h, w = rgba.shape[:2]
    out = np.empty((h, 2 * w, 4), np.uint8)
    out[:, :w, :3] = rgba[..., :3]
    out[:, w:, 0] = out[:, w:, 1] = out[:, w:, 2] = rgba[..., 3]
    out[..., 3] = 255
    return out
