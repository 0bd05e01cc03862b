"""Ask the speaker's browser to show each avatar frame as soon as it is decoded.

Browsers smooth incoming video: a jitter buffer plus a render delay, ~40 ms in Chromium on a
clean link, meant for camera video watched at a distance. The speaker watches their own mouth
follow their voice, where every millisecond shows, so the server sends the RTP
*playout-delay* header extension (``http://www.webrtc.org/experiments/rtp-hdrext/playout-delay``:
12-bit minimum and maximum in 10 ms units) with min = max = ``[video] playout_delay_ms``; with 0
Chromium renders each frame once decoded. Only where the browser's offer lists the extension
(Chromium does, Firefox does not) and only on the speaker's own return video: viewers keep their
browser's smoothing and its lip sync with the stage's audio.

aiortc neither negotiates nor writes this extension: :func:`answer_with_extension` adds it to the
answer under the offer's id, :func:`install` makes one sender write it into every packet.
"""

from __future__ import annotations

import re
from typing import Any

from aiortc.rtp import pack_header_extensions, unpack_header_extensions

from server.protocol import sdp_lines, with_media_line

PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
_EXTMAP = re.compile(r"^a=extmap:(\d+)(?:/\w+)? (\S+)")
MAX_DELAY_MS = 40_950  # 12 bits of 10 ms


def offered_id(offer_sdp: str) -> int | None:
    """The id the offer's first video section gives the playout-delay extension (None: not offered)."""
    _, lines = sdp_lines(offer_sdp)
    video = False
    for ln in lines:
        if ln.startswith("m="):
            if video:
                return None
            video = ln.startswith("m=video")
        elif video and (m := _EXTMAP.match(ln)) and m.group(2) == PLAYOUT_DELAY_URI:
            return int(m.group(1))
    return None


def answer_with_extension(answer_sdp: str, ext_id: int) -> str:
    """``answer_sdp`` with ``a=extmap:<ext_id> <playout-delay>`` in its first video section."""
    return with_media_line(answer_sdp, "video", f"a=extmap:{ext_id} {PLAYOUT_DELAY_URI}", first_only=True)


def value(min_ms: int, max_ms: int) -> bytes:
    """The extension's 3 bytes: minimum and maximum delay, 12 bits each in 10 ms units."""
    if not 0 <= min_ms <= max_ms <= MAX_DELAY_MS:
        raise ValueError(f"playout delay must satisfy 0 <= min <= max <= {MAX_DELAY_MS} ms, got {min_ms}, {max_ms}")
    lo, hi = min_ms // 10, max_ms // 10
    return bytes([lo >> 4, ((lo & 0xF) << 4) | (hi >> 8), hi & 0xFF])


def install(sender: Any, ext_id: int, delay_ms: int) -> None:
    """Make aiortc ``sender`` (an RTCRtpSender) write the extension into every RTP packet it sends."""
    if not 1 <= ext_id <= 255:
        raise ValueError(f"header extension id must be in 1..255, got {ext_id}")
    payload = value(delay_ms, delay_ms)
    ext_map = sender._RTCRtpSender__rtp_header_extensions_map  # aiortc 1.x keeps one map per sender
    original = ext_map.set

    def set_with_delay(values: Any) -> tuple[int, bytes]:
        profile, data = original(values)
        extensions = unpack_header_extensions(profile, data) if data else []
        extensions.append((ext_id, payload))
        return pack_header_extensions(extensions)

    ext_map.set = set_with_delay
