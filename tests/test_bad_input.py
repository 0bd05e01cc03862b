"""Misbehaving clients against the real server (subprocess on 198.18.0.1).

Each bad input must get the right ``error`` code (session kept unless ``fatal``) or a clean
close, while another session with a live call keeps receiving frames, and nothing leaks.
Run: ``tests/netns_run.sh .venv/bin/python -m pytest -q tests/test_bad_input.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection

from server.client import AvatarClient, MicTrack, load_audio, rtc_configuration, ws_url
from tests.server_proc import ROOT, ServerProcess, get_json, model_args, wait_sessions

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMIT = 256 * 1024  # bytes, the protocol's message size limit


@pytest.fixture(scope="module")
def server(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("server")
    srv = ServerProcess(netns, d / "server.log", ["--data-dir", str(d / "data"), *model_args()])
    srv.start()
    yield srv
    srv.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def background(server: ServerProcess, speech_wav: Path) -> AsyncIterator[AvatarClient]:
    """A well-behaved call that runs through the whole module; torn down with a leak check."""
    client = AvatarClient(server.url, load_audio(speech_wav), duration=600.0)
    await client.start()
    yield client
    failure = client.failure()
    await client.close()
    assert failure is None, f"the background call failed: {failure}"
    assert await wait_sessions(server.url, 0) == 0, "sessions left after every client left"
    await assert_no_leaks(server.url)


async def assert_no_leaks(base: str, timeout_s: float = 10.0) -> None:
    """/stats totals: no open peer connections and no session tasks (waits for them to settle)."""
    deadline = time.monotonic() + timeout_s
    while True:
        totals = (await get_json(base, "/stats"))["totals"]
        if (totals["pcs"] == 0 and totals["tasks"] == 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert totals["pcs"] == 0 and totals["tasks"] == 0, f"leaked: {totals}"


async def poll_until(cond: Callable[[], bool], timeout_s: float) -> bool:
    """Check ``cond`` every 50 ms until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def still_streaming(bg: AvatarClient, server: ServerProcess) -> AsyncIterator[None]:
    """Around a misbehaviour: afterwards the background call is healthy and frames keep coming,
    and the server is back to exactly the background session."""
    yield
    n = len(bg.stats.frames)
    await poll_until(lambda: len(bg.stats.frames) >= n + 15, 5.0)
    assert bg.failure() is None, f"background call failed: {bg.failure()}"
    assert len(bg.stats.frames) >= n + 15, "background session stopped receiving frames"
    assert await wait_sessions(server.url, 1) == 1, "misbehaving session not cleaned up"


@contextlib.asynccontextmanager
async def raw_ws(server: ServerProcess) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A bare signaling socket, its ``welcome`` already read."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server.url)) as ws:
        first = await recv(ws)
        assert first is not None and first["type"] == "welcome", first
        yield ws


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The next message that is not a periodic ``stats`` event; None when the socket closed."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout_s)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        data: dict[str, Any] = json.loads(msg.data)
        assert data.get("v") == 1, data
        if data.get("type") == "event" and data.get("name") == "stats":
            continue
        return data


async def expect_error(ws: aiohttp.ClientWebSocketResponse, code: str) -> dict[str, Any]:
    """Read until an ``error``; it must carry ``code`` and a message naming the problem."""
    msg = await recv(ws)
    assert msg is not None, f"socket closed instead of error {code!r}"
    assert msg["type"] == "error", f"expected error {code!r}, got {msg}"
    assert msg["code"] == code, msg
    assert isinstance(msg.get("message"), str) and msg["message"], msg
    return msg


async def assert_alive(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The session still answers: ping -> pong with the same ``t``."""
    await ws.send_str(json.dumps({"v": 1, "type": "control", "action": "ping", "t": 4242}))
    msg = await recv(ws)
    assert msg is not None and msg["type"] == "event" and msg["name"] == "pong", msg
    assert msg["data"]["t"] == 4242, msg


async def test_malformed_json(server: ServerProcess, background: AvatarClient) -> None:
    async with still_streaming(background, server), raw_ws(server) as ws:
        for text in ("{not json", '{"v": 1, "type": "control"', "", "\x00\x01"):
            await ws.send_str(text)
            await expect_error(ws, "bad_json")
        for text in ("[1, 2]", '"offer"', "42", "null"):
            await ws.send_str(text)
            await expect_error(ws, "bad_json")
        await ws.send_bytes(b'{"v": 1, "type": "bye"}')
        await expect_error(ws, "bad_json")
        await assert_alive(ws)


async def test_unknown_type(server: ServerProcess, background: AvatarClient) -> None:
    async with still_streaming(background, server), raw_ws(server) as ws:
        for msg in ({"v": 1, "type": "dance"}, {"v": 1}, {"v": 1, "type": None}, {"v": 1, "type": "answer", "sdp": ""}):
            await ws.send_str(json.dumps(msg))
            err = await expect_error(ws, "unknown_type")
            assert str(msg.get("type")) in err["message"], err
        await assert_alive(ws)


async def test_wrong_version(server: ServerProcess, background: AvatarClient) -> None:
    async with still_streaming(background, server), raw_ws(server) as ws:
        for v in (2, 0, "1", None):
            await ws.send_str(json.dumps({"v": v, "type": "control", "action": "ping", "t": 1}))
            await expect_error(ws, "bad_version")
        await ws.send_str(json.dumps({"type": "control", "action": "ping", "t": 1}))
        await expect_error(ws, "bad_version")
        await assert_alive(ws)


async def test_oversized_message(server: ServerProcess, background: AvatarClient) -> None:
    async with still_streaming(background, server):
        async with raw_ws(server) as ws:
            big = json.dumps({"v": 1, "type": "control", "action": "ping", "t": 1, "pad": "x" * (LIMIT + 10)})
            await ws.send_str(big)
            err = await expect_error(ws, "too_large")
            assert str(LIMIT) in err["message"], err
            if not err.get("fatal"):
                await assert_alive(ws)
        # far over the limit: the socket may be closed outright (1009), but cleanly
        async with raw_ws(server) as ws:
            await ws.send_str(json.dumps({"v": 1, "type": "offer", "sdp": "x" * (8 * LIMIT)}))
            msg = await recv(ws)
            if msg is not None:
                assert msg["type"] == "error" and msg["code"] == "too_large", msg
            else:
                assert ws.closed and ws.close_code in (1009, 1000, 1001), ws.close_code


def offer_pc(*, audio: bool, video: bool = True) -> RTCPeerConnection:
    """A client peer connection like the page's, optionally without the microphone."""
    pc = RTCPeerConnection(rtc_configuration())
    if audio:
        pc.addTransceiver(MicTrack(load_audio_silence()), direction="sendonly")
    if video:
        pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("visemes")
    return pc


def load_audio_silence() -> Any:
    import numpy as np

    return np.zeros(48_000, np.int16)


async def test_offer_without_audio(server: ServerProcess, background: AvatarClient) -> None:
    pc = offer_pc(audio=False)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with still_streaming(background, server), raw_ws(server) as ws:
            await ws.send_str(json.dumps({"v": 1, "type": "offer", "sdp": pc.localDescription.sdp}))
            await expect_error(ws, "no_audio")
            await assert_alive(ws)
    finally:
        await pc.close()


async def test_garbage_sdp(server: ServerProcess, background: AvatarClient) -> None:
    async with still_streaming(background, server), raw_ws(server) as ws:
        broken = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio banana\r\nm=video 9 UDP/TLS/RTP/SAVPF x\r\n"
        for sdp in ("garbage", "", 17, None, ["v=0"], broken):
            await ws.send_str(json.dumps({"v": 1, "type": "offer", "sdp": sdp}))
            await expect_error(ws, "bad_offer")
        await ws.send_str(json.dumps({"v": 1, "type": "offer"}))
        await expect_error(ws, "bad_offer")
        await assert_alive(ws)


async def test_bad_control(server: ServerProcess, background: AvatarClient) -> None:
    async with still_streaming(background, server), raw_ws(server) as ws:
        for msg in (
            {"action": "fly"},
            {},
            {"action": "set_emotion", "emotion": "bored"},
            {"action": "set_emotion", "emotion": "happy", "intensity": 7},
            {"action": "set_avatar"},
        ):
            await ws.send_str(json.dumps({"v": 1, "type": "control", **msg}))
            await expect_error(ws, "bad_control")
        await assert_alive(ws)


async def test_unknown_avatar_in_offer(server: ServerProcess, background: AvatarClient) -> None:
    pc = offer_pc(audio=True)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with still_streaming(background, server), raw_ws(server) as ws:
            offer = {"v": 1, "type": "offer", "sdp": pc.localDescription.sdp, "avatar": "no-such-avatar-xyz"}
            await ws.send_str(json.dumps(offer))
            err = await expect_error(ws, "unknown_avatar")
            assert "no-such-avatar-xyz" in err["message"], err
    finally:
        await pc.close()


async def test_client_closes_pc_without_bye(server: ServerProcess, background: AvatarClient, speech_wav: Path) -> None:
    async with still_streaming(background, server):
        c = AvatarClient(server.url, load_audio(speech_wav), duration=60.0)
        try:
            await c.start()
            assert await wait_sessions(server.url, 2) == 2
            assert await poll_until(lambda: len(c.stats.frames) >= 10, 10.0), "no frames"
        finally:
            await c.close(bye=False)  # pc closed, socket closed, no `bye`


async def test_client_process_killed_mid_call(
    server: ServerProcess, background: AvatarClient, speech_wav: Path
) -> None:
    """SIGKILL a client process in the middle of a call: socket and ICE vanish at once."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "client", "--url", server.url, "--audio", str(speech_wav), "--duration", "120",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with still_streaming(background, server):
            seen = await wait_sessions(server.url, 2, timeout_s=30.0)
            assert seen == 2, "victim session never appeared"
            deadline = time.monotonic() + 20.0
            flowing = False
            while not flowing and time.monotonic() < deadline:  # wait until its media flows
                sessions = (await get_json(server.url, "/stats"))["sessions"]
                victim = [s for s in sessions if s["session"] != background.stats.session]
                flowing = bool(victim) and victim[0]["frames"] > 10 and victim[0]["audio_frames"] > 10
                await asyncio.sleep(0.2)
            assert flowing, "victim's media never flowed"
            os.kill(proc.pid, signal.SIGKILL)
            assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_candidate_before_offer(server: ServerProcess, background: AvatarClient) -> None:
    cand = {"candidate": "candidate:1 1 UDP 2122252543 198.18.0.2 40000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    async with still_streaming(background, server), raw_ws(server) as ws:
        await ws.send_str(json.dumps({"v": 1, "type": "candidate", "candidate": cand}))
        await expect_error(ws, "state")
        await ws.send_str(json.dumps({"v": 1, "type": "candidate", "candidate": None}))  # end of candidates: fine
        await assert_alive(ws)


async def test_second_offer_in_a_live_call(server: ServerProcess, background: AvatarClient, speech_wav: Path) -> None:
    async with still_streaming(background, server):
        c = AvatarClient(server.url, load_audio(speech_wav), duration=60.0)
        try:
            await c.start()
            assert c.sig is not None and c.pc is not None
            await c.sig.send("offer", sdp=c.pc.localDescription.sdp)
            assert await poll_until(lambda: c.failure() is not None, 10.0), "no error for a second offer"
            err = c.failure()
            assert err is not None and err.code == "state", err
            n = len(c.stats.frames)
            assert await poll_until(lambda: len(c.stats.frames) >= n + 15, 5.0), "call stopped after the error"
        finally:
            await c.close()


async def test_peer_connection_dies_socket_stays(server: ServerProcess, background: AvatarClient, speech_wav: Path) -> None:
    """The media path vanishes (pc closed) while the signaling socket stays open: the server
    must notice from the peer connection and end the session itself."""
    async with still_streaming(background, server):
        c = AvatarClient(server.url, load_audio(speech_wav), duration=60.0)
        try:
            await c.start()
            assert await poll_until(lambda: len(c.stats.frames) >= 10, 10.0), "no frames"
            assert c.pc is not None and c.sig is not None
            await c.pc.close()
            assert await wait_sessions(server.url, 1, timeout_s=20.0) == 1, "server kept the dead session"
            sig = c.sig
            assert await poll_until(lambda: sig.ws.closed or c.failure() is not None, 5.0), "socket left open"
        finally:
            await c.close(bye=False)
