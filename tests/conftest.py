"""Shared fixtures: speech generated with espeak-ng, the private-network check, ../shared data."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_proc import DataDirServer

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"  # the shared data folder beside the checkout (not in git)
DEV_SPEECH = SHARED / "data" / "dev-speech"  # real recordings: audio/, ASR_*.json, noise/, rir/


def require_shared(path: Path) -> Path:
    """``path`` (in ``SHARED``, e.g. ``DEV_SPEECH / "noise"``) if it exists; else skip the test
    with the reason, or fail it when ``CI=true`` (CI always has ../shared, so a skip there would
    hide a broken checkout)."""
    if path.exists():
        return path
    reason = f"needs {path}: the shared data folder ../shared beside the checkout is missing it"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: it must be there)", pytrace=False)
    pytest.skip(reason)


def in_test_netns() -> bool:
    """True inside tests/netns_run.sh's private namespace (veth on 198.18.0.0/15)."""
    if os.environ.get("AVATAR_NETNS") != "1":
        return False
    out = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True, check=False).stdout
    return "198.18.0.1" in out


@pytest.fixture(scope="session")
def netns() -> str:
    """The address WebRTC tests bind to; fails (not skips) outside the private namespace."""
    if not in_test_netns():
        pytest.fail(
            "WebRTC tests must run inside the private test network: "
            "`make test` or `tests/netns_run.sh .venv/bin/python -m pytest ...`"
        )
    return "198.18.0.1"


@pytest.fixture(scope="module")
def server(netns: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataDirServer]:
    """The real server on the private test address, one per test module (the browser tests)."""
    srv = DataDirServer(netns, tmp_path_factory.mktemp("web-server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def espeak_wav(path: Path, text: str, voice: str = "en-us", rate: int = 150) -> Path:
    """Synthesize ``text`` to a WAV file with espeak-ng (22.05 kHz mono)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.fail("espeak-ng is not installed (make test installs it)")
    subprocess.run([exe, "-v", voice, "-s", str(rate), "-w", str(path), text], check=True)
    return path


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4 s: 0.6 s silence, a sentence, 1 s silence, a sentence, 0.8 s silence (16 kHz)."""
    import numpy as np
    import soundfile as sf  # noqa: F401  (dependency of the test suite)

    d = tmp_path_factory.mktemp("speech")
    a = espeak_wav(d / "a.wav", "Hello there, how are you today?")
    b = espeak_wav(d / "b.wav", "Watch the mouth open and close.")
    from engines.audio import decode_audio as load

    sil = lambda s: np.zeros(int(16000 * s), np.float32)  # noqa: E731
    audio = np.concatenate([sil(0.6), load(a), sil(1.0), load(b), sil(0.8)])
    out = d / "speech.wav"
    import soundfile

    soundfile.write(str(out), audio, 16000, subtype="PCM_16")
    return out
