"""Hostile clients against the real server (subprocess on 198.18.0.1, one worker process).

A seeded fuzz of the signaling protocol beside a real call (never ``internal``, never a traceback, every message
answered or the socket closed with a reason); idle sockets from one address cannot lock out a
real call from another; connections that never send a request are dropped; wrong origins are
refused; photo uploads are bounded (size, pixels, disk quota, no client-chosen file names).
Run: ``tests/netns_run.sh .venv/bin/python -m pytest -q tests/test_abuse.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.client import AvatarClient, load_audio, ws_url
from server.errors import ProtocolError
from server.protocol import parse_message
from tests.server_proc import ROOT, ServerProcess, model_args, wait_sessions
from tests.test_bad_input import offer_pc, poll_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

OTHER = "198.18.0.2"  # the veth peer: "another client address" for the server on 198.18.0.1
OFFER_TIMEOUT_S = 6.0
KEEPALIVE_S = 2.0
CONNECT_TIMEOUT_S = 4.0
PER_CLIENT = 8
JUNK = "Z" * 5000
CONFIG = f"""
[server]
workers = 1
offer_timeout_s = {OFFER_TIMEOUT_S}
keepalive_timeout_s = {KEEPALIVE_S}
max_sockets_per_client = {PER_CLIENT}
max_sessions_per_client = 2
connect_timeout_s = {CONNECT_TIMEOUT_S}
max_photo_bytes = 1048576
upload_timeout_s = 10.0
[avatars]
max_store_mb = 0.05
"""


@pytest.fixture(scope="module")
def server(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("abuse")
    (d / "c.toml").write_text(CONFIG)
    srv = ServerProcess(netns, d / "server.log", ["--config", str(d / "c.toml"), "--data-dir", str(d / "data"), *model_args()])
    srv.start()
    yield srv
    srv.stop()


def assert_clean_log(server: ServerProcess) -> None:
    text = server.log_path.read_text(errors="replace")
    assert "Traceback" not in text, server.log_tail(80)
    assert "internal error" not in text, server.log_tail(80)


def assert_clean_reply(reply: dict[str, Any]) -> None:
    """An error reply: a client code (never internal), short, no input echo, no server internals."""
    if reply.get("type") != "error":
        return
    text = reply.get("message", "")
    assert reply["code"] != "internal", reply
    assert isinstance(text, str) and 0 < len(text) <= 300, reply
    assert "Z" * 81 not in text, reply
    for needle in (str(ROOT), "site-packages", "Traceback", "/tmp", "aiortc", "aioice"):
        assert needle not in text, reply


# ------------------------------------------------------------------------------- fuzz


def _deep(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


JUNK_VALUES: list[Any] = [None, True, 0, -1, 2**70, 1e308, "", JUNK, [], {}, [1, [2]], {"a": {"b": 1}}, "\u0000", "\ud800x", "auto", "happy"]


def _sdp_mutations(rng: random.Random, sdp: str) -> str:
    lines = sdp.split("\r\n")
    op = rng.randrange(9)
    i = rng.randrange(len(lines))
    if op == 0:
        del lines[i]
    elif op == 1:
        lines.insert(i, lines[i])
    elif op == 2:
        return sdp[: rng.randrange(len(sdp))]
    elif op == 3:
        lines[i] = lines[i][:2] + JUNK[: rng.choice([1, 50, 3000])]
    elif op == 4:
        lines = [ln for ln in lines if not ln.startswith(rng.choice(["a=ice-ufrag", "a=ice-pwd", "a=fingerprint", "a=mid", "a=rtcp-mux", "a=rtpmap", "m=audio", "m=video"]))]
    elif op == 5:
        lines = [ln.replace("opus", "banana").replace("VP8", "mango") for ln in lines]
    elif op == 6:
        lines[i] = lines[i].replace(" ", "  ").replace("=", "=" + str(2**64))
    elif op == 7:
        lines = [ln.replace("m=video", "m=text") for ln in lines]
    else:
        lines.insert(i, "a=candidate:1 1 UDP " + str(2**80) + " 300.1.1.1 99999 typ host")
    return "\r\n".join(lines)


def fuzz_messages(seed: int, n: int, sdp: str) -> Iterator[str]:
    """``n`` hostile or odd messages covering every type and field, deterministically."""
    rng = random.Random(seed)
    specials = [
        "[" * 50_000 + "]" * 50_000,
        '{"v": 1, "type": "control", "action": "ping", "t": ' + "9" * 5000 + "}",
        '{"v": 1, "type": "offer", "sdp": "v=0", "emotion": ' + "1" * 4400 + "}",
        json.dumps({"v": 1, "type": "offer", "sdp": sdp, "avatar": ["unhashable"]}),
        json.dumps({"v": 1, "type": "offer", "sdp": sdp, "avatar": {"a": 1}}),
        json.dumps({"v": 1, "type": "offer", "sdp": sdp, "emotion": "bored"}),
        json.dumps({"v": 1, "type": "candidate", "candidate": {"candidate": "candidate:1 1 UDP 2122252543 198.18.0.2 40000 typ host"}}),
        json.dumps({"v": 1, "type": "candidate", "candidate": {"candidate": JUNK, "sdpMid": "0"}}),
        json.dumps({"v": 1, "type": "control", "action": "set_avatar", "avatar": JUNK}),
        json.dumps({"v": 1, "type": JUNK}),
        json.dumps({"v": 1, "type": "offer", "sdp": _deep(500)}),
        "{" + '"a":' * 10 + "1" + "}" * 10,
        "",
        "\x00\x01",
        "nul",
    ]
    yield from specials
    bases: list[dict[str, Any]] = [
        {"type": "offer", "sdp": sdp},
        {"type": "offer", "sdp": sdp, "avatar": "auto", "emotion": "happy"},
        {"type": "candidate", "candidate": {"candidate": "candidate:1 1 UDP 2122252543 198.18.0.2 40000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}},
        {"type": "candidate", "candidate": None},
        {"type": "control", "action": "ping", "t": 1},
        {"type": "control", "action": "set_emotion", "emotion": "happy", "intensity": 0.5, "blend_s": 1.0},
        {"type": "control", "action": "set_avatar", "avatar": "auto"},
        {"type": "bye"},
    ]
    for _ in range(n - len(specials)):
        msg: dict[str, Any] = {"v": 1, **json.loads(json.dumps(rng.choice(bases)))}
        for _ in range(rng.choice([1, 1, 2, 3])):
            op = rng.randrange(8)
            key = rng.choice(list(msg) or ["v"])
            if op == 0:
                msg[key] = rng.choice(JUNK_VALUES)
            elif op == 1:
                msg.pop(key, None)
            elif op == 2 and msg.get("type") == "offer" and isinstance(msg.get("sdp"), str):
                msg["sdp"] = _sdp_mutations(rng, msg["sdp"])
            elif op == 3 and isinstance(msg.get("candidate"), dict):
                c = msg["candidate"]
                c[rng.choice(["candidate", "sdpMid", "sdpMLineIndex", "usernameFragment"])] = rng.choice(JUNK_VALUES)
            elif op == 4:
                msg[rng.choice(["action", "emotion", "avatar", "intensity", "blend_s", "t"])] = rng.choice(JUNK_VALUES)
            elif op == 5:
                msg["v"] = rng.choice([1, 2, "1", None, 1.0])
            elif op == 6:
                msg[JUNK[:rng.randrange(1, 200)]] = _deep(rng.randrange(1, 60))
        text = json.dumps(msg)
        if rng.random() < 0.05:
            text = text[: rng.randrange(len(text))]
        yield text


def _silent_ok(text: str, accepted: bool) -> bool:
    """Messages the protocol answers with nothing: end-of-candidates, and candidates in a call."""
    try:
        msg = parse_message(text, 262_144)
    except ProtocolError:
        return False
    if msg["type"] != "candidate":
        return False
    return accepted or msg["candidate"] is None or not msg["candidate"]["candidate"]


async def test_fuzzed_signaling_never_internal(server: ServerProcess, speech_wav: Path) -> None:
    """2,000 fuzzed messages from one address while a real call from another runs in the same
    worker: every message answered cleanly, and the call keeps its frame rate."""
    pc = offer_pc(audio=True)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    call = AvatarClient(server.url, load_audio(speech_wav), duration=600.0)  # from 198.18.0.1
    await call.start()
    await poll_until(lambda: len(call.stats.frames) >= 30, 15.0)
    stats = {"sent": 0, "errors": 0, "answers": 0, "closes": 0, "silent": 0}
    t0 = time.monotonic()
    call_t0 = call.stats.frames[-1].t
    try:
        await _fuzz(server, sdp, stats)
        assert call.failure() is None, call.failure()
        during = [f.t for f in call.stats.frames if f.t >= call_t0]
    finally:
        await call.close()
    elapsed = time.monotonic() - t0
    fps = (len(during) - 1) / (during[-1] - during[0])
    print(f"fuzz: {stats} in {elapsed:.1f} s; the call beside it: {fps:.1f} fps over {during[-1] - during[0]:.1f} s")
    assert stats["sent"] == 2000 and stats["errors"] > 500, stats
    assert elapsed < 300, f"fuzz took {elapsed:.0f} s"
    assert fps >= 25.0, f"the real call fell to {fps:.1f} fps during the fuzz"
    assert await wait_sessions(server.url, 0, timeout_s=20) == 0
    assert_clean_log(server)


async def _fuzz(server: ServerProcess, sdp: str, stats: dict[str, int]) -> None:
    """Send the seeded fuzz from the other address (its own per-client caps), one socket at a time."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(OTHER, 0))) as http:
        ws: aiohttp.ClientWebSocketResponse | None = None
        accepted = False
        since_accept = 0
        for seq, text in enumerate(fuzz_messages(19, 2000, sdp)):
            if ws is None or ws.closed:
                ws = await http.ws_connect(ws_url(server.url))
                first = json.loads((await ws.receive(timeout=10)).data)
                assert first["type"] == "welcome", first
                accepted, since_accept = False, 0
            if accepted:
                since_accept += 1
                if since_accept > 20:  # leave the call (frees its session slot), fuzz a fresh socket
                    text = json.dumps({"v": 1, "type": "bye"})
            await ws.send_str(text)
            stats["sent"] += 1
            with contextlib.suppress(ConnectionResetError):
                await ws.send_str(json.dumps({"v": 1, "type": "control", "action": "ping", "t": seq}))
            replies: list[dict[str, Any]] = []
            reason = None
            while True:
                frame = await ws.receive(timeout=30)
                if frame.type != aiohttp.WSMsgType.TEXT:
                    reason = f"closed {ws.close_code}"
                    break
                data = json.loads(frame.data)
                if data.get("type") == "event" and data.get("name") == "stats":
                    continue
                if data.get("type") == "event" and data.get("name") == "pong" and data["data"]["t"] == seq:
                    break
                replies.append(data)
            for r in replies:
                assert_clean_reply(r)
            assert len(replies) <= 1, (text[:200], replies)
            if reason is not None:  # closed: a fatal error, a bye, or the size limit said why
                stats["closes"] += 1
                why = replies[-1] if replies else {}
                assert why.get("fatal") or why.get("name") == "session_closed" or ws.close_code == 1009, (text[:200], reason, replies)
                ws = None
                continue
            if not replies:
                stats["silent"] += 1
                assert _silent_ok(text, accepted), f"no reply to {text[:200]!r}"
            elif replies[0]["type"] == "answer":
                stats["answers"] += 1
                accepted = True
            elif replies[0]["type"] == "error":
                stats["errors"] += 1
        if ws is not None:
            await ws.close()


async def test_invalid_emotion_refused_before_offer_then_call_works(server: ServerProcess) -> None:
    pc = offer_pc(audio=True)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server.url)) as ws:
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "welcome"
            offer = {"v": 1, "type": "offer", "sdp": pc.localDescription.sdp, "emotion": "bored"}
            await ws.send_str(json.dumps(offer))
            err = json.loads((await ws.receive(timeout=10)).data)
            assert err["type"] == "error" and err["code"] == "bad_offer" and "offer.emotion" in err["message"], err
            await ws.send_str(json.dumps({**offer, "emotion": "happy"}))
            answer = json.loads((await ws.receive(timeout=30)).data)
            assert answer["type"] == "answer", answer
            from aiortc import RTCSessionDescription

            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            assert await poll_until(lambda: pc.connectionState == "connected", 20.0), pc.connectionState
            await asyncio.sleep(OFFER_TIMEOUT_S + 1)  # an accepted call outlives the offer deadline
            assert not ws.closed
            await ws.send_str(json.dumps({"v": 1, "type": "bye"}))
    finally:
        await pc.close()
    assert await wait_sessions(server.url, 0, timeout_s=20) == 0


# ------------------------------------------------------------------------------- limits


async def _idle_socket(http: aiohttp.ClientSession, url: str) -> tuple[str, float]:
    """Connect, then only ping; returns the first message's kind and when the socket closed."""
    ws = await http.ws_connect(url)
    first = json.loads((await ws.receive(timeout=10)).data)
    kind = first["type"] if first["type"] != "error" else first["code"]
    while not ws.closed:
        with contextlib.suppress(ConnectionResetError):
            await ws.send_str(json.dumps({"v": 1, "type": "control", "action": "ping", "t": 1}))
        frame = await ws.receive(timeout=OFFER_TIMEOUT_S + 10)
        if frame.type == aiohttp.WSMsgType.TEXT and json.loads(frame.data).get("code") == "offer_timeout":
            kind += "+offer_timeout"
        await asyncio.sleep(0.5)
    return kind, time.monotonic()


async def test_idle_sockets_from_one_address_do_not_lock_out_a_call(server: ServerProcess, speech_wav: Path) -> None:
    t0 = time.monotonic()
    connector = aiohttp.TCPConnector(local_addr=(OTHER, 0), limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        idle = [asyncio.ensure_future(_idle_socket(http, ws_url(server.url))) for _ in range(100)]
        await asyncio.sleep(1.0)
        client = AvatarClient(server.url, load_audio(speech_wav), duration=30.0)  # from 198.18.0.1
        try:
            await client.start()
            await poll_until(lambda: len(client.stats.frames) >= 15, 15.0)
            assert client.failure() is None, client.failure()
            assert len(client.stats.frames) >= 15, "the real call got no frames"
            results = await asyncio.wait_for(asyncio.gather(*idle), OFFER_TIMEOUT_S + 20)
        finally:
            await client.close()
    kinds = [k for k, _ in results]
    assert kinds.count("welcome+offer_timeout") == PER_CLIENT, kinds
    assert kinds.count("busy") == 100 - PER_CLIENT, kinds
    assert max(t for _, t in results) - t0 < OFFER_TIMEOUT_S + 5, "idle sockets outlived the offer deadline"
    assert await wait_sessions(server.url, 0, timeout_s=20) == 0


async def test_sessions_per_client_capped_at_the_offer(server: ServerProcess) -> None:
    """A session slot is taken by an offer: two answered, the third socket's offer gets busy."""
    pc = offer_pc(audio=True)
    await pc.setLocalDescription(await pc.createOffer())
    offer = json.dumps({"v": 1, "type": "offer", "sdp": pc.localDescription.sdp})
    await pc.close()
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(ws_url(server.url)) for _ in range(3)]
        try:
            replies = []
            for ws in sockets:
                assert json.loads((await ws.receive(timeout=10)).data)["type"] == "welcome"
                await ws.send_str(offer)
                replies.append(json.loads((await ws.receive(timeout=30)).data))
            assert [r["type"] for r in replies[:2]] == ["answer", "answer"], replies
            assert replies[2]["type"] == "error" and replies[2]["code"] == "busy" and replies[2].get("fatal"), replies[2]
            assert "2 sessions" in replies[2]["message"], replies[2]
        finally:
            for ws in sockets:
                await ws.close()
    assert await wait_sessions(server.url, 0, timeout_s=20) == 0


async def test_offer_that_never_connects_gives_its_slot_back(server: ServerProcess) -> None:
    """An accepted offer with no ICE candidates (none in the SDP, none trickled) would hold its
    session slot forever; the connect deadline ends it."""
    pc = offer_pc(audio=True)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = "\r\n".join(ln for ln in pc.localDescription.sdp.split("\r\n") if not ln.startswith(("a=candidate", "a=end-of-candidates")))
    await pc.close()
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server.url)) as ws:
        assert json.loads((await ws.receive(timeout=10)).data)["type"] == "welcome"
        await ws.send_str(json.dumps({"v": 1, "type": "offer", "sdp": sdp}))
        t0 = time.monotonic()
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(CONNECT_TIMEOUT_S + 10):  # stats events keep coming meanwhile
            while True:
                frame = await ws.receive()
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                msg = json.loads(frame.data)
                if msg.get("name") != "stats":
                    got.append(msg)
        assert [m["type"] for m in got] == ["answer", "error"], got
        assert got[1]["code"] == "connect_timeout" and got[1].get("fatal"), got[1]
        assert time.monotonic() - t0 < CONNECT_TIMEOUT_S + 4
    assert await wait_sessions(server.url, 0, timeout_s=10) == 0


async def test_connections_that_send_nothing_are_dropped(server: ServerProcess) -> None:
    port = server.port
    silent = [await asyncio.open_connection(server.host, port, local_addr=(OTHER, 0)) for _ in range(50)]
    slow = []
    for _ in range(5):  # slowloris: half a request line, then nothing
        r, w = await asyncio.open_connection(server.host, port, local_addr=(OTHER, 0))
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        await w.drain()
        slow.append((r, w))
    t0 = time.monotonic()

    async def eof(reader: asyncio.StreamReader) -> float:
        data = await asyncio.wait_for(reader.read(), KEEPALIVE_S + 5)
        assert data == b"", data[:100]
        return time.monotonic() - t0

    times = await asyncio.gather(*(eof(r) for r, _ in [*silent, *slow]))
    for _, w in [*silent, *slow]:
        w.close()
    assert max(times) < KEEPALIVE_S + 3, f"a silent connection stayed {max(times):.1f} s"


# ------------------------------------------------------------------------------- origins


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://198.18.0.1.evil.example", "https://198.18.0.1"])
async def test_wrong_origin_refused_on_ws_and_upload(server: ServerProcess, origin: str) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(ws_url(server.url), headers={"Origin": origin})
        assert e.value.status == 403
        form = aiohttp.FormData()
        form.add_field("image", tiny_png(), filename="a.png")
        form.add_field("name", "evil")
        form.add_field("consent_by", "nobody")
        async with http.post(server.url + "/avatars/photo", data=form, headers={"Origin": origin}) as r:
            assert r.status == 403
            assert origin in await r.text()
        own = f"http://{server.host}:{server.port}"
        async with http.ws_connect(ws_url(server.url), headers={"Origin": own}) as ws:
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "welcome"


# ------------------------------------------------------------------------------- uploads


def _png(width: int, height: int, rows: list[bytes] | None = None, depth: int = 8) -> bytes:
    """A grayscale PNG: ``rows`` of pixels, or zeros."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    zero = bytes((width * depth + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\x00" + (rows[y] if rows else zero)) for y in range(height)) + z.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([depth, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tiny_png() -> bytes:
    return _png(64, 64)


async def _upload(server: ServerProcess, image: bytes, filename: str, name: str = "upload") -> tuple[int, str]:
    form = aiohttp.FormData()
    form.add_field("image", io.BytesIO(image), filename=filename, content_type="application/octet-stream")
    form.add_field("name", name)
    form.add_field("consent_by", "the test suite")
    async with aiohttp.ClientSession() as http, http.post(server.url + "/avatars/photo", data=form) as r:
        return r.status, await r.text()


async def test_upload_limits(server: ServerProcess) -> None:
    status, body = await _upload(server, tiny_png(), "photo." + "x" * 300)
    assert status == 400, body  # a face-less picture; the client's 300-character suffix is never used
    assert "/tmp" not in body and str(ROOT) not in body, body
    status, body = await _upload(server, b"\x00not an image", "a." + "y" * 300)
    assert status == 400 and "cannot read" in body, body
    status, body = await _upload(server, _png(20_000, 20_000, depth=1), "bomb.png")
    assert status == 400 and "40 MP" in body, body
    status, body = await _upload(server, bytes(1_200_000), "big.png")
    assert status == 413, body
    rng = random.Random(1)
    noise = [rng.randbytes(300) for _ in range(300)]
    status, body = await _upload(server, _png(300, 300, rows=noise), "noise.png")  # ~90 KB > the 50 KB quota
    assert status == 507 and "max_store_mb" in body, body
    async with aiohttp.ClientSession() as http, http.post(server.url + "/avatars/photo", data=b"x" * 100, headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 400, await r.text()
    assert_clean_log(server)
