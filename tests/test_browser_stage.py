"""Stages in real browsers: a speaker's page shares, a second Chromium watches and reacts.

Run inside the private network (``make test``). The speaker presses Start with a fake
microphone playing speech; the Share panel shows the watch and OBS links; a second browser
(its own profile) opens the watch link and must see the avatar and receive its audio; a
reaction from the viewer reaches the speaker's page; the OBS page plays video only with
``?audio=0``; when the speaker stops, the viewer is told that the stage has ended.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.server_proc import DataDirServer as Server
from tests.test_browser import body_state, browser_page

pytestmark = pytest.mark.browser

AUDIO_STATS_JS = """async () => {
  const pc = window.avatarWatchPc;
  if (!pc) return null;
  const out = {audio: null, video: null};
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp') out[s.kind] = {packets: s.packetsReceived, energy: s.totalAudioEnergy ?? null,
                                                  frames: s.framesDecoded ?? null};
  });
  return out;
}"""


def check_transparent(png: Path) -> None:
    """The page's checkerboard shows where the avatar has no pixels (the frame's corners), and the
    avatar covers it in the middle: the OBS page is transparent around the avatar."""
    import cv2
    import numpy as np

    img = cv2.imread(str(png))[..., ::-1].astype(np.int32)
    # 32 px checker cells: (8, 8) and (40, 40) lie in cells of one colour, (40, 8) and (8, 40) in the other
    first = 0 if img[8, 8].max() < 128 else 255
    for (x, y), want in (((8, 8), first), ((40, 40), first), ((40, 8), 255 - first), ((8, 40), 255 - first)):
        px = img[y, x]
        assert np.abs(px - want).max() <= 40, f"corner pixel {(x, y)} is {px.tolist()}, not the checkerboard's {want}: {png}"
    centre = img[240:272, 240:272].reshape(-1, 3)
    cells = np.abs(centre[:, None, :] - np.array([[0, 0, 0], [255, 255, 255]])[None]).max(axis=2).min(axis=1)
    assert (cells > 40).mean() > 0.9, f"the avatar does not cover the middle of the OBS page: {png}"


async def test_share_watch_react_and_end(server: Server, speech_wav: Path, tmp_path: Path) -> None:
    async with browser_page(tmp_path / "speaker", server.url, speech_wav) as (speaker, errors):
        await speaker.goto(server.url + "/")
        await speaker.click("#btn-start")
        await speaker.wait_for_function("() => ['live', 'error'].includes(document.body.dataset.state)", timeout=30_000)
        assert await body_state(speaker) == "live", await speaker.inner_text("#message")
        assert await speaker.is_visible("#share-card")
        watch_url = await speaker.input_value("#share-watch")
        obs_url = await speaker.input_value("#share-obs")
        stage = await speaker.evaluate("window.avatarClient.stats.stage")
        assert watch_url == f"{server.url}/watch/{stage}" and f"/obs/{stage}" in obs_url

        async with browser_page(tmp_path / "viewer", server.url, None) as (viewer, verrors):
            await viewer.goto(watch_url)
            await viewer.wait_for_function("() => ['live', 'error', 'ended'].includes(window.avatarWatch.state)", timeout=20_000)
            state = await viewer.evaluate("window.avatarWatch")
            assert state["state"] == "live", state
            await viewer.wait_for_function("() => window.avatarWatch.framesShown > 30", timeout=10_000)
            width = await viewer.evaluate("document.getElementById('watch-video').videoWidth")
            assert width > 0
            tracks = await viewer.evaluate("document.getElementById('watch-video').srcObject.getAudioTracks().length")
            assert tracks == 1, "the watch page has no audio track"
            await asyncio.sleep(3.0)  # the fake microphone's speech reaches the viewer, delayed
            rtp = await viewer.evaluate(AUDIO_STATS_JS)
            assert rtp["audio"]["packets"] > 100 and rtp["video"]["frames"] > 60, rtp
            assert rtp["audio"]["energy"] is None or rtp["audio"]["energy"] > 0, f"the viewer hears only silence: {rtp}"
            viewers = await speaker.evaluate("window.avatarClient.stats.viewers")
            assert viewers == 1

            # a reaction reaches the speaker's page
            await viewer.click("[data-reaction='applause']")
            await speaker.wait_for_function("() => window.avatarClient.stats.audience.length > 0", timeout=5_000)
            feed = await speaker.inner_text("#audience-feed")
            assert "applause" in feed
            audience = await speaker.evaluate("window.avatarClient.stats.audience")
            assert audience[0]["animated"] is True, audience  # the avatar nodded

            # the OBS page, video only: real transparency over a checkerboard
            obs = await viewer.context.new_page()
            await obs.goto(obs_url + "&audio=0")
            await obs.wait_for_function("() => window.avatarObs.state === 'live' && window.avatarObs.framesDrawn > 20", timeout=20_000)
            assert await obs.evaluate("document.querySelector('video').srcObject.getAudioTracks().length") == 0
            await obs.add_style_tag(content="html { background: repeating-conic-gradient(#000 0 25%, #fff 0 50%) 0 0 / 64px 64px; }")
            await asyncio.sleep(0.3)
            shot = tmp_path / "obs.png"
            await obs.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 512, "height": 512})
            check_transparent(shot)
            await obs.close()

            # the speaker stops: the viewer is told
            await speaker.click("#btn-stop")
            await viewer.wait_for_function("() => window.avatarWatch.state === 'ended'", timeout=10_000)
            assert "ended" in (await viewer.inner_text("#overlay-title")).lower()
            assert not verrors, verrors
        assert not errors, errors
