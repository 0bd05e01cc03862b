"""Off this machine, safely: HTTPS with a self-signed certificate and access tokens, end to end.

Runs inside the private network (``make test``). The server listens on 198.18.0.2 (not
loopback, so tokens are required: ``[server] auth = "auto"``) with ``--self-signed``. Checks:
every endpoint refuses a missing, wrong or expired token with a clear 401 / 403; roles and
stages are enforced; the headless client calls over ``wss://`` with a presenter token; a viewer
token from the call's own watch link watches that stage and only that one; ``/metrics`` is
admin-only; and Chromium opens the page over HTTPS from the presenter link, starts a call, sees
the avatar, and the watch link from its Share panel works in a second browser.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from server.client import AvatarClient, ClientError, load_audio
from server.watch import WatchClient
from tests.server_proc import ROOT, ServerProcess, model_args

HOST = "198.18.0.2"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def secure(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server on a non-loopback address with HTTPS (self-signed) and tokens required."""
    d = tmp_path_factory.mktemp("secure")
    srv = ServerProcess(HOST, d / "server.log", ["--data-dir", str(d / "data"), "--auth", "auto", "--self-signed", *model_args()])
    srv.start()
    yield srv
    srv.stop()
    log = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in log, srv.log_tail(80)


def token(srv: ServerProcess, role: str, *extra: str) -> str:
    """``avatar token create`` with the server's data directory: the token on the last line."""
    data = srv.args[srv.args.index("--data-dir") + 1]
    out = subprocess.run([sys.executable, "-m", "server", "token", "create", "--role", role, "--data-dir", data, *extra],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


async def status(http: aiohttp.ClientSession, method: str, url: str, tok: str | None = None, **kw: object) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    async with http.request(method, url, headers=headers, ssl=False, **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.text()


async def test_tokens_guard_every_endpoint(secure: ServerProcess, speech_wav: Path) -> None:
    base = secure.url
    assert base.startswith("https://")
    admin, presenter = token(secure, "admin"), token(secure, "presenter")
    async with aiohttp.ClientSession() as http:
        assert (await status(http, "GET", base + "/healthz"))[0] == 200  # public
        assert (await status(http, "GET", base + "/"))[0] == 200  # the page itself holds nothing
        code, body = await status(http, "GET", base + "/stats")
        assert code == 401 and "needs an access token" in body, body
        code, body = await status(http, "GET", base + "/stats", presenter)
        assert code == 403 and "needs admin" in body, body
        assert (await status(http, "GET", base + "/stats", admin))[0] == 200
        code, body = await status(http, "GET", base + "/metrics", admin)
        assert code == 200 and "avatar_sessions" in body
        assert (await status(http, "GET", base + "/metrics", presenter))[0] == 403
        code, body = await status(http, "GET", base + "/avatars", "not-a-token")
        assert code == 401 and "not valid" in body, body
        code, body = await status(http, "POST", base + "/tokens", admin, json={"role": "viewer", "stage": "abc", "ttl_s": 60})
        assert code == 200 and "token" in body
        # withdrawing a likeness: a presenter may, an anonymous caller may not; only photos
        assert (await status(http, "DELETE", base + "/avatars/ava"))[0] == 401
        code, body = await status(http, "DELETE", base + "/avatars/ava", presenter)
        assert code == 400 and "only photo avatars" in body, body
        code, body = await status(http, "DELETE", base + "/avatars/nobody", presenter)
        assert code == 404 and "nobody" in body, body

    # no token: the signaling socket is refused before any session exists
    with pytest.raises(ClientError, match="401"):
        c = AvatarClient(base, load_audio(speech_wav), insecure=True)
        try:
            await c.connect()
        finally:
            await c.close(bye=False)

    speaker = AvatarClient(base, load_audio(speech_wav), duration=10.0, token=presenter, insecure=True)
    try:
        welcome = await speaker.connect()
        speaker.make_pc()
        await speaker.negotiate()
        stage = welcome["stage"]
        assert "?token=" in stage["watch"] and stage["token"], stage
        # the watch link's own token watches this stage ...
        v = WatchClient(base + stage["watch"], insecure=True)
        try:
            await v.start()
            await asyncio.wait_for(v.first_frame.wait(), 10)
        finally:
            await v.close()
        # ... and no other: a viewer token of another stage, or none, is refused
        other = token(secure, "viewer", "--stage", "someotherstage")
        for tok, code_want in ((other, "403"), (None, "401")):
            w = WatchClient(f"{base}/watch/{stage['id']}", token=tok, insecure=True)
            with pytest.raises(ClientError, match=code_want):
                try:
                    await w.start()
                finally:
                    await w.close(leave=False)
    finally:
        await speaker.close()


async def test_chromium_over_https_with_a_token(secure: ServerProcess, speech_wav: Path, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    presenter = token(secure, "presenter")
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--autoplay-policy=no-user-gesture-required", "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={speech_wav}"]
    async with async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(str(tmp_path / "p1"), executable_path=CHROMIUM, args=args, ignore_https_errors=True)
        viewer_ctx = await pw.chromium.launch_persistent_context(str(tmp_path / "p2"), executable_path=CHROMIUM, args=args, ignore_https_errors=True)
        try:
            page = await ctx.new_page()
            # without the token the page loads but cannot start: a clear refusal
            await page.goto(secure.url + "/")
            await page.click("#btn-start")
            await page.wait_for_function("() => ['live', 'error'].includes(document.body.dataset.state)", timeout=30_000)
            assert await page.evaluate("document.body.dataset.state") == "error"
            # with the presenter link it goes live over HTTPS
            await page.goto(f"{secure.url}/?token={presenter}")
            await page.click("#btn-start")
            await page.wait_for_function("() => ['live', 'error'].includes(document.body.dataset.state)", timeout=30_000)
            assert await page.evaluate("document.body.dataset.state") == "live", await page.inner_text("#message")
            await page.wait_for_function("() => document.getElementById('avatar-video').videoWidth > 0", timeout=10_000)
            watch = await page.input_value("#share-watch")
            assert watch.startswith(f"https://{HOST}:") and "token=" in watch
            viewer = await viewer_ctx.new_page()
            await viewer.goto(watch)
            await viewer.wait_for_function("() => window.avatarWatch.framesShown > 10", timeout=20_000)
            # the same link without its token does not let anyone watch
            bare = await viewer_ctx.new_page()
            await bare.goto(watch.split("?")[0])
            await bare.wait_for_function("() => window.avatarWatch.state === 'error'", timeout=20_000)
            assert "does not let you watch" in await bare.inner_text("#overlay-title")
        finally:
            await viewer_ctx.close()
            await ctx.close()


async def test_photo_avatars_belong_to_their_presenter(secure: ServerProcess, tmp_path: Path) -> None:
    """A photo avatar registered for ``alice`` is listed, usable and removable by alice's
    presenter tokens and admins only; for anyone else it does not exist (not in ``/avatars``
    or ``welcome``, ``unknown_avatar`` for set_avatar, 404 for a delete)."""
    import json

    import cv2
    from skimage import data as skdata

    img = tmp_path / "astronaut.png"
    cv2.imwrite(str(img), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    data = secure.args[secure.args.index("--data-dir") + 1]
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "server", "add-photo", str(img), "--name", "alices-face", "--consent-by", "alice",
                         "--owner", "alice", "--data-dir", data], cwd=ROOT, check=True, capture_output=True, text=True)
    alice, bob, admin = (token(secure, "presenter", "--subject", "alice"), token(secure, "presenter", "--subject", "bob"),
                         token(secure, "admin"))
    anonymous = token(secure, "presenter")  # no subject: its own, never "alice"
    base = secure.url
    async with aiohttp.ClientSession() as http:
        for tok, listed in ((alice, True), (admin, True), (bob, False), (anonymous, False)):
            code, body = await status(http, "GET", base + "/avatars", tok)
            assert code == 200 and ("alices-face" in body) == listed, body

        async def set_avatar(tok: str) -> tuple[dict[str, object], dict[str, object]]:
            ws_url = base.replace("https://", "wss://") + f"/ws?token={tok}"
            async with http.ws_connect(ws_url, ssl=False) as ws:
                hello = json.loads((await ws.receive(timeout=10)).data)
                await ws.send_str(json.dumps({"v": 1, "type": "control", "action": "set_avatar", "avatar": "alices-face"}))
                return hello, json.loads((await ws.receive(timeout=10)).data)

        hello, reply = await set_avatar(bob)
        assert "alices-face" not in json.dumps(hello["avatars"])
        assert reply["code"] == "unknown_avatar" and "alices-face" not in str(reply["message"]).split("available:")[1], reply
        hello, reply = await set_avatar(alice)
        assert any(a["name"] == "alices-face" for a in hello["avatars"])  # type: ignore[union-attr]
        assert reply["code"] == "state", reply  # hers: only "before offer" stands in the way

        code, body = await status(http, "DELETE", base + "/avatars/alices-face", bob)
        assert code == 404 and "alices-face" in body, body
        photo = Path(data) / "photos" / "alices-face"
        assert photo.is_dir()
        code, body = await status(http, "DELETE", base + "/avatars/alices-face", alice)
        assert code == 200, body
        assert not photo.exists()
