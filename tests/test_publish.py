"""Publishing a stage to an SFU: Debian's Janus VideoRoom, and a WHIP endpoint.

Runs inside the private network (``make test``). Janus 1.1 (Debian) is started by the test with
a private configuration; the server is configured with ``[publish] janus_url``; when a speaker
starts a call, its stage joins the room as a publisher, and a subscriber of the room (the test,
through Janus's own API, with aiortc) must receive the avatar at >= 25 fps with audio.

The WHIP endpoint is the test's own, written to RFC 9725 (checks ``Content-Type:
application/sdp`` and ``Authorization: Bearer``, answers ``201 Created`` with ``Location``,
ends the session on ``DELETE``) with aiortc receiving the media: no WHIP server ships as a
Debian, PyPI or npm package.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.client import AvatarClient, load_audio
from tests.janus_proc import JanusApi, JanusProcess
from tests.server_proc import ServerProcess, free_port, get_json, model_args

MIN_FPS = 25.0
ROOM = 4321
WHIP_TOKEN = "test-whip-token"


class Receiver:
    """Counts the frames of the tracks a peer connection receives."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.video: list[float] = []
        self.audio = 0
        self.tasks: list[asyncio.Task[None]] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.VideoFrame):
                self.video.append(time.monotonic())
            else:
                self.audio += 1

    def fps(self, last_s: float = 3.0) -> float:
        """Frames per second over the last ``last_s`` s of video."""
        if len(self.video) < 2:
            return 0.0
        recent = [t for t in self.video if t >= self.video[-1] - last_s]
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _server(netns: str, d: Path, publish: str) -> ServerProcess:
    cfg = d / "publish.toml"
    cfg.write_text(f"[publish]\n{publish}\n")
    return ServerProcess(netns, d / "server.log", ["--config", str(cfg), "--data-dir", str(d / "data"), *model_args()])


async def _speak(base: str, wav: Path, seconds: float) -> AvatarClient:
    speaker = AvatarClient(base, load_audio(wav), duration=seconds)
    await speaker.connect()
    speaker.make_pc()
    await speaker.negotiate()
    return speaker


async def _publish_state(base: str, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    pubs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        sessions = (await get_json(base, "/stats"))["sessions"]
        pubs = [p for s in sessions for p in (s.get("program") or {}).get("publish", [])]
        if pubs and pubs[0]["state"] != "starting" and pubs[0]["connection"] == "connected":
            return pubs[0]
        if pubs and pubs[0]["state"] == "failed":
            return pubs[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"the stage did not publish within {timeout_s} s: {pubs}")


@pytest.fixture(scope="module")
def janus(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JanusProcess]:
    """Debian's Janus on the private address."""
    j = JanusProcess(netns, tmp_path_factory.mktemp("janus"))
    j.start()
    yield j
    j.stop()


async def test_stage_reaches_a_janus_viewer(netns: str, janus: JanusProcess, speech_wav: Path, tmp_path: Path) -> None:
    srv = _server(netns, tmp_path, f'janus_url = "{janus.url}"\nroom = {ROOM}\ndisplay = "presenter"')
    srv.start()
    try:
        speaker = await _speak(srv.url, speech_wav, 20.0)
        try:
            pub = await _publish_state(srv.url)
            assert pub["state"] == "published", f"{pub}\n{srv.log_tail()}\n{janus.log_tail()}"
            async with aiohttp.ClientSession() as http:
                api = JanusApi(http, janus.url)
                await api.attach()
                listing = await api.message({"request": "listparticipants", "room": ROOM})
                people = listing["plugindata"]["data"]["participants"]
                feed = next(p["id"] for p in people if p.get("display") == "presenter" and p.get("publisher"))
                joined = await api.message({"request": "join", "ptype": "subscriber", "room": ROOM, "streams": [{"feed": feed}]})
                offer = joined["jsep"]
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                rx = Receiver(pc)
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                await api.message({"request": "start"}, {"type": "answer", "sdp": pc.localDescription.sdp})
                try:
                    await asyncio.sleep(5.0)
                    print(f"\nJanus viewer: {rx.fps():.1f} fps, {rx.audio} audio frames, {len(rx.video)} video frames")
                    assert rx.fps() >= MIN_FPS, f"{rx.fps():.1f} fps through Janus\n{janus.log_tail()}"
                    assert rx.audio >= 100, f"only {rx.audio} audio frames through Janus"
                finally:
                    await rx.close()
                    await pc.close()
                    await api.destroy()
        finally:
            await speaker.close()
        # the stage ended: it left the room
        async with aiohttp.ClientSession() as http:
            api = JanusApi(http, janus.url)
            await api.attach()
            for _ in range(50):
                listing = await api.message({"request": "listparticipants", "room": ROOM})
                if not [p for p in listing["plugindata"]["data"]["participants"] if p.get("display") == "presenter"]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the ended stage is still in the room: {listing}")
            await api.destroy()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_path.read_text(errors="replace"), srv.log_tail(80)


class WhipEndpoint:
    """An RFC 9725 WHIP endpoint receiving with aiortc (the test's own server)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = free_port(host)
        self.sessions: dict[str, tuple[RTCPeerConnection, Receiver]] = {}
        self.deleted: list[str] = []
        self.refused: list[int] = []
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/whip/live"

    async def post(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {WHIP_TOKEN}":
            self.refused.append(401)
            return web.Response(status=401, text="bad token")
        if request.content_type != "application/sdp":
            self.refused.append(415)
            return web.Response(status=415)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        rx = Receiver(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        sid = f"s{len(self.sessions)}"
        self.sessions[sid] = (pc, rx)
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": f"/whip/session/{sid}"})

    async def delete(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        if sid not in self.sessions:
            return web.Response(status=404)
        pc, rx = self.sessions[sid]
        await rx.close()
        await pc.close()
        self.deleted.append(sid)
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/whip/live", self.post)
        app.router.add_delete("/whip/session/{sid}", self.delete)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()

    async def stop(self) -> None:
        for pc, rx in self.sessions.values():
            await rx.close()
            await pc.close()
        if self.runner is not None:
            await self.runner.cleanup()


async def test_stage_publishes_over_whip(netns: str, speech_wav: Path, tmp_path: Path) -> None:
    whip = WhipEndpoint("198.18.0.2")
    await whip.start()
    srv = _server(netns, tmp_path, f'whip_url = "{whip.url}"\nwhip_token = "{WHIP_TOKEN}"')
    try:
        srv.start()
        speaker = await _speak(srv.url, speech_wav, 15.0)
        try:
            pub = await _publish_state(srv.url)
            assert pub["state"] == "published", f"{pub}\n{srv.log_tail()}"
            await asyncio.sleep(4.0)
            (pc, rx), = whip.sessions.values()
            print(f"\nWHIP endpoint: {rx.fps():.1f} fps, {rx.audio} audio frames")
            assert rx.fps() >= MIN_FPS and rx.audio >= 100, (rx.fps(), rx.audio)
        finally:
            await speaker.close()
        for _ in range(50):  # the stage ended: the publisher DELETEs its WHIP session
            if whip.deleted:
                break
            await asyncio.sleep(0.1)
        assert whip.deleted == ["s0"] and not whip.refused
    finally:
        srv.stop()
        await whip.stop()


async def test_whip_refusal_is_reported(netns: str, speech_wav: Path, tmp_path: Path) -> None:
    whip = WhipEndpoint("198.18.0.2")
    await whip.start()
    srv = _server(netns, tmp_path, f'whip_url = "{whip.url}"\nwhip_token = "wrong"')
    try:
        srv.start()
        speaker = await _speak(srv.url, speech_wav, 6.0)
        try:
            pub = await _publish_state(srv.url)
            assert pub["state"] == "failed" and "HTTP 401" in str(pub["error"]), pub
            # the speaker's own call goes on
            st = (await get_json(srv.url, "/stats"))["sessions"][0]
            assert st["state"] == "connected", st
        finally:
            await speaker.close()
    finally:
        srv.stop()
        await whip.stop()
