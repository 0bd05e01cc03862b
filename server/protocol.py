"""The signaling protocol's client messages, defined once (pydantic v2) and validated here.

Why pydantic and not msgspec: the messages are few and small (a handful per call), so speed
does not matter; what does is nested discriminated unions (``type``, then ``control.action``),
errors that carry the offending field's location, and a JSON Schema to generate the tables of
docs/protocol.md from (:func:`doc_tables`; tests/test_protocol.py checks the doc matches).

:func:`parse_message` turns one WebSocket text frame into a validated plain dict (defaults
filled in) or raises :class:`ProtocolError` with the message type's error code, a message that
names the field and quotes at most :data:`EXCERPT_CHARS` characters of the input.
:func:`check_offer_sdp` refuses SDP that aiortc would choke on, in our words, before the peer
connection is touched.
"""

from __future__ import annotations

import json
import logging
import reprlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from server.errors import ProtocolError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
EXCERPT_CHARS = 60  # at most this many characters of client input are quoted back
EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised", "thinking", "auto")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"  # as server.avatars.NAME_RE

Emotion = Literal["neutral", "happy", "sad", "angry", "surprised", "thinking", "auto"]
AvatarName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=40, description="avatar name from `/avatars`")]

SafeInt = Annotated[int, Field(ge=-(2**53), le=2**53)]  # exact in a JavaScript number
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxstring = EXCERPT_CHARS
_repr.maxother = EXCERPT_CHARS
_repr.maxlong = 24
_repr.maxlist = _repr.maxdict = _repr.maxtuple = 4


def excerpt(value: object) -> str:
    """A short, safe ``repr`` of client input (≤ EXCERPT_CHARS + a few characters)."""
    try:
        text = _repr.repr(value)
    except Exception:  # a repr must never fail the error path
        text = f"<{type(value).__name__}>"
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    v: Literal[1] = Field(description="protocol version")


class Offer(_Message):
    """Start the call; the SDP must carry an audio m-line (the microphone) and a video m-line
    to return the avatar on, may carry a data channel (label it `visemes` to get visemes)."""

    type: Literal["offer"]
    sdp: str = Field(min_length=1, description="the client's SDP offer (`v=0`...)")
    avatar: AvatarName | None = Field(None, description="avatar name from `/avatars`; default `video.avatar`")
    emotion: Emotion | None = Field(None, description="start emotion: " + ", ".join(EMOTIONS))


class IceCandidate(BaseModel):
    """``RTCIceCandidate.toJSON()``; one of ``sdpMid`` and ``sdpMLineIndex`` is required."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    candidate: str = Field(max_length=1024, description="`candidate:...` line; empty = end of candidates")
    sdpMid: str | None = Field(None, max_length=64, description="media section id")
    sdpMLineIndex: int | None = Field(None, ge=0, le=255, description="media section index")
    usernameFragment: str | None = Field(None, max_length=256, description="ICE ufrag (ignored)")

    @model_validator(mode="after")
    def _has_media(self) -> IceCandidate:
        if self.candidate and self.sdpMid is None and self.sdpMLineIndex is None:
            raise ValueError("a candidate needs sdpMid or sdpMLineIndex")
        return self


class Candidate(_Message):
    """A trickled ICE candidate (optional: waiting for ICE gathering before the offer works too)."""

    type: Literal["candidate"]
    candidate: IceCandidate | None = Field(description="`{candidate, sdpMid, sdpMLineIndex}`, or `null`: end of candidates")


class Ping(_Message):
    """Server replies `event` `pong` with the same `t`, its `server_t` and its wallclock `wall_ms` (ms since 1970)."""

    type: Literal["control"]
    action: Literal["ping"]
    t: SafeInt | FiniteFloat | None = Field(None, description="client time (ms), echoed as sent")


class SetEmotion(_Message):
    """Blend the avatar's emotion."""

    type: Literal["control"]
    action: Literal["set_emotion"]
    emotion: Emotion = Field(description=", ".join(EMOTIONS))
    intensity: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False, description="0–1")
    blend_s: float = Field(0.5, ge=0.0, le=10.0, allow_inf_nan=False, description="blend time, seconds (0–10)")


class SetAvatar(_Message):
    """Switch avatar live."""

    type: Literal["control"]
    action: Literal["set_avatar"]
    avatar: AvatarName


class Record(_Message):
    """Start or stop recording the stage's program (WebM, no re-encode) into `[stage] record_dir`; reply `event` `recording`."""

    type: Literal["control"]
    action: Literal["record"]
    on: bool = Field(True, strict=True, description="true starts, false stops")


FrameRow = Annotated[list[FiniteFloat | None], Field(min_length=3, max_length=3)]
MAX_FRAME_ROWS = 300  # frames one `frame_times` control may report (10 s at 30 fps)


class FrameTimes(_Message):
    """When the client received and presented the avatar's video frames (answering `event` `frame_times`); the server matches them with the frames' capture times and reports `whole_path_ms` in `stats`. No reply."""

    type: Literal["control"]
    action: Literal["frame_times"]
    frames: list[FrameRow] = Field(max_length=MAX_FRAME_ROWS, description="`[rtp, receive_ms, present_ms]` per frame: its RTP timestamp (90 kHz), when the client received it (ms since 1970 on the client's clock, or null) and presented it (ms)")
    clock_offset_ms: FiniteFloat | None = Field(None, description="the client's estimate of server clock − client clock, ms (from `pong` `wall_ms`)")


class Bye(_Message):
    """End the session; the server closes the peer connection and the socket."""

    type: Literal["bye"]


Control = Annotated[Ping | SetEmotion | SetAvatar | Record | FrameTimes, Field(discriminator="action")]
CONTROL_ACTIONS: dict[str, type[_Message]] = {"ping": Ping, "set_emotion": SetEmotion, "set_avatar": SetAvatar, "record": Record, "frame_times": FrameTimes}
MESSAGE_TYPES: dict[str, type[_Message] | None] = {"offer": Offer, "candidate": Candidate, "control": None, "bye": Bye}
ERROR_CODES = {"offer": "bad_offer", "candidate": "bad_candidate", "control": "bad_control", "bye": "bad_json"}
CLIENT_TYPES = tuple(MESSAGE_TYPES)
_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "offer": TypeAdapter(Offer),
    "candidate": TypeAdapter(Candidate),
    "control": TypeAdapter(Control),
    "bye": TypeAdapter(Bye),
}


def _path(loc: tuple[int | str, ...]) -> str:
    """A field path without pydantic's union tags (``constrained-int``, ``function-after``...)."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in _TAGS or "-" in p or p in CONTROL_ACTIONS))]
    return ".".join(parts) or "message"


_TAGS = frozenset({"int", "float", "str", "bool", "none", "IceCandidate", "list", "dict"})


def _field_error(kind: str, e: ValidationError) -> ProtocolError:
    """The first validation error, in our words: field path, what is wrong, a short excerpt."""
    errors = e.errors(include_url=False, include_context=False)
    err = errors[0]
    if kind == "control" and err["type"] == "union_tag_invalid":
        action = err["input"].get("action") if isinstance(err["input"], dict) else None
        return ProtocolError("bad_control", f"unknown control action {excerpt(action)}; expected one of {', '.join(CONTROL_ACTIONS)}")
    if kind == "control" and err["type"] == "union_tag_not_found":
        return ProtocolError("bad_control", f"control needs an action: one of {', '.join(CONTROL_ACTIONS)}")
    loc = _path(err["loc"])
    whats: list[str] = []  # a union field fails once per member: say all of them
    for other in errors:
        if _path(other["loc"]) == loc:
            what = other["msg"].removeprefix("Value error, ")
            if whats:
                what = what.removeprefix("Input should be ")
            if what not in whats:
                whats.append(what)
    got = "" if err["type"] == "missing" else f", got {excerpt(err['input'])}"
    return ProtocolError(ERROR_CODES[kind], f"{kind}.{loc}: {' or '.join(whats)}{got}")


def parse_message(text: str, max_bytes: int) -> dict[str, Any]:
    """Decode and validate one client message; raises :class:`ProtocolError` (never anything else)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError("too_large", f"message of {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError("bad_json", f"message is not valid JSON: {e.msg} at position {e.pos}") from e
    except RecursionError as e:
        raise ProtocolError("bad_json", "message is nested too deeply") from e
    except ValueError as e:  # e.g. an integer literal beyond Python's digit limit
        raise ProtocolError("bad_json", "message contains a number too large to read") from e
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", f"message must be a JSON object, got {type(msg).__name__}")
    v = msg.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"unsupported protocol version {excerpt(v)}; this server speaks v{PROTOCOL_VERSION}")
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {excerpt(kind)}; expected one of {', '.join(CLIENT_TYPES)}")
    try:
        model: BaseModel = _ADAPTERS[kind].validate_python(msg)
    except ValidationError as e:
        raise _field_error(kind, e) from None
    except RecursionError:
        raise ProtocolError(ERROR_CODES[kind], f"{kind}: a field is nested too deeply") from None
    out: dict[str, Any] = model.model_dump()
    return out


def avatar_error(name: str, e: Exception) -> ProtocolError:
    """``unknown_avatar`` for the client: the registry's list of names for an unknown one; for
    an avatar that exists but cannot be loaded, no server paths (the log gets the details)."""
    from server.errors import AvatarNotFound

    if isinstance(e, AvatarNotFound):
        return ProtocolError("unknown_avatar", str(e))
    log.warning("avatar %r cannot be loaded: %s", name, e)
    return ProtocolError("unknown_avatar", f"avatar {excerpt(name)} is installed but cannot be loaded (the server log says why)")


# ----------------------------------------------------------------------------- SDP


def sdp_lines(sdp: str) -> tuple[str, list[str]]:
    """(line ending, non-empty lines) of an SDP text."""
    eol = "\r\n" if "\r\n" in sdp else "\n"
    return eol, [ln for ln in sdp.split(eol) if ln]


def with_media_line(sdp: str, kind: str, line: str, *, replace_prefix: str | None = None, first_only: bool = False) -> str:
    """``sdp`` with ``line`` appended to each ``kind`` media section (only the first with
    ``first_only``), dropping lines there that start with ``replace_prefix``."""
    eol, lines = sdp_lines(sdp)
    out: list[str] = []
    inside, done = False, False
    for ln in lines:
        if ln.startswith("m="):
            if inside:
                out.append(line)
                done = first_only
            inside = not done and ln.startswith(f"m={kind}")
        elif inside and replace_prefix is not None and ln.startswith(replace_prefix):
            continue
        out.append(ln)
    if inside:
        out.append(line)
    return eol.join(out) + eol


def with_audio_ptime(sdp: str, ptime_ms: int) -> str:
    """``sdp`` with ``a=ptime:<ptime_ms>`` in each audio media section (replacing any there).

    In an answer it asks the browser to packetise its microphone in ``ptime_ms`` Opus packets
    (JSEP, applying a remote description: "configure the available media formats to use the
    specified packet size"); 10 ms halves the packetisation delay of the default 20 ms.
    """
    return with_media_line(sdp, "audio", f"a=ptime:{ptime_ms}", replace_prefix="a=ptime:")


def check_offer_sdp(sdp: str) -> list[str]:
    """Refuse an offer aiortc cannot apply, naming the problem; returns the media kinds.

    Checks what ``RTCPeerConnection.setRemoteDescription`` would trip over (parse errors,
    missing ICE credentials, mid, DTLS fingerprint or rtcp-mux, no codec in common) before the
    peer connection is touched, so a refused offer leaves the session usable.
    """
    from aiortc.codecs import CODECS
    from aiortc.rtcpeerconnection import find_common_codecs
    from aiortc.sdp import SessionDescription

    if "v=0" not in sdp:
        raise ProtocolError("bad_offer", "offer.sdp must be an SDP string starting with v=0")
    try:
        desc = SessionDescription.parse(sdp)
    except Exception:  # aiortc's parser raises many kinds on malformed lines
        raise ProtocolError("bad_offer", "offer.sdp is not valid SDP (a line could not be parsed); send the browser's offer unchanged") from None
    media = [m.kind for m in desc.media]
    if not media:
        raise ProtocolError("bad_offer", "the offer has no media sections (m= lines); it is not a WebRTC offer")
    if "audio" not in media:
        raise ProtocolError("no_audio", f"the offer has no audio m-line (media: {excerpt(media)}); send the microphone")
    if "video" not in media:
        raise ProtocolError("bad_offer", "the offer has no video m-line to return the avatar on (add a recvonly video transceiver)")
    mids: set[str] = set()
    for i, m in enumerate(desc.media):
        where = f"media section {i} ({excerpt(m.kind)})"
        if m.kind not in ("audio", "video", "application"):
            raise ProtocolError("bad_offer", f"{where}: unsupported media kind")
        if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
            raise ProtocolError("bad_offer", f"{where}: ICE username fragment or password missing (a=ice-ufrag, a=ice-pwd)")
        if not m.dtls or not m.dtls.fingerprints:
            raise ProtocolError("bad_offer", f"{where}: no DTLS fingerprint (a=fingerprint)")
        mid = m.rtp.muxId
        if not mid or mid in mids:
            raise ProtocolError("bad_offer", f"{where}: missing or repeated a=mid")
        mids.add(mid)
        if m.kind in ("audio", "video"):
            if not m.rtcp_mux:
                raise ProtocolError("bad_offer", f"{where}: rtcp-mux is required (a=rtcp-mux)")
            if not find_common_codecs(CODECS[m.kind], m.rtp.codecs):
                names = ", ".join(sorted({c.mimeType for c in CODECS[m.kind] if not c.mimeType.lower().endswith("/rtx")}))
                raise ProtocolError("bad_offer", f"{where}: no codec in common (this server speaks {names})")
        elif m.sctpCapabilities is None and m.sctp_port is None:
            raise ProtocolError("bad_offer", f"{where}: data channel section without SCTP parameters")
    return media


# ----------------------------------------------------------------------------- docs


def _type_name(schema: dict[str, Any]) -> str:
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_type_name(s) for s in schema["anyOf"])
    if "$ref" in schema:
        return "object"
    t = schema.get("type", "any")
    bounds = []
    if "minimum" in schema:
        bounds.append(f"≥ {schema['minimum']}")
    if "maximum" in schema:
        bounds.append(f"≤ {schema['maximum']}")
    if "maxLength" in schema:
        bounds.append(f"≤ {schema['maxLength']} chars")
    if "pattern" in schema:
        bounds.append(f"`{schema['pattern']}`")
    return str(t) + (f" ({', '.join(bounds)})" if bounds else "")


def _rows(model: type[BaseModel], skip: tuple[str, ...]) -> str:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    cells = []
    for name, prop in schema["properties"].items():
        if name in skip:
            continue
        opt = "" if name in required else "optional "
        desc = prop.get("description", "")
        default = f"; default {json.dumps(prop['default'])}" if "default" in prop and prop["default"] is not None else ""
        cells.append(f"{opt}`{name}`: {_type_name(prop)}{(' — ' + desc) if desc else ''}{default}")
    return "<br>".join(cells) or "—"


def doc_tables() -> str:
    """The client-message tables of docs/protocol.md, generated from the models."""
    lines = ["| type | fields | meaning |", "|---|---|---|"]
    for kind, model in MESSAGE_TYPES.items():
        if model is None:
            lines.append(f"| `{kind}` | `action` + fields (below) | change the running session |")
            continue
        lines.append(f"| `{kind}` | {_rows(model, ('v', 'type'))} | {' '.join((model.__doc__ or '').split())} |")
    lines += ["", "Control actions:", "", "| action | fields | effect |", "|---|---|---|"]
    for action, model in CONTROL_ACTIONS.items():
        lines.append(f"| `{action}` | {_rows(model, ('v', 'type', 'action'))} | {' '.join((model.__doc__ or '').split())} |")
    lines += ["", "`IceCandidate`: " + _rows(IceCandidate, ())]
    return "\n".join(lines)


DOC_BEGIN = "<!-- client-messages: generated by `python -m server.protocol`; do not edit -->"
DOC_END = "<!-- end client-messages -->"


def updated_doc(text: str) -> str:
    """``text`` (docs/protocol.md) with the generated tables between the markers replaced."""
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    return f"{head}{DOC_BEGIN}\n{doc_tables()}\n{DOC_END}{tail}"


if __name__ == "__main__":  # regenerate docs/protocol.md's client-message tables
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
    doc.write_text(updated_doc(doc.read_text()))
    print(f"updated {doc}")
