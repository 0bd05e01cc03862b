"""The web page in Debian's stock Firefox (ESR), driven over Marionette (tests/marionette.py).

Run inside the private network, like the chromium tests, with a private PulseAudio null sink
(tests/marionette.py NullAudio: no sound card here). Firefox's own fake microphone is a
tone, not speech, so a FAKE microphone is installed into the page before Start: the test's
speech WAV decoded by Web Audio, looping into a MediaStreamDestination, returned by a patched
``navigator.mediaDevices.getUserMedia``. Everything after the microphone is the real page and
the real Firefox: signaling, WebRTC (Opus up, VP8 down), the <video> element, the data channel.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import numpy as np
import pytest

from tests.marionette import FIREFOX, Firefox, NullAudio
from tests.server_proc import DataDirServer as Server
from tests.test_browser import (
    GRAB_JS,
    SAMPLE_EVERY_S,
    SAMPLE_SECONDS,
    check_mouth_follows_speech,
    decode_data_url,
    get_json,
    wait_sessions,
)

pytestmark = pytest.mark.browser

# Runs in the PAGE's own context (a <script> element): Marionette's scripts run in a sandbox
# whose changes to navigator the page would not see. Marks <body data-fake-mic> ready|failed.
FAKE_MIC_PAGE_JS = """(async (b64) => {
  try {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const ctx = new AudioContext();
    const buf = await ctx.decodeAudioData(bytes.buffer);
    const src = ctx.createBufferSource();
    src.buffer = buf;
    src.loop = true;
    const dest = ctx.createMediaStreamDestination();
    src.connect(dest);
    src.start();
    await ctx.resume();
    navigator.mediaDevices.getUserMedia = async () => dest.stream.clone();
    document.body.dataset.fakeMic = ctx.state === "running" ? "ready" : "suspended";
  } catch (e) {
    document.body.dataset.fakeMic = "failed: " + e;
  }
})"""
INSTALL_JS = """
const el = document.createElement("script");
el.textContent = arguments[0] + "(" + JSON.stringify(arguments[1]) + ");";
document.head.append(el);
return true;
"""


def firefox_prefs(host: str) -> dict[str, object]:
    return {
        # the page is plain http on the test address: treat it as a secure context (microphone)
        "dom.securecontext.allowlist": host,
        "media.navigator.permission.disabled": True,
        "media.navigator.streams.fake": True,
        # Firefox hides host ICE candidates behind mDNS names unless the page holds a real
        # microphone permission; the fake microphone does not, and aiortc resolves no mDNS
        "media.peerconnection.ice.obfuscate_host_addresses": False,
    }


def test_firefox_live_call_plays_avatar_and_mouth_moves(
    server: Server, speech_wav: Path, tmp_path: Path
) -> None:
    if not FIREFOX.exists():
        pytest.fail(f"{FIREFOX} is missing: install Debian's firefox-esr (make setup-test)")
    from server.render.measure import mouth_openness

    listing = get_json(server.url + "/avatars")
    default = listing["default"]
    kinds = {a["name"]: a["kind"] for a in listing["avatars"]}
    character = default if kinds.get(default) == "built-in" else None
    host = server.url.split("//", 1)[1].split(":", 1)[0]

    sound = NullAudio(tmp_path)  # without an audio output Firefox's Web Audio clock stands still
    try:
        ff = Firefox(tmp_path, firefox_prefs(host), 60.0, {"PULSE_SERVER": sound.address})
    except BaseException:
        sound.close()
        raise
    try:
        ff.navigate(server.url + "/")
        assert ff.js("return document.body.dataset.state") == "idle"
        ua = ff.js("return navigator.userAgent")
        assert "Firefox/" in ua, ua
        assert ff.js("return window.isSecureContext") is True
        ff.js(INSTALL_JS, FAKE_MIC_PAGE_JS, base64.b64encode(speech_wav.read_bytes()).decode())
        mic = ff.wait_for("return document.body.dataset.fakeMic", 10.0)
        assert mic == "ready", f"fake microphone: {mic}"

        ff.js("document.getElementById('btn-start').click(); return true")
        state = ff.wait_for(
            "const s = document.body.dataset.state; return ['live', 'error'].includes(s) ? s : null", 30.0)
        msg = ff.js("return document.getElementById('message').innerText")
        assert state == "live", f"Firefox page did not go live: {msg!r}\n{server.log_tail()}\n{ff.log_tail()}"
        client = ff.js("return {first: window.avatarClient.firstFrameAt, start: window.avatarClient.startedAt}")
        first_ms = client["first"] - client["start"]
        print(f"\n{ua}: first avatar frame {first_ms:.0f} ms after Start")

        w = ff.js("return document.getElementById('avatar-video').videoWidth")
        t0 = ff.js("return document.getElementById('avatar-video').currentTime")
        time.sleep(1.0)
        t1 = ff.js("return document.getElementById('avatar-video').currentTime")
        assert w > 0, "video element has no frames"
        assert t1 - t0 > 0.5, f"video time advanced only {t1 - t0:.3f} s in 1 s"

        grabs: list[tuple[bool, float]] = []  # (speaking, openness)
        end = time.monotonic() + SAMPLE_SECONDS
        while time.monotonic() < end:
            g = ff.js(f"return ({GRAB_JS})()")
            assert g is not None, "video lost its frames"
            grabs.append((bool(g["speaking"]), float(mouth_openness(decode_data_url(g["url"]), character))))
            time.sleep(SAMPLE_EVERY_S)
        opens = np.array([o for _, o in grabs])
        speaking = np.array([s for s, _ in grabs])
        print(f"Firefox: mouth openness over {len(grabs)} grabs: min {opens.min():.3f} max {opens.max():.3f}, "
              f"{int(speaking.sum())} while speaking")
        check_mouth_follows_speech(opens, speaking)

        stats = ff.js("return window.avatarClient.stats")
        print(f"Firefox page stats: {stats}")
        assert stats["visemeMessages"] > 50, stats
        assert stats["fps"] is not None and stats["fps"] >= 5, stats
        assert stats["latencyP50"] is not None, stats
        assert get_json(server.url + "/healthz")["sessions"] == 1

        ff.js("document.getElementById('btn-stop').click(); return true")
        assert ff.js("return document.body.dataset.state") == "stopped"
        sessions = asyncio.run(wait_sessions(server.url, 0))
        assert sessions == 0, f"the server kept {sessions} session(s) after Stop"
    finally:
        ff.close()
        sound.close()
