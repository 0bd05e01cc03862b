"""Units: the signaling schema (server/protocol.py), the Origin middleware, the limit counters,
and image headers read without decoding (memory bound on a pixel bomb)."""

from __future__ import annotations

import json
import os
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from server.config import ROOT, load_config
from server.errors import ConfigError, ProtocolError
from server.limits import Limits, RateLimitedLog
from server.protocol import EXCERPT_CHARS, doc_tables, parse_message, updated_doc
from server.security import normalize_origin, origin_middleware, parse_allowed

LIMIT = 262_144


def m(**fields: Any) -> str:
    return json.dumps({"v": 1, **fields})


@pytest.mark.parametrize(
    ("text", "code", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "bad_json", "nested"),
        ('{"v": 1, "type": "control", "action": "ping", "t": ' + "9" * 5000 + "}", "bad_json", "number"),
        (m(type="control", action="ping", t=float("inf")), "bad_control", "control.t"),
        (m(type="offer", sdp="v=0", avatar=["x"]), "bad_offer", "offer.avatar"),
        (m(type="offer", sdp="v=0", avatar={"a": [1]}), "bad_offer", "offer.avatar"),
        (m(type="offer", sdp="v=0", emotion="bored"), "bad_offer", "offer.emotion"),
        (m(type="offer"), "bad_offer", "offer.sdp"),
        (m(type="offer", sdp=17), "bad_offer", "offer.sdp"),
        (m(type="candidate", candidate={"candidate": "candidate:1 1 UDP 1 198.18.0.2 9 typ host"}), "bad_candidate", "sdpMid"),
        (m(type="candidate", candidate=[1, 2]), "bad_candidate", "candidate.candidate"),
        (m(type="candidate", candidate={"candidate": "x", "sdpMLineIndex": 10**40}), "bad_candidate", "sdpMLineIndex"),
        (m(type="control", action="fly"), "bad_control", "fly"),
        (m(type="control"), "bad_control", "action"),
        (m(type="control", action="set_emotion", emotion="happy", intensity=True), "bad_control", "control.intensity"),
        (m(type="control", action="set_emotion", emotion="happy", blend_s=11), "bad_control", "control.blend_s"),
        (m(type="control", action="set_avatar", avatar="../../etc"), "bad_control", "control.avatar"),
        (m(type="control", action="set_emotion", emotion="x" * 5000), "bad_control", "control.emotion"),
        (json.dumps({"v": True, "type": "bye"}), "bad_version", "True"),
        (m(type="x" * 5000), "unknown_type", "xxx"),
        (m(type=["offer"]), "unknown_type", "offer"),
    ],
)
def test_bad_messages_get_their_code_and_a_short_message(text: str, code: str, needle: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_message(text, LIMIT)
    msg = str(e.value)
    assert e.value.code == code, msg
    assert needle in msg, msg
    assert len(msg) < 200, msg
    assert "x" * (EXCERPT_CHARS + 1) not in msg, msg
    assert str(ROOT) not in msg and "site-packages" not in msg and "Traceback" not in msg, msg


def test_good_messages_are_normalized() -> None:
    assert parse_message(m(type="control", action="set_emotion", emotion="happy"), LIMIT) == {
        "v": 1, "type": "control", "action": "set_emotion", "emotion": "happy", "intensity": 1.0, "blend_s": 0.5
    }
    t = parse_message(m(type="control", action="ping", t=4242), LIMIT)["t"]
    assert t == 4242 and isinstance(t, int)  # echoed as sent (the client matches pongs by int)
    assert parse_message(m(type="control", action="ping", t=12.5), LIMIT)["t"] == 12.5
    assert parse_message(m(type="candidate", candidate=None), LIMIT)["candidate"] is None
    cand = {"candidate": "candidate:1 1 UDP 1 198.18.0.2 9 typ host", "sdpMid": "0", "extra": 1}
    assert parse_message(m(type="candidate", candidate=cand), LIMIT)["candidate"]["sdpMid"] == "0"
    assert parse_message(m(type="offer", sdp="v=0", emotion="sad", pad=[1]), LIMIT)["emotion"] == "sad"


def test_protocol_doc_tables_match_the_schema() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert updated_doc(doc) == doc, "docs/protocol.md is stale: run `python -m server.protocol`"
    assert "`set_emotion`" in doc_tables() and "`sdpMLineIndex`" in doc_tables()


@pytest.mark.parametrize(
    ("origin", "norm"),
    [("HTTP://Example.ORG:80", "http://example.org"), ("https://a.b:8443", "https://a.b:8443"), ("null", "null")],
)
def test_normalize_origin(origin: str, norm: str) -> None:
    assert normalize_origin(origin) == norm


def test_bad_allowed_origin_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[server]\nallowed_origins = ["https://ok.example", "ftp://x/y"]\n')
    with pytest.raises(ConfigError, match="ftp://x/y"):
        load_config(p)
    assert parse_allowed(["https://OK.example:443"]) == frozenset({"https://ok.example"})


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.mark.parametrize(
    ("origin", "allowed", "status"),
    [
        (None, (), 200),
        ("SELF", (), 200),
        ("http://evil.example", (), 403),
        ("null", (), 403),
        ("http://127.0.0.1.evil.example", (), 403),
        ("http://127.0.0.1", (), 403),  # another port
        ("https://SELFHOST", (), 403),  # another scheme
        ("http://evil.example", ("http://evil.example",), 200),
        ("null", ("null",), 200),
        ("not an origin", (), 403),
    ],
)
async def test_origin_middleware(aiohttp_client: Callable[..., Any], origin: str | None, allowed: tuple[str, ...], status: int) -> None:
    app = web.Application(middlewares=[origin_middleware(parse_allowed(allowed))])
    app.router.add_post("/x", _ok)
    app.router.add_get("/x", _ok)
    client = await aiohttp_client(app)
    host = f"127.0.0.1:{client.port}"
    headers = {} if origin is None else {"Origin": origin.replace("SELFHOST", host).replace("SELF", f"http://{host}")}
    async with client.post("/x", headers=headers) as r:
        assert r.status == status, await r.text()
        if status == 403:
            assert str(headers["Origin"]) in await r.text()
    async with client.get("/x", headers=headers) as r:  # a plain GET is not guarded
        assert r.status == 200
    async with client.get("/x", headers={**headers, "Upgrade": "websocket", "Connection": "Upgrade"}) as r:
        assert (r.status == 403) == (status == 403)


def test_limits_per_client_and_total() -> None:
    lim = Limits(per_client={"socket": 2}, total={"socket": 3})
    assert lim.take("socket", "a") is None and lim.take("socket", "a") is None
    refused = lim.take("socket", "a")
    assert refused is not None and "client a" in refused
    assert lim.take("socket", "b") is None
    refused = lim.take("socket", "c")
    assert refused is not None and "server holds 3" in refused
    lim.give("socket", "a")
    assert lim.take("socket", "c") is None and lim.count("socket") == 3


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    log = RateLimitedLog(logging.getLogger("test.rl"), per_s=1.0)
    with caplog.at_level(logging.INFO, "test.rl"):
        for i in range(100):
            log.info("client error %d", i)
    assert len(caplog.records) == 1


def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width`` x ``height`` zeros (~50 KB for 20000 x 20000)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = b"\x00" + bytes((width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_pixel_bomb_refused_from_its_header_within_50_mb(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    from server.render import photo

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb(20_000, 20_000))  # 400 MP: decoding it costs >= 400 MB
    small = tmp_path / "small.png"
    small.write_bytes(_png_bomb(64, 64))
    photo._read_rgb(small)  # warm up the decoders (their first-use allocations are not the bomb's)
    peak, stop = [_rss()], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(_rss())
            stop.wait(0.001)

    base = _rss()
    sampler = threading.Thread(target=sample, daemon=True)
    tracemalloc.start()
    sampler.start()
    try:
        with pytest.raises(photo.PhotoRejected, match="at most 40 MP"):
            photo._read_rgb(bomb)
    finally:
        stop.set()
        sampler.join()
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert max(peak) - base < 50 << 20, f"RSS grew by {(max(peak) - base) >> 20} MB"
    assert py_peak < 50 << 20, f"Python allocations peaked at {py_peak >> 20} MB"


def test_header_names_the_size_and_refuses_other_formats() -> None:
    from server.render.image_header import ImageRejected, read_header

    head = read_header(_png_bomb(640, 480))
    assert (head.format, head.width, head.height, head.suffix) == ("PNG", 640, 480, ".png")
    with pytest.raises(ImageRejected, match="7000x7000 px; at most 40 MP"):
        read_header(_png_bomb(7000, 7000))
    with pytest.raises(ImageRejected, match="JPEG, PNG"):
        read_header(b"GIF89a" + bytes(100))
    with pytest.raises(ImageRejected, match="cannot read"):
        read_header(b"\x00not an image")


def test_avatar_errors_show_no_server_paths() -> None:
    from server.errors import AvatarError, AvatarNotFound
    from server.protocol import avatar_error

    assert "available: a, b" in str(avatar_error("x", AvatarNotFound("unknown avatar 'x'; available: a, b")))
    broken = avatar_error("mine", AvatarError(f"{ROOT}/data/sprites/mine/manifest.yaml: bad frame"))
    assert broken.code == "unknown_avatar" and str(ROOT) not in str(broken) and "'mine'" in str(broken)
