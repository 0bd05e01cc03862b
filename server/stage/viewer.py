"""A viewer: one receive-only peer connection (WHEP) fed from the stage's shared encoders.

The viewer's offer must ask to receive video (VP8) and may ask for audio (Opus). Its tracks
are :class:`~server.stage.outputs.EncodedTrack` s over the viewer's own mailboxes; they are
filled only once the connection is up (``on_connected``: the stage then starts its video at a
keyframe). The viewer's PLI/FIR and REMB reach the shared encoder: aiortc's sender would
otherwise ignore them for pre-encoded packets.

A data channel labelled ``stage`` (opened by the watch page) carries the stage's events to the
viewer (``{"type": "ended", "reason": ...}``) and the viewer's reactions to the stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)

from server.config import IceServer
from server.errors import ProtocolError
from server.stage.outputs import AUDIO_MAILBOX, VIDEO_MAILBOX, EncodedTrack, PacketMailbox

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024  # a viewer's offer is a few kB; anything larger is refused


def check_offer(sdp: str) -> list[str]:
    """Validate a viewer's SDP offer before aiortc sees it; returns its media kinds.

    Raises :class:`ProtocolError` (``bad_offer``) naming what is wrong, in our words.
    """
    if not isinstance(sdp, str) or not sdp.strip():
        raise ProtocolError("bad_offer", "the body must be an SDP offer (Content-Type: application/sdp)")
    if len(sdp.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise ProtocolError("bad_offer", f"the SDP offer is larger than {MAX_SDP_BYTES} bytes")
    if not sdp.lstrip().startswith("v=0"):
        raise ProtocolError("bad_offer", "the SDP offer must start with v=0")
    kinds = [line.split()[0][2:] for line in sdp.splitlines() if line.startswith("m=") and line.split()]
    if "video" not in kinds:
        raise ProtocolError("bad_offer", f"the offer has no video m-line to receive the avatar on (media: {', '.join(kinds) or 'none'})")
    low = sdp.lower()
    if "vp8/90000" not in low and "h264/90000" not in low:
        raise ProtocolError("bad_offer", "the offer accepts neither VP8 nor H.264 video; this server sends those")
    return kinds


def _prefer_vp8(pc: RTCPeerConnection) -> None:
    """The video is VP8 packets: never let a negotiation pick another video codec."""
    caps = RTCRtpSender.getCapabilities("video")
    vp8 = [c for c in (caps.codecs if caps else []) if c.mimeType.lower() in ("video/vp8", "video/rtx")]
    for t in pc.getTransceivers():
        if t.kind == "video":
            t.setCodecPreferences(vp8)


class Viewer:
    """One subscribed viewer. ``await answer(offer)``, and always ``await close()``."""

    def __init__(
        self,
        vid: str,
        ice_servers: tuple[IceServer, ...],
        want_keyframe: Callable[[], None],
        on_connected: Callable[[Viewer], None],
        on_reaction: Callable[[Viewer, dict[str, Any]], None],
        on_gone: Callable[[Viewer], None],
        *,
        role: str = "viewer",
    ) -> None:
        self.id = vid
        self.role = role  # "viewer" (answers a WHEP offer) or "publish" (offers to an SFU)
        self.alpha = False  # takes the colour + alpha matte variant (set by the stage)
        self.codec = "vp8"  # the video codec negotiated: "vp8", or "h264" for a viewer that takes no VP8
        ice = [RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        self._want_keyframe = want_keyframe
        self.video = PacketMailbox(VIDEO_MAILBOX, keyframes=True, want_keyframe=want_keyframe)
        self.audio = PacketMailbox(AUDIO_MAILBOX)
        self.video.closed = self.audio.closed = True  # opened once the connection is up
        self.wants_audio = False
        self.channel: Any = None
        self.created = time.monotonic()
        self.connected_at: float | None = None
        self.closed = False
        self._senders: list[Any] = []
        self._on_connected = on_connected
        self._on_reaction = on_reaction
        self._on_gone = on_gone
        self._tracks: list[EncodedTrack] = []

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            state = self.pc.connectionState
            if state == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()
                if self.wants_audio:
                    self.audio.open()
                self._on_connected(self)
            elif state in ("failed", "closed"):
                self._on_gone(self)

        @self.pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label != "stage":
                return
            self.channel = channel

            @channel.on("message")
            def on_message(message: Any) -> None:
                if not isinstance(message, str) or len(message) > 1024:
                    return
                try:
                    msg = json.loads(message)
                except ValueError:
                    return
                if isinstance(msg, dict):
                    self._on_reaction(self, msg)

    async def answer(self, offer_sdp: str) -> str:
        """Apply the viewer's offer; returns the answer SDP (all ICE candidates included)."""
        kinds = check_offer(offer_sdp)
        self.wants_audio = "audio" in kinds
        if "vp8/90000" not in offer_sdp.lower():
            self.codec = "h264"  # (no colour + matte variant in H.264: a plain picture)
            self.alpha = False
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as e:  # aiortc's own messages name its internals: say it in ours
            log.info("viewer %s: offer refused by aiortc: %s", self.id, e)
            raise ProtocolError("bad_offer", "the SDP offer could not be applied (malformed or unsupported media description)") from e
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                track = EncodedTrack("video", self.video)
            elif transceiver.kind == "audio" and self.wants_audio:
                track = EncodedTrack("audio", self.audio)
            else:
                continue
            sender = self.pc.addTrack(track)
            self._tracks.append(track)
            if track.kind == "video":
                # aiortc ignores PLI/FIR for pre-encoded packets: route them to the shared encoder
                sender._send_keyframe = self._want_keyframe  # type: ignore[method-assign]
                self._senders.append(sender)
        # (aiortc answers with its own codec order, VP8 first; check_offer made sure VP8 is there)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return str(self.pc.localDescription.sdp)

    async def offer(self, *, audio: bool = True) -> str:
        """Publishing: our offer (send-only VP8 video, Opus audio; all candidates included)."""
        self.wants_audio = audio
        video = EncodedTrack("video", self.video)
        sender = self.pc.addTransceiver(video, direction="sendonly").sender
        sender._send_keyframe = self._want_keyframe  # type: ignore[method-assign]
        self._senders.append(sender)
        self._tracks.append(video)
        if audio:
            track = EncodedTrack("audio", self.audio)
            self.pc.addTransceiver(track, direction="sendonly")
            self._tracks.append(track)
        _prefer_vp8(self.pc)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer_sdp: str) -> None:
        """Publishing: apply the SFU's answer. Raises :class:`ProtocolError` (``bad_answer``)."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        except Exception as e:
            raise ProtocolError("bad_answer", f"the SFU's SDP answer could not be applied: {type(e).__name__}") from e

    def remb_bitrate(self) -> int | None:
        """The receiver's latest REMB estimate, bit/s (None before the first one)."""
        for sender in self._senders:
            enc = getattr(sender, "_RTCRtpSender__encoder", None)  # aiortc keeps REMB there
            rate = getattr(enc, "target_bitrate", None)
            if enc is not None and getattr(enc, "remb_seen", False) and isinstance(rate, int):
                return rate
        return None

    def send_event(self, msg: dict[str, Any]) -> None:
        """Send one event on the viewer's ``stage`` channel (if open)."""
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            with contextlib.suppress(Exception):
                ch.send(json.dumps(msg))

    async def close(self, reason: str | None = None) -> None:
        """Tell the viewer why (if it has a channel), stop its tracks, close the connection."""
        if self.closed:
            return
        self.closed = True
        if reason is not None and self.channel is not None and self.channel.readyState == "open":
            self.send_event({"type": "ended", "reason": reason})
            await asyncio.sleep(0.05)  # let SCTP carry it before DTLS closes
        for track in self._tracks:
            track.stop()
        await self.pc.close()

    def stats(self) -> dict[str, Any]:
        """JSON-able per-viewer counters."""
        return {
            "viewer": self.id,
            "state": self.pc.connectionState,
            "age_s": round(time.monotonic() - self.created, 1),
            "video_sent": self.video.delivered,
            "video_dropped": self.video.dropped,
            "audio_sent": self.audio.delivered,
            "audio": self.wants_audio,
            "alpha": self.alpha,
            "codec": self.codec,
        }
