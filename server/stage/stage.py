"""The stage: one source driving one avatar, and the outputs subscribed to its program.

The session that owns the source calls :meth:`Stage.video_frame` with every frame its video
track produced (the track owns the clock) and :meth:`Stage.audio_frame` with every source
audio frame as it arrives. Both cost nothing while no output listens. Viewers join with
:meth:`Stage.add_viewer` (a WHEP offer) and leave with :meth:`Stage.remove_viewer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from numpy.typing import NDArray

from server.clock import Clock
from server.config import AppConfig
from server.errors import ProtocolError
from server.stage.program import ProgramAudio, ProgramVideoEncoder
from server.stage.viewer import Viewer

if TYPE_CHECKING:
    from server.stage.record import StageRecorder

log = logging.getLogger(__name__)

REACTIONS = ("applause", "laugh", "heart", "surprise", "question")
MAX_COMMENT_CHARS = 200
BITRATE_POLL_S = 1.0  # s between looks at the viewers' REMB estimates
GOP_REPLAY_S = 0.5  # s: a joining viewer starts at the last keyframe if it is at most this old


class StageEnded(ProtocolError):
    """The stage is over (its speaker left); viewers get this as a clear refusal."""

    def __init__(self, stage_id: str) -> None:
        super().__init__("stage_ended", f"the stage {stage_id} has ended", fatal=True)


class _Bucket:
    """A token bucket: ``rate`` events per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.t = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


AudienceHook = Callable[[dict[str, Any]], None]


class VideoFeed:
    """One encoded variant of the program's video (plain, or colour + alpha matte side by side)
    with the last keyframe and the frames after it, for viewers that join."""

    def __init__(self, stage: Stage, alpha: bool, codec: str = "vp8") -> None:
        st, video = stage.cfg.stage, stage.cfg.video
        self.stage = stage
        self.alpha = alpha
        self.codec = codec
        width_factor = 2 if alpha else 1  # the matte doubles the picture
        self.encoder = ProgramVideoEncoder(
            asyncio.get_running_loop(),
            self._fan,
            fps=video.fps,
            cpu_used=video.vp8_cpu_used,
            max_bitrate=video.max_bitrate_kbps * 1000 * width_factor,
            min_bitrate=st.min_bitrate_kbps * 1000 * width_factor,
            key_interval_s=st.keyframe_interval_s,
            key_min_gap_s=st.keyframe_min_gap_s,
            codec=codec,
        )
        self.gop: list[av.Packet] = []  # the last keyframe and the frames after it
        self.gop_t = 0.0  # clock time of that keyframe, s
        self.gop_starts = 0  # viewers started from ``gop`` instead of a new keyframe

    def outputs(self) -> list[Viewer]:
        """The peer outputs that take this variant."""
        return [v for v in self.stage.outputs() if v.alpha == self.alpha and getattr(v, "codec", "vp8") == self.codec]

    def wanted(self) -> bool:
        """Whether any output takes this variant now."""
        return any(not v.video.closed for v in self.outputs())

    def _fan(self, packet: av.Packet) -> None:
        if packet.is_keyframe:
            self.gop = [packet]
            self.gop_t = self.stage.clock.now()
        elif self.gop and len(self.gop) < GOP_REPLAY_S * self.stage.cfg.video.fps:
            self.gop.append(packet)
        else:
            self.gop = []
        for v in self.outputs():
            v.video.put(packet)

    def start(self, viewer: Viewer) -> None:
        """Start a viewer's video at once from the last keyframe when it is recent (a joining
        viewer sees the picture without waiting), else at the next one, asked for now."""
        if self.gop and self.stage.clock.now() - self.gop_t <= GOP_REPLAY_S:
            viewer.video.open(list(self.gop))
            self.gop_starts += 1
        else:
            viewer.video.open()
            self.encoder.request_keyframe()


class Stage:
    """One stage. ``video_latency_s()``: how late (s) the source's video shows its audio."""

    def __init__(
        self,
        stage_id: str,
        cfg: AppConfig,
        clock: Clock,
        video_latency_s: Callable[[], float | None],
        on_audience: AudienceHook | None = None,
    ) -> None:
        self.id = stage_id
        self.cfg = cfg
        self.clock = clock
        self._video_latency_s = video_latency_s
        self.on_audience = on_audience
        self.feed = VideoFeed(self, alpha=False)
        self.video = self.feed.encoder
        self.alpha_feed: VideoFeed | None = None  # made when the first output asks for the matte
        self.h264_feed: VideoFeed | None = None  # made when the first viewer takes no VP8
        self.audio = ProgramAudio(clock, self._fan_audio, self._audio_delay_target, self._audio_delay_target() or 0.08)
        self.viewers: dict[str, Viewer] = {}  # WHEP viewers
        self.publishers: dict[str, Any] = {}  # SFU / WHIP publications (server.stage.publish)
        self.recorder: StageRecorder | None = None
        self._buckets: dict[str, tuple[_Bucket, _Bucket]] = {}
        self._audio_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.created = time.monotonic()
        self.closed = False
        self.viewers_total = 0
        self.reactions: dict[str, int] = dict.fromkeys(REACTIONS, 0)
        self.comments = 0
        self.refused_events = 0
        self._spawn(self._bitrate_loop(), "bitrate")

    # ------------------------------------------------------------ the program

    def _audio_delay_target(self) -> float | None:
        """Audio delay that matches the viewers' video: source latency + the shared encode."""
        lat = self._video_latency_s()
        if lat is None:
            return None
        return lat + self.video.encode_ms / 1000.0

    def video_frame(self, yuv: NDArray[np.uint8], index: int) -> None:
        """The source's frame ``index`` (I420 planes), just produced on the video clock."""
        if self.audio.origin is None:
            self.audio.origin = self.clock.now() - index / self.cfg.video.fps
        pts = int(round(index * 90_000 / self.cfg.video.fps))
        if not self.closed and self.feed.wanted():
            self.video.submit(yuv, pts)
        if not self.closed and self.h264_feed is not None and self.h264_feed.wanted():
            self.h264_feed.encoder.submit(yuv, pts)

    @property
    def wants_alpha(self) -> bool:
        """Whether an output takes the alpha-matte variant (the source then renders it)."""
        return not self.closed and self.alpha_feed is not None and self.alpha_feed.wanted()

    def alpha_frame(self, yuv: NDArray[np.uint8], index: int) -> None:
        """Frame ``index`` as colour | matte side by side (I420 planes, twice the width)."""
        if self.wants_alpha:
            assert self.alpha_feed is not None
            self.alpha_feed.encoder.submit(yuv, int(round(index * 90_000 / self.cfg.video.fps)))

    def audio_frame(self, frame: av.AudioFrame, arrival: float) -> None:
        """One source audio frame (48 kHz stereo s16) that arrived at ``arrival`` (clock s)."""
        if self._audio_task is not None:
            self.audio.push(frame, arrival)

    def outputs(self) -> list[Viewer]:
        """Every peer output: viewers and publications."""
        outs: list[Any] = [*self.viewers.values(),
                           *(p.peer for p in self.publishers.values() if p.peer is not None and p.state in ("starting", "published"))]
        if self.recorder is not None:
            outs.append(self.recorder)
        return outs

    async def start_recording(self, path: Path) -> StageRecorder:
        """Record the program to ``path`` (.webm / .mkv, no re-encode) until :meth:`stop_recording`."""
        from server.stage.record import StageRecorder

        if self.closed:
            raise StageEnded(self.id)
        if self.recorder is not None:
            raise ProtocolError("state", f"the stage is already recording to {self.recorder.path.name}")
        w, h = self.cfg.video.width, self.cfg.video.height
        rec = StageRecorder(path, w, h, self.cfg.video.fps, self.video.request_keyframe)
        self.recorder = rec
        rec.start()
        self._update_audio()
        log.info("stage %s: recording to %s", self.id, path)
        return rec

    async def stop_recording(self) -> dict[str, Any] | None:
        """Finish the recording (None when there is none); returns its stats."""
        rec, self.recorder = self.recorder, None
        if rec is None:
            return None
        await rec.stop()
        self._update_audio()
        log.info("stage %s: recording %s finished (%d video, %d audio packets)", self.id, rec.path.name, rec.video_packets, rec.audio_packets)
        return rec.stats()

    async def publish(self, cfg: Any) -> None:
        """Publish the program to the SFU / WHIP targets of ``cfg`` (``[publish]``)."""
        from server.stage.publish import start_publications

        await start_publications(self, cfg)
        self._update_audio()

    def peer_output(self, oid: str, role: str = "viewer", *, alpha: bool = False) -> Viewer:
        """A new peer output wired to this stage's encoders (not yet registered); ``alpha``:
        it takes the colour + matte variant (made on first use)."""
        if alpha and self.alpha_feed is None:
            self.alpha_feed = VideoFeed(self, alpha=True)
        viewer = Viewer(oid, self.cfg.server.ice_servers, lambda: self._feed_of(viewer).encoder.request_keyframe(),
                        self._viewer_connected, self._reaction, self._gone, role=role)
        viewer.alpha = alpha
        return viewer

    def _feed_of(self, viewer: Viewer) -> VideoFeed:
        """The video variant ``viewer`` takes (its codec is known once its offer is read)."""
        if viewer.codec == "h264":
            if self.h264_feed is None:
                self.h264_feed = VideoFeed(self, alpha=False, codec="h264")
            return self.h264_feed
        if viewer.alpha and self.alpha_feed is not None:
            return self.alpha_feed
        return self.feed

    def _viewer_connected(self, viewer: Viewer) -> None:
        self._feed_of(viewer).start(viewer)

    def _fan_audio(self, packet: av.Packet) -> None:
        for v in self.outputs():
            v.audio.put(packet)

    def _update_audio(self) -> None:
        """Run the audio program only while some output takes audio."""
        wanted = not self.closed and any(v.wants_audio for v in self.outputs())
        if wanted and self._audio_task is None:
            self._audio_task = self._spawn(self.audio.run(), "program-audio")
        elif not wanted and self._audio_task is not None:
            self._audio_task.cancel()
            self._audio_task = None

    async def _bitrate_loop(self) -> None:
        """The encoder follows the most constrained connected viewer's REMB estimate."""
        while True:
            await asyncio.sleep(BITRATE_POLL_S)
            for feed in (self.feed, self.alpha_feed, self.h264_feed):
                if feed is not None:
                    rates = [r for v in feed.outputs() if (r := v.remb_bitrate()) is not None]
                    feed.encoder.set_bitrate(min(rates) if rates else None)

    # ------------------------------------------------------------ viewers

    async def add_viewer(self, offer_sdp: str, *, alpha: bool = False) -> tuple[str, str]:
        """A viewer's WHEP offer → (viewer id, answer SDP); ``alpha``: the colour + matte
        variant (the OBS page). Raises :class:`ProtocolError`."""
        if self.closed:
            raise StageEnded(self.id)
        cap = self.cfg.stage.max_viewers
        if len(self.viewers) >= cap:
            raise ProtocolError("stage_full", f"the stage {self.id} already has its {cap} viewers", fatal=True)
        vid = secrets.token_urlsafe(9)
        viewer = self.peer_output(vid, alpha=alpha)
        self.viewers[vid] = viewer
        try:
            answer = await viewer.answer(offer_sdp)
        except BaseException:
            self.viewers.pop(vid, None)
            await viewer.close()
            raise
        self._buckets[vid] = (_Bucket(2.0, 5.0), _Bucket(0.5, 3.0))  # reactions, comments per s
        self.viewers_total += 1
        self._update_audio()
        log.info("stage %s: viewer %s joined (%d watching)", self.id, vid, len(self.viewers))
        return vid, answer

    async def remove_viewer(self, vid: str) -> bool:
        """End one viewer's subscription; False if there is no such viewer."""
        viewer = self.viewers.pop(vid, None)
        self._buckets.pop(vid, None)
        if viewer is None:
            return False
        await viewer.close()
        self._update_audio()
        log.info("stage %s: viewer %s left (%d watching)", self.id, vid, len(self.viewers))
        return True

    def _gone(self, viewer: Viewer) -> None:
        if viewer.id in self.viewers and not self.closed:
            self._spawn(self.remove_viewer(viewer.id), f"viewer-{viewer.id}-gone")

    def _reaction(self, viewer: Viewer, msg: dict[str, Any]) -> None:
        """A message on a viewer's ``stage`` channel: a reaction or a short comment."""
        buckets = self._buckets.get(viewer.id)
        if buckets is None:
            return
        kind = msg.get("type")
        if kind == "reaction" and msg.get("kind") in REACTIONS:
            if not buckets[0].take():
                self.refused_events += 1
                viewer.send_event({"type": "error", "code": "rate_limited", "message": "too many reactions; slow down"})
                return
            name = str(msg["kind"])
            self.reactions[name] += 1
            event: dict[str, Any] = {"type": "reaction", "kind": name}
        elif kind == "comment" and isinstance(msg.get("text"), str) and msg["text"].strip():
            if not buckets[1].take():
                self.refused_events += 1
                viewer.send_event({"type": "error", "code": "rate_limited", "message": "too many comments; slow down"})
                return
            self.comments += 1
            event = {"type": "comment", "text": " ".join(str(msg["text"]).split())[:MAX_COMMENT_CHARS]}
        else:
            self.refused_events += 1
            viewer.send_event({"type": "error", "code": "bad_event", "message": f"send a reaction ({', '.join(REACTIONS)}) or a comment"})
            return
        event["viewer"] = viewer.id[:6]
        if self.on_audience is not None:
            self.on_audience(event)

    # ------------------------------------------------------------ life cycle

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"stage-{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stage %s: task %s failed", self.id, task.get_name(), exc_info=task.exception())

    async def close(self, reason: str = "the stage has ended") -> None:
        """End the stage: every viewer is told ``reason`` and disconnected. Idempotent."""
        if self.closed:
            return
        self.closed = True
        viewers = list(self.viewers.values())
        self.viewers.clear()
        publishers = list(self.publishers.values())
        self.publishers.clear()
        await asyncio.gather(*(v.close(reason) for v in viewers), *(p.stop() for p in publishers), return_exceptions=True)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        self._audio_task = None
        if self.recorder is not None:
            await self.stop_recording()
        self.video.close()
        for feed in (self.alpha_feed, self.h264_feed):
            if feed is not None:
                feed.encoder.close()

    def stats(self) -> dict[str, Any]:
        """JSON-able stage statistics."""
        return {
            "stage": self.id,
            "viewers": len(self.viewers),
            "viewers_total": self.viewers_total,
            "gop_starts": self.feed.gop_starts + (self.alpha_feed.gop_starts if self.alpha_feed else 0),
            "age_s": round(time.monotonic() - self.created, 1),
            "video": self.video.stats(),
            "alpha_video": self.alpha_feed.encoder.stats() if self.alpha_feed is not None else None,
            "h264_video": self.h264_feed.encoder.stats() if self.h264_feed is not None else None,
            "audio": self.audio.stats() if self._audio_task is not None else None,
            "audio_delay_ms": round(self.audio.delay_s * 1000.0, 1),
            "reactions": dict(self.reactions),
            "comments": self.comments,
            "per_viewer": [v.stats() for v in self.viewers.values()],
            "publish": [p.stats() for p in self.publishers.values()],
            "recording": self.recorder.stats() if self.recorder is not None else None,
        }
