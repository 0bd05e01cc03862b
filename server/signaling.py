"""WebSocket signaling (protocol v1, docs/protocol.md): dispatch messages validated by
:mod:`server.protocol`, and the server's own messages."""

from __future__ import annotations

import logging
import time
from typing import Any

from server import __version__, turn
from server.config import AppConfig
from server.errors import ProtocolError
from server.media.timing import wall_ms
from server.protocol import PROTOCOL_VERSION, parse_message
from server.session import Session

log = logging.getLogger(__name__)

__all__ = ["PROTOCOL_VERSION", "dispatch", "dispatch_pending", "error", "parse_message", "welcome"]


def dispatch_pending(msg: dict[str, Any], now: float) -> dict[str, Any] | None:
    """Answer a validated message on a socket that has no session yet (no accepted offer).

    ``offer`` is not handled here (it creates the session). ``now``: the server clock, s.
    """
    kind = msg["type"]
    if kind == "candidate":
        if msg["candidate"] is not None and msg["candidate"]["candidate"]:
            raise ProtocolError("state", "candidate before offer")
        return None
    if kind == "bye":
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "session_closed", "data": {"reason": "bye"}}
    action = msg["action"]
    if action == "ping":
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "pong", "data": {"t": msg["t"], "server_t": now, "wall_ms": wall_ms()}}
    raise ProtocolError("state", f"{action} before offer")


async def dispatch(session: Session, msg: dict[str, Any]) -> dict[str, Any] | None:
    """Handle one validated message; returns the reply (or None). ``bye`` returns a marker."""
    kind = msg["type"]
    if kind == "offer":  # every field validated (server.protocol) before the offer is applied
        sdp = await session.handle_offer(msg["sdp"], msg["avatar"])
        if msg["emotion"] is not None:
            await session.set_emotion(msg["emotion"], 1.0, 0.0)
        return {"v": PROTOCOL_VERSION, "type": "answer", "sdp": sdp}
    if kind == "candidate":
        await session.add_candidate(msg["candidate"])
        return None
    if kind == "bye":
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "session_closed", "data": {"reason": "bye"}}
    # control
    action = msg["action"]
    if action == "ping":
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "pong", "data": {"t": msg["t"], "server_t": session.clock.now(), "wall_ms": wall_ms()}}
    if action == "frame_times":
        session.frame_times(msg["frames"], msg["clock_offset_ms"])
        return None
    if action == "set_emotion":
        emotion, intensity, blend = msg["emotion"], msg["intensity"], msg["blend_s"]
        await session.set_emotion(emotion, intensity, blend)
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "emotion", "data": {"emotion": emotion, "intensity": intensity, "blend_s": blend}}
    if action == "set_avatar":
        await session.set_avatar(msg["avatar"])
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "avatar", "data": {"avatar": msg["avatar"]}}
    if action == "record":
        data = await session.set_recording(msg["on"])
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "recording", "data": data}
    raise ProtocolError("bad_control", f"unknown control action {action!r}")


def welcome(sid: str, cfg: AppConfig, avatars: list[dict[str, str]], stage_id: str | None = None,
            viewer_token: str | None = None) -> dict[str, Any]:
    """The first message on a new connection; ``viewer_token`` (when access is required) goes
    into the stage's links, so whoever gets a link may watch that stage and nothing else.
    ``ice_servers`` carry TURN credentials minted for this connection (``[server] turn_secret``)."""
    q = f"?token={viewer_token}" if viewer_token else ""
    ice = turn.ice_server_dicts(turn.ice_servers(cfg.server, sid, time.time()))
    return {
        "v": PROTOCOL_VERSION,
        "type": "welcome",
        "session": sid,
        "server": {"version": __version__},
        "avatars": avatars,
        "ice_servers": ice,
        "ice_transport_policy": cfg.server.ice_transport_policy,
        **({"stage": {"id": stage_id, "watch": f"/watch/{stage_id}{q}", "obs": f"/obs/{stage_id}{q}", "whep": f"/whep/{stage_id}",
                      **({"token": viewer_token} if viewer_token else {})}} if stage_id else {}),
    }


def error(e: ProtocolError) -> dict[str, Any]:
    """An error message for the client."""
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": "error", "code": e.code, "message": str(e)}
    if e.fatal:
        out["fatal"] = True
    return out
