"""Session worker processes: a crashed worker ends only its own sessions; in-process mode works."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from server.client import ClientError, run_client
from tests.server_proc import ServerProcess, get_json, model_args, wait_sessions


async def _wait_for(cond: Callable[[], Awaitable[bool]], tries: int = 100) -> None:
    """Poll an HTTP condition every 0.2 s (the server is another process: nothing to await)."""
    for _ in range(tries):
        if await cond():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not reached in time")


async def test_killed_worker_ends_only_its_sessions(netns: str, speech_wav: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "two.toml"
    cfg.write_text("[server]\nworkers = 2\n")
    srv = ServerProcess(netns, tmp_path / "server.log", ["--config", str(cfg), "--data-dir", str(tmp_path / "d"), *model_args()])
    srv.start()
    try:
        a = asyncio.create_task(run_client(srv.url, speech_wav, None, None, duration=12.0))
        b = asyncio.create_task(run_client(srv.url, speech_wav, None, None, duration=6.0))

        async def two_streaming() -> bool:
            st = await get_json(srv.url, "/stats")
            return len(st["sessions"]) == 2 and all(s["frames"] > 10 for s in st["sessions"])

        await _wait_for(two_streaming)
        st = await get_json(srv.url, "/stats")
        assert st["totals"]["workers"] == 2
        pids = {s["worker_pid"] for s in st["sessions"]}
        assert len(pids) == 2, f"sessions should be spread over both workers: {st['sessions']}"
        # kill the worker of the session that would run longer (a), mid-call
        victim = max(st["sessions"], key=lambda s: s["age_s"])  # started first: a (usually)
        os.kill(victim["worker_pid"], signal.SIGKILL)
        results = await asyncio.gather(a, b, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        ok = [r for r in results if not isinstance(r, BaseException)]
        assert len(failed) == 1 and isinstance(failed[0], ClientError), results
        assert "worker" in str(failed[0]) or "internal" in str(failed[0]), failed[0]
        assert len(ok) == 1 and ok[0].fps_mean is not None and ok[0].fps_mean > 20, ok
        assert await wait_sessions(srv.url, 0) == 0
        totals = (await get_json(srv.url, "/stats"))["totals"]
        assert totals["worker_restarts"] == 1 and totals["workers"] == 2
        assert totals["pcs"] == 0 and totals["tasks"] == 0
        # the replacement worker serves new sessions
        again = await run_client(srv.url, speech_wav, None, None, duration=2.0, emotion="surprised")
        assert again.frames_received > 20 and again.errors == []  # the offer's emotion was applied
    finally:
        code = srv.stop()
    assert code in (0, -2, None), srv.log_tail()


@pytest.mark.parametrize("workers", [0])
async def test_in_process_sessions(netns: str, speech_wav: Path, tmp_path: Path, workers: int) -> None:
    cfg = tmp_path / "inproc.toml"
    cfg.write_text(f"[server]\nworkers = {workers}\n")
    srv = ServerProcess(netns, tmp_path / "server.log", ["--config", str(cfg), "--data-dir", str(tmp_path / "d"), *model_args()])
    srv.start()
    try:
        st = await run_client(srv.url, speech_wav, None, None, duration=3.0, emotion="happy")
        assert st.frames_received > 50 and st.errors == []
        assert await wait_sessions(srv.url, 0) == 0
        totals = (await get_json(srv.url, "/stats"))["totals"]
        assert totals["workers"] == 0 and totals["pcs"] == 0 and totals["tasks"] == 0

        async def memory_released() -> bool:  # the finished session's cycles and heap (server/heap.py)
            return "memory of finished sessions released" in srv.log_tail(200)

        await _wait_for(memory_released, tries=50)
    finally:
        code = srv.stop()
    assert code in (0, -2, None), srv.log_tail()


async def test_worker_recycled_without_interrupting_its_calls(netns: str, speech_wav: Path, tmp_path: Path) -> None:
    """worker_recycle_sessions = 2: the second call starts a replacement worker; a third call goes
    to it; the first two run to their end on the old worker, which then exits."""
    cfg = tmp_path / "recycle.toml"
    cfg.write_text("[server]\nworkers = 1\nworker_recycle_sessions = 2\n")
    srv = ServerProcess(netns, tmp_path / "server.log", ["--config", str(cfg), "--data-dir", str(tmp_path / "d"), *model_args()])
    srv.start()
    try:
        old_pid = int((await get_json(srv.url, "/stats"))["totals"]["worker_pids"][0])
        a = asyncio.create_task(run_client(srv.url, speech_wav, None, None, duration=16.0))
        assert await wait_sessions(srv.url, 1, timeout_s=20) == 1
        b = asyncio.create_task(run_client(srv.url, speech_wav, None, None, duration=8.0))
        assert await wait_sessions(srv.url, 2, timeout_s=20) == 2

        async def replacement_ready() -> bool:
            return len((await get_json(srv.url, "/stats"))["totals"]["worker_pids"]) == 2

        await _wait_for(replacement_ready, tries=300)
        pids = (await get_json(srv.url, "/stats"))["totals"]["worker_pids"]
        new_pid = next(int(p) for p in pids if int(p) != old_pid)
        c = asyncio.create_task(run_client(srv.url, speech_wav, None, None, duration=3.0))

        async def third_on_new_worker() -> bool:
            return any(s["worker_pid"] == new_pid for s in (await get_json(srv.url, "/stats"))["sessions"])

        await _wait_for(third_on_new_worker)
        results = await asyncio.gather(a, b, c)
        for r in results:  # none interrupted (frame rates are not the point: the replacement's start-up takes CPU)
            assert r.errors == [] and r.frames_received > 10 * r.duration_s, r.summary()
        assert results[0].duration_s >= 15.0, results[0].summary()

        async def retired() -> bool:
            t = (await get_json(srv.url, "/stats"))["totals"]
            return bool(t["worker_recycles"] == 1 and t["worker_pids"] == [new_pid])

        await _wait_for(retired, tries=150)
        assert not os.path.exists(f"/proc/{old_pid}"), "the retired worker was not reaped"  # noqa: ASYNC240 - /proc, instant
        totals = (await get_json(srv.url, "/stats"))["totals"]
        assert totals["worker_restarts"] == 0 and totals["sessions"] == 0
        again = await run_client(srv.url, speech_wav, None, None, duration=2.0)
        assert again.frames_received > 20 and again.errors == []
    finally:
        code = srv.stop()
    assert code in (0, -2, None), srv.log_tail()
    log = (tmp_path / "server.log").read_text()
    assert "retired after 2 sessions" in log and "Traceback" not in log, log[-3000:]
