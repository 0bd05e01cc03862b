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

            # the OBS page: video only
            obs = await viewer.context.new_page()
            await obs.goto(obs_url + "&audio=0")
            await obs.wait_for_function("() => window.avatarObs.state === 'live'", timeout=20_000)
            assert await obs.evaluate("document.querySelector('video').srcObject.getAudioTracks().length") == 0

            # the speaker stops: the viewer is told
            await speaker.click("#btn-stop")
            await viewer.wait_for_function("() => window.avatarWatch.state === 'ended'", timeout=10_000)
            assert "ended" in (await viewer.inner_text("#overlay-title")).lower()
            assert not verrors, verrors
        assert not errors, errors
