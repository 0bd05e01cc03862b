"""bench/latency.py's server-side frame rate, from /stats samples (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.latency import server_sent_fps


def _snap(t: float, *sessions: tuple[str, str, int]) -> dict[str, Any]:
    return {"_t": t, "sessions": [{"session": sid, "state": st, "frames": n} for sid, st, n in sessions]}


def test_server_sent_fps_over_the_connected_samples() -> None:
    samples = [
        _snap(100.0, ("a", "connecting", 0), ("b", "connecting", 0)),
        _snap(101.0, ("a", "connected", 12), ("b", "connected", 0)),  # b not sending yet
        {"error": "timed out"},  # a failed poll is skipped
        _snap(102.0, ("a", "connected", 42), ("b", "connected", 20), ("c", "connected", 5)),
        _snap(106.0, ("a", "connected", 162), ("b", "connected", 136), ("c", "connected", 60)),
        _snap(111.0, ("a", "connected", 312), ("b", "connected", 286)),  # c gone: seen 4 s
        _snap(112.0, ("a", "closed", 340)),  # after the call: not counted
    ]
    fps = server_sent_fps(samples)
    assert set(fps) == {"a", "b", "c"}
    assert fps["a"] == pytest.approx(300 / 10)
    assert fps["b"] == pytest.approx(266 / 9)
    assert fps["c"] == pytest.approx(55 / 4)
    assert server_sent_fps(samples, min_span_s=5.0).keys() == {"a", "b"}
    assert server_sent_fps([]) == {}


def test_cpu_hog_runs_until_killed_and_rejects_bad_duty() -> None:
    import time

    from bench.latency import start_cpu_hog

    with pytest.raises(ValueError, match="--cpu-hog 1.5"):
        start_cpu_hog(1.5)
    hog = start_cpu_hog(0.1)
    try:
        time.sleep(0.3)
        assert hog.poll() is None, "the hog exited on its own"
    finally:
        hog.kill()
        hog.wait()
    assert hog.returncode is not None
