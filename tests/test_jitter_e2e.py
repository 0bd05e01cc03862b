"""The microphone's adaptive jitter buffer end to end: a real call through tests/udp_relay.py.

Run inside the private network: ``tests/netns_run.sh .venv/bin/python -m pytest -q tests/test_jitter_e2e.py``.
The relay gives the client → server RTP 2 % loss, 0..30 ms jitter and 2 % packets held back
20 ms more (seeded); the session must keep receiving audio and producing visemes and video,
with the buffer's target delay bounded by what the link does and not growing over the call,
losses concealed, and no audio dropped from the session's queue. A clean call through the
same relay must add (almost) no delay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.client import ClientStats, load_audio
from tests.server_proc import ServerProcess, model_args, wait_sessions
from tests.udp_relay import Impairment, UdpRelay, call_through_relay

CLIENT_IP = "198.18.0.2"
CALL_S = 8.0  # s of microphone sent


@pytest.fixture(scope="module")
def server(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server (default config: ``[audio] jitter = "adaptive"``, 100 ms ceiling)."""
    d = tmp_path_factory.mktemp("server")
    srv = ServerProcess(netns, d / "server.log", ["--data-dir", str(d / "data"), *model_args()])
    srv.start()
    yield srv
    srv.stop()


async def relayed_call(server: ServerProcess, wav: Path, imp: Impairment) -> tuple[ClientStats, list[dict[str, Any]], UdpRelay]:
    """One CALL_S call from CLIENT_IP through a relay with ``imp`` (see :func:`call_through_relay`)."""
    st, samples, relay = await call_through_relay(server.url, load_audio(wav), imp, duration=CALL_S, client_ip=CLIENT_IP)
    assert await wait_sessions(server.url, 0) == 0
    return st, samples, relay


async def test_impaired_link_keeps_the_call_going_with_bounded_delay(server: ServerProcess, speech_wav: Path) -> None:
    imp = Impairment(loss=0.02, jitter_ms=30.0, reorder=0.02, reorder_ms=20.0, seed=20)
    st, samples, relay = await relayed_call(server, speech_wav, imp)
    last = samples[-1]
    jit = last["jitter"]
    report = json.dumps({"client": st.summary(), "relay": relay.stats(), "session": last}, indent=1)
    print(report)
    assert relay.dropped > 0 and relay.reordered > 0 and relay.delayed > 0.9 * relay.rtp_up, report
    # media kept flowing both ways: the mic into the pipeline, visemes and video back
    assert st.errors == [], report
    assert last["audio_drops"] == 0, "audio dropped from the session's queue: " + report
    assert last["audio_frames"] >= 0.85 * CALL_S / 0.02 * (1 - 2 * imp.loss), report
    assert st.dc_hops >= 0.8 * 2 * st.mic_frames_sent, report
    assert st.fps_mean is not None and st.fps_mean >= 20.0, report
    # the buffer saw the loss and reordering, concealed the losses, never overflowed
    assert jit["mode"] == "adaptive" and jit["lost"] >= 1 and jit["concealed"] >= 1, report
    assert jit["overflows"] == 0 and jit["restarts"] == 0, report
    # target bounded by the link (reorder delays ≤ 30 ms + 20 ms, RFC 3550 jitter ~10 ms), not by the ceiling ...
    worst = 1.25 * (imp.jitter_ms + imp.reorder_ms) + 10.0
    targets = [s["jitter"]["target_ms"] for s in samples]
    assert max(targets) <= worst and jit["target_max_ms"] <= worst, targets
    assert jit["delay_ms"]["p95"] is not None and jit["delay_ms"]["p95"] <= worst, report
    # ... and not growing: the second half's largest target no larger than the first half's + 10 ms
    half = len(targets) // 2
    assert half >= 8 and max(targets[half:]) <= max(targets[:half]) + 10.0, targets
    # few packets arrived after their slot was concealed (the link's worst delays, once learned)
    assert jit["late"] <= max(3, 0.02 * jit["received"]), report


async def test_clean_relay_adds_no_delay(server: ServerProcess, speech_wav: Path) -> None:
    st, samples, relay = await relayed_call(server, speech_wav, Impairment())
    jit = samples[-1]["jitter"]
    report = json.dumps({"client": st.summary(), "relay": relay.stats(), "session": samples[-1]}, indent=1)
    print(report)
    assert relay.rtp_up > 0 and relay.dropped == 0, report
    assert jit["lost"] == 0 and jit["late"] == 0 and jit["concealed"] == 0, report
    # no network jitter; what is left is this (shared, 2-core) machine's scheduling
    assert jit["delay_ms"]["p50"] is not None and jit["delay_ms"]["p50"] <= 5.0, report
    assert samples[-1]["audio_drops"] == 0, report
