"""WebSocket signaling (protocol v1, docs/protocol.md): parse, validate, dispatch."""

from __future__ import annotations

import json
import logging
from typing import Any

from server import __version__
from server.config import AppConfig
from server.errors import ProtocolError
from server.session import Session

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
CLIENT_TYPES = ("offer", "candidate", "control", "bye")
EMOTION_CHOICES = ("neutral", "happy", "sad", "angry", "surprised", "thinking", "auto")


def parse_message(text: str, max_bytes: int) -> dict[str, Any]:
    """Decode and validate one client message; raises :class:`ProtocolError`."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError("too_large", f"message of {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError("bad_json", f"message is not valid JSON: {e.msg} at position {e.pos}") from e
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", f"message must be a JSON object, got {type(msg).__name__}")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"unsupported protocol version {msg.get('v')!r}; this server speaks v{PROTOCOL_VERSION}")
    kind = msg.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}")
    return msg


def _number(msg: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = msg.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError("bad_control", f"{key} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


async def dispatch(session: Session, msg: dict[str, Any]) -> dict[str, Any] | None:
    """Handle one validated message; returns the reply (or None). ``bye`` returns a marker."""
    kind = msg["type"]
    if kind == "offer":
        sdp = await session.handle_offer(msg.get("sdp"), msg.get("avatar"))  # type: ignore[arg-type]
        if "emotion" in msg:
            await session.set_emotion(str(msg["emotion"]), 1.0, 0.0)
        return {"v": PROTOCOL_VERSION, "type": "answer", "sdp": sdp}
    if kind == "candidate":
        cand = msg.get("candidate")
        if cand is not None and not isinstance(cand, dict):
            raise ProtocolError("bad_candidate", f"candidate must be an object or null, got {cand!r}")
        await session.add_candidate(cand)
        return None
    if kind == "bye":
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "session_closed", "data": {"reason": "bye"}}
    # control
    action = msg.get("action")
    if action == "ping":
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "pong", "data": {"t": msg.get("t"), "server_t": session.clock.now()}}
    if action == "set_emotion":
        emotion = msg.get("emotion")
        if emotion not in EMOTION_CHOICES:
            raise ProtocolError("bad_control", f"emotion must be one of {', '.join(EMOTION_CHOICES)}, got {emotion!r}")
        intensity = _number(msg, "intensity", 1.0, 0.0, 1.0)
        blend = _number(msg, "blend_s", 0.5, 0.0, 10.0)
        await session.set_emotion(str(emotion), intensity, blend)
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "emotion", "data": {"emotion": emotion, "intensity": intensity, "blend_s": blend}}
    if action == "set_avatar":
        name = msg.get("avatar")
        if not isinstance(name, str) or not name:
            raise ProtocolError("bad_control", f"avatar must be a name, got {name!r}")
        await session.set_avatar(name)
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "avatar", "data": {"avatar": name}}
    if action == "record":
        on = msg.get("on", True)
        if not isinstance(on, bool):
            raise ProtocolError("bad_control", f"on must be true or false, got {str(on)[:40]!r}")
        data = await session.set_recording(on)
        return {"v": PROTOCOL_VERSION, "type": "event", "name": "recording", "data": data}
    raise ProtocolError("bad_control", f"unknown control action {action!r}; expected ping, set_emotion, set_avatar or record")


def welcome(sid: str, cfg: AppConfig, avatars: list[dict[str, str]], stage_id: str | None = None,
            viewer_token: str | None = None) -> dict[str, Any]:
    """The first message on a new connection; ``viewer_token`` (when access is required) goes
    into the stage's links, so whoever gets a link may watch that stage and nothing else."""
    q = f"?token={viewer_token}" if viewer_token else ""
    ice = [
        {"urls": list(s.urls), **({"username": s.username} if s.username else {}), **({"credential": s.credential} if s.credential else {})}
        for s in cfg.server.ice_servers
    ]
    return {
        "v": PROTOCOL_VERSION,
        "type": "welcome",
        "session": sid,
        "server": {"version": __version__},
        "avatars": avatars,
        "ice_servers": ice,
        **({"stage": {"id": stage_id, "watch": f"/watch/{stage_id}{q}", "obs": f"/obs/{stage_id}{q}", "whep": f"/whep/{stage_id}",
                      **({"token": viewer_token} if viewer_token else {})}} if stage_id else {}),
    }


def error(e: ProtocolError) -> dict[str, Any]:
    """An error message for the client."""
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": "error", "code": e.code, "message": str(e)}
    if e.fatal:
        out["fatal"] = True
    return out
